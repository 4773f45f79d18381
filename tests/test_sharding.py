"""The data-parallel train step: 4 fake CPU devices give the same losses and
parameters as 1 device. Run in float64: in float32 the different reduction
order (per-device partial sums) differs by ~1e-7, which Adam's normalised
first steps amplify to ~1e-4 within a few updates."""

import json
import os
import subprocess
import sys

import numpy as np

SCRIPT = r"""
import dataclasses, json, sys
import equinox as eqx, jax, numpy as np
import zoo
from zoo.train import TrainConfig, train
assert len(jax.devices()) == int(sys.argv[2]), jax.devices()
cfg = TrainConfig(steps=12, batch_size=64, eval_every=0, log_interval=1, out_dir=sys.argv[1], name="run",
                  progress=False, num_samples=4)
model_cfg = dataclasses.replace(zoo.get_model_config("realnvp"), num_layers=2, width=32)
out = train("realnvp", model_cfg, "moons", cfg)
leaves = [np.asarray(a) for a in jax.tree.leaves(eqx.filter(out["model"], eqx.is_inexact_array))]
np.savez(sys.argv[1] + "/params.npz", *leaves)
print(json.dumps(out["history"]["final_eval"]["test"]))
"""


def _run(tmp_path, devices):
    env = {**os.environ, "WANDB_MODE": "disabled", "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"}
    out = tmp_path / f"d{devices}"
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(devices)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    losses = [json.loads(l)["loss"] for l in (out / "run" / "metrics.jsonl").read_text().splitlines()
              if json.loads(l)["split"] == "train_batch"]
    params = np.load(out / "params.npz")
    return losses, [params[k] for k in sorted(params.files, key=lambda k: int(k.split("_")[1]))], r.stdout


def test_four_fake_devices_match_one_device(tmp_path):
    losses1, params1, _ = _run(tmp_path, 1)
    losses4, params4, out4 = _run(tmp_path, 4)
    assert "on 4 device(s)" in out4
    assert len(losses1) == 12
    np.testing.assert_allclose(losses4, losses1, rtol=1e-10)
    assert params1[0].dtype == np.float64
    for a, b in zip(params4, params1):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    assert sum(float(np.abs(a).sum()) for a in params1) > 0


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_form_one_data_parallel_run(tmp_path):
    """Multi-host: two CPU processes joined by jax.distributed (gloo), each
    feeding its own shard. The first step's loss is the mean NLL of the
    initial model over the union of both processes' first batches."""
    env = {**os.environ, "WANDB_MODE": "disabled", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1"}
    port = _free_port()
    procs = [
        subprocess.Popen([sys.executable, "-m", "zoo.train", "--model", "realnvp", "--data", "moons", "--steps", "12",
                          "--batch-size", "64", "--eval-every", "0", "--log-interval", "1", "--no-progress",
                          "--num-samples", "4", "--model-cfg.num-layers", "2", "--model-cfg.width", "32",
                          "--out-dir", str(tmp_path), "--name", "run", "--distributed",
                          "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                          "--process-id", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "on 2 device(s)" in outs[0][0] and "on 2 device(s)" in outs[1][0]
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train_batch"]
    assert len(losses) == 12  # written once, by process 0

    import dataclasses

    import jax

    import zoo
    from zoo.checkpoint import load_with_meta
    from zoo.data import pipeline

    halves = [next(iter(pipeline("moons", split="train", batch_size=64, seed=0, process_index=i, process_count=2)))
              for i in range(2)]
    assert not set(halves[0]["index"]) & set(halves[1]["index"])
    batch = np.concatenate([h["x"] for h in halves])
    cfg = dataclasses.replace(zoo.get_model_config("realnvp"), num_layers=2, width=32)
    model = cfg.build(input_shape=(2,), key=jax.random.split(jax.random.key(0), 4)[0])
    model = zoo.data_init(model, batch)
    expected = -float(np.mean(jax.vmap(model.log_prob)(batch)))
    np.testing.assert_allclose(losses[0], expected, rtol=1e-5)
    trained, meta = load_with_meta(tmp_path / "run" / "checkpoints" / "12")
    assert meta["step"] == 12
    assert float(np.mean(-jax.vmap(trained.log_prob)(batch))) < expected
