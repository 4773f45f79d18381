"""`python -m zoo.bench`: run the cases, each in a fresh interpreter, and report.

    python -m zoo.bench [--quick] [--cases PATTERN] [--out bench.json] [--markdown bench.md] [--steps N]

A case process (`python -m zoo.bench --run-case NAME`) prints its result as
one JSON object on stdout (everything else it prints goes to stderr) and
reports its own peak memory; this process adds the 1-minute load average
before and after it and the machine, and writes bench.json and the Markdown
tables. Only ratios measured in one process mean much: machines of one kind
differ by 2x, so read the absolute times with the machine and load next to them.
"""

import fnmatch
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from zoo._cli import ArgumentParser, Failure, UsageError, cli

__all__ = ["main", "run_case"]

TOOL = "zoo.bench"
QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0"


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m zoo.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and few steps (seconds: the test suite runs it); without --cases, one case "
                        "of each kind")
    p.add_argument("--cases", metavar="PATTERN",
                   help="run only the cases whose names match these comma-separated shell patterns "
                        "(e.g. 'glow*,nsf_*'); --list shows the names")
    p.add_argument("--out", metavar="JSON", help="write all numbers, the machine and the load here")
    p.add_argument("--markdown", metavar="MD", help="also write the Markdown tables here (always printed)")
    p.add_argument("--steps", type=int, metavar="N",
                   help="timed calls of each kind per case, at least (default 20; --quick: 3)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--run-case", metavar="NAME", help="run one case in this process and print its JSON "
                                                      "(what each case process does)")
    return p


def _settings(args):
    from zoo.bench.cases import Settings

    steps = args.steps if args.steps is not None else (3 if args.quick else 20)
    if steps < 1:
        raise UsageError(f"--steps must be >= 1, got {steps}; pass --steps 20 or more for stable medians")
    if args.quick:
        return Settings(quick=True, steps=steps, min_seconds=0.0, compile_repeats=1)
    return Settings(quick=False, steps=steps)


def _select(patterns: str | None, quick: bool) -> list:
    from zoo.bench.cases import CASES, QUICK_CASES

    if patterns is None:
        return list(QUICK_CASES if quick else CASES)
    chosen = []
    for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
        hits = [name for name in CASES if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise UsageError(f"--cases {pattern!r} matches no case; see python -m zoo.bench --list")
        chosen += [h for h in hits if h not in chosen]
    if not chosen:
        raise UsageError("--cases is empty; pass a pattern such as 'glow*' (see python -m zoo.bench --list)")
    return chosen


# --------------------------------------------------------------------------- one case, in this process


def run_case(name: str, settings) -> int:
    """Run case `name` here and print its result as JSON on the real stdout;
    anything else printed meanwhile (by us or any library) goes to stderr."""
    result_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    flags = os.environ.get("XLA_FLAGS", "")
    if settings.quick and QUICK_XLA_FLAGS not in flags:  # read when the backend starts: quick numbers mean
        os.environ["XLA_FLAGS"] = f"{flags} {QUICK_XLA_FLAGS}".strip()  # nothing, so compile ~3x faster
    import resource

    import jax

    jax.config.update("jax_enable_compilation_cache", False)  # compile times from scratch, every run
    from zoo.bench.cases import CASES

    if name not in CASES:
        raise UsageError(f"--run-case {name!r} is not a case; see python -m zoo.bench --list")
    case = CASES[name]
    result = {"name": name, "kind": case.kind, "about": case.about, **case.run(settings)}
    device = jax.devices()[0]
    result.update(jax_backend=jax.default_backend(), device=getattr(device, "device_kind", str(device)),
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    json.dump(result, result_out)
    result_out.write("\n")
    result_out.flush()
    return 0


# --------------------------------------------------------------------------- all cases, one process each


def _case_command(name: str, args) -> list:
    cmd = [sys.executable, "-m", "zoo.bench", "--run-case", name]
    if args.quick:
        cmd.append("--quick")
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    return cmd


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _spawn(name: str, args) -> dict:
    from zoo.bench.machine import load1

    before, t0 = load1(), time.perf_counter()
    proc = subprocess.run(_case_command(name, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall, after = time.perf_counter() - t0, load1()
    stamp = {"load_before": before, "load_after": after, "wall_s": wall}
    if proc.returncode == 0:
        try:
            return {**json.loads(proc.stdout), **stamp}
        except json.JSONDecodeError:
            error = f"printed no JSON result (stdout: {_last_line(proc.stdout)[:200]!r})"
    else:
        error = f"exit {proc.returncode}: {_last_line(proc.stderr)}"
    from zoo.bench.cases import CASES

    return {"name": name, "kind": CASES[name].kind, "error": error, **stamp}


def _flowjax_note() -> str | None:
    """None when flowjax imports, else the one line saying what is skipped and why
    (in a subprocess: this one stays without jax)."""
    probe = subprocess.run([sys.executable, "-c", "import flowjax"], capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    return (f"flowjax is not importable ({_last_line(probe.stderr)}), so the vector cases time zoo alone and "
            "skip the zoo/flowjax side by side; pip install 'zoo[bench]' to add it")


def _write(path: str, text: str):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def _run_all(args) -> int:
    from tqdm.auto import tqdm

    from zoo.bench.machine import machine
    from zoo.bench.report import markdown

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before any case imports numpy (DESIGN.md section 6)
    settings = _settings(args)
    names = _select(args.cases, args.quick)
    from zoo.bench.cases import CASES

    note = _flowjax_note() if any(CASES[n].kind == "vector" for n in names) else None
    if note:
        print(f"{TOOL}: {note}", file=sys.stderr, flush=True)
    t0, cases = time.perf_counter(), []
    bar = tqdm(names, desc=TOOL, unit="case", file=sys.stderr)
    for name in bar:
        bar.set_postfix_str(name)
        cases.append(_spawn(name, args))
        if "error" in cases[-1]:
            tqdm.write(f"{TOOL}: case {name} failed: {cases[-1]['error']}; rerun it alone with "
                       f"`python -m zoo.bench --run-case {name}` to see why", file=sys.stderr)
    bar.close()
    results = {"command": "python -m zoo.bench " + shlex.join(sys.argv[1:] if args.argv is None else args.argv),
               "settings": settings.__dict__, "machine": machine(), "flowjax_skipped": note,
               "wall_s": time.perf_counter() - t0, "cases": cases}
    text = markdown(results)
    if args.out:
        _write(args.out, json.dumps(results, indent=1) + "\n")
    if args.markdown:
        _write(args.markdown, text)
    sys.stdout.write(text)
    failed = [c["name"] for c in cases if "error" in c]
    if failed:
        raise Failure(f"{len(failed)} of {len(cases)} cases failed ({', '.join(failed)}); rerun one with "
                      "python -m zoo.bench --run-case NAME to see why")
    return 0


@cli(TOOL)
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    args.argv = argv
    if args.list:
        from zoo.bench.cases import CASES, QUICK_CASES

        for name, case in CASES.items():
            print(f"{name:28s} {case.kind:12s} {case.about}" + ("  [--quick]" if name in QUICK_CASES else ""))
        return 0
    if args.run_case:
        return run_case(args.run_case, _settings(args))
    return _run_all(args)
