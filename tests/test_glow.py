"""The glow plugin: 1x1-convolution layers, the channels-last conditioner,
multi-scale Glow models (conformance, split priors, temperature, bits/dim)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.bijections import Scan
from zoo.distributions import DiagNormal
from zoo.testing import check_bijection, check_flow
from zoo_glow import Conv1x1, Conv1x1LU, GlowConfig, MultiScaleGlow
from zoo_glow.nn import ConvHWC

KEY = jax.random.key(0)


def _perturbed64(model, scale=0.1, seed=0):
    """float64 copy with every parameter moved by N(0, scale^2) (call under enable_x64)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) + scale * rng.standard_normal(a.shape), params)
    return eqx.combine(params, static)


# ---------------------------------------------------------------- layers


def test_conv1x1_logdet_is_pixels_times_slogdet():
    with jax.enable_x64(True):
        layer = _perturbed64(Conv1x1((3, 2, 5), key=KEY), scale=0.5)
        x = jax.random.normal(jax.random.key(1), (3, 2, 5), jnp.float64)
        y, ld = layer.forward(x)
        np.testing.assert_allclose(ld, 10 * np.linalg.slogdet(np.asarray(layer.weight))[1], rtol=1e-12)
        # the same matrix at every pixel
        np.testing.assert_allclose(y[:, 1, 3], np.asarray(layer.weight) @ np.asarray(x[:, 1, 3]), rtol=1e-12)
        check_bijection(layer, x)
    # starts as a rotation: volume preserving
    w = Conv1x1((6, 4, 4), key=KEY).weight
    np.testing.assert_allclose(w @ w.T, np.eye(6), atol=1e-5)


def test_conv1x1_lu_matches_its_dense_weight():
    with jax.enable_x64(True):
        layer = _perturbed64(Conv1x1LU((4, 3, 3), key=KEY), scale=0.3)
        x = jax.random.normal(jax.random.key(1), (4, 3, 3), jnp.float64)
        y, ld = layer.forward(x)
        w = np.asarray(layer.weight())
        np.testing.assert_allclose(y, np.einsum("oc,chw->ohw", w, np.asarray(x)), rtol=1e-10)
        np.testing.assert_allclose(ld, 9 * np.linalg.slogdet(w)[1], rtol=1e-10)
        check_bijection(layer, x)


