"""Train the small default Glow on the bundled MNIST subset and write its sample grid.

    OPENBLAS_NUM_THREADS=1 python scripts/glow_mnist_run.py [--steps 1000] [--out runs]

Uses the shared trainer (`zoo.train.train`) with `GlowConfig()` defaults
(2 levels x 8 steps, width 64, conv1x1 mixing); prints the test bits/dim at
every evaluation so the first and last can be compared, and writes
samples.png (64 samples at temperature 1) and samples_t0.7.png.
"""

import argparse
import json
from pathlib import Path

import jax
import numpy as np

import zoo
from zoo.images import save_grid
from zoo.train import TrainConfig, train
from zoo_glow import GlowConfig


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--out", default="runs")
    args = parser.parse_args()
    cfg = TrainConfig(steps=args.steps, eval_every=args.eval_every, batch_size=64, lr=1e-3, warmup_steps=100,
                      out_dir=args.out, name="glow-mnist_bundled-small", progress=False, log_interval=100)
    result = train("glow", GlowConfig(), "mnist_bundled", cfg)
    run_dir = Path(result["run_dir"])
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if any("bpd" in k for k in e)]
    for e in evals:
        print({k: v for k, v in e.items() if "bpd" in k or k == "step"})
    model = result["model"]
    keys = jax.random.split(jax.random.key(7), 64)
    cold = jax.jit(jax.vmap(lambda k: model.sample(k, temperature=0.7)))(keys)
    print("wrote", save_grid(np.clip(np.asarray(cold), 0.0, 1.0), run_dir / "samples_t0.7.png"))


if __name__ == "__main__":
    main()
