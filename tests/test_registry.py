"""The entry-point registry, tested with fake installed distributions.

Each test writes `NAME-VERSION.dist-info/{METADATA,entry_points.txt}` and the
plugin's modules into a temporary directory and puts it on sys.path: to
`importlib.metadata` that is exactly what `pip install` leaves behind. Every
test gets fresh in-process registrations and a fresh discovery cache, and
leaves none behind.
"""

import dataclasses
import sys
import textwrap
import uuid
import warnings
from typing import ClassVar

import jax
import numpy as np
import pytest

import zoo
from zoo import registry

GOOD_MODULE = '''
import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

import zoo
from zoo.bijections import Affine
from zoo.distributions import StandardNormal


@dataclasses.dataclass(frozen=True)
class GoodConfig:
    """A fake plugin model: one elementwise affine layer."""

    shift: float = 0.5
    log_scale: float = 0.0
    example_input_shape: ClassVar = (2,)

    def build(self, *, input_shape, key):
        layer = Affine(input_shape, shift=jnp.full(input_shape, self.shift),
                       log_scale=jnp.full(input_shape, self.log_scale))
        return zoo.Flow(layer, StandardNormal(input_shape))


class Scale(zoo.bijections.Bijection):
    """A fake plugin layer: y = factor * x."""

    factor: float
    example_shape: ClassVar = (3,)

    def __init__(self, shape, *, key=None, factor=2.0):
        self.factor = factor

    def forward(self, x):
        return self.factor * x, x.size * jnp.log(jnp.abs(self.factor))

    def inverse(self, y):
        return y / self.factor, -y.size * jnp.log(jnp.abs(self.factor))


class Ramp(zoo.DatasetSource):
    description = "a fake plugin dataset"
    shape = (2,)
    dtype = "float32"

    def load(self, split, *, data_dir):
        return np.zeros((4, 2), np.float32)
'''


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """Returns `install(dist, entry_points, modules)`, which writes a fake
    installed distribution and makes it visible to zoo's discovery.

    Module names get a per-test suffix (`{u}` in the names and sources is
    replaced by it), so no test sees modules imported by another."""
    suffix = uuid.uuid4().hex[:8]
    site = tmp_path / "site"
    site.mkdir()
    # Fresh in-process registrations; monkeypatch restores the real dict.
    monkeypatch.setattr(registry, "_in_process", {kind: {} for kind in registry.GROUPS})
    monkeypatch.syspath_prepend(str(site))
    registry.refresh()
    created_modules = []

    def install(dist, entry_points, modules, *, where=site):
        info = where / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{name} = {value.format(u=suffix)}" for name, value in eps.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for module, source in modules.items():
            module = module.format(u=suffix)
            created_modules.append(module)
            (where / f"{module}.py").write_text(textwrap.dedent(source).replace("{u}", suffix))
        registry.refresh()

    yield install
    registry.refresh()
    for module in created_modules:
        sys.modules.pop(module, None)


@pytest.fixture
def good_plugin(fake_site):
    fake_site(
        "zoo-fake-good",
        {
            "zoo.models": {"fake_good": "fake_good_{u}:GoodConfig", "fake_great": "fake_good_{u}:GoodConfig"},
            "zoo.layers": {"fake_scale": "fake_good_{u}:Scale"},
            "zoo.datasets": {"fake_ramp": "fake_good_{u}:Ramp"},
        },
        {"fake_good_{u}": GOOD_MODULE},
    )
    return fake_site


def _messages(caught, needle):
    return [str(w.message) for w in caught if needle in str(w.message)]


# --- discovery --------------------------------------------------------------


def test_fake_distribution_is_discovered(good_plugin):
    assert {"fake_good", "fake_great"} <= set(zoo.list_models())
    assert "fake_scale" in zoo.list_layers()
    assert "fake_ramp" in zoo.list_datasets()
    assert registry.provider("model", "fake_good") == "zoo-fake-good"
    assert registry.provider("layer", "fake_scale") == "zoo-fake-good"
    assert type(zoo.get_dataset("fake_ramp")).__name__ == "Ramp"
    assert zoo.get_dataset("fake_ramp").load("train", data_dir=None).shape == (4, 2)
    # Lists are sorted.
    assert zoo.list_models() == sorted(zoo.list_models())


def test_get_layer_and_create_layer(good_plugin):
    cls = zoo.get_layer("fake_scale")
    assert cls.__name__ == "Scale"
    layer = zoo.create_layer("fake_scale", key=jax.random.key(0), shape=[3], factor=-4.0)
    y, logdet = layer.forward(np.array([1.0, -2.0, 0.5]))
    np.testing.assert_allclose(y, [-4.0, 8.0, -2.0])
    np.testing.assert_allclose(logdet, 3 * np.log(4.0), rtol=1e-6)


