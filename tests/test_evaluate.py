"""`zoo.evaluate`: hand-computed statistics, and agreement with what the trainer logged."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "disabled", "OPENBLAS_NUM_THREADS": "1", "ZOO_MALLOC_TUNING": "0"}


def _pipe(batches, n):
    class Pipe(list):
        batch_size = len(batches[0]["mask"])
        num_examples = n

    return Pipe(batches)


def test_evaluate_reports_the_standard_discrete_nll_and_its_standard_error():
    """8-bit images: nll = -log p(x in [0,1)) + D log 256 = bpd * D log 2; s.e. = sd / sqrt(n)
    over the real examples only (the padded one is masked out); other data: nll = -log p(x)."""
    import jax
    import jax.numpy as jnp

    from zoo.evaluate import evaluate
    from zoo.train.loop import make_mesh

    lp = np.array([-1999.0, -2001.0, -2003.0, 12345.0])  # the last is padding
    mask = np.array([True, True, True, False])
    step = lambda params, x, m, key: (jnp.where(m, jnp.asarray(lp), 0.0), m)  # noqa: E731
    pipe = _pipe([{"x": np.zeros((4, 1, 28, 28), np.float32), "mask": mask}], 3)
    mesh = make_mesh(jax.devices()[:1])
    img = evaluate(step, None, pipe, mesh, key=jax.random.key(0), num_dims=784, images=True)
    assert img["nll"] == pytest.approx(2001.0 + 784 * 8 * math.log(2.0), rel=1e-12)  # 6348.5 nats
    assert img["nll_se"] == pytest.approx(2.0 / math.sqrt(3), rel=1e-12)  # sd of (1999, 2001, 2003) is 2
    assert img["examples"] == 3
    assert img["bpd"] == pytest.approx(img["nll"] / (784 * math.log(2.0)), rel=1e-12)
    assert img["bpd_se"] == pytest.approx(img["nll_se"] / (784 * math.log(2.0)), rel=1e-12)
    other = evaluate(step, None, pipe, mesh, key=jax.random.key(0), num_dims=784, images=False)
    assert other["nll"] == pytest.approx(2001.0) and "bpd" not in other
    first_two = evaluate(step, None, pipe, mesh, key=jax.random.key(0), num_dims=784, images=False, max_examples=2)
    assert first_two["nll"] == pytest.approx(2000.0) and first_two["examples"] == 2


def _train(tmp_path, *args):
    """`zoo.train`'s main in this process (what is tested is the evaluate CLI, run as a command)."""
    from zoo.train.cli import main

    main(["--out-dir", str(tmp_path), "--no-progress", "--name", "r", *args])  # a failure raises SystemExit
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    return tmp_path / "r", records


def _evaluate(*args):
    proc = subprocess.run([sys.executable, "-m", "zoo.evaluate", "--json", *args], env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args, rel", [
    # exact flow on vectors: the same numbers, summed in another order
    (["--model", "realnvp", "--data", "moons", "--steps", "30", "--eval-every", "15"], 1e-6),
    # importance-sampled VAE on dynamically binarised bundled MNIST: the same keys, the same S samples
    (["--model", "planar_vae", "--data", "mnist_bundled", "--steps", "20", "--eval-every", "10", "--batch-size", "50",
      "--model-cfg.latent-dim", "4", "--model-cfg.hidden", "16", "--model-cfg.flow-length", "2",
      "--model-cfg.num-importance", "8", "--model-cfg.binarize-input", "--max-eval-ex", "100"], 1e-5),
])
def test_evaluate_reproduces_what_the_trainer_logged(tmp_path, args, rel):
    run, records = _train(tmp_path, *args)
    best = min((r for r in records if r["split"] == "validation" and r["step"] > 0), key=lambda r: r["nll"])
    logged = next(r for r in records if r["split"] == "test" and r["step"] == best["step"])
    extra = ["--max-examples", "100"] if "--max-eval-ex" in args else []
    got = _evaluate("--checkpoint", str(run / "checkpoints"), *extra)  # the best-validation step
    assert got["split"] == "test" and got["examples"] == logged["examples"]
    assert got["nll"] == pytest.approx(logged["nll"], rel=rel)
    assert got["nll_se"] > 0 and math.isfinite(got["nll_se"])


def test_evaluate_errors_are_one_line(tmp_path):
    run, _ = _train(tmp_path, "--model", "realnvp", "--data", "moons", "--steps", "5")
    for args, code, text in [
        (["--checkpoint", str(run / "checkpoints"), "--num-importance", "5"], 2, "not a latent-variable model"),
        (["--checkpoint", str(run / "checkpoints"), "--data", "mnist_bundled"], 2, "pass a --data of that shape"),
        (["--checkpoint", str(tmp_path / "nothing")], 1, "nothing"),
    ]:
        proc = subprocess.run([sys.executable, "-m", "zoo.evaluate", *args], env=ENV, capture_output=True, text=True)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == code, proc.stderr
        assert len(lines) == 1 and lines[0].startswith("zoo.evaluate: error: ") and text in lines[0], lines
