"""zoo.nn.Conv2d against jax.lax's convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.nn import Conv2d


@pytest.mark.parametrize("k", [1, 3, 5])
def test_conv2d_matches_lax_same_convolution(k):
    conv = Conv2d(3, 4, k, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 6, 5))
    want = jax.lax.conv_general_dilated(x[None], conv.weight, (1, 1), "SAME")[0] + conv.bias[:, None, None]
    np.testing.assert_allclose(conv(x), want, rtol=1e-5, atol=1e-5)


def test_conv2d_zero_init_and_even_kernel():
    conv = Conv2d(2, 3, 3, key=jax.random.key(0), zero_init=True)
    assert not np.any(conv(jnp.ones((2, 4, 4))))
    with pytest.raises(ValueError, match="odd"):
        Conv2d(2, 3, 2, key=jax.random.key(0))
