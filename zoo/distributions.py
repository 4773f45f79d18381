"""Base densities for flows. Each acts on one unbatched event of shape `shape`."""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

__all__ = ["Distribution", "StandardNormal", "DiagNormal"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Distribution(eqx.Module):
    shape: eqx.AbstractVar[tuple[int, ...]]

    @abc.abstractmethod
    def log_prob(self, x: Array) -> Array:
        """Log density of one event (a scalar)."""

    @abc.abstractmethod
    def sample(self, key, *, temperature: float = 1.0) -> Array:
        """One event; `temperature` scales the standard deviation (Glow's T)."""


class StandardNormal(Distribution):
    """N(0, I) over any event shape."""

    shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, shape):
        self.shape = tuple(shape)

    def log_prob(self, x):
        return -0.5 * jnp.sum(x**2) - x.size * _HALF_LOG_2PI

    def sample(self, key, *, temperature=1.0):
        return temperature * jax.random.normal(key, self.shape)


class DiagNormal(Distribution):
    """N(loc, diag(exp(log_scale))^2) with learnable loc and log_scale."""

    loc: Array
    log_scale: Array
    shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, loc, log_scale):
        self.loc = jnp.asarray(loc)
        self.log_scale = jnp.asarray(log_scale)
        if self.loc.shape != self.log_scale.shape:
            raise ValueError(f"DiagNormal: loc {self.loc.shape} vs log_scale {self.log_scale.shape}")
        self.shape = self.loc.shape

    def log_prob(self, x):
        z = (x - self.loc) * jnp.exp(-self.log_scale)
        return -0.5 * jnp.sum(z**2) - jnp.sum(self.log_scale) - x.size * _HALF_LOG_2PI

    def sample(self, key, *, temperature=1.0):
        eps = jax.random.normal(key, self.shape)
        return self.loc + temperature * jnp.exp(self.log_scale) * eps
