"""Glow's invertible 1x1 convolution: a dense C x C matrix mixing channels at every pixel."""

from typing import ClassVar

import jax
import jax.numpy as jnp
from jax import Array

from zoo.bijections import Bijection, LULinear

__all__ = ["Conv1x1", "Conv1x1LU"]


def _pixels(x: Array) -> int:
    return x.size // x.shape[0]


class Conv1x1(Bijection):
    """y[:, i, j] = W x[:, i, j] with a dense C x C `weight`, started at a random
    rotation (Glow). log|det| = H*W*log|det W| by `slogdet`, O(C^3) per call.
    Acts on axis 0 of any shape (`(C,)` vectors are a 1 x 1 image)."""

    weight: Array
    example_shape: ClassVar = (4, 3, 3)

    def __init__(self, shape, *, key):
        c = shape[0]
        self.weight = jnp.linalg.qr(jax.random.normal(key, (c, c)))[0]

    def forward(self, x):
        y = jnp.tensordot(self.weight, x, axes=1)
        return y, jnp.linalg.slogdet(self.weight)[1] * _pixels(x)

    def inverse(self, y):
        x = jnp.tensordot(jnp.linalg.inv(self.weight), y, axes=1)
        return x, -jnp.linalg.slogdet(self.weight)[1] * _pixels(y)


class Conv1x1LU(Bijection):
    """Glow's LU-parametrised 1x1 convolution, W = P L (U + diag(sign exp(log_s))):
    log|det| = H*W*sum(log_s), O(C). A thin image-facing wrapper of
    `zoo.bijections.LULinear`, which already acts on axis 0."""

    lu: LULinear
    example_shape: ClassVar = (4, 3, 3)

    def __init__(self, shape, *, key):
        self.lu = LULinear(shape, key=key)

    def weight(self) -> Array:
        return self.lu.weight()

    def forward(self, x):
        return self.lu.forward(x)

    def inverse(self, y):
        return self.lu.inverse(y)
