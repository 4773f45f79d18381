"""`zoo.fit`: notebook-style training on arrays, by the trainer's own loop."""

import json
import os
import subprocess
import sys

import equinox as eqx
import jax
import numpy as np
import optax
import pytest

import zoo
from zoo.train.cli import parse
from zoo.train.loop import train

SMALL = ["--model-cfg.num-layers", "2", "--model-cfg.width", "16"]


def _moons():
    return zoo.load_dataset("moons", split="train"), zoo.load_dataset("moons", split="validation")


def _realnvp(seed=0):
    """The model `python -m zoo.train --seed SEED` builds: the first of the four keys of the seed."""
    cfg = zoo.get_model_config("realnvp")
    cfg = type(cfg)(num_layers=2, width=16)
    return cfg.build(input_shape=(2,), key=jax.random.split(jax.random.key(seed), 4)[0])


def _arrays(model):
    return [np.asarray(a) for a in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))]


def test_fit_on_moons_beats_the_untrained_model_and_equals_the_cli_run(tmp_path):
    x, x_val = _moons()
    best, history = zoo.fit(_realnvp(), x, x_val=x_val, key=0, steps=200, batch_size=100, progress=False)
    assert history["step"] == [0, 100, 200] and history["epoch"] == [0.0, 1.0, 2.0]
    assert history["train_nll"][0] is None and all(np.isfinite(history["train_nll"][1:]))
    untrained, trained = history["validation_nll"][0], min(history["validation_nll"])
    assert trained < untrained - 0.2, history
    # the NLL reported is the model's: measured again on the validation arrays
    lp = jax.vmap(best.log_prob)(x_val)
    assert -float(np.mean(lp)) == pytest.approx(history["validation_nll"][history["step"].index(history["best_step"])],
                                                abs=1e-5)
    # the CLI on the same data, seed and steps trains the same parameters
    model, model_cfg, data, cfg = parse(["--model", "realnvp", "--data", "moons", "--steps", "200", "--batch-size",
                                         "100", "--out-dir", str(tmp_path), "--no-progress", *SMALL])
    out = train(model, model_cfg, data, cfg)
    assert history["best_step"] == 200
    for a, b in zip(_arrays(best), _arrays(out["model"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_patience_stops_early_and_returns_the_best_model():
    x, x_val = _moons()
    model = _realnvp()
    # lr 0: the validation NLL never improves on the first evaluation
    best, history = zoo.fit(model, x[:1000], x_val=x_val[:200], key=1, epochs=20, batch_size=100,
                            optimizer=optax.sgd(0.0), patience=2, progress=False)
    assert history["stopped_early"] and history["step"] == [0, 10, 20] and history["best_step"] == 0
    lp_best = float(np.mean(jax.vmap(best.log_prob)(x_val[:200])))
    assert -lp_best == pytest.approx(history["validation_nll"][0], abs=1e-5)


def test_val_fraction_8_bit_arrays_and_bad_arguments():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (500, 4)).astype(np.uint8)
    best, history = zoo.fit(_realnvp_d(4), x, key=jax.random.key(3), epochs=1, batch_size=50, val_fraction=0.2,
                            progress=False)
    # 8-bit data: the discrete NLL, -log p(dequantized x in [0, 1)) + D log 256 (uniform noise: about D log 256 at init)
    assert history["validation_nll"][0] == pytest.approx(4 * np.log(256), rel=0.5)
    assert history["epoch"] == [0.0, 1.0]  # 400 training rows, 8 steps of 50
    # a grain pipeline of the arrays trains the same way (here: the first 400 rows, 8 batches of 50)
    from zoo.data import pipeline

    pipe = pipeline(x[:400], batch_size=50, seed=3)
    _, h = zoo.fit(_realnvp_d(4), pipe, x_val=x[400:], key=3, epochs=1, batch_size=50, progress=False)
    assert h["step"] == [0, 8] and h["validation_nll"][1] < h["validation_nll"][0]
    with pytest.raises(ValueError, match="pass x_val"):
        zoo.fit(_realnvp_d(4), pipe, key=0)
    with pytest.raises(ValueError, match="steps or epochs"):
        zoo.fit(_realnvp_d(4), x, key=0, steps=1, epochs=1)
    with pytest.raises(ValueError, match="uint8 images or float vectors"):
        zoo.fit(_realnvp_d(4), x.astype(np.int64), key=0)
    with pytest.raises(ValueError, match="val_fraction"):
        zoo.fit(_realnvp_d(4), x, key=0, val_fraction=1.5)


def _realnvp_d(d):
    return type(zoo.get_model_config("realnvp"))(num_layers=2, width=16).build(input_shape=(d,), key=jax.random.key(0))


def test_checkpoint_dir_resumes_to_the_uninterrupted_run(tmp_path):
    x, x_val = _moons()
    x, x_val = x[:1000], x_val[:200]
    whole, _ = zoo.fit(_realnvp(), x, x_val=x_val, key=0, epochs=4, batch_size=100, progress=False)
    first, h1 = zoo.fit(_realnvp(), x, x_val=x_val, key=0, epochs=2, batch_size=100, progress=False,
                        checkpoint_dir=tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == ["10", "20"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == "arrays"
    resumed, h2 = zoo.fit(_realnvp(), x, x_val=x_val, key=0, epochs=4, batch_size=100, progress=False,
                          checkpoint_dir=tmp_path / "run")
    assert h2["step"] == [30, 40]  # only the epochs after the checkpoint
    for a, b in zip(_arrays(resumed), _arrays(whole), strict=True):
        np.testing.assert_array_equal(a, b)


FOUR_DEVICES = r"""
import jax, numpy as np, zoo
x = zoo.load_dataset("moons", split="train")[:800]
model = type(zoo.get_model_config("realnvp"))(num_layers=2, width=16).build(input_shape=(2,), key=jax.random.key(0))
best, history = zoo.fit(model, x, key=0, epochs=2, batch_size=40, progress=False)
leaf = jax.tree.leaves(best)[0]
print(len(jax.devices()), len(leaf.sharding.device_set), history["validation_nll"][-1] < history["validation_nll"][0])
"""


def test_fit_uses_every_local_device():
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"}
    r = subprocess.run([sys.executable, "-c", FOUR_DEVICES], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["4", "4", "True"], r.stdout
