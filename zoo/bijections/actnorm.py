"""ActNorm (Kingma & Dhariwal 2018): per-channel affine with data-dependent init."""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from zoo.bijections.base import Bijection

__all__ = ["ActNorm"]


class ActNorm(Bijection):
    """y = (x - loc) * exp(-log_scale), one (loc, log_scale) per entry of axis 0
    (features for vectors, channels for C x H x W images), shared over the rest.

    `data_init` sets loc/scale to the batch mean/std so the output starts
    standardised; it is pure, so jit it on the global batch and the
    statistics are global across devices and saved with the parameters.
    """

    loc: Array
    log_scale: Array
    example_shape: ClassVar = (3, 2, 2)

    def __init__(self, shape, *, key=None):
        self.loc = jnp.zeros(shape[0])
        self.log_scale = jnp.zeros(shape[0])

    def _bcast(self, a, x):
        return a.reshape(a.shape + (1,) * (x.ndim - 1))

    def forward(self, x):
        y = (x - self._bcast(self.loc, x)) * jnp.exp(-self._bcast(self.log_scale, x))
        return y, -jnp.sum(self.log_scale) * (x.size // x.shape[0])

    def inverse(self, y):
        x = y * jnp.exp(self._bcast(self.log_scale, y)) + self._bcast(self.loc, y)
        return x, jnp.sum(self.log_scale) * (y.size // y.shape[0])

    def data_init(self, xs):
        # statistics per axis-0 entry over the batch and any trailing axes
        axes = (0,) + tuple(range(2, xs.ndim))
        loc = jnp.mean(xs, axis=axes)
        std = jnp.std(xs, axis=axes)
        log_scale = jnp.log(std + 1e-6)
        new = eqx.tree_at(
            lambda m: (m.loc, m.log_scale),
            self,
            (loc.astype(self.loc.dtype), log_scale.astype(self.log_scale.dtype)),
        )
        return new, jax.vmap(new.forward)(xs)[0]
