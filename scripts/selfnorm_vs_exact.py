"""Self-normalized vs exact training (the SNF paper's Table 1 comparison, not
a speed benchmark: `python -m zoo.bench` times the steps).

selfnorm_fc and exact_fc (preset models and optimiser settings, no warm-up)
trained for the same number of steps on the bundled MNIST subset, evaluated
20 times; the exact test NLL (nats, the standard 8-bit convention) at the
best-validation evaluation, as the reference reports Table 1, per seed
(--seeds) and averaged. Unknown flags go to the selfnorm_fc run (e.g.
--model-cfg.nll-grad-scale 1). The two presets can be trained by two
processes (--presets, same --out); a finished run found in --out is reused.

    OPENBLAS_NUM_THREADS=1 python scripts/selfnorm_vs_exact.py --steps 2000 [--seeds 0 1 2]
"""

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from zoo.train.cli import parse  # noqa: E402

PRESETS = ("selfnorm_fc_mnist", "exact_fc_mnist")


def _compare_run(preset, steps, seed, out, evals, extra):
    """Train one preset for `steps` steps (no warm-up, `evals` evaluations) and
    return {step: {"validation": nll, "test": nll}}. A finished run already in
    `out` is reused, so the presets can be trained by separate processes."""
    import dataclasses

    from zoo.train import train

    extra = list(extra) if preset.startswith("selfnorm") else []  # flags only the SNF model has
    name, model_cfg, _, cfg = parse(["--config", preset, *extra])
    run = f"{name}-{steps}-seed{seed}" + "".join("_" + a.strip("-").replace(".", "-") for a in extra)
    metrics = Path(out) / run / "metrics.jsonl"
    curve = {}
    if metrics.exists():
        curve = _curve(metrics)
    if steps not in curve:
        c = dataclasses.replace(cfg, steps=steps, epochs=None, warmup_epochs=None, warmup_steps=0, seed=seed,
                                eval_every=max(steps // evals, 1), eval_epochs=None, checkpoint_every=0,
                                progress=False, log_interval=max(steps // 10, 1),
                                num_samples=4, out_dir=out, name=run, log_timing=False)
        metrics.unlink(missing_ok=True)
        t0 = time.perf_counter()
        res = train(name, model_cfg, "mnist_bundled", c)
        curve = _curve(Path(res["run_dir"]) / "metrics.jsonl")
        print(f"{run}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return name, curve


def _curve(metrics):
    import json

    curve = {}
    for line in open(metrics):
        r = json.loads(line)
        if r.get("split") in ("validation", "test"):
            curve.setdefault(r["step"], {})[r["split"]] = r["nll"]
    return curve


def _summary(curve):
    best = min((s_ for s_ in curve if s_ > 0), key=lambda s_: curve[s_]["validation"])
    return dict(best_step=best, best=curve[best]["test"])


def train_compare(steps, out, seeds=(0,), presets=PRESETS, evals=20, extra=()):
    """selfnorm_fc vs exact_fc, same preset optimiser and budget, evaluated every
    steps/evals steps; reported as the reference reports Table 1: test NLL of the
    best-validation evaluation (plus the value at step 0), per
    seed (model init and data order) and as a mean over seeds."""
    rows = {}
    for seed in seeds:
        for preset in presets:
            name, curve = _compare_run(preset, steps, seed, out, evals, extra)
            rows[name, seed] = curve
    names = [n for n in ("selfnorm_fc", "exact_fc") if all((n, s_) in rows for s_ in seeds)]
    if len(names) < 2:
        return rows
    print(f"\n| step | selfnorm_fc val / test | exact_fc val / test |  (seed {seeds[0]})\n|---:|---:|---:|")
    a_c, b_c = rows["selfnorm_fc", seeds[0]], rows["exact_fc", seeds[0]]
    for s_ in sorted(a_c):
        a, b = a_c[s_], b_c[s_]
        print(f"| {s_} | {a['validation']:.1f} / {a['test']:.1f} | {b['validation']:.1f} / {b['test']:.1f} |")
    print(f"\ntest NLL (nats) at the best-validation evaluation, {steps} steps"
          f"\n| seed | selfnorm_fc (step) | exact_fc (step) | gap (selfnorm - exact) / exact |\n|---:|---:|---:|---:|")
    gaps, bests = [], {n: [] for n in names}
    for seed in seeds:
        a, b = _summary(rows["selfnorm_fc", seed]), _summary(rows["exact_fc", seed])
        gaps.append((a["best"] - b["best"]) / b["best"])
        bests["selfnorm_fc"].append(a["best"])
        bests["exact_fc"].append(b["best"])
        print(f"| {seed} | {a['best']:.1f} ({a['best_step']}) | {b['best']:.1f} ({b['best_step']}) | {100 * gaps[-1]:+.2f} % |")
    ma, mb = statistics.mean(bests["selfnorm_fc"]), statistics.mean(bests["exact_fc"])
    print(f"| mean | {ma:.1f} | {mb:.1f} | {100 * (ma - mb) / mb:+.2f} % |")
    print(f"step 0 test NLL: {rows['selfnorm_fc', seeds[0]][0]['test']:.1f} (selfnorm_fc), "
          f"{rows['exact_fc', seeds[0]][0]['test']:.1f} (exact_fc)")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, required=True, help="training steps of every run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed and preset")
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS,
                   help="train only these (runs already in --out are reused for the table)")
    p.add_argument("--out", default="runs/selfnorm_vs_exact")
    args, extra = p.parse_known_args(argv)
    train_compare(args.steps, args.out, args.seeds, args.presets, extra=extra)


if __name__ == "__main__":
    main()
