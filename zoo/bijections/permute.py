"""Permutations along axis 0 (features of a vector, channels of an image)."""

from typing import ClassVar

import jax
import jax.numpy as jnp
from jax import Array

from zoo.bijections.base import Bijection

__all__ = ["Reverse", "Permute"]


class Reverse(Bijection):
    """Reverse the order of axis 0. Volume preserving."""

    example_shape: ClassVar = (5,)

    def __init__(self, shape=None, *, key=None):
        pass

    def forward(self, x):
        return x[::-1], jnp.zeros((), x.dtype)

    def inverse(self, y):
        return y[::-1], jnp.zeros((), y.dtype)


class Permute(Bijection):
    """y = x[perm] along axis 0; a random permutation unless `perm` is given.

    The permutation is an integer array, so it is saved with the model and
    never trained.
    """

    perm: Array
    inv_perm: Array
    example_shape: ClassVar = (5, 2)

    def __init__(self, shape=None, *, key=None, perm=None):
        if perm is None:
            if shape is None or key is None:
                raise ValueError("Permute: give either `perm`, or `shape` and `key`")
            perm = jax.random.permutation(key, shape[0])
        perm = jnp.asarray(perm, dtype=jnp.int32)
        if sorted(perm.tolist()) != list(range(perm.shape[0])):
            raise ValueError(f"Permute: {perm.tolist()} is not a permutation")
        self.perm = perm
        self.inv_perm = jnp.argsort(perm).astype(jnp.int32)

    def forward(self, x):
        return x[self.perm], jnp.zeros((), x.dtype)

    def inverse(self, y):
        return y[self.inv_perm], jnp.zeros((), y.dtype)
