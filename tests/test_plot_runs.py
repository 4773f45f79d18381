"""scripts/plot_runs.py draws every run's curve from its metrics.jsonl."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "plot_runs.py"


def _run(tmp_path, name, model, nlls):
    run = tmp_path / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": model, "data": "moons", "train": {"batch_size": 100}}))
    records = [{"step": 100 * i, "split": "validation", "nll": v} for i, v in enumerate(nlls)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_curves_png_has_one_line_per_run_and_pairs_share_a_colour(tmp_path):
    a = _run(tmp_path, "snf", "selfnorm_fc", [3000, 1200, 1100, 1050, 1040])
    b = _run(tmp_path, "exact", "exact_fc", [3000, 1150, 1080, 1045, 1035])
    c = _run(tmp_path, "glow", "glow", [3000, 1300, 1250, 1200, 1190])
    out = tmp_path / "curves.png"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b), str(c), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (620, 1000, 3)
    blue, orange = (31, 119, 180), (255, 127, 14)  # the fc pair's colour, then glow's
    count = lambda c: int(np.all(img == c, axis=-1).sum())  # noqa: E731
    assert count(blue) > 300 and count(orange) > 100


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "is not a run directory" in proc.stderr
