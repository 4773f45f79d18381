"""Squeeze: trade spatial resolution for channels (RealNVP/Glow multi-scale)."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp

from zoo.bijections.base import Bijection

__all__ = ["Squeeze"]


class Squeeze(Bijection):
    """C x H x W -> (C f^2) x (H/f) x (W/f) by moving each f x f patch into
    channels. A permutation, so the log-det is zero."""

    factor: int = eqx.field(static=True, default=2)
    example_shape: ClassVar = (2, 4, 4)

    def __init__(self, shape=None, *, key=None, factor: int = 2):
        if shape is not None:
            if len(shape) != 3 or shape[1] % factor or shape[2] % factor:
                raise ValueError(
                    f"Squeeze: needs a C x H x W shape with H, W divisible by {factor}; got {shape}"
                )
        self.factor = factor

    def forward(self, x):
        c, h, w = x.shape
        f = self.factor
        y = x.reshape(c, h // f, f, w // f, f).transpose(0, 2, 4, 1, 3)
        return y.reshape(c * f * f, h // f, w // f), jnp.zeros((), x.dtype)

    def inverse(self, y):
        c, h, w = y.shape
        f = self.factor
        x = y.reshape(c // (f * f), f, f, h, w).transpose(0, 3, 1, 4, 2)
        return x.reshape(c // (f * f), h * f, w * f), jnp.zeros((), y.dtype)
