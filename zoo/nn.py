"""Small neural-network modules for conditioners, tuned for running inside `lax.scan`.

XLA:CPU runs convolutions inside a loop body (and their gradients) an order
of magnitude slower than the same convolutions unrolled (jax issue #12868),
which would make scanned flows slow. `Conv2d` therefore computes a k x k
"same" convolution as k*k matrix products with shifted views of the input,
which stay fast inside `scan`, gradients included (measured on a scanned
Glow-style conditioner, forward + backward: 258 ms vs 2,372 ms with
`lax.conv`; one im2col product: 341 ms). On GPU and TPU the opposite holds:
`lax.conv_general_dilated` is the vendor's convolution (cuDNN, the TPU's
MXU), while k*k small products waste the device. So the implementation is
chosen by `jax.default_backend()` when a model is traced: "shifted" on CPU,
"lax" elsewhere; `ZOO_CONV_IMPL=shifted|lax` or `with conv_impl("lax"):`
overrides it. Both compute the same function (tested for equal values and
gradients on CPU).
"""

import contextlib
import math
import os

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

__all__ = ["relu", "Conv2d", "init_conv", "conv_impl", "current_conv_impl", "conv_impl_override", "lax_conv_same"]

CONV_IMPLS = ("shifted", "lax")
_override: list[str] = []


def conv_impl_override() -> str | None:
    """The implementation asked for: a `conv_impl` block's, else $ZOO_CONV_IMPL, else None."""
    impl = _override[-1] if _override else os.environ.get("ZOO_CONV_IMPL") or None
    if impl is not None and impl not in CONV_IMPLS:
        raise ValueError(f"ZOO_CONV_IMPL={impl!r}: choose one of {CONV_IMPLS}")
    return impl


def current_conv_impl() -> str:
    """The convolution traced now: the override, else "shifted" on CPU and "lax" on accelerators.
    (Layers with a faster CPU choice of their own consult `conv_impl_override` instead.)"""
    return conv_impl_override() or ("shifted" if jax.default_backend() == "cpu" else "lax")


def lax_conv_same(x: Array, kernel: Array) -> Array:
    """Stride-1 zero-padded "same" cross-correlation of one C x H x W example with an
    (O, C, kh, kw) kernel by `lax.conv_general_dilated` (odd kh, kw)."""
    kh, kw = kernel.shape[2:]
    pad = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    return jax.lax.conv_general_dilated(x[None], kernel.astype(x.dtype), (1, 1), pad,
                                        dimension_numbers=("NCHW", "OIHW", "NCHW"))[0]


@jax.custom_jvp
def relu(x: Array) -> Array:
    """max(x, 0), as `jax.nn.relu` (derivative 0 at 0), whose derivative is read back
    from its output. In reverse mode JAX keeps the inputs of what the backward pass
    needs: for `jax.nn.relu` the mask x > 0 beside the output, which the next
    layer's weight gradient keeps anyway. Here the mask is recomputed from that
    output in the backward pass, fused into its elementwise work: inside a scanned
    stack one stored array (and its per-layer write) fewer per activation
    (RealNVP D = 16 training step: ~3 % faster). Forward mode works as usual."""
    return jnp.maximum(x, 0)


def _relu_tangent(y, t):
    return jnp.where(y > 0, t, jnp.zeros_like(t))


# rematerialised: linearising keeps its input y (the output above), not the mask it computes
_relu_tangent_from_output = jax.checkpoint(_relu_tangent, prevent_cse=False)


@relu.defjvp
def _relu_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    y = relu(x)  # not jnp.maximum: differentiating this rule again (Hessians) must see derivative 0 at 0 too
    return y, _relu_tangent_from_output(y, t)


@contextlib.contextmanager
def conv_impl(impl: str):
    """Trace `Conv2d` with `impl` ("shifted" or "lax") inside the block (jit-compiled
    functions keep the implementation they were traced with)."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl: choose one of {CONV_IMPLS}, got {impl!r}")
    _override.append(impl)
    try:
        yield
    finally:
        _override.pop()


def init_conv(weight_shape, out_channels: int, fan_in: int, *, key, zero_init: bool = False):
    """(weight, bias) initialised like `eqx.nn.Conv2d`: uniform in
    +-1/sqrt(fan_in); or zeros (Glow's last conditioner layer)."""
    if zero_init:
        return jnp.zeros(weight_shape), jnp.zeros(out_channels)
    lim = 1.0 / math.sqrt(fan_in)
    kw, kb = jax.random.split(key)
    return (jax.random.uniform(kw, weight_shape, minval=-lim, maxval=lim),
            jax.random.uniform(kb, (out_channels,), minval=-lim, maxval=lim))


class Conv2d(eqx.Module):
    """Stride-1 "same" 2-D convolution of one C x H x W example (odd kernel size).

    Weights are (out, in, k, k) like `eqx.nn.Conv2d`, initialised the same way
    (uniform in +-1/sqrt(fan_in)), or to zero with `zero_init=True` (Glow's
    last conditioner layer).
    """

    weight: Array
    bias: Array
    kernel_size: int = eqx.field(static=True)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, key, zero_init: bool = False):
        if kernel_size % 2 != 1:
            raise ValueError(f"Conv2d: kernel_size must be odd, got {kernel_size}")
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight, self.bias = init_conv(shape, out_channels, in_channels * kernel_size**2, key=key, zero_init=zero_init)
        self.kernel_size = kernel_size

    def __call__(self, x: Array) -> Array:
        if current_conv_impl() == "lax":
            return lax_conv_same(x, self.weight) + self.bias[:, None, None]
        k = self.kernel_size
        r = k // 2
        _, h, w = x.shape
        xp = jnp.pad(x, ((0, 0), (r, r), (r, r)))
        out = self.bias[:, None, None]
        for i in range(k):
            for j in range(k):
                out = out + jnp.einsum("oc,chw->ohw", self.weight[:, :, i, j], xp[:, i : i + h, j : j + w])
        return out