def test_uninstalled_plugin_disappears_after_refresh(good_plugin, tmp_path):
    assert "fake_good" in zoo.list_models()
    for info in (tmp_path / "site").glob("*.dist-info"):
        (info / "entry_points.txt").unlink()
    assert "fake_good" in zoo.list_models()  # still cached
    registry.refresh()
    assert "fake_good" not in zoo.list_models()


def test_same_distribution_on_sys_path_twice_is_not_a_collision(good_plugin, tmp_path, monkeypatch):
    # e.g. a user site and a virtualenv both holding the same package
    other = tmp_path / "other_site"
    other.mkdir()
    monkeypatch.syspath_prepend(str(other))
    good_plugin("zoo-fake-good", {"zoo.models": {"fake_good": "fake_good_{u}:GoodConfig"}}, {}, where=other)
    assert zoo.list_models("fake_good") == ["fake_good"]


# --- (a) a broken plugin ----------------------------------------------------


def test_broken_plugin_warns_once_and_others_still_load(good_plugin):
    good_plugin(
        "zoo-fake-broken",
        {
            "zoo.models": {"fake_broken": "fake_broken_{u}:Config", "fake_broken_too": "fake_broken_{u}:Other"},
            "zoo.layers": {"fake_broken_layer": "fake_broken_{u}:Layer"},
        },
        {"fake_broken_{u}": "raise RuntimeError('boom: the fake plugin cannot import')\n"},
    )
    with pytest.warns(zoo.PluginImportWarning, match=r"'zoo-fake-broken'.*RuntimeError: boom") as record:
        models = zoo.list_models()
    assert "fake_good" in models and "fake_great" in models
    assert "fake_broken" not in models and "fake_broken_too" not in models
    # Two entry points, one import error: one warning.
    assert len(_messages(record, "zoo-fake-broken")) == 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # so only the registry's own de-duplication can hide repeats
        for _ in range(3):
            assert "fake_good" in zoo.list_models()
            zoo.list_models("fake_*")
        model = zoo.create_model("fake_good", key=jax.random.key(0), input_shape=(2,))
        # Layers of the broken distribution fail with the same error: still no second warning.
        assert "fake_broken_layer" not in zoo.list_layers()
        assert "fake_scale" in zoo.list_layers()
    assert _messages(caught, "zoo-fake-broken") == []
    np.testing.assert_allclose(model.log_prob(np.zeros(2)), -0.25 - np.log(2 * np.pi), rtol=1e-6)

    # Asking for the broken model by name says why it is missing.
    with pytest.raises(zoo.RegistryError, match=r"'zoo-fake-broken' failed to import"):
        zoo.get_model_config("fake_broken")


def test_broken_plugin_is_retried_after_refresh(good_plugin):
    good_plugin(
        "zoo-fake-broken",
        {"zoo.models": {"fake_broken": "fake_broken_{u}:Config"}},
        {"fake_broken_{u}": "import a_module_that_is_not_installed_{u}\n"},
    )
    with pytest.warns(zoo.PluginImportWarning, match=r"'zoo-fake-broken'.*ModuleNotFoundError"):
        zoo.list_models()
    registry.refresh()
    with pytest.warns(zoo.PluginImportWarning, match=r"'zoo-fake-broken'"):
        assert "fake_good" in zoo.list_models()


def test_invalid_config_from_a_plugin_warns_with_the_reason(good_plugin):
    good_plugin(
        "zoo-fake-unfrozen",
        {"zoo.models": {"fake_unfrozen": "fake_unfrozen_{u}:Config"}},
        {
            "fake_unfrozen_{u}": """
                import dataclasses

                @dataclasses.dataclass
                class Config:
                    width: int = 3

                    def build(self, *, input_shape, key):
                        raise AssertionError("never built")
            """
        },
    )
    with pytest.warns(zoo.PluginImportWarning, match=r"'zoo-fake-unfrozen'.*not frozen"):
        models = zoo.list_models()
    assert "fake_unfrozen" not in models and "fake_good" in models


# --- (b) a name claimed by two distributions --------------------------------


@pytest.mark.parametrize("group, lister", [("zoo.models", zoo.list_models), ("zoo.layers", zoo.list_layers)])
def test_name_collision_names_both_distributions(fake_site, group, lister):
    source = {"zoo.models": "fake_good_{u}:GoodConfig", "zoo.layers": "fake_good_{u}:Scale"}[group]
    fake_site("zoo-fake-alpha", {group: {"fake_clash": source}}, {"fake_good_{u}": GOOD_MODULE})
    fake_site("zoo-fake-beta", {group: {"fake_clash": source}}, {})
    with pytest.raises(zoo.RegistryError) as err:
        lister()
    message = str(err.value)
    assert "'fake_clash'" in message
    assert "'zoo-fake-alpha'" in message and "'zoo-fake-beta'" in message


