"""Conditional density estimation p(x | y): the `condition` contract of layers
and containers, conditional couplings / MADE, `Flow.condition_shape` and its
encoding rule, conditional RealNVP/MAF/NSF/Glow, and check_flow under conditions."""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.bijections import ActNorm, AffineCoupling, Bijection, Chain, Reverse, SplineCoupling, call, takes_condition
from zoo.checkpoint import config_from_json, config_to_json
from zoo.distributions import StandardNormal
from zoo.flow import encode_condition
from zoo.testing import brute_force_logdet, check_bijection, check_flow
from zoo_classic.maf import MaskedAffine
from zoo_classic.models import MAFConfig, NSFConfig, RealNVPConfig
from zoo_glow import GlowConfig

KEY = jax.random.key(0)
SMALL = dict(num_layers=2, width=8, depth=1, condition_shape=(3,))
GLOW = dict(levels=2, depth=2, width=8, condition_shape=(3,))


def _perturbed(module, scale=0.3, seed=0):
    params, static = eqx.partition(module, eqx.is_inexact_array)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: a + scale * jnp.asarray(rng.standard_normal(a.shape), a.dtype), params)
    return eqx.combine(params, static)


class ThirdPartyLeakyReLU(Bijection):
    """A layer written before conditions existed: forward(self, x) only."""

    log_slope: jax.Array
    example_shape: ClassVar = (4,)

    def __init__(self, shape=None, *, key=None):
        self.log_slope = jnp.log(jnp.asarray(0.5))

    def forward(self, x):
        neg = x < 0
        return jnp.where(neg, x * jnp.exp(self.log_slope), x), jnp.sum(neg) * self.log_slope

    def inverse(self, y):
        neg = y < 0
        return jnp.where(neg, y * jnp.exp(-self.log_slope), y), -jnp.sum(neg) * self.log_slope


# ------------------------------------------------------------------ layers


