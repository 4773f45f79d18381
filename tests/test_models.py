"""Every registered model, first-party or plugin, against the conformance kit."""

import jax
import pytest

import zoo
from zoo.testing import check_flow, example_input


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_registered_model_conforms(name):
    config = zoo.get_model_config(name)
    shape = getattr(config, "example_input_shape", None)
    assert shape is not None, f"model {name!r}: its config must declare example_input_shape (a ClassVar)"
    overrides = dict(getattr(config, "example_overrides", {}))  # small sizes for the check
    model = zoo.create_model(name, key=jax.random.key(0), input_shape=shape, **overrides)
    check_flow(model, example_input(config, shape))
