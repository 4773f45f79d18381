"""Convolutions of one C x H x W example, fast inside `lax.scan` on XLA:CPU.

`lax.conv` inside a `lax.scan` body (and its gradient) is many times slower
on XLA:CPU than the same work unrolled (jax issue #12868), and flows stack
their layers in a scan. So, as in `zoo.nn.Conv2d`, a convolution here is by
default a sum over kernel offsets of a channel-mixing matrix applied to a
shifted, zero-padded view of the input (offsets whose kernel entry is masked
to zero are skipped). For very few channels the slowdown does not occur and
`lax.conv` can be faster. Scanned 3-layer train step, batch 100, medians from
scripts/bench_emerging.py on a shared, noisy 2-core machine (lax.conv vs shifted):
3x3 `conv_same` in conv_exp 17 vs 86 ms (1 x 28 x 28), 78 vs 116 ms (4 x 14 x 14),
446 vs 92 ms (16 x 7 x 7); 2x2 `conv_causal` in emerging 2.7 vs 3.3 ms, 20 vs 8 ms,
64 vs 13 ms. So `impl=None` picks `lax.conv` when in_channels * out_channels is
at most `LAX_MAX_CHANNEL_PRODUCT[kind]`, else shifted matmuls. On GPU and TPU
`impl=None` is always `lax.conv` (the vendor's kernels); `zoo.nn.conv_impl` or
$ZOO_CONV_IMPL overrides the choice.
"""

import jax
import jax.numpy as jnp
from jax import Array

from zoo.nn import conv_impl_override

__all__ = ["conv_same", "conv_same_transpose", "conv_causal", "LAX_MAX_CHANNEL_PRODUCT"]

LAX_MAX_CHANNEL_PRODUCT = {"same": 16, "causal": 1}
_DN = ("NCHW", "OIHW", "NCHW")


def _use_lax(kernel: Array, impl: str | None, kind: str) -> bool:
    if impl not in (None, "lax", "shifted"):
        raise ValueError(f"impl must be None, 'lax' or 'shifted', got {impl!r}")
    impl = impl or conv_impl_override()  # `zoo.nn.conv_impl` / $ZOO_CONV_IMPL
    if impl is None and jax.default_backend() != "cpu":
        return True  # the vendor's convolution on GPU/TPU
    if impl is None:
        return kernel.shape[0] * kernel.shape[1] <= LAX_MAX_CHANNEL_PRODUCT[kind]
    return impl == "lax"


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


def conv_same(x: Array, kernel: Array, *, impl: str | None = None) -> Array:
    """Stride-1 'same' convolution (cross-correlation, zero padding) of x
    (C x H x W) with kernel (O x C x k x k), k odd:
    y[o, i, j] = sum_{c,a,b} kernel[o, c, a, b] x[c, i + a - r, j + b - r], r = k // 2.
    `impl`: "shifted", "lax" or None (by channel count, see the module docstring)."""
    k = kernel.shape[-1]
    r = k // 2
    if _use_lax(kernel, impl, "same"):
        return jax.lax.conv_general_dilated(x[None], kernel, (1, 1), ((r, r), (r, r)), dimension_numbers=_DN)[0]
    offsets = [(a, b) for a in range(k) for b in range(k)]
    return _shifted_sum(x, kernel, (r, r, r, r), offsets)


def conv_same_transpose(y: Array, kernel: Array, *, impl: str | None = None) -> Array:
    """The adjoint of `conv_same(., kernel)`: a 'same' convolution with the
    kernel flipped in space and its two channel axes swapped (exact for odd
    kernels with symmetric zero padding)."""
    return conv_same(y, jnp.flip(kernel, (2, 3)).swapaxes(0, 1), impl=impl)


def conv_causal(x: Array, kernel: Array, *, skip_centre: bool = False, impl: str | None = None) -> Array:
    """Square autoregressive convolution: kernel (O x C x s x s) anchored at its
    bottom-right corner, y[o, i, j] = sum_{c,a,b} kernel[o, c, a, b]
    x[c, i - (s-1) + a, j - (s-1) + b], so pixel (i, j) sees only pixels
    (i', j') with i' <= i and j' <= j. `skip_centre` leaves out the corner
    (the current pixel)."""
    s = kernel.shape[-1]
    if _use_lax(kernel, impl, "causal"):
        if skip_centre:
            kernel = kernel.at[:, :, s - 1, s - 1].set(0.0)
        pad = ((s - 1, 0), (s - 1, 0))
        return jax.lax.conv_general_dilated(x[None], kernel, (1, 1), pad, dimension_numbers=_DN)[0]
    offsets = [(a, b) for a in range(s) for b in range(s) if not (skip_centre and a == b == s - 1)]
    if not offsets:
        return jnp.zeros((kernel.shape[0],) + x.shape[1:], x.dtype)
    return _shifted_sum(x, kernel, (s - 1, 0, s - 1, 0), offsets)
