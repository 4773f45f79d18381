"""Time-scaling experiment of the self-normalizing flows paper (Figure 4).

One self-normalizing layer (FC, or 3x3 convolution on 1 x 32 x D/32 images)
versus its exact twin, on standard-normal inputs of growing dimension
D = 32 ... 4064, batch 128 (`configs/snf_timescaling.toml` gives batch size
and learning rate). A step is the trainer's jitted step: loss, gradients,
Adam update (and the GECO hook). For the convolution two exact baselines are
timed: "exact" = slogdet of the dense D x D operator (the reference's
Toeplitz matrix, what Figure 4 compares against) and "exact_blocks" = our
exact block-LU log-det (`zoo_selfnorm.ops`), which also scales.

    OPENBLAS_NUM_THREADS=1 python scripts/timescaling.py --out runs/timescaling
writes timescaling.csv (median and spread of the step time per D and
series) and timescaling.png (log-log plot of time per step against D).
"""

import argparse
import csv
import os
import statistics
import time
import tomllib
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from zoo.bijections import Chain  # noqa: E402
from zoo.distributions import StandardNormal  # noqa: E402
from zoo.flow import Flow  # noqa: E402
from zoo.train import TrainConfig  # noqa: E402
from zoo.train.loop import make_mesh, make_optimizer, init_opt_state, make_train_step, global_batch  # noqa: E402
from zoo_selfnorm.layers import Conv, Dense, SelfNormConv, SelfNormDense  # noqa: E402
from zoo_selfnorm.model import SelfNormModel  # noqa: E402

DIMS = [32, 64, 128, 256, 512, 1024, 2048, 3072, 4064]
SERIES = {"fc": ["snf", "exact"], "conv": ["snf", "exact", "exact_blocks"]}
PRESET = Path(__file__).resolve().parent.parent / "configs" / "snf_timescaling.toml"


def preset_train() -> dict:
    return tomllib.loads(PRESET.read_text())["train"]


