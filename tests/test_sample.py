"""python -m zoo.sample: the checkpoint's own temperature, counted warnings, where the PNG goes."""

import dataclasses
import math
from pathlib import Path
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import zoo
from zoo import registry
from zoo.sample import checkpoint_temperature, default_out, main, sample, sample_problems

ROOT = Path(__file__).resolve().parents[1]


class Wild(eqx.Module):
    """Images of 1 x 2 x 2 around 0.5; a sample diverges (NaN) when its first noise value
    exceeds 1.5 and overflows (x 1e6) when its last does, so both rise with temperature."""

    scale: jax.Array

    def sample(self, key, *, temperature=1.0):
        z = temperature * jax.random.normal(key, (1, 2, 2))
        x = 0.5 + 0.1 * self.scale * z
        x = jnp.where(z[0, 0, 0] > 1.5, jnp.nan, x)
        return jnp.where(z[0, 1, 1] > 1.5, 1e6 * x, x)

    def log_prob(self, x):
        return -jnp.sum(x**2)

    def loss(self, x, *, key):
        return -self.log_prob(x), {}


@dataclasses.dataclass(frozen=True)
class WildConfig:
    example_input_shape: ClassVar = (1, 2, 2)

    def build(self, *, input_shape, key):
        return Wild(jnp.ones(()))


@pytest.fixture
def wild_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_in_process", {kind: {} for kind in registry.GROUPS})
    registry.refresh()
    zoo.register_model("inproc_wild")(WildConfig)
    model = WildConfig().build(input_shape=(1, 2, 2), key=None)
    # what the trainer stores: its settings, --sample-temperature among them
    path = zoo.save_pretrained(model, tmp_path / "wild", config=WildConfig(), input_shape=(1, 2, 2),
                               extra={"train": {"sample_temperature": 0.8}})
    monkeypatch.chdir(tmp_path)
    yield model, path
    registry.refresh()


def _counts(xs):
    flat = xs.reshape(len(xs), -1)
    finite = np.isfinite(flat).all(axis=1)
    return int((~finite).sum()), int((finite & ((flat < -1) | (flat > 2)).any(axis=1)).sum())


def test_sample_uses_the_checkpoint_temperature_and_counts_bad_samples(wild_checkpoint, capsys):
    model, path = wild_checkpoint
    for flags, temperature in (([], 0.8), (["--temperature", "1.2"], 1.2)):
        main(["--checkpoint", str(path), "--num", "400", "--npy", "raw.npy", *flags])
        out, err = capsys.readouterr()
        xs = np.load("raw.npy")
        expected = sample(model, jax.random.key(0), num=400, temperature=temperature)
        np.testing.assert_array_equal(xs, expected)  # drawn at that temperature, saved unclipped
        nan, wild = _counts(expected)
        assert 0 < nan < 400 and 0 < wild < 400, (nan, wild)
        assert f"at temperature {temperature:g} (the checkpoint's" in out, out
        assert f"{nan} of 400 samples are not finite" in err and f"{wild} of 400 have pixels outside [-1, 2]" in err
        assert err.startswith("zoo.sample: warning: ") and err.count("\n") == 1, err
    png = np.asarray(Image.open(Path("samples") / "wild.png"))  # the default --out, named after the checkpoint
    assert png.dtype == np.uint8 and png.ndim == 2


def test_checkpoint_temperature_prefers_the_checkpoint_own_value():
    assert checkpoint_temperature({"sample_temperature": 0.6, "train": {"sample_temperature": 0.9}}) == 0.6
    assert checkpoint_temperature({"train": {"sample_temperature": 0.9}}) == 0.9
    assert checkpoint_temperature({}) == 1.0


def test_sample_problems_counts_only_real_problems():
    ok = np.full((3, 1, 2, 2), 0.5)
    ok[0, 0, 0, 0] = 1.3  # a slight overshoot is clipped, not reported
    assert sample_problems(ok, images=True) is None
    bad = ok.copy()
    bad[1, 0, 1, 1], bad[2, 0, 0, 0] = np.inf, -5.0
    assert sample_problems(bad, images=True) == ("1 of 3 samples are not finite (drawn grey); 1 of 3 have pixels "
                                                 "outside [-1, 2] (up to 5; the PNG clips pixels to [0, 1])")
    assert sample_problems(np.array([[40.0, -3.0]]), images=False) is None  # vectors have no fixed range


@pytest.mark.parametrize("checkpoint, png", [
    ("runs/glow-mnist_bundled", "glow-mnist_bundled"),
    ("runs/glow-mnist_bundled/checkpoints/", "glow-mnist_bundled"),
    ("runs/glow-mnist_bundled/checkpoints/2500", "glow-mnist_bundled"),
    ("pretrained/glow_mnist_bundled.tar.gz", "glow_mnist_bundled"),
    ("https://example.org/m/glow.tgz", "glow"),
])
def test_default_out_is_named_after_the_run_or_archive(checkpoint, png):
    assert default_out(checkpoint) == Path("samples") / f"{png}.png"


def test_shipped_archive_metadata_reads_in_the_standard_conventions():
    """Its metadata predates the standard 8-bit NLL (stored: -3021.09 = -log p on [0, 1)^784);
    read back, nll = bpd * D log 2 as the trainer reports it now, and its temperature is 0.7."""
    _, meta = zoo.checkpoint.load_with_meta(ROOT / "pretrained" / "glow_mnist_bundled.tar.gz")
    test = meta["metrics"]["test"]
    assert test["nll"] == pytest.approx(test["bpd"] * 784 * math.log(2), rel=1e-5)
    assert test["nll"] == pytest.approx(-3021.089125 + 784 * math.log(256), rel=1e-9)  # 1326.33
    assert test["nats_per_dim"] == pytest.approx(test["nll"] / 784)
    assert checkpoint_temperature(meta) == 0.7
    again = zoo.checkpoint.standard_nll(meta)  # already standard: unchanged
    assert again["metrics"]["test"]["nll"] == pytest.approx(1326.33, abs=0.01)
