"""The classic plugin: MADE/MaskedAffine, RealNVP/MAF/NSF, the 2-D toys, and
fits to two moons that must beat a full-covariance Gaussian."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zoo
from zoo.testing import check_bijection
from zoo_classic.maf import MaskedAffine
from zoo_classic.toys import SPLIT_SIZES

MODELS = ["realnvp", "maf", "nsf"]
TOYS = ["moons", "circles", "8gaussians", "checkerboard", "pinwheel"]


# ----------------------------------------------------------------- MADE / MAF


@eqx.filter_jit  # one compile, not one per parameter shape
def _perturbed64(module, scale, key):
    """A float64 copy with every parameter moved by N(0, scale^2) (call under enable_x64)."""
    params, static = eqx.partition(module, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [a.astype(jnp.float64) + scale * jax.random.normal(k, a.shape, jnp.float64) for a, k in zip(leaves, keys)]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def test_masked_affine_contract():
    layer = zoo.create_layer("made_affine", key=jax.random.key(0), shape=MaskedAffine.example_shape)
    x = jnp.array([0.3, -1.2, 0.7, 2.0])
    check_bijection(layer, x)
    # zero-initialised last layer: the identity before training
    y, ld = layer.forward(x)
    np.testing.assert_array_equal(y, x)
    assert float(ld) == 0.0
    # masks are bool arrays: saved with the model, invisible to optimisers
    masks = [lin.mask for lin in layer.made.layers]
    assert len(masks) == 3 and all(m.dtype == jnp.bool_ for m in masks)
    trainable = jax.tree.leaves(eqx.filter(layer, eqx.is_inexact_array))
    assert len(trainable) == 2 * len(masks) and not any(a.dtype == jnp.bool_ for a in trainable)


@eqx.filter_jit
def _made_jacobian_and_roundtrip(layer, x, xs):
    jac = jax.vmap(jax.jacfwd(layer.made))(xs)  # (N, 2, D, D)
    z, ld = layer.forward(x)
    x_rec, ld_inv = layer.inverse(z)
    z_rec = layer.forward(jax.vmap(layer.inverse)(z[None])[0][0])[0]
    return jac, z, ld, x_rec, ld_inv, z_rec


def test_masked_affine_is_autoregressive_with_exact_sequential_inverse():
    d = 5
    with jax.enable_x64(True):
        # strongly perturbed (the last layer starts at zero), in float64
        layer = _perturbed64(MaskedAffine((d,), key=jax.random.key(2), width=32), 0.5, jax.random.key(3))
        x = jax.random.normal(jax.random.key(4), (d,), jnp.float64)
        xs = jax.random.normal(jax.random.key(5), (8, d), jnp.float64)
        jac, z, ld, x_rec, ld_inv, z_rec = _made_jacobian_and_roundtrip(layer, x, xs)
        jaxpr = str(jax.make_jaxpr(layer.inverse)(z))
    # MADE output i depends on x_<i only: strictly lower triangular, and not trivially zero
    jac = np.abs(np.asarray(jac)).max(0)
    assert np.all(jac[:, *np.triu_indices(d)] == 0)
    assert np.all(jac[:, *np.tril_indices(d, -1)] > 0)
    assert np.max(np.abs(np.asarray(z) - np.asarray(x))) > 1e-2  # far from the identity
    np.testing.assert_allclose(x_rec, x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ld_inv, -ld, rtol=0, atol=1e-12)
    np.testing.assert_allclose(z_rec, z, rtol=0, atol=1e-12)
    # the D passes are one loop over a MADE call (+1 for the log-det), not D unrolled calls
    assert ("scan" in jaxpr or "while" in jaxpr) and jaxpr.count("dot_general") == 2 * len(layer.made.layers)


# --------------------------------------------------------------------- models


@pytest.mark.parametrize("name", MODELS)
def test_models_stack_their_blocks_into_one_scan(name):
    # (the conformance check of every registered model is in tests/test_models.py)
    config = zoo.get_model_config(name)
    shape = type(config).example_input_shape
    model = zoo.create_model(name, key=jax.random.key(0), input_shape=shape)
    assert len(model.bijection.layers) == 1
    assert isinstance(model.bijection.layers[0], zoo.bijections.Scan)
    assert model.bijection.layers[0].length == config.num_layers


def test_shape_validation_options_and_wider_vectors():
    key = jax.random.key(0)
    for name in MODELS:
        for bad in [(1,), (2, 2), ()]:
            with pytest.raises(ValueError, match="D >= 2"):
                zoo.create_model(name, key=key, input_shape=bad)
        with pytest.raises(ValueError, match=">= 1"):
            zoo.create_model(name, key=key, input_shape=(3,), num_layers=0)
        assert type(zoo.get_model_config(name)).__doc__
    # without ActNorm each block has one layer fewer; odd D > 2 splits unevenly
    models = [zoo.create_model(n, key=key, input_shape=(5,), actnorm=False, num_layers=3) for n in MODELS]
    for m in models:
        assert len(m.bijection.layers) == 1 and len(m.bijection.layers[0].stacked.layers) == 2

    @eqx.filter_jit
    def log_prob_and_roundtrip(ms, x):
        return [(m.log_prob(x), m.inverse(m.forward(x)[0])[0]) for m in ms]

    x = jnp.linspace(-1.0, 1.0, 5)
    for lp, x_rec in log_prob_and_roundtrip(models, x):
        assert np.isfinite(float(lp))
        np.testing.assert_allclose(x_rec, x, atol=1e-5)


def test_realnvp_random_permutation():
    model = zoo.create_model("realnvp", key=jax.random.key(0), input_shape=(6,), permutation="random")
    assert len(model.bijection.layers) == 1  # random permutations still stack
    perms = model.bijection.layers[0].stacked.layers[2].perm
    assert perms.shape == (8, 6) and len({tuple(p) for p in np.asarray(perms)}) > 1


# ------------------------------------------------------------------- datasets


@pytest.mark.parametrize("name", TOYS)
def test_toy_dataset(name, tmp_path):
    source = zoo.get_dataset(name)
    assert source.description and source.shape == (2,) and source.dtype == "float32"
    splits = {s: zoo.load_dataset(name, split=s, data_dir=tmp_path) for s in source.splits}
    for s, x in splits.items():
        assert x.shape == (SPLIT_SIZES[s], 2) and x.dtype == np.float32
        assert np.all(np.isfinite(x)) and 0.5 < x.std() < 4.0 and np.abs(x).max() < 6.0
    assert not np.allclose(splits["train"][:2000], splits["test"])
    assert not np.allclose(splits["validation"], splits["test"])
    np.testing.assert_array_equal(zoo.load_dataset(name, split="train"), splits["train"])
    with pytest.raises(ValueError, match="unknown split"):
        zoo.load_dataset(name, split="nope")


def test_toy_shapes():
    x = zoo.load_dataset("8gaussians", split="train")
    radius = np.linalg.norm(x, axis=1)
    assert abs(np.median(radius) - 4 / 1.414) < 0.1
    x = zoo.load_dataset("checkerboard", split="train")
    cell = (np.floor(x[:, 0] / 2) + np.floor(x[:, 1] / 2)) % 2  # dark squares only
    assert np.all(cell == 0) and np.all(np.abs(x) <= 4)
    x = zoo.load_dataset("circles", split="train")
    radius = np.linalg.norm(x, axis=1)
    assert abs(np.mean(radius[radius > 2.25]) - 3.0) < 0.05 and abs(np.mean(radius[radius < 2.25]) - 1.5) < 0.05


# ------------------------------------------------------------------ moons fit


def _gaussian_test_ll(train, test):
    """Mean test log-likelihood of the full-covariance Gaussian MLE on train."""
    train, test = train.astype(np.float64), test.astype(np.float64)
    mean, cov = train.mean(0), np.cov(train.T, bias=True)
    diff = test - mean
    maha = np.sum(diff * np.linalg.solve(cov, diff.T).T, axis=1)
    return float(np.mean(-0.5 * maha - 0.5 * np.linalg.slogdet(cov)[1] - 0.5 * test.shape[1] * np.log(2 * np.pi)))


def _fit(model, data, *, steps, batch_size=256, learning_rate=3e-3, seed=0):
    """Adam on the mean negative log-likelihood; ActNorm initialised on the first batch."""
    rng = np.random.default_rng(seed)
    batches = rng.integers(0, len(data), size=(steps, batch_size))
    model = eqx.filter_jit(zoo.data_init)(model, jnp.asarray(data[batches[0]]))
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, opt_state, x):
        def loss_fn(m):
            return jnp.mean(jax.vmap(lambda v: m.loss(v)[0])(x))

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    for idx in batches:
        model, opt_state, loss = step(model, opt_state, data[idx])
    return model


@pytest.fixture(scope="module")
def moons():
    train = zoo.load_dataset("moons", split="train")
    test = zoo.load_dataset("moons", split="test")
    return train, test, _gaussian_test_ll(train, test)


@pytest.mark.parametrize("name", MODELS)
def test_fits_two_moons_better_than_a_gaussian(name, moons):
    train, test, gauss_ll = moons
    model = zoo.create_model(name, key=jax.random.key(0), input_shape=(2,))
    model = _fit(model, train, steps=600)
    flow_ll = float(jnp.mean(eqx.filter_jit(lambda m, x: jax.vmap(m.log_prob)(x))(model, jnp.asarray(test))))
    print(f"{name}: test log-likelihood {flow_ll:.3f} vs full-covariance Gaussian {gauss_ll:.3f}")
    # two moons is far from Gaussian: a fitted flow gains ~0.8 nats; 0.5 is a clear, robust margin
    assert flow_ll > gauss_ll + 0.5, f"{name}: flow {flow_ll:.3f} vs Gaussian {gauss_ll:.3f}"
