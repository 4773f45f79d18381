"""Benchmark of the self-normalizing flows (not a test: timings depend on the machine).

1. One training step of selfnorm_fc_mnist and exact_fc_mnist (the presets'
   models, batch 100, 1 x 28 x 28): the trainer's jitted step (loss,
   gradients, Adam update, GECO hook), median over interleaved repeats.
   (The PyTorch reference takes 106 ms per selfnorm_fc_mnist step on this
   machine class.)
2. The time-scaling experiment at D = 4064 (scripts/timescaling.py): SNF vs
   exact step time for one FC layer and one 3x3 convolution, batch 128.
3. With --train-compare STEPS: selfnorm_fc and exact_fc (preset models and
   optimiser settings, no warm-up) trained for the same number of steps on
   the bundled MNIST subset, evaluated 20 times; the exact test NLL (nats,
   the standard 8-bit convention) at the best-validation evaluation, as the
   reference reports Table 1, per seed (--seeds) and averaged. Unknown flags
   go to the selfnorm_fc run (e.g. --model-cfg.nll-grad-scale 1). The two
   presets can be trained by two processes (--presets, same --out); a
   finished run found in --out is reused.

    OPENBLAS_NUM_THREADS=1 python scripts/bench_selfnorm.py [--repeats 30] [--train-compare 2000 --seeds 0 1 2]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timescaling import time_steps  # noqa: E402

from zoo.train.cli import parse  # noqa: E402
from zoo.train.loop import global_batch, make_mesh, make_optimizer, init_opt_state, make_train_step  # noqa: E402


def _stepper(preset, batch_size, seed=0):
    name, model_cfg, _, cfg = parse(["--config", preset])
    model = model_cfg.build(input_shape=(1, 28, 28), key=jax.random.key(seed))
    optimizer = make_optimizer(cfg, steps_per_epoch=1, total_steps=1)
    mesh = make_mesh(jax.devices()[:1])
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = {"params": params, "opt": init_opt_state(optimizer, params), "i": 0}
    step = make_train_step(static, optimizer, mesh)
    rng = np.random.default_rng(seed)
    x = global_batch(mesh, rng.uniform(size=(batch_size, 1, 28, 28)).astype(np.float32))
    mask = global_batch(mesh, np.ones(batch_size, bool))
    key = jax.random.key(seed)

    def run():
        t0 = time.perf_counter()
        state["params"], state["opt"], m = step(state["params"], state["opt"], x, mask, key, jnp.int32(state["i"]))
        jax.block_until_ready((state["params"], m))
        state["i"] += 1
        return time.perf_counter() - t0

    run(), run()  # compile (twice: committed shardings after the first call)
    return name, run


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
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--skip-timescaling", action="store_true")
    p.add_argument("--skip-steps", action="store_true")
    p.add_argument("--train-compare", type=int, default=0, metavar="STEPS")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="--train-compare: one run per seed and preset")
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS,
                   help="--train-compare: train only these (runs already in --out are reused for the table)")
    p.add_argument("--out", default="/tmp/bench_selfnorm")
    args, extra = p.parse_known_args(argv)
    if args.train_compare:
        train_compare(args.train_compare, args.out, args.seeds, args.presets, extra=extra)
    if args.skip_steps:
        return
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, load average {os.getloadavg()}")
    runners = dict(_stepper(p_, 100) for p_ in ["selfnorm_fc_mnist", "exact_fc_mnist"])
    times = {k: [] for k in runners}
    for _ in range(args.repeats):  # interleaved, so load changes hit both alike
        for k, run in runners.items():
            times[k].append(run())
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\n| model | median ms / step (batch 100) | min | max |\n|---|---:|---:|---:|")
    for k, v in times.items():
        print(f"| {k} | {1e3 * med[k]:.2f} | {1e3 * min(v):.2f} | {1e3 * max(v):.2f} |")
    print(f"selfnorm_fc / exact_fc step-time ratio: {med['selfnorm_fc'] / med['exact_fc']:.3f}")
    if args.skip_timescaling:
        return
    print("\n| layer | D | SNF median ms | exact median ms | ratio |\n|---|---:|---:|---:|---:|")
    for layer, baselines in [("fc", ["exact"]), ("conv", ["exact", "exact_blocks"])]:
        snf = time_steps(layer, "snf", 4064, batch_size=128, lr=1e-4, repeats=20)[0]
        for b in baselines:
            ex = time_steps(layer, b, 4064, batch_size=128, lr=1e-4, repeats=5)[0]
            print(f"| {layer} ({b}) | 4064 | {1e3 * snf:.1f} | {1e3 * ex:.1f} | {snf / ex:.3f} |", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
