"""One place where a command-line tool's errors become one line and an exit code.

    from zoo._cli import UsageError, cli

    @cli("zoo.evaluate")
    def main(argv=None):
        ...
        raise UsageError("--num must be positive, got 0; pass --num 1 or more")

`main()` then ends every expected failure with one line on stderr,

    zoo.evaluate: error: <what is wrong>; <what to do>

and exit status 2 for a usage error (`UsageError`, an unknown registry name)
or 1 for a failure (`Failure` and its subclasses such as `CheckpointError`
and `TrainingDiverged`, `zoo.data.MissingDatasetError`, any `OSError`: a
missing file, a full disk, a refused URL). Anything else is a bug and is
reported as one line naming the exception. `ZOO_DEBUG=1` also prints the
traceback (and the library logs `cli` otherwise drops); Ctrl-C exits 130
with one line (a training run stopped by a signal: 128 + the signal).
Write messages as "what is wrong; what to do"; an `OSError` without that
gets a hint from its errno. `main` returns whatever the
wrapped function returns (an exit status or None). Warnings print as
`zoo.evaluate: warning: <message>`.
"""

import argparse
import errno
import functools
import logging
import os
import re
import sys
import traceback
import warnings

__all__ = ["UsageError", "Failure", "cli", "parse_args", "ArgumentParser", "report", "exit_code", "message"]


class UsageError(ValueError):
    """A wrong argument or combination of arguments (exit status 2)."""


class Failure(RuntimeError):
    """An expected failure the user can act on (exit status 1)."""


_OS_HINTS = {
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "free some space or write somewhere else",
    errno.EACCES: "check the permissions or choose another path",
    errno.EPERM: "check the permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOTDIR: "a path component is a file, not a folder; choose another path",
    errno.EEXIST: "choose another path or remove what is there",
    errno.EISDIR: "pass a file, not a folder",
    errno.EFBIG: "a file-size limit was reached; raise it (ulimit -f) or write somewhere else",
    errno.ENOENT: "check the path",
}


def exit_code(e: BaseException) -> int | None:
    """2 for a usage error, 1 for an expected failure, None for a bug."""
    registry = sys.modules.get("zoo.registry")  # imported with zoo; never import here
    if isinstance(e, UsageError) or (registry is not None and isinstance(e, registry.RegistryError)):
        return 2
    if isinstance(e, (Failure, OSError)):  # MissingDatasetError is a FileNotFoundError
        return 1
    return None


def message(e: BaseException) -> str:
    """The exception as one line: "what is wrong; what to do"."""
    if isinstance(e, OSError) and e.strerror:  # raised by the OS (ours carry one message)
        where = " -> ".join(repr(str(f)) for f in (e.filename, e.filename2) if f is not None)
        text = f"{e.strerror}" + (f": {where}" if where else "")
        hint = _OS_HINTS.get(e.errno)
        return text + (f"; {hint}" if hint else "")
    text = str(e) or type(e).__name__
    if exit_code(e) is None:
        text = f"internal error ({type(e).__name__}: {text}); rerun with ZOO_DEBUG=1 for the traceback and report it"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _debug() -> bool:
    return os.environ.get("ZOO_DEBUG", "") not in ("", "0")


def report(tool: str, e: BaseException) -> int:
    """Print `e` as the tool's error line (and the traceback under ZOO_DEBUG=1); the exit status."""
    if _debug():
        traceback.print_exception(e)
    print(f"{tool}: error: {message(e)}", file=sys.stderr, flush=True)
    return exit_code(e) or 1


# After a failed write orbax logs tracebacks hundreds of lines long (absl),
# and its orphaned async tasks report "Event loop is closed" (asyncio's log,
# unraisable exceptions), some as the process exits: the one line says it.
_NOISY_LOGGERS = ("absl", "asyncio")


def _quiet(tool: str) -> tuple:
    saved = ([(lg, lg.level) for lg in map(logging.getLogger, _NOISY_LOGGERS)], sys.unraisablehook,
             warnings.formatwarning)
    for logger, _ in saved[0]:
        logger.setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: None
    warnings.formatwarning = lambda message, *args, **kwargs: f"{tool}: warning: {message}\n"
    return saved


def _restore(saved: tuple, failed: bool):
    loggers, hook, formatwarning = saved
    if failed and hook is sys.__unraisablehook__:  # a plain CLI process: quiet until it exits
        return
    for logger, level in loggers:
        logger.setLevel(level)
    sys.unraisablehook, warnings.formatwarning = hook, formatwarning


def cli(tool: str):
    """Decorate a CLI's `main(argv=None)`: expected failures become one
    line and an exit status (see the module docstring). SystemExit passes
    through; parse arguments with `parse_args` so tyro's errors are one line too.
    While it runs, warnings print as `TOOL: warning: <message>` and library
    noise is dropped: absl's and asyncio's log records below CRITICAL and
    unraisable exceptions (ZOO_DEBUG=1 leaves all three alone)."""

    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            saved = None if _debug() else _quiet(tool)
            failed = True
            try:
                result = main(*args, **kwargs)
                failed = False
                return result
            except KeyboardInterrupt as e:  # its message, if any, says what was kept
                print(f"{tool}: interrupted" + (f" {e}" if str(e) else ""), file=sys.stderr, flush=True)
                raise SystemExit(getattr(e, "exit_status", 130)) from None
            except Exception as e:
                raise SystemExit(report(tool, e)) from None
            finally:
                if saved is not None:
                    _restore(saved, failed)

        return run

    return wrap


def _one_line(box: str) -> str:
    """tyro's error box as one line: its messages, without the help text."""
    sections, current = [], []
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", box).splitlines() if ln.strip()]
    for ln in lines[1:]:  # lines[0] is the box's title; boxes are drawn in ASCII when stdout is not UTF-8
        if ln[:1] == "╰":
            continue
        ln = ln.strip("│").strip()
        if ln and set(ln) <= {"─", "-"}:
            sections, current = sections + [current], []
        elif ln:
            current.append(ln)
    parts = []
    for body in [*sections, current]:
        if not body or body[0].startswith(("For full helptext", "Argument helptext")):
            continue
        options = [b.split()[0] for b in body[1:] if b.startswith("--")]
        if body[0].startswith("Missing from"):  # the required options, without their help
            parts.append("missing " + ", ".join(options))
        elif body[0].startswith("Perhaps you meant"):
            parts.append(f"did you mean {' or '.join(options)}?")
        elif body[0] == "Unrecognized options:":
            parts.append("unrecognized " + ", ".join(options))
        else:
            parts.append(" ".join(" ".join(body).split()).rstrip("."))
    return "; ".join(parts) or "invalid arguments"


def parse_args(cls, *, args, prog: str, **kwargs):
    """`tyro.cli(cls, ...)` whose usage errors are one `UsageError` line that
    says where the help is (ZOO_DEBUG=1 also prints tyro's own box)."""
    import contextlib
    import io

    import tyro

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            parsed = tyro.cli(cls, args=args, prog=prog, **kwargs)
    except SystemExit as e:
        if not e.code:
            raise
        if _debug():
            sys.stderr.write(captured.getvalue())
        raise UsageError(f"{_one_line(captured.getvalue())}; see {prog} --help") from None
    sys.stderr.write(captured.getvalue())  # tyro's warnings on a parse that worked
    return parsed


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one `UsageError` line (for a `cli` main) that says where the help is."""

    def error(self, message):
        raise UsageError(f"{message}; see {self.prog} --help")