def test_conditional_layers_need_their_condition_and_image_couplings_conform():
    # (vector couplings and MADE under a condition: the classic models' check_flow below)
    x = jnp.array([0.3, -1.2, 0.7, 2.0])
    for layer in (
        AffineCoupling((4,), key=KEY, scale="exp", width=8, depth=1, condition_size=3),
        SplineCoupling((4,), key=KEY, width=8, depth=1, condition_size=3),
        MaskedAffine((4,), key=KEY, width=8, depth=1, condition_size=3),
    ):
        assert takes_condition(layer) and takes_condition(layer, "inverse")
        for method in (layer.forward, layer.inverse):
            with pytest.raises(ValueError, match="condition_size=3; pass condition="):
                method(x)
    assert not takes_condition(ActNorm((4,)))
    # images: the condition is broadcast to 3 extra constant channels of the conditioner's input
    # (exactness of conditional image couplings under a condition: the Glow test below)
    img = _perturbed(AffineCoupling((2, 4, 4), key=KEY, width=8, condition_size=3))
    assert img.conditioner.conv_in.weight.shape[1] == 1 + 3
    x, c = jax.random.normal(KEY, (2, 4, 4)), jnp.array([0.5, -1.0, 2.0])
    h = img.conditioner(jnp.concatenate([x[:1], jnp.broadcast_to(c[:, None, None], (3, 4, 4))]))
    log_s = jax.nn.log_sigmoid(h[1:] + 2.0)
    y, ld = img.forward(x, condition=c)
    np.testing.assert_allclose(y[1:], x[1:] * jnp.exp(log_s) + h[:1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ld, jnp.sum(log_s), rtol=1e-5)
    np.testing.assert_allclose(img.inverse(y, condition=c)[0], x, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        img.forward(x, condition=jnp.zeros(2))


def test_made_context_reaches_every_output_and_keeps_it_autoregressive():
    with jax.enable_x64(True):
        layer = _perturbed(MaskedAffine((4,), key=KEY, width=8, depth=2, condition_size=2).made)
        layer = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, layer)
        x, c = jnp.array([0.3, -1.2, 0.7, 2.0]), jnp.array([0.4, -0.6])
        dx, dc = jax.jacfwd(lambda x, c: layer(x, c), argnums=(0, 1))(x, c)  # (2, 4, 4), (2, 4, 2)
        # output i depends on x_<i only (strictly lower triangular), and on all of the context
        assert np.all(np.triu(np.abs(np.asarray(dx)).sum(0)) == 0)
        assert np.all(np.abs(np.asarray(dc)).sum(-1) > 0)


def test_unconditional_third_party_layer_inside_a_conditional_chain():
    keys = jax.random.split(KEY, 2)
    chain = Chain([
        AffineCoupling((4,), key=keys[0], scale="exp", width=8, depth=1, condition_size=3),
        ThirdPartyLeakyReLU(),
        Reverse((4,)),
        AffineCoupling((4,), key=keys[1], scale="exp", width=8, depth=1, condition_size=3),
        ThirdPartyLeakyReLU(),
    ])
    assert not takes_condition(chain.layers[1])
    x = jnp.array([0.3, -1.2, 0.7, -2.0])
    check_bijection(chain, x, condition=jnp.array([1.0, 0.0, 0.0]))
    # the condition reaches both couplings: once their zero last layers are perturbed it changes the output
    chain = _perturbed(chain)
    y1 = chain.forward(x, condition=jnp.array([1.0, 0.0, 0.0]))[0]
    y2 = chain.forward(x, condition=jnp.array([0.0, 1.0, 0.0]))[0]
    assert not np.allclose(y1, y2)
    # Invert hands the condition on too (forward <-> inverse)
    inv = zoo.bijections.Invert(chain)
    np.testing.assert_allclose(inv.inverse(x, condition=jnp.ones(3))[0], chain.forward(x, condition=jnp.ones(3))[0])


def test_without_a_condition_containers_trace_exactly_as_before():
    layers = [ActNorm((4,)), AffineCoupling((4,), key=KEY, width=8, depth=1), ThirdPartyLeakyReLU(), Reverse((4,))]
    chain = Chain(layers, scan=False)

    def by_hand(x):  # what Chain.forward did before conditions existed
        total = jnp.zeros((), x.dtype)
        for layer in layers:
            x, ld = layer.forward(x)
            total = total + ld
        return x, total

    x, c = jnp.ones(4), jnp.ones(3)
    assert str(jax.make_jaxpr(chain.forward)(x)) == str(jax.make_jaxpr(by_hand)(x))
    # a layer that does not declare `condition` is called plainly even when one is given
    assert str(jax.make_jaxpr(lambda v: call(layers[2], "forward", v, c))(x)) == str(
        jax.make_jaxpr(layers[2].forward)(x)
    )


# ------------------------------------------------------------------ models


@pytest.mark.parametrize("config", [RealNVPConfig, MAFConfig, NSFConfig], ids=["realnvp", "maf", "nsf"])
def test_conditional_classic_models_conform_and_integrate_to_one_under_two_conditions(config):
    model = config(**SMALL).build(input_shape=(2,), key=KEY)
    assert model.condition_shape == (3,)
    # check_flow draws two conditions: every check (log-det vs Jacobian, inverse, grid
    # integral = 1) passes under each, and log_prob(x) differs between them
    check_flow(model, jnp.array([0.3, -0.5]), grid=120)


@eqx.filter_jit
def _glow_exactness(model, x, c):
    z, ld = model.forward(x, condition=c)
    x_rec, ld_inv = model.inverse(z, condition=c)
    return x_rec, ld, ld_inv, brute_force_logdet(lambda v: model.forward(v, condition=c)[0], x)


def test_conditional_glow_logdet_and_a_learned_top_prior_per_class():
    model = GlowConfig(**GLOW).build(input_shape=(1, 4, 4), key=KEY)
    glow = model.bijection
    # the top prior (8 channels): column 0 class-independent, then one column per class, all zero at init
    assert glow.top_loc.shape == glow.top_log_scale.shape == (8, 1 + 3) and not np.any(glow.top_loc)
    x = jax.random.uniform(jax.random.key(1), (1, 4, 4))
    # exact under a condition, with every weight (the conditioners' condition channels included) nonzero
    # (the leaner half of check_bijection: Glow's full check runs in test_glow)
    with jax.enable_x64(True):
        m64 = _perturbed(jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model), 0.1)
        x64 = x.astype(jnp.float64)
        for c in (jnp.array([0.0, 1.0, 0.0]), jnp.array([1.0, 0.0, 0.0])):
            x_rec, ld, ld_inv, brute = _glow_exactness(m64, x64, c)
            np.testing.assert_allclose(x_rec, x64, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(ld, brute, rtol=1e-8)
            np.testing.assert_allclose(ld_inv, -ld, rtol=1e-10)
        assert abs(float(ld - _glow_exactness(m64, x64, jnp.array([0.0, 1.0, 0.0]))[1])) > 1e-6

    @eqx.filter_jit
    def per_class(m, y):
        return m.log_prob(x, condition=y), m.sample(jax.random.key(2), condition=y)

    # zero-initialised: every class starts with the same density
    (lp0, s0), (lp1, s1) = per_class(model, jnp.int32(0)), per_class(model, jnp.int32(1))
    np.testing.assert_allclose(lp0, lp1, rtol=1e-6)
    np.testing.assert_allclose(s0, s1, rtol=1e-5)
    # with nonzero weights each class has its own top prior
    loc, log_scale = 0.5 * jax.random.normal(jax.random.key(3), (2, 8, 4))
    model = eqx.tree_at(lambda m: (m.bijection.top_loc, m.bijection.top_log_scale), model, (loc, log_scale))
    (lp0, s0), (lp1, s1) = per_class(model, jnp.int32(0)), per_class(model, jnp.int32(1))
    assert abs(float(lp0 - lp1)) > 1e-3
    assert not np.allclose(s0, s1)
    # class k's top prior: N(loc[:, 0] + loc[:, 1 + k], exp(log_scale[:, 0] + log_scale[:, 1 + k])^2);
    # with zero weights the top latent is the raw top activation h
    z = model.forward(x, condition=1)[0][-8:]  # the top latent (8 x 1 x 1) is last
    h = glow.forward(x, condition=jax.nn.one_hot(1, 3))[0][-8:]
    want = (h - loc[:, 0] - loc[:, 2]) * jnp.exp(-log_scale[:, 0] - log_scale[:, 2])
    np.testing.assert_allclose(z, want, rtol=1e-5, atol=1e-6)


def test_glow_data_init_threads_the_condition():
    model = GlowConfig(**GLOW).build(input_shape=(1, 4, 4), key=KEY)
    xs = jax.random.uniform(jax.random.key(1), (16, 1, 4, 4))
    labels = jnp.arange(16) % 3
    inited = eqx.filter_jit(zoo.data_init)(model, xs, condition=labels)
    first = inited.bijection.levels[0].layers[0].layer(0).layers[0]  # level 1, step 1, ActNorm
    assert np.any(first.loc != 0) and np.all(np.isfinite(first.log_scale))
    with pytest.raises(ValueError, match="this model is conditional"):
        zoo.data_init(model, xs)


def test_integer_labels_are_one_hot_and_bad_conditions_are_clear_errors():
    model = _perturbed(RealNVPConfig(**SMALL).build(input_shape=(2,), key=KEY))
    x = jnp.array([0.3, -0.5])
    np.testing.assert_allclose(model.log_prob(x, condition=2), model.log_prob(x, condition=jax.nn.one_hot(2, 3)))
    np.testing.assert_allclose(
        model.sample(KEY, condition=jnp.int32(1)), model.sample(KEY, condition=jnp.array([0.0, 1.0, 0.0]))
    )
    assert not np.allclose(model.log_prob(x, condition=0), model.log_prob(x, condition=1))
    enc = encode_condition(jnp.int8(1), (3,), dtype=jnp.float32)
    assert enc.dtype == jnp.float32 and enc.tolist() == [0.0, 1.0, 0.0]
    for bad in (jnp.array([0, 1, 0]), jnp.zeros(2), jnp.array(True), 1.5):
        with pytest.raises(ValueError, match="condition"):
            encode_condition(bad, (3,))
    # condition=None on a conditional model, and a condition on an unconditional one
    for method in (lambda: model.log_prob(x), lambda: model.sample(KEY), lambda: model.loss(x, key=KEY)):
        with pytest.raises(ValueError, match=r"this model is conditional \(condition_shape \(3,\)\); pass condition="):
            method()
    plain = RealNVPConfig(num_layers=1, width=8).build(input_shape=(2,), key=KEY)
    assert plain.condition_shape is None
    with pytest.raises(ValueError, match="unconditional"):
        plain.log_prob(x, condition=1)
    with pytest.raises(ValueError, match="condition_shape must be"):
        RealNVPConfig(condition_shape=(2, 3)).build(input_shape=(2,), key=KEY)


@pytest.mark.parametrize("config", [RealNVPConfig, MAFConfig], ids=["realnvp", "maf"])
def test_gradient_reaches_the_condition_weights(config):
    model = _perturbed(config(**SMALL).build(input_shape=(2,), key=KEY))
    grads = eqx.filter_grad(lambda m: m.loss(jnp.array([0.3, -0.5]), key=KEY, condition=1)[0])(model)
    block = grads.bijection.layers[0].stacked  # the scanned block; arrays carry the layer axis
    if config is MAFConfig:
        g = block.layers[1].made.layers[0].weight[..., 2:]  # MADE's first layer: columns of the context
    else:
        g = block.layers[1].conditioner.mlp.layers[0].weight[..., 1:]  # MLP input = (x1, condition)
    assert g.shape[-1] == 3
    assert np.all(np.isfinite(g)) and np.any(g != 0)


def test_condition_shape_round_trips_through_the_checkpoint(tmp_path):
    for name, cfg in [("realnvp", RealNVPConfig(**SMALL)), ("glow", GlowConfig(**{**GLOW, "condition_shape": (10,)}))]:
        back = config_from_json(name, config_to_json(cfg))
        assert back == cfg and back.condition_shape == cfg.condition_shape
    cfg = RealNVPConfig(num_layers=1, width=8, condition_shape=(10,))
    model = _perturbed(cfg.build(input_shape=(2,), key=KEY))
    path = zoo.save_pretrained(model, tmp_path / "cond", config=cfg, input_shape=(2,))
    loaded = zoo.load_pretrained(path)
    assert loaded.condition_shape == (10,)
    x = jnp.array([0.3, -0.5])
    np.testing.assert_allclose(loaded.log_prob(x, condition=7), model.log_prob(x, condition=7), rtol=1e-6)


def test_conditional_selfnorm_glow_threads_the_condition():
    model = zoo.create_model(
        "selfnorm_glow", key=KEY, input_shape=(1, 4, 4), levels=1, depth=1, width=4, condition_shape=(2,)
    )
    assert model.condition_shape == (2,)
    loc = jax.random.normal(jax.random.key(3), (4, 1 + 2))  # a top prior per class
    model = eqx.tree_at(lambda m: m.model.bijection.top_loc, model, loc)
    x = jax.random.uniform(jax.random.key(1), (1, 4, 4))

    @eqx.filter_jit
    def run(m, y):
        return m.loss(x, key=KEY, condition=y)[0], m.log_prob(x, condition=y), m.sample(KEY, condition=y)

    (l0, lp0, s0), (l1, lp1, _) = run(model, jnp.int32(0)), run(model, jnp.int32(1))
    assert np.isfinite(l0) and s0.shape == x.shape
    assert float(lp0) != float(lp1) and float(l0) != float(l1)


def test_check_flow_catches_a_container_that_drops_the_condition():
    class Forgetful(Bijection):  # a container that forgets to hand the condition on
        inner: Bijection

        def forward(self, x, *, condition=None):
            return self.inner.forward(x)  # bug: condition not handed on

        def inverse(self, y, *, condition=None):
            return self.inner.inverse(y)

    coupling = AffineCoupling((2,), key=KEY, scale="exp", width=8, depth=1)
    model = zoo.Flow(Forgetful(coupling), StandardNormal((2,)), condition_shape=(3,))
    with pytest.raises(AssertionError, match="condition has no effect"):
        check_flow(model, jnp.array([0.3, -0.5]), integrate_atol=None)
