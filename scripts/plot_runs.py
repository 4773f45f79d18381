#!/usr/bin/env python
"""Validation curves of training runs, from their metrics.jsonl, as one PNG.

    python scripts/plot_runs.py runs/selfnorm_fc-mnist runs/exact_fc-mnist --out curves.png
    python scripts/plot_runs.py runs/* --split test --x step --out test.png

One line per run: NLL (nats) against epoch (or step). A self-normalizing
run and its exact twin (selfnorm_X / exact_X) share a colour, the exact one
dashed. The y range leaves out the first epochs' large values (--ymax to set it).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def read_curve(run: Path, split: str, x: str):
    """(xs, nlls, label, family) of one run: `split` evaluations after step 0."""
    config = json.loads((run / "config.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    points = sorted({r["step"]: r["nll"] for r in records if r.get("split") == split and r["step"] > 0}.items())
    if not points:
        raise SystemExit(f"plot_runs.py: error: {run}/metrics.jsonl has no {split} evaluations; train longer or pick another --split")
    steps, nlls = map(np.asarray, zip(*points))
    if x == "epoch":
        import zoo

        per_epoch = len(zoo.load_dataset(config["data"], split="train", data_dir=config["train"].get("data_dir"))) \
            // config["train"]["batch_size"]
        steps = steps / per_epoch
    model = config["model"]
    family = model.removeprefix("selfnorm_").removeprefix("exact_")
    return steps, nlls, run.name, family, model.startswith("exact_")


def _ticks(lo, hi, n=6):
    """Round tick values (1, 2 or 5 times a power of ten apart) inside [lo, hi]."""
    raw = (hi - lo) / n
    step = min((m * 10 ** np.floor(np.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    return np.arange(np.ceil(lo / step) * step, hi + 1e-9 * step, step)


def _line(dr, pts, color, dashed):
    if not dashed:
        dr.line(pts, fill=color, width=2)
        return
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):  # dashes of ~8 px along each segment
        n = max(1, int(np.hypot(x1 - x0, y1 - y0) // 8))
        for i in range(0, n, 2):
            a, b = i / n, min(1.0, (i + 1) / n)
            dr.line([x0 + a * (x1 - x0), y0 + a * (y1 - y0), x0 + b * (x1 - x0), y0 + b * (y1 - y0)], fill=color, width=2)


def plot(curves, path, *, xlabel, ylabel, title, ymax=None):
    w, h, ml, mr, mt, mb = 1000, 620, 80, 260, 45, 60
    img = Image.new("RGB", (w, h), "white")
    dr = ImageDraw.Draw(img)
    x1 = max(c[0].max() for c in curves)
    y0 = min(c[1].min() for c in curves)
    y1 = ymax if ymax is not None else max(np.interp(0.1 * x1, c[0], c[1]) for c in curves)
    y0, y1 = y0 - 0.03 * (y1 - y0), y1

    def px(x, y):
        return ml + x / x1 * (w - ml - mr), mt + (y1 - min(y, y1)) / (y1 - y0) * (h - mt - mb)

    dr.rectangle([ml, mt, w - mr, h - mb], outline="black")
    for t in _ticks(y0, y1):
        y = px(0, t)[1]
        dr.line([ml, y, w - mr, y], fill=(230, 230, 230))
        dr.text((8, y - 6), f"{t:g}", fill="black")
    for t in _ticks(0, x1):
        x = px(t, y0)[0]
        dr.line([x, h - mb, x, h - mb + 5], fill="black")
        dr.text((x - 10, h - mb + 10), f"{t:g}", fill="black")
    dr.text((ml + (w - ml - mr) // 2 - 30, h - 28), xlabel, fill="black")
    dr.text((ml, 12), f"{title}   ({ylabel})", fill="black")
    families = list(dict.fromkeys(c[3] for c in curves))
    for i, (xs, ys, label, family, dashed) in enumerate(curves):
        color = PALETTE[families.index(family) % len(PALETTE)]
        _line(dr, [px(a, b) for a, b in zip(xs, ys)], color, dashed)
        ly = mt + 15 + 22 * i
        _line(dr, [(w - mr + 15, ly), (w - mr + 50, ly)], color, dashed)
        dr.text((w - mr + 58, ly - 6), f"{label}  min {ys.min():.1f}", fill="black")
    img.save(path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="plot_runs.py", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories (with metrics.jsonl and config.json)")
    p.add_argument("--out", default="curves.png")
    p.add_argument("--split", default="validation", choices=["validation", "test", "train"])
    p.add_argument("--x", default="epoch", choices=["epoch", "step"])
    p.add_argument("--ymax", type=float, default=None)
    p.add_argument("--title", default=None)
    a = p.parse_args(argv)
    for run in a.runs:
        if not (run / "metrics.jsonl").is_file() or not (run / "config.json").is_file():
            p.error(f"{run} is not a run directory (no metrics.jsonl and config.json); pass runs/NAME folders")
    curves = [read_curve(run, a.split, a.x) for run in a.runs]
    plot(curves, a.out, xlabel=a.x, ylabel="NLL, nats", title=a.title or f"{a.split} NLL", ymax=a.ymax)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
