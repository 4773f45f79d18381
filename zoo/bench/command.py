"""`python -m zoo.bench`: run the cases, each in a fresh interpreter, and report.

    python -m zoo.bench [--quick] [--cases PATTERN] [--out bench.json] [--markdown bench.md] [--steps N]
                        [--readme README.md]
    python -m zoo.bench --from bench.json --readme README.md     (re-render a run's tables, no timing)

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
README_BEGIN = "<!-- zoo.bench tables: begin -->"
README_END = "<!-- zoo.bench tables: end -->"
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
    p.add_argument("--readme", metavar="MD",
                   help="put the tables into this file between the lines " + README_BEGIN + " and " + README_END
                        + " (the README's Benchmarks section)")
    p.add_argument("--from", dest="from_json", metavar="JSON",
                   help="time nothing: render the tables of this earlier --out (with --markdown / --readme)")
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
    """Whole or not at all: a killed run leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _readme_with(path: str, text: str) -> str:
    """The file at `path` with the text between its marker lines replaced."""
    try:
        old = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"--readme {path}: cannot read it ({e.strerror}); pass the README to update")
    begin, end = old.find(README_BEGIN), old.find(README_END)
    if begin < 0 or end < begin:
        raise UsageError(f"--readme {path} has no {README_BEGIN} ... {README_END} lines; add them, in that "
                         "order, where the tables go")
    return old[: begin + len(README_BEGIN)] + "\n\n" + text.rstrip() + "\n\n" + old[end:]


def _report(results: dict, args) -> str:
    """Write the --out / --markdown / --readme files (the README checked first,
    so a bad --readme writes nothing) and return the Markdown."""
    from zoo.bench.report import markdown

    if args.readme:
        _readme_with(args.readme, "")
    text = markdown(results)
    readme = _readme_with(args.readme, text) if args.readme else None
    if args.out:
        _write(args.out, json.dumps(results, indent=1) + "\n")
    if args.markdown:
        _write(args.markdown, text)
    if readme is not None:
        _write(args.readme, readme)
    return text


def _render(args) -> int:
    try:
        results = json.loads(Path(args.from_json).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"--from {args.from_json}: not a bench.json ({e}); pass the file an earlier --out wrote")
    if not isinstance(results, dict) or "cases" not in results or "machine" not in results:
        raise UsageError(f"--from {args.from_json}: not a bench.json (no cases or machine); pass the file an "
                         "earlier --out wrote")
    sys.stdout.write(_report(results, args))
    return 0


def _run_all(args) -> int:
    from tqdm.auto import tqdm

    from zoo.bench.machine import machine

    if args.readme:
        _readme_with(args.readme, "")  # a README without the markers fails before the cases run
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
    sys.stdout.write(_report(results, args))
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
    if args.from_json:
        return _render(args)
    return _run_all(args)
