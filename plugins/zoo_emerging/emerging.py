"""Emerging convolution (Hoogeboom, van den Berg & Welling 2019).

An invertible k x k convolution built from a 1x1 convolution and two square
autoregressive convolutions facing opposite ways. Each autoregressive
convolution's Jacobian is block-triangular over pixels (in raster order, or
its reverse), with the kernel's centre tap -- a lower-triangular C x C matrix
-- on every diagonal block, so its log-det is H*W*sum_c log|K[c, c, centre]|.
"""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from zoo.bijections import Bijection, LULinear
from zoo_emerging.conv import conv_causal

__all__ = ["Emerging", "causal_mask"]


def causal_mask(channels: int, size: int) -> np.ndarray:
    """Mask of a square autoregressive kernel (C x C x s x s), centre = bottom-
    right tap: every earlier pixel is visible from every channel; at the current
    pixel output channel o sees input channels <= o (its own included)."""
    mask = np.ones((channels, channels, size, size))
    mask[:, :, size - 1, size - 1] = np.tril(np.ones((channels, channels)))
    return mask


def _check_image_shape(name: str, shape) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name}: needs one C x H x W image shape, got {shape}")
    return shape


class Emerging(Bijection):
    """Emerging convolution of a C x H x W image (forward = data -> base):
    1x1 convolution (`LULinear`), then a square autoregressive convolution, then
    another one on the image flipped in H and W (so it faces the other way).
    Two s x s autoregressive convolutions give an effective (2s-1) x (2s-1)
    receptive field: `kernel_size=2` (the paper's and SNF's default) makes a
    3 x 3 emerging convolution.

    The inverse solves each autoregressive convolution by substitution. A pixel
    depends only on pixels up-and-left of it, so all pixels of one anti-diagonal
    (i + j = t) can be solved together once the earlier ones are known: the
    update x <- L^-1 (y - b - N x), N the off-centre taps and L the triangular
    centre, run H + W - 1 times from x = 0 is exact (the error is nilpotent), in
    one jitted `lax.fori_loop` with no per-pixel host loop.
    """

    mix: LULinear
    weights: Array  # (2, C, C, s, s) raw kernels; masked where used
    biases: Array  # (2, C)
    kernel_size: int = eqx.field(static=True)
    example_shape: ClassVar = (2, 4, 4)

    def __init__(self, shape, *, key, kernel_size: int = 2):
        c, _, _ = _check_image_shape("Emerging", shape)
        if kernel_size < 1:
            raise ValueError(f"Emerging: kernel_size must be >= 1, got {kernel_size}")
        k_mix, k_w = jax.random.split(key)
        s = kernel_size
        self.mix = LULinear(shape, key=k_mix)
        # Start near the identity: unit centre diagonal, small everything else.
        # (The reference's 1/sqrt(C*C*s*s) noise is ~0.5 for one channel: then
        # |off-centre| ~ |diagonal| and the substitution amplifies rounding
        # errors exponentially across the image, breaking the inverse.)
        w = 0.05 * jax.random.normal(k_w, (2, c, c, s, s)) / np.sqrt(c * s * s)
        self.weights = w.at[:, np.arange(c), np.arange(c), s - 1, s - 1].add(1.0)
        self.biases = jnp.zeros((2, c))
        self.kernel_size = s

    def _kernels(self):
        c, s = self.weights.shape[1], self.kernel_size
        return self.weights * jnp.asarray(causal_mask(c, s), self.weights.dtype)

    def _logdet(self, shape) -> Array:
        s = self.kernel_size
        diag = jnp.diagonal(self.weights[:, :, :, s - 1, s - 1], axis1=1, axis2=2)
        return shape[1] * shape[2] * jnp.sum(jnp.log(jnp.abs(diag)))

    def _solve(self, y: Array, kernel: Array, bias: Array) -> Array:
        c, h, w = y.shape
        s = self.kernel_size
        centre = kernel[:, :, s - 1, s - 1]  # lower triangular
        r = y - bias[:, None, None]

        def step(_, x):
            rhs = r - conv_causal(x, kernel, skip_centre=True)
            sol = jax.scipy.linalg.solve_triangular(centre, rhs.reshape(c, h * w), lower=True)
            return sol.reshape(c, h, w)

        sweeps = 1 if s == 1 else h + w - 1
        return jax.lax.fori_loop(0, sweeps, step, jnp.zeros_like(y))

    def forward(self, x):
        kernels = self._kernels()
        x, logdet = self.mix.forward(x)
        x = conv_causal(x, kernels[0]) + self.biases[0][:, None, None]
        x = jnp.flip(x, (1, 2))
        x = conv_causal(x, kernels[1]) + self.biases[1][:, None, None]
        x = jnp.flip(x, (1, 2))
        return x, logdet + self._logdet(x.shape)

    def inverse(self, y):
        kernels = self._kernels()
        x = jnp.flip(self._solve(jnp.flip(y, (1, 2)), kernels[1], self.biases[1]), (1, 2))
        x = self._solve(x, kernels[0], self.biases[0])
        x, logdet = self.mix.inverse(x)
        return x, logdet - self._logdet(y.shape)
