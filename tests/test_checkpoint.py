"""Checkpoints: resume, fallback past corrupt steps, NaN steps never saved,
save/load_pretrained round trips, and the sampling CLI."""

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import zoo
from zoo.checkpoint import CheckpointError, Checkpoints, CorruptCheckpointWarning, load_with_meta
from zoo.sample import main as sample_main
from zoo.train import TrainConfig, train
from zoo.train.cli import main as train_main
from zoo.train.loop import TrainingDiverged

ENV = {**os.environ, "WANDB_MODE": "disabled", "OPENBLAS_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}


def _leaves(model):
    return [np.asarray(a) for a in jax.tree.leaves(eqx.filter(model, eqx.is_array))]


def _small_run(tmp_path, **overrides):
    cfg = TrainConfig(steps=40, batch_size=32, eval_every=20, out_dir=str(tmp_path), name="run", progress=False,
                      num_samples=4, **overrides)
    model_cfg = dataclasses.replace(zoo.get_model_config("realnvp"), num_layers=2, width=16)
    return model_cfg, cfg


# orbax's async reader reports the truncated file from a closed event loop too
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_checkpoints_restore_and_fall_back_past_corrupt_steps(tmp_path):
    model_cfg, cfg = _small_run(tmp_path, checkpoint_every=10)
    out = train("realnvp", model_cfg, "moons", cfg)
    ckpts = Checkpoints(out["checkpoints"], create=False, asynchronous=False)
    steps = ckpts.steps()
    assert steps[-1] == 40 and 20 in steps  # latest N=3 plus the best-validation step
    final = _leaves(out["model"])
    model, meta = load_with_meta(out["checkpoints"] / "40")
    assert meta["model"] == "realnvp" and meta["step"] == 40 and meta["input_shape"] == [2]
    for a, b in zip(_leaves(model), final):
        np.testing.assert_array_equal(a, b)

    # A truncated array file in the newest step and an empty newer step folder:
    # both are reported, and the newest good step (30) is used.
    for f in (out["checkpoints"] / "40" / "model").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "manifest" in f.name:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    (out["checkpoints"] / "50").mkdir()
    resumed_cfg = dataclasses.replace(cfg, steps=50, resume=True)
    with pytest.warns(CorruptCheckpointWarning) as record:
        out2 = train("realnvp", model_cfg, "moons", resumed_cfg)
    text = " ".join(str(w.message) for w in record)
    assert "step 50" in text and "step 40" in text
    assert out2["run_dir"] == out["run_dir"]
    # both are moved aside, not deleted, and 40 and 50 are written anew from step 30
    assert (out["checkpoints"] / "40.corrupt").is_dir() and (out["checkpoints"] / "50.corrupt").is_dir()
    assert Checkpoints(out["checkpoints"], create=False, asynchronous=False).steps()[-1] == 50
    assert load_with_meta(out["checkpoints"] / "50")[1]["step"] == 50


def test_fresh_run_never_overwrites_a_run_with_checkpoints(tmp_path):
    model_cfg, cfg = _small_run(tmp_path)
    cfg = dataclasses.replace(cfg, steps=4, eval_every=0)
    first = train("realnvp", model_cfg, "moons", cfg)
    second = train("realnvp", model_cfg, "moons", cfg)
    assert first["run_dir"].name == "run" and second["run_dir"].name == "run-2"
    assert Checkpoints(first["checkpoints"], create=False, asynchronous=False).steps() == [4]


@dataclasses.dataclass(frozen=True)
class NanAfter5:
    """A RealNVP whose loss turns NaN from training step 5 on."""

    example_input_shape: ClassVar = (2,)

    def build(self, *, input_shape, key):
        inner = zoo.create_model("realnvp", key=key, input_shape=input_shape, num_layers=1, width=8)
        return _NanFlow(inner)


class _NanFlow(eqx.Module):
    flow: zoo.Flow

    def log_prob(self, x):
        return self.flow.log_prob(x)

    def sample(self, key, *, temperature=1.0):
        return self.flow.sample(key, temperature=temperature)

    def loss(self, x, *, key, step):
        loss, aux = self.flow.loss(x, key=key)
        return jnp.where(step >= 5, jnp.nan, loss), aux


def test_nonfinite_steps_are_skipped_and_never_checkpointed(tmp_path):
    # registered here, not at import, so the all-models conformance test never collects it
    if "test_nan_after_5" not in zoo.list_models():
        zoo.register_model("test_nan_after_5")(NanAfter5)
    cfg = TrainConfig(steps=30, batch_size=16, eval_every=0, checkpoint_every=2, max_nonfinite=3,
                      out_dir=str(tmp_path), name="nan", progress=False, log_interval=1)
    with pytest.raises(TrainingDiverged, match="3 consecutive"):
        train("test_nan_after_5", NanAfter5(), "moons", cfg)
    ckpts = Checkpoints(tmp_path / "nan" / "checkpoints", create=False, asynchronous=False)
    assert ckpts.steps() == [2, 4]
    model, _ = load_with_meta(ckpts.step_dir(4))
    assert all(np.all(np.isfinite(a)) for a in _leaves(model))
    records = [json.loads(l) for l in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    nonfinite = {r["step"]: r["nonfinite"] for r in records if r["split"] == "train_batch"}
    assert nonfinite[4] == 0 and nonfinite[5] == 1 and nonfinite[6] == 2


def _train_cmd(out, name, steps, *extra):
    return [sys.executable, "-m", "zoo.train", "--model", "realnvp", "--data", "moons", "--steps", str(steps),
            "--checkpoint-every", "50", "--eval-every", "0", "--out-dir", str(out), "--name", name, "--no-progress",
            "--model-cfg.width", "64", "--batch-size", "64", "--num-samples", "4", *extra]


def _final_params(run_dir, step):
    model, _ = load_with_meta(run_dir / "checkpoints" / str(step))
    return _leaves(model)


def test_killed_run_resumes_to_the_same_parameters(tmp_path, capsys):
    steps = 600  # killed at the commit of step 100: 500 steps (~3 s) to spare
    proc = subprocess.Popen(_train_cmd(tmp_path, "killed", steps), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while not (ckpt / "100" / "commit_success.txt").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (ckpt / str(steps)).exists(), "the run finished before it was killed"

    # the resumed and the uninterrupted run are expected to succeed: their main() runs in this process
    capsys.readouterr()
    train_main(_train_cmd(tmp_path, "killed", steps, "--resume")[3:])  # a failure raises SystemExit
    out, err = capsys.readouterr()
    assert "resuming" in out
    assert f"left locked by pid {proc.pid}" in err  # the killed run's lock: reported, taken over
    train_main(_train_cmd(tmp_path, "whole", steps)[3:])
    for a, b in zip(_final_params(tmp_path / "killed", steps), _final_params(tmp_path / "whole", steps)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_save_and_load_pretrained_round_trip_with_archive_checksum(tmp_path):
    key = jax.random.key(3)
    model = zoo.create_model("nsf", key=key, input_shape=(3,), num_layers=2)
    cfg = dataclasses.replace(zoo.get_model_config("nsf"), num_layers=2)
    path = zoo.save_pretrained(model, tmp_path / "nsf", config=cfg, input_shape=(3,))
    loaded = zoo.load_pretrained(path)
    x = jnp.array([0.3, -1.2, 0.5])
    np.testing.assert_allclose(loaded.log_prob(x), model.log_prob(x), rtol=1e-6)
    assert not list(path.rglob("*.pkl")) and not list(path.rglob("*.pickle"))

    archive = tmp_path / "nsf.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(path, arcname="nsf")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    again = zoo.load_pretrained(archive, sha256=digest)
    np.testing.assert_allclose(again.log_prob(x), model.log_prob(x), rtol=1e-6)
    with pytest.raises(CheckpointError, match="sha256"):
        zoo.load_pretrained(archive, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        zoo.load_pretrained(tmp_path / "missing")


def test_sample_cli_writes_png_and_npy(tmp_path):
    model_cfg, cfg = _small_run(tmp_path)
    out = train("realnvp", model_cfg, "moons", dataclasses.replace(cfg, steps=5, eval_every=0))
    png, npy = tmp_path / "grid.png", tmp_path / "s.npy"
    # in-process (a failure raises SystemExit); the failure below runs as a command, for its exit status
    sample_main(["--checkpoint", str(out["checkpoints"]), "--num", "300", "--temperature", "0.5", "--out", str(png),
                 "--npy", str(npy)])
    xs = np.load(npy)
    assert xs.shape == (300, 2) and np.all(np.isfinite(xs))
    assert Image.open(png).size[0] > 50
    r = subprocess.run([sys.executable, "-m", "zoo.sample", "--checkpoint", str(tmp_path / "nope")],
                       env=ENV, capture_output=True, text=True)
    assert r.returncode == 1 and "no checkpoint" in r.stderr and "Traceback" not in r.stderr


PRETRAINED = "pretrained/glow_mnist_bundled.tar.gz"
PRETRAINED_SHA256 = "e80eaef1a85573f07528be13a1abe7cb0ad3ccfd9989eeec4b0e73a5fa750a2d"


def test_shipped_pretrained_glow_loads_and_matches_its_recorded_test_bpd():
    from pathlib import Path

    from zoo.data import pipeline

    path = Path(__file__).resolve().parents[1] / PRETRAINED
    model, meta = load_with_meta(path, sha256=PRETRAINED_SHA256)
    assert meta["model"] == "glow" and meta["data"] == "mnist_bundled"
    batch = next(iter(pipeline("mnist_bundled", split="test", batch_size=500, seed=1, shuffle=False)))
    bpd = float(np.mean(jax.jit(jax.vmap(model.bits_per_dim))(jnp.asarray(batch["x"]))))
    # recorded at the end of training with other dequantization noise
    assert abs(bpd - meta["metrics"]["test"]["bpd"]) < 0.05, (bpd, meta["metrics"]["test"])
    xs = jax.jit(jax.vmap(lambda k: model.sample(k, temperature=0.7)))(jax.random.split(jax.random.key(0), 16))
    assert xs.shape == (16, 1, 28, 28) and float(jnp.mean(jnp.isfinite(xs))) > 0.9


def test_sample_cli_exact_inverse_option(tmp_path):
    """Self-normalizing models sample through R by default and through the
    true inverse with --exact-inverse; models without the option refuse it."""
    cfg = zoo.get_model_config("selfnorm_fc")
    model = cfg.build(input_shape=(1, 2, 3), key=jax.random.key(0))
    # move every W off its init so R is no longer W^-1 and the two samplers differ
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(0)
    leaves = [a + 0.1 * rng.standard_normal(a.shape).astype(a.dtype) for a in leaves]
    model = eqx.combine(jax.tree.unflatten(treedef, leaves), static)
    path = zoo.save_pretrained(model, tmp_path / "snf", config=cfg, input_shape=(1, 2, 3))
    outs = {}
    for flag in ([], ["--exact-inverse"]):  # in-process; the refusal below runs as a command
        npy = tmp_path / f"s{len(flag)}.npy"
        sample_main(["--checkpoint", str(path), "--num", "8", "--out", str(tmp_path / "g.png"), "--npy", str(npy), *flag])
        outs[bool(flag)] = np.load(npy)
    exact = jax.vmap(lambda k: model.sample(k, exact=True))(jax.random.split(jax.random.key(0), 8))
    np.testing.assert_allclose(outs[True], np.asarray(exact), rtol=1e-4, atol=1e-5)
    assert not np.allclose(outs[True], outs[False], atol=1e-3)

    nsf = zoo.create_model("nsf", key=jax.random.key(1), input_shape=(2,), num_layers=1)
    path = zoo.save_pretrained(nsf, tmp_path / "nsf", config=dataclasses.replace(zoo.get_model_config("nsf"), num_layers=1),
                               input_shape=(2,))
    r = subprocess.run([sys.executable, "-m", "zoo.sample", "--checkpoint", str(path), "--exact-inverse",
                        "--out", str(tmp_path / "n.png")], env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and "exact" in r.stderr
