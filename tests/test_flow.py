"""Distributions, Flow, bits/dim and the model conformance check."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.bijections import ActNorm, AffineCoupling, Chain, Identity, Reverse
from zoo.distributions import DiagNormal, StandardNormal
from zoo.testing import check_flow

KEY = jax.random.key(0)


def test_standard_normal_log_prob_and_temperature():
    base = StandardNormal((2,))
    assert float(base.log_prob(jnp.array([1.0, 2.0]))) == pytest.approx(-2.5 - math.log(2 * math.pi), rel=1e-6)
    s = jax.vmap(lambda k: base.sample(k, temperature=0.5))(jax.random.split(KEY, 20000))
    assert s.shape == (20000, 2)
    np.testing.assert_allclose(np.std(s, axis=0), 0.5, rtol=0.03)


def test_diag_normal_log_prob():
    d = DiagNormal(jnp.array([1.0, -1.0]), jnp.log(jnp.array([2.0, 0.5])))
    x = jnp.array([3.0, -1.5])
    # N(3; 1, 2^2) + N(-1.5; -1, 0.5^2): z = (1, -1)
    want = -0.5 * 2 - math.log(2.0) - math.log(0.5) - math.log(2 * math.pi)
    assert float(d.log_prob(x)) == pytest.approx(want, rel=1e-6)
    s = jax.vmap(lambda k: d.sample(k))(jax.random.split(KEY, 20000))
    np.testing.assert_allclose(np.mean(s, 0), [1.0, -1.0], atol=0.05)
    np.testing.assert_allclose(np.std(s, 0), [2.0, 0.5], rtol=0.03)
    with pytest.raises(ValueError):
        DiagNormal(jnp.zeros(2), jnp.zeros(3))


def test_bits_per_dim_hand_value():
    # Identity flow on a 784-dim image scaled to [0, 1]: log p = N(x; 0, I).
    flow = zoo.Flow(Identity(), StandardNormal((1, 28, 28)))
    x = jnp.full((1, 28, 28), 0.5)
    log_p = -0.5 * 784 * 0.25 - 784 * 0.5 * math.log(2 * math.pi)
    want = (-log_p + 784 * math.log(256)) / (784 * math.log(2))
    assert float(flow.bits_per_dim(x)) == pytest.approx(want, rel=1e-6)
    # = nats/dim / ln 2 + 8 for 8-bit data
    assert float(flow.bits_per_dim(x)) == pytest.approx(-log_p / 784 / math.log(2) + 8, rel=1e-6)
    assert float(zoo.bits_per_dim(jnp.array(-1000.0), 784, n_bits=5)) == pytest.approx(
        1000 / (784 * math.log(2)) + 5, rel=1e-6
    )


def _small_flow(d=2):
    keys = jax.random.split(KEY, 3)
    layers = []
    for k in keys:
        layers += [ActNorm((d,)), AffineCoupling((d,), key=k, width=16, scale="exp"), Reverse()]
    return zoo.Flow(Chain(layers), StandardNormal((d,)))


def test_flow_contract_and_density_integrates_to_one():
    flow = _small_flow()
    check_flow(flow, jnp.array([0.3, -0.7]))


def test_flow_sample_is_inverse_of_base_sample_and_loss_is_nll():
    flow = _small_flow(3)
    x = flow.sample(KEY)
    z = flow.base.sample(KEY)
    np.testing.assert_allclose(flow.forward(x)[0], z, rtol=1e-4, atol=1e-5)
    loss, aux = flow.loss(x)
    assert float(loss) == pytest.approx(-float(flow.log_prob(x)))
    assert float(aux["log_prob"]) == pytest.approx(float(flow.log_prob(x)))


def test_check_flow_catches_a_density_that_does_not_normalise():
    class Unnormalised(StandardNormal):
        def log_prob(self, x):
            return super().log_prob(x) + 0.5  # integrates to e^0.5

    bad = zoo.Flow(Identity(), Unnormalised((2,)))
    with pytest.raises(AssertionError, match="integrates to 1.6"):
        check_flow(bad, jnp.array([0.1, 0.2]))
