"""`Flow` = bijection + base density; the model contract the trainer relies on.

A conditional flow models p(x | y): it has a `condition_shape` and every
method takes `condition=` for one example. The condition is encoded once, by
`encode_condition`, before it goes down to the layers.
"""

import inspect
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from zoo.bijections.base import Bijection
from zoo.distributions import Distribution

__all__ = ["Flow", "bits_per_dim", "call_with_key", "encode_condition", "condition_size"]


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


def encode_condition(condition, condition_shape: tuple[int, ...], *, dtype=None) -> Array:
    """The one encoding rule for the condition of ONE example: an integer
    scalar label with `condition_shape == (K,)` becomes `one_hot(label, K)`;
    a float array of shape `condition_shape` passes through (cast to
    `dtype`, default the default float). Anything else is a ValueError."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    shape = tuple(condition_shape)
    c = jnp.asarray(condition)
    if jnp.issubdtype(c.dtype, jnp.integer):  # (bool is not an integer dtype: rejected below)
        if c.shape == () and len(shape) == 1:
            return jax.nn.one_hot(c, shape[0], dtype=dtype)
        raise ValueError(
            f"condition: an integer condition must be one scalar label (condition_shape (K,)); "
            f"got shape {c.shape} for condition_shape {shape}"
        )
    if jnp.issubdtype(c.dtype, jnp.floating) and c.shape == shape:
        return c.astype(dtype)
    raise ValueError(
        f"condition: expected an integer label or a float array of shape {shape}, "
        f"got {c.dtype} of shape {c.shape}"
    )


def condition_size(condition_shape, *, model: str) -> int:
    """Length K of a vector condition (0 for an unconditional model); configs
    call it to validate their `condition_shape` field."""
    if condition_shape is None:
        return 0
    try:
        shape = tuple(int(s) for s in condition_shape)
    except (TypeError, ValueError):
        shape = None
    if shape is None or len(shape) != 1 or shape[0] < 1:
        raise ValueError(
            f"{model}: condition_shape must be (K,) with K >= 1 (e.g. (10,) for 10 classes), got {condition_shape!r}"
        )
    return shape[0]


def _shape_or_none(shape):
    return None if shape is None else tuple(int(s) for s in shape)


class Flow(eqx.Module):
    """A normalizing flow: `log_prob(x) = base.log_prob(z) + logdet`, where
    `(z, logdet) = bijection.forward(x)`. Every method acts on one example.

    With `condition_shape` set it is conditional, p(x | y): every method
    needs `condition=` (an integer label or a float array, see
    `encode_condition`), which reaches the layers that declare `condition`."""

    bijection: Bijection
    base: Distribution
    condition_shape: tuple[int, ...] | None = eqx.field(static=True, default=None, converter=_shape_or_none)

    def _encode(self, condition):
        if self.condition_shape is None:
            if condition is not None:
                raise ValueError("this model is unconditional (condition_shape None); do not pass condition=")
            return None
        if condition is None:
            raise ValueError(f"this model is conditional (condition_shape {self.condition_shape}); pass condition=")
        floats = jax.tree.leaves(eqx.filter(self, eqx.is_inexact_array))
        return encode_condition(condition, self.condition_shape, dtype=floats[0].dtype if floats else None)

    def _call(self, method, x, condition):
        c = self._encode(condition)
        fn = getattr(self.bijection, method)
        return fn(x) if c is None else fn(x, condition=c)

    def forward(self, x, *, condition=None):
        return self._call("forward", x, condition)

    def inverse(self, z, *, condition=None):
        return self._call("inverse", z, condition)

    def log_prob(self, x, *, condition=None):
        z, logdet = self._call("forward", x, condition)
        return self.base.log_prob(z) + logdet

    def sample(self, key, *, condition=None, temperature: float = 1.0):
        return self._call("inverse", self.base.sample(key, temperature=temperature), condition)[0]

    def bits_per_dim(self, x, *, condition=None, n_bits: int = 8):
        """For images scaled to [0, 1] (the convention of DESIGN.md section 4)."""
        return bits_per_dim(self.log_prob(x, condition=condition), x.size, n_bits=n_bits)

    def loss(self, x, *, key=None, condition=None):
        """The trainer's objective for one example: (-log p(x), metrics)."""
        lp = self.log_prob(x, condition=condition)
        return -lp, {"log_prob": lp}

    def data_init(self, xs, *, condition=None):
        """`condition`: the batch's conditions (leading axis), as `log_prob` takes them one by one."""
        if condition is None:
            self._encode(None)  # a conditional model refuses to initialise without its conditions
            bijection, zs = self.bijection.data_init(xs)
        else:
            bijection, zs = self.bijection.data_init(xs, condition=jax.vmap(self._encode)(condition))
        return eqx.tree_at(lambda f: f.bijection, self, bijection), zs
