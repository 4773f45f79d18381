"""Every preset in configs/ parses, builds its model at full size, and trains
two steps on tiny fake data of its dataset's shape (no download)."""

import dataclasses
from typing import ClassVar

import numpy as np
import pytest

import zoo
from zoo.train import train
from zoo.train.cli import list_presets, parse

_FAKE: dict[str, type] = {}


def _fake_dataset(name: str) -> str:
    """An in-process dataset with `name`'s shape, dtype and defaults, 8 random examples per split."""
    real = zoo.get_dataset(name)
    fake_name = f"fake_{name}"
    if fake_name not in _FAKE:

        @zoo.register_dataset(fake_name)
        class Fake(zoo.DatasetSource):
            description = f"random stand-in for {name}"
            shape: ClassVar = tuple(real.shape)
            dtype: ClassVar = real.dtype
            splits: ClassVar = tuple(s for s in ("train", "validation", "test") if s in real.splits)
            binary: ClassVar = getattr(real, "binary", False)
            binarize: ClassVar = getattr(real, "binarize", None)

            def load(self, split, *, data_dir):
                rng = np.random.default_rng(abs(hash(split)) % 2**32)
                if np.dtype(self.dtype) == np.uint8:
                    return rng.integers(0, 2 if self.binary else 256, (8, *self.shape), dtype=np.uint8)
                return rng.standard_normal((8, *self.shape)).astype(self.dtype)

        _FAKE[fake_name] = Fake
    return fake_name


def test_there_are_presets():
    assert "quickstart" in list_presets()


@pytest.mark.parametrize("preset", list_presets())
def test_preset_builds_and_trains_two_steps(preset, tmp_path):
    model, model_cfg, data, cfg = parse(["--config", preset])
    fake = _fake_dataset(data)
    cfg = dataclasses.replace(
        cfg, steps=2, epochs=None, batch_size=2, eval_every=0, eval_epochs=None, eval_batch_size=4,
        max_eval_ex=4, num_samples=2, out_dir=str(tmp_path), progress=False, log_interval=1,
        warmup_epochs=None if cfg.warmup_epochs is None else 0.5, eval_train=False,
    )
    out = train(model, model_cfg, fake, cfg)
    final = out["history"]["final_eval"]
    assert all(np.isfinite(r["nll"]) for r in final.values()), final