# --- (c), (d) unknown names and fields --------------------------------------


def test_unknown_model_lists_available_and_suggests(good_plugin):
    with pytest.raises(zoo.RegistryError) as err:
        zoo.get_model_config("fake_goood")
    message = str(err.value)
    assert "unknown model 'fake_goood'" in message
    assert "Did you mean 'fake_good'" in message
    available = message.split("Available models:")[1]
    assert "fake_good" in available and "fake_great" in available

    with pytest.raises(zoo.RegistryError, match=r"unknown layer 'fake_scal'.*Did you mean 'fake_scale'"):
        zoo.create_layer("fake_scal", key=jax.random.key(0), shape=(3,))
    with pytest.raises(zoo.RegistryError, match=r"Available models:.*fake_good"):
        zoo.create_model("zzz_no_such_model", key=jax.random.key(0), input_shape=(2,))


def test_create_model_rejects_unknown_override_field(good_plugin):
    with pytest.raises(zoo.RegistryError) as err:
        zoo.create_model("fake_good", key=jax.random.key(0), input_shape=(2,), shfit=1.0)
    message = str(err.value)
    assert "shfit" in message
    assert "its fields are: log_scale, shift" in message


def test_create_model_applies_overrides(good_plugin):
    config = zoo.get_model_config("fake_good")
    assert dataclasses.is_dataclass(config) and config.shift == 0.5
    model = zoo.create_model("fake_good", key=jax.random.key(0), input_shape=[3], shift=-1.5, log_scale=0.25)
    np.testing.assert_allclose(model.bijection.shift, [-1.5, -1.5, -1.5])
    np.testing.assert_allclose(model.bijection.log_scale, [0.25, 0.25, 0.25])
    # The default instance is unchanged (configs are frozen values).
    assert zoo.get_model_config("fake_good").shift == 0.5


# --- (e) in-process registration -------------------------------------------


def _toy_config(default_shift=1.5):
    @dataclasses.dataclass(frozen=True)
    class ToyConfig:
        """A toy model registered from a notebook."""

        shift: float = default_shift
        example_input_shape: ClassVar = (2,)

        def build(self, *, input_shape, key):
            import jax.numpy as jnp

            return zoo.Flow(
                zoo.bijections.Affine(input_shape, shift=jnp.full(input_shape, self.shift)),
                zoo.distributions.StandardNormal(input_shape),
            )

    return ToyConfig


def test_register_model_in_process(good_plugin):
    toy = zoo.register_model("inproc_toy")(_toy_config())
    assert "inproc_toy" in zoo.list_models() and "fake_good" in zoo.list_models()
    assert zoo.list_models("inproc_*") == ["inproc_toy"]
    assert registry.provider("model", "inproc_toy") == registry.IN_PROCESS
    config = zoo.get_model_config("inproc_toy")
    assert isinstance(config, toy) and config.shift == 1.5
    model = zoo.create_model("inproc_toy", key=jax.random.key(0), input_shape=(2,), shift=-2.0)
    np.testing.assert_allclose(model.bijection.shift, [-2.0, -2.0])
    # Still registered after the discovery cache is rebuilt.
    registry.refresh()
    assert "inproc_toy" in zoo.list_models()


def test_register_layer_in_process(good_plugin):
    @zoo.register_layer("inproc_reverse")
    def make_reverse(shape, *, key=None):
        return zoo.bijections.Reverse(shape)

    layer = zoo.create_layer("inproc_reverse", key=None, shape=(3,))
    y, _ = layer.forward(np.array([1.0, 2.0, 3.0], np.float32))
    np.testing.assert_allclose(y, [3.0, 2.0, 1.0])


def test_reregistering_the_same_class_is_allowed(good_plugin):
    # Re-running a notebook cell defines the class again under the same name.
    zoo.register_model("inproc_toy")(_toy_config(1.0))
    zoo.register_model("inproc_toy")(_toy_config(2.0))
    assert zoo.get_model_config("inproc_toy").shift == 2.0


def test_in_process_name_taken_twice_raises(good_plugin):
    zoo.register_model("inproc_toy")(_toy_config())

    @dataclasses.dataclass(frozen=True)
    class OtherConfig:
        def build(self, *, input_shape, key):
            raise AssertionError("never built")

    with pytest.raises(zoo.RegistryError, match=r"'inproc_toy' is registered twice"):
        zoo.register_model("inproc_toy")(OtherConfig)


def test_in_process_collision_with_entry_point_names_both(good_plugin):
    zoo.list_models()  # discovery has already run, as in most sessions
    with pytest.raises(zoo.RegistryError) as err:
        zoo.register_model("fake_good")(_toy_config())
    message = str(err.value)
    assert "'zoo-fake-good'" in message and registry.IN_PROCESS in message
    # The failed registration left nothing behind.
    assert registry.provider("model", "fake_good") == "zoo-fake-good"