def build(layer: str, series: str, d: int, key):
    """The one-layer model for D = d."""
    if layer == "fc":
        shape = (d,)
        bij = SelfNormDense(shape, key=key) if series == "snf" else Dense(shape, key=key)
    else:
        if d % 32:
            raise ValueError(f"conv sizes are 1 x 32 x D/32; D = {d} is not a multiple of 32")
        shape = (1, 32, d // 32)
        if series == "snf":
            bij = SelfNormConv(shape, key=key)
        else:
            bij = Conv(shape, key=key, logdet_method="blocks" if series == "exact_blocks" else "dense")
    flow = Flow(Chain([bij]), StandardNormal(shape))
    return (SelfNormModel(flow) if series == "snf" else flow), shape


def time_steps(layer, series, d, *, batch_size, lr, repeats, min_seconds=0.0, seed=0):
    """Median, min and max seconds per training step (after compiling)."""
    model, shape = build(layer, series, d, jax.random.key(seed))
    cfg = TrainConfig(lr=lr, batch_size=batch_size)
    optimizer = make_optimizer(cfg, steps_per_epoch=1, total_steps=1)
    mesh = make_mesh(jax.devices()[:1])
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = init_opt_state(optimizer, params)
    step = make_train_step(static, optimizer, mesh)
    rng = np.random.default_rng(seed)
    x = global_batch(mesh, rng.standard_normal((batch_size, *shape)).astype(np.float32))
    mask = global_batch(mesh, np.ones(batch_size, bool))
    key = jax.random.key(seed)
    for i in range(2):  # compile; the second call sees committed (output) shardings
        params, opt_state, metrics = step(params, opt_state, x, mask, key, jnp.int32(i))
        jax.block_until_ready(metrics)
    times, start = [], time.perf_counter()
    i = 0
    while i < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        params, opt_state, metrics = step(params, opt_state, x, mask, key, jnp.int32(i + 2))
        jax.block_until_ready((params, metrics))
        times.append(time.perf_counter() - t0)
        i += 1
    if not np.isfinite(float(metrics["loss"])):
        raise RuntimeError(f"{layer} {series} D={d}: non-finite loss")
    return statistics.median(times), min(times), max(times), len(times)


def _repeats(series, d):
    # exact steps at large D take seconds: fewer repeats there
    return 5 if (series == "exact" and d >= 2048) else 20


def plot(rows, path, title="time per training step vs dimension (batch 128)"):
    """Log-log plot of median step time against D, drawn with pillow."""
    from PIL import Image, ImageDraw

    w, h, ml, mr, mt, mb = 900, 620, 90, 220, 50, 70
    img = Image.new("RGB", (w, h), "white")
    dr = ImageDraw.Draw(img)
    xs = [r["D"] for r in rows]
    ys = [r["median_s"] for r in rows]
    lx0, lx1 = np.log10(min(xs)) - 0.05, np.log10(max(xs)) + 0.05
    ly0, ly1 = np.floor(np.log10(min(ys))), np.ceil(np.log10(max(ys)))

    def px(d, t):
        u = (np.log10(d) - lx0) / (lx1 - lx0)
        v = (np.log10(t) - ly0) / (ly1 - ly0)
        return ml + u * (w - ml - mr), h - mb - v * (h - mt - mb)

    dr.rectangle([ml, mt, w - mr, h - mb], outline="black")
    for e in range(int(ly0), int(ly1) + 1):
        y = px(min(xs), 10.0**e)[1]
        dr.line([ml - 5, y, ml, y], fill="black")
        dr.line([ml, y, w - mr, y], fill=(225, 225, 225))
        dr.text((10, y - 6), f"1e{e} s", fill="black")
    for e in range(int(np.ceil(lx0)), int(np.floor(lx1)) + 1):
        x = px(10.0**e, 10.0**ly0)[0]
        dr.line([x, h - mb, x, h - mb + 5], fill="black")
        dr.text((x - 12, h - mb + 10), f"1e{e}", fill="black")
    for d in xs:
        x = px(d, 10.0**ly0)[0]
        dr.line([x, h - mb, x, h - mb + 3], fill="gray")
    dr.text((ml + (w - ml - mr) // 2 - 60, h - 30), "dimension D (log)", fill="black")
    dr.text((ml, 15), title, fill="black")
    colors = {("fc", "snf"): (31, 119, 180), ("fc", "exact"): (255, 127, 14), ("conv", "snf"): (44, 160, 44),
              ("conv", "exact"): (214, 39, 40), ("conv", "exact_blocks"): (148, 103, 189)}
    for i, ((layer, series), color) in enumerate(colors.items()):
        pts = [px(r["D"], r["median_s"]) for r in rows if r["layer"] == layer and r["series"] == series]
        if not pts:
            continue
        dr.line(pts, fill=color, width=3)
        for x, y in pts:
            dr.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        ly = mt + 20 + 22 * i
        dr.line([w - mr + 15, ly, w - mr + 45, ly], fill=color, width=3)
        dr.text((w - mr + 52, ly - 6), f"{layer} {series}", fill="black")
    img.save(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/timescaling", help="output folder for timescaling.csv / .png")
    p.add_argument("--dims", type=int, nargs="*", default=DIMS, help="dimensions D (multiples of 32)")
    p.add_argument("--layers", nargs="*", default=["fc", "conv"], choices=["fc", "conv"])
    p.add_argument("--repeats", type=int, default=None, help="timed steps per point (default 20; 5 for slow exact)")
    args = p.parse_args(argv)
    train = preset_train()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, batch {train['batch_size']}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")
    for layer in args.layers:
        for d in args.dims:
            for series in SERIES[layer]:
                reps = args.repeats or _repeats(series, d)
                med, lo, hi, n = time_steps(layer, series, d, batch_size=train["batch_size"], lr=train["lr"],
                                            repeats=reps)
                rows.append(dict(layer=layer, series=series, D=d, median_s=med, min_s=lo, max_s=hi, steps=n))
                print(f"{layer:4s} {series:12s} D={d:5d}  median {1e3 * med:9.2f} ms  (min {1e3 * lo:.2f}, "
                      f"max {1e3 * hi:.2f}, {n} steps)", flush=True)
    with open(out / "timescaling.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    plot(rows, out / "timescaling.png")
    for layer in args.layers:
        d = max(args.dims)
        snf = next(r["median_s"] for r in rows if r["layer"] == layer and r["series"] == "snf" and r["D"] == d)
        for series in SERIES[layer][1:]:
            ex = next(r["median_s"] for r in rows if r["layer"] == layer and r["series"] == series and r["D"] == d)
            print(f"{layer} D={d}: SNF / {series} step-time ratio {snf / ex:.3f}")
    print(f"wrote {out / 'timescaling.csv'} and {out / 'timescaling.png'}")
    return rows


if __name__ == "__main__":
    main()
