"""Where the time of a vector case's training step goes, zoo beside flowjax.

`python -m zoo.bench` gives the ratio of the hand-written step (the same
`jit((params, opt_state, x) -> ...)` with optax.adam for both libraries);
this script says what it is made of. It traces `--steps` calls of each
library's step with `jax.profiler` (Python tracing off), adds up the time
of every XLA:CPU kernel (thunk) by kind, and prints one Markdown table:

- matmul: the kernels XLA:CPU runs as matrix products (Eigen dots and
  YNNPACK fusions: the conditioners' products, forward and backward, the
  same in both libraries, and reductions such as a planar layer's w.z);
- residual store: a scanned layer's writes of what the backward pass needs
  (one dynamic-update-slice per stored array per layer);
- parameter read: a scanned layer's reads of its weights (dynamic slices);
- buffer init / copy: zero-filling the stacked residual buffers and the
  copies XLA inserts around the loops;
- elementwise / other: every other fused kernel (activations, couplings,
  splines, the optimizer).

The profiler's own cost per kernel inflates the totals (a traced step takes
~1.4x its untraced time), so read the shares and the kernel counts, not the
absolute microseconds. Needs flowjax (`uv pip install -e '.[bench]'`).

    OPENBLAS_NUM_THREADS=1 python scripts/profile_vs_flowjax.py --case realnvp_d16 [--steps 100]
"""

import argparse
import collections
import glob
import gzip
import json
import os
import tempfile

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402

from zoo.bench import cases, measure  # noqa: E402

KINDS = ("matmul", "residual store", "parameter read", "buffer init / copy", "elementwise / other")
# events that are not one kernel: the executable, the loops that contain kernels, argument handling
CONTAINERS = ("ThunkExecutor", "PjitFunction", "ParseArguments", "Handle inputs", "CommonPjRt", "Allocate",
              "while", "Execute")


def kind(name: str) -> str | None:
    if name.startswith("$") or name.startswith(CONTAINERS):
        return None
    if name.startswith(("dot", "ynn")):
        return "matmul"
    if "dynamic-update-slice" in name:
        return "residual store"
    if "dynamic-slice" in name:
        return "parameter read"
    if name.startswith(("copy", "wrapped_broadcast")):
        return "buffer init / copy"
    return "elementwise / other"


def profile(thunk, steps: int) -> dict:
    """{kind: [microseconds per step, kernels per step]} over `steps` traced calls."""
    for _ in range(20):
        thunk()
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True, profiler_options=options):
            for _ in range(steps):
                thunk()
        (path,) = glob.glob(f"{d}/**/perfetto_trace.json.gz", recursive=True)
        events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    totals = collections.defaultdict(lambda: [0.0, 0.0])
    for e in events:
        k = kind(e.get("name", "")) if e.get("ph") == "X" else None
        if k:
            totals[k][0] += e.get("dur", 0) / steps
            totals[k][1] += 1 / steps
    return totals


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default="realnvp_d16", help="a vector case of python -m zoo.bench (FAMILY_dD)")
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    family, _, dim = args.case.rpartition("_d")
    if family not in ("realnvp", "maf", "nsf", "planar") or not dim.isdigit():
        raise SystemExit(f"profile_vs_flowjax: error: --case {args.case!r} is not a vector case; "
                         "use realnvp_d16, nsf_d64, ... (python -m zoo.bench --list)")
    try:
        from zoo.bench import vs_flowjax as fj
    except ImportError as e:
        raise SystemExit(f"profile_vs_flowjax: error: flowjax is not importable ({e}); "
                         "install it with: uv pip install -e '.[bench]'") from None

    cfg = cases._vector_cfg(family, cases.Settings())
    x = measure.vector_batch(int(dim), cases.VECTOR_BATCH)
    spec, is_leaf = fj.partition_spec()
    steps = {
        "zoo": measure.hand_step(cfg.build(input_shape=(int(dim),), key=jax.random.key(0)), measure.zoo_nll, x),
        "flowjax": measure.hand_step(fj.twin(family, cfg, int(dim), jax.random.key(0)), fj.nll, x,
                                     filter_spec=spec, is_leaf=is_leaf),
    }
    profile(steps["zoo"], 10)  # the first trace of a process pays the profiler's start-up
    got = {name: profile(thunk, args.steps) for name, thunk in steps.items()}
    total = {name: sum(v[0] for v in t.values()) for name, t in got.items()}
    print(f"{args.case}, hand-written step, {args.steps} traced calls each: kernel time per step "
          "(µs, profiled) and kernels per step\n")
    print("| kernels | zoo µs | zoo share | zoo count | flowjax µs | flowjax share | flowjax count | zoo / flowjax µs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for k in KINDS + ("all",):
        row = []
        for name in ("zoo", "flowjax"):
            us, n = ((total[name], sum(v[1] for v in got[name].values())) if k == "all" else got[name][k])
            row.append((us, us / total[name], n))
        (zu, zs, zn), (fu, fs, fn) = row
        print(f"| {k} | {zu:.0f} | {zs:.0%} | {zn:.0f} | {fu:.0f} | {fs:.0%} | {fn:.0f} | "
              f"{zu / fu if fu else float('nan'):.2f} |")


if __name__ == "__main__":
    main()
