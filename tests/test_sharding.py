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
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
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
