"""The plugin's layer: an invertible leaky ReLU with a learned slope."""

from typing import ClassVar

import jax.numpy as jnp
from jax import Array

from zoo.bijections import Bijection


class LeakyReLU(Bijection):
    """y = x for x >= 0 and y = a * x for x < 0, with a learned slope a > 0.

    The slope is stored as `log_slope` so training can never make it zero or
    negative (which would break invertibility). The Jacobian is diagonal, so
    log|det dy/dx| = log(a) * (number of negative elements).
    """

    log_slope: Array
    # The conformance tests build `LeakyReLU(example_shape, key=...)` and check it on one example.
    example_shape: ClassVar = (5,)

    def __init__(self, shape=None, *, key=None, negative_slope: float = 0.1):
        # Elementwise with one shared slope: `shape` and `key` are accepted
        # because every zoo layer is built as `Layer(shape, *, key, **options)`.
        if not negative_slope > 0:
            raise ValueError(f"LeakyReLU: negative_slope must be > 0, got {negative_slope}")
        self.log_slope = jnp.log(jnp.asarray(negative_slope, dtype=float))

    def forward(self, x):
        # Data -> base direction, on ONE unbatched example.
        neg = x < 0
        y = jnp.where(neg, x * jnp.exp(self.log_slope), x)
        return y, jnp.sum(neg) * self.log_slope.astype(x.dtype)

    def inverse(self, y):
        # a > 0 keeps the sign, so the sign of y tells which branch x was on.
        neg = y < 0
        x = jnp.where(neg, y * jnp.exp(-self.log_slope), y)
        return x, -jnp.sum(neg) * self.log_slope.astype(y.dtype)
