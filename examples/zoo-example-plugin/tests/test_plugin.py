"""The plugin's own tests: zoo's conformance kit checks the math, and the
registry checks that the installed entry points are found.

Run after `uv pip install -e .` into zoo's environment (entry points exist
only once installed):
    ../../.venv/bin/python -m pytest
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.testing import check_bijection, check_flow
from zoo_example_plugin import ExampleFlowConfig, LeakyReLU


def test_leaky_relu_contract():
    layer = LeakyReLU(LeakyReLU.example_shape, key=jax.random.key(0))
    # Mixed signs, so both branches and the log-det are exercised.
    x = jnp.array([-1.5, -0.3, 0.2, 0.7, 2.0])
    check_bijection(layer, x)


def test_leaky_relu_logdet_counts_negative_entries():
    layer = LeakyReLU((3,), negative_slope=0.25)
    y, logdet = layer.forward(jnp.array([-2.0, -1.0, 3.0]))
    np.testing.assert_allclose(y, [-0.5, -0.25, 3.0], rtol=1e-6)
    np.testing.assert_allclose(logdet, 2 * np.log(0.25), rtol=1e-6)


def test_leaky_relu_rejects_non_positive_slope():
    with pytest.raises(ValueError, match="negative_slope"):
        LeakyReLU((3,), negative_slope=0.0)


def test_example_flow_contract():
    model = ExampleFlowConfig(num_blocks=2, width=8).build(
        input_shape=ExampleFlowConfig.example_input_shape, key=jax.random.key(1)
    )
    # check_flow also integrates exp(log_prob) over a grid for 2-D data.
    check_flow(model, jnp.array([0.3, -0.8]))


def test_registered_through_entry_points():
    assert "example_flow" in zoo.list_models()
    assert "example_leaky_relu" in zoo.list_layers()
    assert zoo.get_layer("example_leaky_relu") is LeakyReLU
    model = zoo.create_model("example_flow", key=jax.random.key(2), input_shape=(3,), num_blocks=1)
    assert model.sample(jax.random.key(3)).shape == (3,)
