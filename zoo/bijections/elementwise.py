"""Elementwise bijections: learned affine, and the logit/sigmoid preprocessing pair."""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from zoo.bijections.base import Bijection

__all__ = ["Affine", "Logit", "Sigmoid"]


class Affine(Bijection):
    """y = x * exp(log_scale) + shift, one learned scale and shift per element."""

    shift: Array
    log_scale: Array
    example_shape: ClassVar = (3, 2)

    def __init__(self, shape, *, key=None, shift=None, log_scale=None):
        shape = tuple(shape)
        self.shift = jnp.zeros(shape) if shift is None else jnp.asarray(shift)
        self.log_scale = jnp.zeros(shape) if log_scale is None else jnp.asarray(log_scale)

    def forward(self, x):
        return x * jnp.exp(self.log_scale) + self.shift, jnp.sum(self.log_scale)

    def inverse(self, y):
        return (y - self.shift) * jnp.exp(-self.log_scale), -jnp.sum(self.log_scale)


class Logit(Bijection):
    """y = logit(alpha + (1 - 2 alpha) x) for x in [0, 1].

    `alpha` keeps the logit finite at the edges (the SNF code uses 1e-6 on
    every dataset, `zoo.data.SNF_LOGIT_ALPHA`; RealNVP used 0.05 for CIFAR);
    its log-det is included, so likelihoods stay in the units of x.
    """

    alpha: float = eqx.field(static=True, default=0.0)
    example_shape: ClassVar = (5,)
    domain: ClassVar = (0.0, 1.0)

    def __init__(self, shape=None, *, key=None, alpha: float = 0.0):
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"Logit: alpha must be in [0, 0.5), got {alpha}")
        self.alpha = float(alpha)

    def forward(self, x):
        s = self.alpha + (1 - 2 * self.alpha) * x
        y = jnp.log(s) - jnp.log1p(-s)
        logdet = jnp.sum(jnp.log1p(-2 * self.alpha) - jnp.log(s) - jnp.log1p(-s))
        return y, logdet

    def inverse(self, y):
        s = jax.nn.sigmoid(y)
        x = (s - self.alpha) / (1 - 2 * self.alpha)
        # log ds/dy = log s + log(1-s) = -softplus(-y) - softplus(y)
        logdet = jnp.sum(-jax.nn.softplus(-y) - jax.nn.softplus(y) - jnp.log1p(-2 * self.alpha))
        return x, logdet

    def data_init(self, xs):
        return self, jax.vmap(self.forward)(xs)[0]


class Sigmoid(Bijection):
    """y = sigmoid(x): maps the real line into (0, 1); the inverse of `Logit()`."""

    example_shape: ClassVar = (5,)

    def __init__(self, shape=None, *, key=None):
        pass

    def forward(self, x):
        return jax.nn.sigmoid(x), jnp.sum(-jax.nn.softplus(-x) - jax.nn.softplus(x))

    def inverse(self, y):
        x = jnp.log(y) - jnp.log1p(-y)
        return x, jnp.sum(-jnp.log(y) - jnp.log1p(-y))
