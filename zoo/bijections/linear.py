"""Dense invertible linear map with an LU parametrisation (Kingma & Dhariwal 2018)."""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from zoo.bijections.base import Bijection

__all__ = ["LULinear"]


class LULinear(Bijection):
    """y = W x along axis 0 with W = P L (U + diag(sign * exp(log_s))).

    For a C x H x W image this is Glow's invertible 1x1 convolution: the
    same W mixes channels at every pixel and the log-det is H*W*sum(log_s),
    O(C) instead of O(C^3). P and sign are fixed (integer arrays, so optimisers
    that train inexact arrays leave them alone).
    """

    lower: Array
    upper: Array
    log_s: Array
    sign: Array
    perm: Array
    example_shape: ClassVar = (4, 2)

    def __init__(self, shape, *, key):
        c = shape[0]
        # Start from a random rotation, as Glow does, then factorise it.
        w = jnp.linalg.qr(jax.random.normal(key, (c, c)))[0]
        p, lower, upper = jax.scipy.linalg.lu(w)
        s = jnp.diag(upper)
        self.lower = jnp.tril(lower, -1)
        self.upper = jnp.triu(upper, 1)
        self.log_s = jnp.log(jnp.abs(s))
        self.sign = jnp.sign(s).astype(jnp.int8)
        self.perm = jnp.argmax(p, axis=1).astype(jnp.int32)  # (P h)[i] = h[perm[i]]

    def _factors(self):
        c = self.log_s.shape[0]
        eye = jnp.eye(c, dtype=self.lower.dtype)
        lower = jnp.tril(self.lower, -1) + eye
        upper = jnp.triu(self.upper, 1) + jnp.diag(self.sign * jnp.exp(self.log_s))
        return lower, upper

    def weight(self) -> Array:
        lower, upper = self._factors()
        return (lower @ upper)[self.perm]

    def forward(self, x):
        w = self.weight()
        y = jnp.tensordot(w, x, axes=1)
        return y, jnp.sum(self.log_s) * (x.size // x.shape[0])

    def inverse(self, y):
        lower, upper = self._factors()
        flat = y.reshape(y.shape[0], -1)
        # y = (L U x)[perm]  =>  L U x = y[argsort(perm)]
        h = flat[jnp.argsort(self.perm)]
        h = jax.scipy.linalg.solve_triangular(lower, h, lower=True, unit_diagonal=True)
        x = jax.scipy.linalg.solve_triangular(upper, h, lower=False)
        return x.reshape(y.shape), -jnp.sum(self.log_s) * (y.size // y.shape[0])