def test_in_process_collision_is_caught_before_discovery(good_plugin):
    # A fresh session (`import zoo; @zoo.register_model(...)`) has not listed
    # anything yet: the collision must still be reported at registration,
    # not leave a registration that breaks every later list_models().
    registry.refresh()
    with pytest.raises(zoo.RegistryError, match="zoo-fake-good"):
        zoo.register_model("fake_good")(_toy_config())
    assert "fake_good" in zoo.list_models()


def test_invalid_model_configs_are_rejected(good_plugin):
    @dataclasses.dataclass
    class NotFrozen:
        width: int = 1

        def build(self, *, input_shape, key): ...

    @dataclasses.dataclass(frozen=True)
    class NoDefault:
        width: int

        def build(self, *, input_shape, key): ...

    @dataclasses.dataclass(frozen=True)
    class NoBuild:
        width: int = 1

    class NotADataclass:
        def build(self, *, input_shape, key): ...

    cases = [
        (NotFrozen, r"'NotFrozen' is not frozen"),
        (NoDefault, r"'NoDefault' has fields without defaults: \['width'\]"),
        (NoBuild, r"'NoBuild' has no build\(\*, input_shape, key\) method"),
        (NotADataclass, r"'NotADataclass' is not a dataclass"),
    ]
    for cls, pattern in cases:
        with pytest.raises(TypeError, match=pattern):
            zoo.register_model("inproc_bad")(cls)
    assert "inproc_bad" not in zoo.list_models()

    with pytest.raises(TypeError, match="must be a class or callable"):
        zoo.register_layer("inproc_bad_layer")(42)


# --- (f) patterns -----------------------------------------------------------


def test_list_patterns(good_plugin):
    zoo.register_model("inproc_toy")(_toy_config())
    assert zoo.list_models("fake_*") == ["fake_good", "fake_great"]
    assert zoo.list_models("fake_g??d") == ["fake_good"]
    assert zoo.list_models("*toy") == ["inproc_toy"]
    assert zoo.list_models("fake_[g]reat") == ["fake_great"]
    assert zoo.list_models("FAKE_*") == []  # case-sensitive
    assert zoo.list_models("no_such_*") == []
    assert zoo.list_layers("fake_s*") == ["fake_scale"]
    assert set(zoo.list_models()) >= {"fake_good", "fake_great", "inproc_toy"}


# --- (g) which data a model takes -------------------------------------------


def test_model_input_kinds_pick_compatible_and_default_datasets(good_plugin):
    """A config without input_kinds takes every kind and trains on mnist_bundled (the first that fits of
    mnist_bundled, moons); one declaring vectors gets only vector datasets, and a mismatch names them."""
    assert registry.input_kind((1, 28, 28)) == "image" and registry.input_kind((2,)) == "vector"
    assert "mnist_bundled" in registry.compatible_datasets("fake_good")
    assert registry.default_dataset("fake_good") == "mnist_bundled"

    @dataclasses.dataclass(frozen=True)
    class VectorsOnly:
        input_kinds: ClassVar = ("vector",)

        def build(self, *, input_shape, key): ...

    zoo.register_model("inproc_vectors")(VectorsOnly)
    fits = registry.compatible_datasets("inproc_vectors")
    assert "moons" in fits and "fake_ramp" in fits and "mnist_bundled" not in fits and "cifar10" not in fits
    assert registry.default_dataset("inproc_vectors") == "moons"
    registry.check_compatible("inproc_vectors", "fake_ramp")
    with pytest.raises(zoo.RegistryError, match=r"takes vectors but dataset 'cifar10' holds images of shape "
                                                r"\(3, 32, 32\); datasets that fit 'inproc_vectors': .*fake_ramp"):
        registry.check_compatible("inproc_vectors", "cifar10")


def test_input_kinds_must_be_known_kinds(good_plugin):
    for kinds in ("image", ("images",)):
        @dataclasses.dataclass(frozen=True)
        class Typo:
            input_kinds: ClassVar = kinds

            def build(self, *, input_shape, key): ...

        with pytest.raises(TypeError, match=r"input_kinds .* is not a tuple drawn from \('image', 'vector'\)"):
            zoo.register_model("inproc_typo")(Typo)


def test_every_model_declares_a_default_dataset_that_fits_it():
    registry.refresh()
    for name in zoo.list_models():
        data = registry.default_dataset(name)
        registry.check_compatible(name, data)  # raises naming the datasets that would fit
        assert data in zoo.list_datasets(), (name, data)
    assert registry.default_dataset("glow") == "mnist_bundled" and registry.default_dataset("realnvp") == "moons"
