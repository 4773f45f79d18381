"""`Flow` = bijection + base density; the model contract the trainer relies on."""

import inspect
import math

import equinox as eqx
from jax import Array

from zoo.bijections.base import Bijection
from zoo.distributions import Distribution

__all__ = ["Flow", "bits_per_dim", "call_with_key"]


def call_with_key(fn, *args, key, **kwargs):
    """Call a model method, passing `key` only if it takes one: exact flows'
    `log_prob(x)` does not, a VAE's importance-sampled `log_prob(x, *, key)` does."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "key" in params:
        kwargs["key"] = key
    return fn(*args, **kwargs)


def bits_per_dim(log_prob: Array, num_dims: int, *, n_bits: int = 8) -> Array:
    """Bits per dimension of discrete `n_bits` data from the log density of the
    data scaled to [0, 1]: (-log p(x) + D log 2^n_bits) / (D log 2)."""
    return (-log_prob + num_dims * n_bits * math.log(2.0)) / (num_dims * math.log(2.0))


class Flow(eqx.Module):
    """A normalizing flow: `log_prob(x) = base.log_prob(z) + logdet`, where
    `(z, logdet) = bijection.forward(x)`. Every method acts on one example."""

    bijection: Bijection
    base: Distribution

    def forward(self, x):
        return self.bijection.forward(x)

    def inverse(self, z):
        return self.bijection.inverse(z)

    def log_prob(self, x):
        z, logdet = self.bijection.forward(x)
        return self.base.log_prob(z) + logdet

    def sample(self, key, *, temperature: float = 1.0):
        return self.bijection.inverse(self.base.sample(key, temperature=temperature))[0]

    def bits_per_dim(self, x, *, n_bits: int = 8):
        """For images scaled to [0, 1] (the convention of DESIGN.md section 4)."""
        return bits_per_dim(self.log_prob(x), x.size, n_bits=n_bits)

    def loss(self, x, *, key=None):
        """The trainer's objective for one example: (-log p(x), metrics)."""
        lp = self.log_prob(x)
        return -lp, {"log_prob": lp}

    def data_init(self, xs):
        bijection, zs = self.bijection.data_init(xs)
        return eqx.tree_at(lambda f: f.bijection, self, bijection), zs
