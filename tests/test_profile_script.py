"""scripts/profile_vs_flowjax.py: kernel kinds, and a traced run (or its one-line error without flowjax)."""

import importlib.util
import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = str(Path(__file__).resolve().parents[1] / "scripts" / "profile_vs_flowjax.py")


def _main(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", [SCRIPT, *args])
    runpy.run_path(SCRIPT, run_name="__main__")


def test_kernel_names_are_sorted_into_kinds():
    kind = runpy.run_path(SCRIPT, run_name="not_main")["kind"]
    assert kind("ynn_fusion.3") == kind("dot_general.40") == "matmul"
    assert kind("bitcast_dynamic-update-slice_fusion.7") == "residual store"
    assert kind("dynamic-slice_bitcast_fusion.2") == "parameter read"
    assert kind("copy.22") == kind("wrapped_broadcast.3") == "buffer init / copy"
    assert kind("multiply_tanh_fusion") == "elementwise / other"
    for container in ("while.26", "ThunkExecutor::Execute", "PjitFunction(step)", "$measure.py:101 call"):
        assert kind(container) is None


def test_profile_runs_or_says_in_one_line_what_is_missing(monkeypatch, capsys):
    if importlib.util.find_spec("flowjax") is None:
        with pytest.raises(SystemExit, match=r"^profile_vs_flowjax: error: flowjax is not importable .*'\.\[bench\]'$"):
            _main(monkeypatch, "--case", "planar_d16")
        return
    _main(monkeypatch, "--case", "planar_d16", "--steps", "2")
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert {"matmul", "residual store", "parameter read", "buffer init / copy", "elementwise / other", "all"} <= set(rows)
    counts = [float(rows["all"].split("|")[i]) for i in (4, 7)]  # zoo and flowjax kernels per step
    assert all(c > 0 for c in counts)


def test_a_case_that_is_not_a_vector_case_is_one_line(monkeypatch):
    with pytest.raises(SystemExit, match=r"^profile_vs_flowjax: error: --case 'glow_mnist' is not a vector case; [^\n]*$"):
        _main(monkeypatch, "--case", "glow_mnist")
