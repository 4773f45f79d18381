"""Glow's coupling conditioner, laid out for fast training steps on XLA:CPU.

Inside the conditioner activations are channels-last (H, W, C), so under
`vmap` every convolution is one plain matrix product over all B*H*W pixels
(no per-shift transposes). A k x k "same" convolution shifts the side with
fewer channels: with C_in <= C_out it concatenates the k*k shifted inputs
(im2col, contraction k*k*C_in); otherwise it multiplies once into k*k*C_out
channels and adds the k*k shifted pieces of the result (col2im). Both stay
fast inside `lax.scan`, gradients included, where `lax.conv` and its
gradients are an order of magnitude slower on CPU (jax issue #12868). On GPU
and TPU (`zoo.nn.current_conv_impl() == "lax"`) every convolution is
`lax.conv_general_dilated` instead, in the same channels-last layout.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array, lax

from zoo.nn import current_conv_impl, init_conv

__all__ = ["ConvHWC", "GlowConditioner", "im2col", "col2im"]


def _shift(x: Array, di: int, dj: int) -> Array:
    """out[p, q] = x[p + di, q + dj] (zero outside): one pad, negative on one side."""
    cfg = [(-di, di, 0), (-dj, dj, 0)] + [(0, 0, 0)] * (x.ndim - 2)
    return lax.pad(x, jnp.zeros((), x.dtype), cfg)


@jax.custom_vjp
def pixel_matmul(x: Array, w: Array) -> Array:
    """x @ w for x of shape (H, W, K) and w (K, N): every pixel times w. Its
    gradient is hand-written for speed, so it supports reverse-mode
    differentiation (grad, vjp, jacrev) but not forward mode (jvp, jacfwd)."""
    return x @ w


def _pixel_matmul_fwd(x, w):
    return x @ w, (x, w)


def _pixel_matmul_bwd(res, g):
    # XLA:CPU's fast dot kernels (YNNPACK) take the weight gradient x^T g only with
    # x^T laid out in memory; left to itself XLA folds the transpose into an Eigen
    # dot that runs 1.5-2x slower. The barrier keeps the transpose (one copy of x).
    x, w = res
    xt = lax.optimization_barrier(jnp.transpose(x.reshape(-1, x.shape[-1])))
    return g @ w.T, xt @ g.reshape(-1, g.shape[-1])


pixel_matmul.defvjp(_pixel_matmul_fwd, _pixel_matmul_bwd)


def im2col(x: Array, k: int) -> Array:
    """(H, W, C) -> (H, W, k*k*C): the input of every tap (i, j) of a k x k 'same'
    convolution, taps in raster order, channels fastest."""
    r = k // 2
    return jnp.concatenate([_shift(x, t // k - r, t % k - r) for t in range(k * k)], axis=-1)


def col2im(z: Array, k: int) -> Array:
    """(H, W, k*k, C) -> (H, W, C): out[p, q] = sum over taps t = (i, j) of
    z[p + i - r, q + j - r, t] (zero outside): with z[., ., t] = x W_t this is
    the k x k 'same' convolution of x."""
    r = k // 2
    # `split` (whose transpose is one concatenate) rather than indexing z[:, :, t]:
    # XLA:CPU runs the transpose of 9 strided slices ~6x slower than this.
    out = 0.0
    for t, zt in enumerate(jnp.split(z, k * k, axis=2)):
        out = out + _shift(zt[:, :, 0], t // k - r, t % k - r)
    return out


class ConvHWC(eqx.Module):
    """Stride-1 "same" k x k convolution of one H x W x C_in array (odd k).
    `weight` is (k, k, C_in, C_out); init uniform in +-1/sqrt(fan_in), or zeros."""

    weight: Array
    bias: Array

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, key, zero_init: bool = False):
        if kernel_size % 2 != 1:
            raise ValueError(f"ConvHWC: kernel_size must be odd, got {kernel_size}")
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        self.weight, self.bias = init_conv(shape, out_channels, in_channels * kernel_size**2, key=key, zero_init=zero_init)

    def __call__(self, x: Array) -> Array:
        k, _, c_in, c_out = self.weight.shape
        h, w, _ = x.shape
        if current_conv_impl() == "lax":  # GPU/TPU: the vendor's convolution (cuDNN, MXU)
            y = lax.conv_general_dilated(x[None], self.weight.astype(x.dtype), (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
            return y + self.bias
        if k == 1:
            return pixel_matmul(x, self.weight[0, 0]) + self.bias
        if c_in <= c_out:  # shift the (narrower) input: one product with k*k*C_in contraction
            cols = im2col(x, k)
            return pixel_matmul(cols, self.weight.reshape(k * k * c_in, c_out)) + self.bias
        # shift the (narrower) output: one product into k*k*C_out channels, then add the taps
        wcat = jnp.transpose(self.weight, (2, 0, 1, 3)).reshape(c_in, k * k * c_out)
        return col2im(pixel_matmul(x, wcat).reshape(h, w, k * k, c_out), k) + self.bias


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
        # Keep only the matrix products for the backward pass; the im2col copies
        # and ReLUs are recomputed (smaller scan residuals, ~5% faster step).
        return jax.checkpoint(_conditioner, policy=jax.checkpoint_policies.dots_saveable)(self, x)


def _conditioner(net: GlowConditioner, x: Array) -> Array:
    h = jnp.transpose(x, (1, 2, 0))
    h = jax.nn.relu(net.conv_in(h))
    h = jax.nn.relu(net.conv_mid(h))
    return jnp.transpose(net.conv_out(h), (2, 0, 1))
