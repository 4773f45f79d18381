"""Reliability (DESIGN.md §8): every user error is one line and an exit
code, no save is silent, nothing corrupt or non-finite is loaded or
written, one writer per run directory, URL caches keyed by the URL."""

import errno
import os
import subprocess
import sys

import pytest

from zoo._cli import Failure, UsageError, cli

ENV = {**os.environ, "WANDB_MODE": "disabled", "OPENBLAS_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}
ENV.pop("ZOO_DEBUG", None)


def _one_error_line(r, tool, code, *words):
    """`r` exited `code` with exactly one stderr line `TOOL: error: ...` holding `words`."""
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    errors = [l for l in lines if l.startswith(f"{tool}: error: ")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


# ------------------------------------------------------------- the one place errors become lines


@pytest.mark.parametrize("exc, code, text", [
    (UsageError("--num must be positive; pass 1 or more"), 2, "zoo.t: error: --num must be positive; pass 1 or more"),
    (Failure("line one\n  line two"), 1, "zoo.t: error: line one line two"),
    (OSError(errno.ENOSPC, "No space left on device", "/d/f"), 1,
     "zoo.t: error: No space left on device: '/d/f'; free some space or write somewhere else"),
    (FileNotFoundError("mnist: missing x; get it with: cmd"), 1, "zoo.t: error: mnist: missing x; get it with: cmd"),
    (TypeError("boom"), 1, "zoo.t: error: internal error (TypeError: boom); rerun with ZOO_DEBUG=1"),
])
def test_cli_turns_exceptions_into_one_line_and_an_exit_code(exc, code, text, capsys, monkeypatch):
    monkeypatch.delenv("ZOO_DEBUG", raising=False)

    @cli("zoo.t")
    def main(argv=None):
        raise exc

    with pytest.raises(SystemExit) as e:
        main([])
    err = capsys.readouterr().err
    assert e.value.code == code and err.startswith(text) and err.count("\n") == 1, err
    monkeypatch.setenv("ZOO_DEBUG", "1")
    with pytest.raises(SystemExit):
        main([])
    assert "Traceback" in capsys.readouterr().err


def test_cli_passes_return_values_and_system_exit_through():
    assert cli("zoo.t")(lambda argv=None: 3)() == 3

    @cli("zoo.t")
    def main(argv=None):
        raise SystemExit(4)

    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 4
