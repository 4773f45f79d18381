"""Glow's coupling conditioner, laid out for fast training steps on XLA:CPU.

Inside the conditioner activations are channels-last (H, W, C), so under
`vmap` every convolution is one plain matrix product over all B*H*W pixels
(no per-shift transposes). A k x k "same" convolution shifts the side with
fewer channels: with C_in <= C_out it concatenates the k*k shifted inputs
(im2col, contraction k*k*C_in); otherwise it multiplies once into k*k*C_out
channels and adds the k*k shifted slices of the result. Both stay fast inside
`lax.scan`, where `lax.conv` and its gradients are an order of magnitude
slower on CPU (jax issue #12868).
"""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

__all__ = ["ConvHWC", "GlowConditioner", "im2col", "col2im"]


def _taps(x, k, reverse=False):
    """The k*k shifted copies of an H x W x C array (zero padded), stacked on a
    new axis 2 in raster order of the taps (reversed order with `reverse`)."""
    r = k // 2
    h, w = x.shape[:2]
    xp = jnp.pad(x, ((r, r), (r, r)) + ((0, 0),) * (x.ndim - 2))
    order = range(k * k - 1, -1, -1) if reverse else range(k * k)
    return jnp.stack([xp[t // k : t // k + h, t % k : t % k + w] for t in order], axis=2)


def _sum_taps(z, k, reverse=False):
    """Partner of `_taps`: out[p, q] = sum over taps t = (i, j) of
    z[p + i - r, q + j - r, t] (zero outside); `reverse` reads the taps of z
    in reverse order."""
    r = k // 2
    h, w = z.shape[:2]
    zp = jnp.pad(z, ((r, r), (r, r)) + ((0, 0),) * (z.ndim - 2))
    out = 0.0
    for t in range(k * k):
        i, j = divmod(t, k)
        out = out + zp[i : i + h, j : j + w, k * k - 1 - t if reverse else t]
    return out


# XLA's own transposes of these pads and slices (a pad per tap, then adds) make
# the backward pass several times slower than the forward on CPU. Each map's
# adjoint is the other one with the taps in reverse order, which XLA runs as
# fast as the forward, so give both a custom VJP.
@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def im2col(x, k):
    """(H, W, C) -> (H, W, k*k, C): the input of every tap of a k x k 'same' conv."""
    return _taps(x, k)


def _im2col_fwd(x, k):
    return _taps(x, k), None


def _im2col_bwd(k, _, g):
    return (_sum_taps(g, k, reverse=True),)


im2col.defvjp(_im2col_fwd, _im2col_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def col2im(z, k):
    """(H, W, k*k, C) -> (H, W, C): sums each tap's contribution at its output pixel."""
    return _sum_taps(z, k)


def _col2im_fwd(z, k):
    return _sum_taps(z, k), None


def _col2im_bwd(k, _, g):
    return (_taps(g, k, reverse=True),)


col2im.defvjp(_col2im_fwd, _col2im_bwd)


class ConvHWC(eqx.Module):
    """Stride-1 "same" k x k convolution of one H x W x C_in array (odd k).
    `weight` is (k, k, C_in, C_out); init uniform in +-1/sqrt(fan_in), or zeros."""

    weight: Array
    bias: Array

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, key, zero_init: bool = False):
        if kernel_size % 2 != 1:
            raise ValueError(f"ConvHWC: kernel_size must be odd, got {kernel_size}")
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        if zero_init:
            self.weight, self.bias = jnp.zeros(shape), jnp.zeros(out_channels)
        else:
            lim = 1.0 / math.sqrt(in_channels * kernel_size**2)
            kw, kb = jax.random.split(key)
            self.weight = jax.random.uniform(kw, shape, minval=-lim, maxval=lim)
            self.bias = jax.random.uniform(kb, (out_channels,), minval=-lim, maxval=lim)

    def __call__(self, x: Array) -> Array:
        k, _, c_in, c_out = self.weight.shape
        h, w, _ = x.shape
        if k == 1:
            return x @ self.weight[0, 0] + self.bias
        if c_in <= c_out:  # shift the (narrower) input: one product with k*k*C_in contraction
            cols = im2col(x, k).reshape(h, w, k * k * c_in)
            return cols @ self.weight.reshape(k * k * c_in, c_out) + self.bias
        # shift the (narrower) output: one product into k*k*C_out channels, then add the taps
        wcat = jnp.transpose(self.weight, (2, 0, 1, 3)).reshape(c_in, k * k * c_out)
        return col2im((x @ wcat).reshape(h, w, k * k, c_out), k) + self.bias


class GlowConditioner(eqx.Module):
    """Glow's coupling network on one C x H x W input: 3x3 conv -> ReLU -> 1x1
    conv -> ReLU -> zero-initialised 3x3 conv (so every coupling starts as a
    fixed map). Same maths as `zoo.bijections.ConvConditioner`, faster layout."""

    conv_in: ConvHWC
    conv_mid: ConvHWC
    conv_out: ConvHWC

    def __init__(self, in_channels: int, out_channels: int, *, width: int = 512, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv_in = ConvHWC(in_channels, width, 3, key=k1)
        self.conv_mid = ConvHWC(width, width, 1, key=k2)
        self.conv_out = ConvHWC(width, out_channels, 3, key=k3, zero_init=True)

    def __call__(self, x: Array) -> Array:
        h = jnp.transpose(x, (1, 2, 0))
        h = jax.nn.relu(self.conv_in(h))
        h = jax.nn.relu(self.conv_mid(h))
        return jnp.transpose(self.conv_out(h), (2, 0, 1))
