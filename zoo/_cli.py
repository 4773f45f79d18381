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
traceback; Ctrl-C exits 130 with one line. Write messages as "what is
wrong; what to do"; an `OSError` without that gets a hint from its errno.
`main` returns whatever the wrapped function returns (an exit status or None).
"""

import errno
import functools
import os
import sys
import traceback

__all__ = ["UsageError", "Failure", "cli", "report", "exit_code", "message"]


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


def report(tool: str, e: BaseException) -> int:
    """Print `e` as the tool's error line (and the traceback under ZOO_DEBUG=1); the exit status."""
    if os.environ.get("ZOO_DEBUG", "") not in ("", "0"):
        traceback.print_exception(e)
    print(f"{tool}: error: {message(e)}", file=sys.stderr, flush=True)
    return exit_code(e) or 1


def cli(tool: str):
    """Decorate a CLI's `main(argv=None)`: expected failures become one
    line and an exit status (see the module docstring). SystemExit passes
    through (argparse and tyro already print their own usage errors)."""

    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                print(f"{tool}: interrupted", file=sys.stderr, flush=True)
                raise SystemExit(130) from None
            except Exception as e:
                raise SystemExit(report(tool, e)) from None

        return run

    return wrap
