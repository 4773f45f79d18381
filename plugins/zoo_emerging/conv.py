"""Convolutions of one C x H x W example as shifted matrix products.

`lax.conv` inside a `lax.scan` body (and its gradient) is about ten times
slower on XLA:CPU than the same work unrolled (jax issue #12868); flows stack
their layers in a scan, so every convolution here is a sum over kernel
offsets of a channel-mixing matrix applied to a shifted, zero-padded view of
the input (the approach of `zoo.nn.Conv2d`, for a given kernel). Offsets whose
kernel entry is masked to zero are skipped, not multiplied by zero.
"""

import jax.numpy as jnp
from jax import Array

__all__ = ["conv_same", "conv_same_transpose", "conv_causal"]


def _shifted_sum(x: Array, kernel: Array, pad: tuple[int, int, int, int], offsets) -> Array:
    """sum over (a, b) in offsets of kernel[:, :, a, b] @ x_padded[:, a:a+H, b:b+W]."""
    _, h, w = x.shape
    top, bottom, left, right = pad
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right)))
    out = None
    for a, b in offsets:
        term = jnp.einsum("oc,chw->ohw", kernel[:, :, a, b], xp[:, a : a + h, b : b + w])
        out = term if out is None else out + term
    return out


def conv_same(x: Array, kernel: Array) -> Array:
    """Stride-1 'same' convolution (cross-correlation, zero padding) of x
    (C x H x W) with kernel (O x C x k x k), k odd:
    y[o, i, j] = sum_{c,a,b} kernel[o, c, a, b] x[c, i + a - r, j + b - r], r = k // 2."""
    k = kernel.shape[-1]
    r = k // 2
    offsets = [(a, b) for a in range(k) for b in range(k)]
    return _shifted_sum(x, kernel, (r, r, r, r), offsets)


def conv_same_transpose(y: Array, kernel: Array) -> Array:
    """The adjoint of `conv_same(., kernel)`: a 'same' convolution with the
    kernel flipped in space and its two channel axes swapped (exact for odd
    kernels with symmetric zero padding)."""
    return conv_same(y, jnp.flip(kernel, (2, 3)).swapaxes(0, 1))


def conv_causal(x: Array, kernel: Array, *, skip_centre: bool = False) -> Array:
    """Square autoregressive convolution: kernel (O x C x s x s) anchored at its
    bottom-right corner, y[o, i, j] = sum_{c,a,b} kernel[o, c, a, b]
    x[c, i - (s-1) + a, j - (s-1) + b], so pixel (i, j) sees only pixels
    (i', j') with i' <= i and j' <= j. `skip_centre` leaves out the corner
    (the current pixel)."""
    s = kernel.shape[-1]
    offsets = [(a, b) for a in range(s) for b in range(s) if not (skip_centre and a == b == s - 1)]
    if not offsets:
        return jnp.zeros((kernel.shape[0],) + x.shape[1:], x.dtype)
    return _shifted_sum(x, kernel, (s - 1, 0, s - 1, 0), offsets)
