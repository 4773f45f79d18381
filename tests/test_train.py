"""The shared trainer's CLI and loop on a toy dataset."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from zoo.train.cli import parse


def _run(*args, env=None, timeout=600):
    full_env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "zoo.train", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )


def test_unknown_model_exits_2_with_choices():
    r = _run("--model", "no_such_flow")
    assert r.returncode == 2
    assert "no_such_flow" in r.stderr and "realnvp" in r.stderr and "maf" in r.stderr


def test_unknown_model_field_exits_2():
    with pytest.raises(SystemExit) as e:
        parse(["--model", "realnvp", "--model-cfg.no-such-field", "3"])
    assert e.value.code == 2


def test_parse_model_fields_and_training_flags():
    model, model_cfg, data, cfg = parse(
        ["--model", "nsf", "--data", "circles", "--steps", "7", "--lr", "0.01", "--model-cfg.num-bins", "5"]
    )
    assert (model, data, cfg.steps, cfg.lr) == ("nsf", "circles", 7, 0.01)
    assert model_cfg.num_bins == 5


def test_help_lists_models_datasets_and_model_fields():
    r = _run("--model", "maf", "--help")
    assert r.returncode == 0
    for word in ("realnvp", "nsf", "moons", "--model-cfg", "--steps", "--batch-size"):
        assert word in r.stdout, word


def test_short_run_improves_nll_and_writes_outputs(tmp_path):
    from zoo.train.loop import train

    model, model_cfg, data, cfg = parse(
        ["--model", "realnvp", "--data", "moons", "--steps", "400", "--eval-every", "0",
         "--out-dir", str(tmp_path), "--no-progress"]
    )
    out = train(model, model_cfg, data, cfg)
    first, final = out["history"]["first_eval"]["test"]["nll"], out["history"]["final_eval"]["test"]["nll"]
    assert final < first - 0.5, (first, final)
    run = tmp_path / "realnvp-moons"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} >= {"validation", "test", "train_batch", "summary"}
    assert json.loads((run / "config.json").read_text())["model"] == "realnvp"
    img = np.asarray(Image.open(run / "samples.png"))
    assert img.ndim == 2 and img.min() < 128  # some dark (dense) pixels


def test_missing_dataset_exits_nonzero_with_download_command(tmp_path):
    r = _run("--model", "realnvp", "--data", "mnist", "--data-dir", str(tmp_path), "--steps", "1")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "mnist" in r.stderr and "scripts/download_data.py mnist --data-dir" in r.stderr