@pytest.mark.parametrize("c_in, c_out, k", [(3, 8, 3), (8, 3, 3), (8, 5, 1)])  # im2col, col2im, 1x1 paths
def test_conv_hwc_matches_lax_conv_values_and_gradients(c_in, c_out, k):
    # batched with vmap, as the model runs it: the hand-written weight gradient
    # (pixel_matmul's custom VJP) must sum over the batch
    with jax.enable_x64(True):
        conv = _perturbed64(ConvHWC(c_in, c_out, k, key=KEY))
        x = jax.random.normal(jax.random.key(1), (2, 5, 6, c_in), jnp.float64)

        def ref(w, b, v):
            return jax.lax.conv_general_dilated(v, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b

        np.testing.assert_allclose(jax.vmap(conv)(x), ref(conv.weight, conv.bias, x), atol=1e-12)
        ct = jax.random.normal(jax.random.key(2), (2, 5, 6, c_out), jnp.float64)
        got = jax.grad(lambda c, v: jnp.sum(jax.vmap(c)(v) * ct), argnums=(0, 1))(conv, x)
        want = jax.grad(lambda w, b, v: jnp.sum(ref(w, b, v) * ct), argnums=(0, 1, 2))(conv.weight, conv.bias, x)
        for g, w in zip([got[0].weight, got[0].bias, got[1]], want):
            np.testing.assert_allclose(g, w, atol=1e-10)


# ---------------------------------------------------------------- models


def _glow(shape=(1, 4, 4), **overrides):
    cfg = dict(levels=2, depth=2, width=8) | overrides
    return zoo.create_model("glow", key=KEY, input_shape=shape, **cfg)


def test_three_scale_variant_conforms():
    # Log-det vs brute-force Jacobian of the whole multi-scale map, exact inverse,
    # log_prob = N(0, I) of the standardised latents + log-det, sampling, loss
    # gradients. The default (affine, learned priors, conv1x1, scanned steps) is
    # checked by tests/test_models.py; this covers the other options at 3 scales.
    overrides = dict(levels=3, depth=1, mixing="conv1x1_lu", coupling="additive", split_prior=False, learn_top=False)
    check_flow(_glow((1, 8, 8), **overrides), jax.random.uniform(jax.random.key(1), (1, 8, 8)))


def test_steps_of_a_level_are_scanned():
    model = _glow((3, 8, 8), levels=2, depth=5)
    for level in model.bijection.levels:
        assert len(level.layers) == 1 and isinstance(level.layers[0], Scan) and level.layers[0].length == 5


def _reference_log_prob(glow: MultiScaleGlow, x):
    """Glow's log p(x) written the textbook way: Gaussian densities of the raw
    split-off halves under their conditional priors (no standardisation)."""
    h, total = x - glow.shift, 0.0
    for i, steps in enumerate(glow.levels):
        c, hh, ww = h.shape
        h = h.reshape(c, hh // 2, 2, ww // 2, 2).transpose(0, 2, 4, 1, 3).reshape(4 * c, hh // 2, ww // 2)
        h, ld = steps.forward(h)
        total += ld
        if i < len(glow.priors):
            k = h.shape[0] // 2
            p = glow.priors[i].conv(h[:k])
            total += DiagNormal(p[: h.shape[0] - k], p[h.shape[0] - k :]).log_prob(h[k:])
            h = h[:k]
    loc = jnp.broadcast_to(glow.top_loc[:, None, None], h.shape)
    log_scale = jnp.broadcast_to(glow.top_log_scale[:, None, None], h.shape)
    return total + DiagNormal(loc, log_scale).log_prob(h)


@eqx.filter_jit  # one program: op-by-op float64 dispatch would dominate the test's time
def _prior_quantities(model, x, key):
    eps = model.base.sample(key)
    out = dict(lp=model.log_prob(x), ref=_reference_log_prob(model.bijection, x), eps=eps)
    out["z"] = model.forward(x)[0]
    out["x_rec"] = model.inverse(out["z"])[0]
    for t in (0.0, 0.5):
        out[f"z_{t}"] = model.forward(model.sample(key, temperature=t))[0]
    sample0 = model.sample(key, temperature=0.0)
    out["lp0"], out["ref0"] = model.log_prob(sample0), _reference_log_prob(model.bijection, sample0)
    return out


def test_log_prob_equals_glow_with_conditional_priors_and_temperature_scales_every_prior():
    with jax.enable_x64(True):
        # (larger perturbations make the random 1x1 convs ill-conditioned enough
        # that sampling overflows, as in any untrained Glow)
        model = _perturbed64(_glow((1, 8, 8), levels=3), scale=0.05)
        x = jax.random.uniform(jax.random.key(1), (1, 8, 8), jnp.float64)
        out = _prior_quantities(model, x, jax.random.key(3))
        np.testing.assert_allclose(out["lp"], out["ref"], rtol=1e-10)
        # reconstruction from all the latents is exact
        assert out["z"].shape == (64,)
        np.testing.assert_allclose(out["x_rec"], x, atol=1e-10)
        # temperature T multiplies the noise of every prior: the sample's latents are T * eps
        for t in (0.0, 0.5):
            np.testing.assert_allclose(out[f"z_{t}"], t * out["eps"], atol=1e-9)
        np.testing.assert_allclose(out["lp0"], out["ref0"], rtol=1e-10)


def _identity_mixing(model):
    levels = model.bijection.levels
    where = lambda m: [lvl.layers[0].stacked.layers[1].weight for lvl in m.bijection.levels]  # noqa: E731
    eyes = [jnp.broadcast_to(jnp.eye(w.shape[-1]), w.shape) for w in where(model)]
    assert len(eyes) == len(levels)
    return eqx.tree_at(where, model, eyes)


@pytest.mark.parametrize("coupling", ["additive", "affine"])
def test_bits_per_dim_hand_checked(coupling):
    # At initialisation ActNorm, the conditioners' last convs and all priors are
    # zero; with identity 1x1 convs an additive Glow is x -> x - 0.5, so for
    # x = 0.5 everywhere log p = -D/2 log(2 pi) and bits/dim = 8 + log2(2 pi)/2.
    # An affine coupling with zero conditioner multiplies its half by sigmoid(2).
    model = _identity_mixing(_glow((1, 4, 4), levels=2, depth=3, coupling=coupling))
    x = jnp.full((1, 4, 4), 0.5)
    d = 16
    # coupled halves: level 1 is 4 x 2 x 2 (8 coupled), level 2 is 8 x 1 x 1 (4 coupled)
    logdet = 0.0 if coupling == "additive" else 3 * (8 + 4) * math.log(1 / (1 + math.exp(-2.0)))
    log_p = -d / 2 * math.log(2 * math.pi) + logdet
    want = (-log_p + d * 8 * math.log(2)) / (d * math.log(2))
    if coupling == "additive":
        assert abs(want - 9.325748064) < 1e-8  # 8 + 0.5 * log2(2 pi)
    np.testing.assert_allclose(model.bits_per_dim(x), want, rtol=1e-6)
    np.testing.assert_allclose(zoo.bits_per_dim(model.log_prob(x), d), want, rtol=1e-6)


def test_data_init_standardises_the_first_actnorm_globally():
    model = _glow((1, 8, 8), levels=2, depth=2)
    xs = jax.random.uniform(jax.random.key(1), (32, 1, 8, 8)) ** 2
    model = eqx.filter_jit(zoo.data_init)(model, xs)
    first = model.bijection.levels[0].layers[0].layer(0).layers[0]  # level 1, step 1, ActNorm
    squeezed = (xs - 0.5).reshape(32, 1, 4, 2, 4, 2).transpose(0, 1, 3, 5, 2, 4).reshape(32, 4, 4, 4)
    np.testing.assert_allclose(first.loc, squeezed.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(jnp.exp(first.log_scale), squeezed.std(axis=(0, 2, 3)), rtol=1e-4)


def test_config_is_subclassable_and_checks_shapes():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class LUGlow(GlowConfig):
        mixing: str = "conv1x1_lu"

    model = LUGlow(levels=1, depth=2, width=8).build(input_shape=(1, 4, 4), key=KEY)
    assert isinstance(model.bijection.levels[0].layers[0].stacked.layers[1], Conv1x1LU)
    with pytest.raises(ValueError, match="divisible|divide"):
        GlowConfig(levels=3).build(input_shape=(1, 28, 28), key=KEY)
    with pytest.raises(zoo.RegistryError):
        GlowConfig(mixing="no_such_layer", levels=1, depth=1).build(input_shape=(1, 4, 4), key=KEY)
    with pytest.raises(ValueError, match="coupling"):
        GlowConfig(coupling="spline", levels=1, depth=1).build(input_shape=(1, 4, 4), key=KEY)
