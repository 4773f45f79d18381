"""The pretrained registry: every shipped entry loads verified and evaluates;
a third-party distribution registers its own entry through the same group."""

import hashlib
import json
import sys
import textwrap

import numpy as np
import pytest

import zoo
from zoo import registry
from zoo.checkpoint import CheckpointError, load_with_meta
from zoo.pretrained import CARD_KEYS, archive_of


def _bundled_eval(name, card, model, meta):
    """Evaluate on a few hundred bundled images (no download) or, for toy data, its own test split.
    The 300 images go in one batch: in the default batch of 256 the second batch would compute 212
    padding rows too (exponential_cnn.mnist: 11.9 -> 7.4 CPU s)."""
    from zoo.evaluate import evaluate_checkpoint

    if tuple(card["input_shape"]) == (1, 28, 28):
        return evaluate_checkpoint(model, meta, data="mnist_bundled", split="test", max_examples=300, batch=300)
    return evaluate_checkpoint(model, meta, split="test")


@pytest.mark.parametrize("name", zoo.list_pretrained())
def test_every_registered_entry_loads_verified_and_evaluates(name):
    card = zoo.pretrained_card(name)
    assert set(CARD_KEYS) <= set(card) and card["name"] == name
    assert hashlib.sha256(open(archive_of(card), "rb").read()).hexdigest() == card["sha256"]
    model, meta = load_with_meta(name)
    assert meta["model"] == card["model"] and meta["model_cfg"] == card["model_cfg"]
    r = _bundled_eval(name, card, model, meta)
    assert np.isfinite(r["nll"]) and r["examples"] > 0
    if r["data"] == card["data"] and r["examples"] == card["metrics"]["examples"]:
        # the card's own split, whole: the card's number exactly (deterministic keys and noise)
        assert r["nll"] == pytest.approx(card["metrics"]["nll"], rel=1e-6)
    else:
        # 300 bundled training images of full MNIST: near the card's test NLL, never far off
        assert abs(r["nll"] - card["metrics"]["nll"]) < 0.15 * abs(card["metrics"]["nll"]) + 5 * card["metrics"]["nll_se"]


def test_glow_mnist_bundled_is_the_shipped_quickstart_model():
    card = zoo.pretrained_card("glow.mnist_bundled")
    assert card["archive"] == "glow_mnist_bundled.tar.gz" and card["sample_temperature"] == 0.7
    assert card["metrics"]["bpd"] == pytest.approx(2.4407, abs=1e-4)


def test_unknown_name_and_wrong_digest():
    with pytest.raises(zoo.RegistryError, match="Did you mean 'glow.mnist_bundled'"):
        zoo.pretrained_card("glow.mnist_bundle")
    with pytest.raises(CheckpointError, match="its card records sha256"):
        zoo.load_pretrained("glow.mnist_bundled", sha256="0" * 64)


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """A distribution-shaped folder on sys.path (as pip --target leaves it)
    registering `realnvp.toy` under zoo.pretrained, with its card and archive."""
    import jax

    from zoo.pretrained import write_archive, write_card

    site = tmp_path / "site"
    pkg = site / "toy_zoo_models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from pathlib import Path

        def card(name):
            return Path(__file__).parent / f"{name}.json"
    """))
    info = site / "toy_zoo_models-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-zoo-models\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text('[zoo.pretrained]\nrealnvp.toy = toy_zoo_models:card\n')
    cfg = type(zoo.get_model_config("realnvp"))(num_layers=2, width=8)
    model = cfg.build(input_shape=(2,), key=jax.random.key(0))
    folder = zoo.save_pretrained(model, tmp_path / "w" / "realnvp.toy", config=cfg, input_shape=(2,),
                                 extra={"data": "moons", "train": {"batch_size": 100, "seed": 0}, "step": 0})
    write_archive(folder, pkg / "realnvp.toy.tar.gz")
    monkeypatch.syspath_prepend(str(site))
    registry.refresh()
    write_card(pkg / "realnvp.toy.tar.gz", "realnvp.toy", command="(untrained)", wall_time_s=0.0, machine_name=None)
    yield model, pkg
    sys.modules.pop("toy_zoo_models", None)
    monkeypatch.undo()
    registry.refresh()


def test_a_third_party_distribution_ships_its_own_pretrained_entry(third_party):
    import jax

    model, pkg = third_party
    assert "realnvp.toy" in zoo.list_pretrained("realnvp.*") and "realnvp.toy" not in zoo.list_pretrained("*.mnist")
    assert registry.provider("pretrained", "realnvp.toy") == "toy-zoo-models"
    loaded = zoo.load_pretrained("realnvp.toy")
    x = zoo.load_dataset("moons", split="test")[:16]
    np.testing.assert_array_equal(jax.vmap(loaded.log_prob)(x), jax.vmap(model.log_prob)(x))
    card = json.loads((pkg / "realnvp.toy.json").read_text())
    assert card["data"] == "moons" and card["metrics"]["examples"] == 2000 and card["data_licence"].startswith("synthetic")
    # the archive is verified on every load: one flipped byte is refused
    archive = pkg / "realnvp.toy.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match"):
        zoo.load_pretrained("realnvp.toy")
