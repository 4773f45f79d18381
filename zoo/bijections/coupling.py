"""Coupling layers: split axis 0, transform the second part conditioned on the first.

The conditioner is any `eqx.Module` mapping the first part `x1` (shape
`(d1, *rest)`) to the transform's parameters (shape `(n * d2, *rest)`).
Vectors get an MLP by default and C x H x W images Glow's conv net; both end
in a zero-initialised layer, so every coupling starts as a fixed map.

With `condition_size > 0` the coupling models p(x | y): `forward`/`inverse`
need `condition=` (a float vector of that size) and the conditioner sees it
next to `x1`: concatenated for vectors, broadcast to `condition_size` extra
H x W channels for images (so a custom conditioner takes `d1 + condition_size`
inputs).
"""

import operator
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from zoo.bijections.base import Bijection
from zoo.nn import Conv2d, relu
from zoo.bijections.spline import IDENTITY_DERIVATIVE, num_spline_params, rq_spline

__all__ = [
    "AffineCoupling",
    "AdditiveCoupling",
    "SplineCoupling",
    "MLPConditioner",
    "ConvConditioner",
    "default_conditioner",
]


class MLPConditioner(eqx.Module):
    """MLP for vector couplings; its last layer starts at zero."""

    mlp: eqx.nn.MLP

    def __init__(self, in_size, out_size, *, width=64, depth=2, key):
        mlp = eqx.nn.MLP(in_size, out_size, width, depth, activation=relu, key=key)
        last = mlp.layers[-1]
        mlp = eqx.tree_at(
            lambda m: (m.layers[-1].weight, m.layers[-1].bias),
            mlp,
            (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
        )
        self.mlp = mlp

    def __call__(self, x):
        return self.mlp(x)


class ConvConditioner(eqx.Module):
    """Glow's coupling network: 3x3 conv -> ReLU -> 1x1 conv -> ReLU -> zero-initialised 3x3 conv.

    Uses `zoo.nn.Conv2d`, which stays fast when the couplings are scanned."""

    conv_in: Conv2d
    conv_mid: Conv2d
    conv_out: Conv2d

    def __init__(self, in_channels, out_channels, *, width=64, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv_in = Conv2d(in_channels, width, 3, key=k1)
        self.conv_mid = Conv2d(width, width, 1, key=k2)
        self.conv_out = Conv2d(width, out_channels, 3, key=k3, zero_init=True)

    def __call__(self, x):
        h = relu(self.conv_in(x))
        h = relu(self.conv_mid(h))
        return self.conv_out(h)


def default_conditioner(shape, split, out_per_element, *, width, depth, key, condition_size=0):
    """MLP for 1-D `shape`, Glow conv net for 3-D (C, H, W); `condition_size`
    extra inputs (features or channels) carry the condition."""
    d1, d2 = split, shape[0] - split
    if len(shape) == 1:
        return MLPConditioner(d1 + condition_size, d2 * out_per_element, width=width, depth=depth, key=key)
    if len(shape) == 3:
        return ConvConditioner(d1 + condition_size, d2 * out_per_element, width=width, key=key)
    raise ValueError(f"no default conditioner for event shape {shape}; pass `conditioner=`")


def _check_split(shape, split):
    d = shape[0]
    split = d // 2 if split is None else split
    if not 0 < split < d:
        raise ValueError(f"coupling: split {split} must be in (0, {d}) for shape {shape}")
    return split


def _check_condition_size(condition_size) -> int:
    try:
        k = operator.index(condition_size)
    except TypeError:
        k = -1
    if k < 0:
        raise ValueError(f"coupling: condition_size must be an int >= 0, got {condition_size!r}")
    return k


class _Coupling(Bijection):
    conditioner: eqx.Module
    split: int = eqx.field(static=True)
    condition_size: int = eqx.field(static=True, default=0, kw_only=True)

    def _conditioner_input(self, x1, condition):
        if not self.condition_size:
            return x1  # unconditional: any condition handed down is not ours to use
        if condition is None:
            raise ValueError(
                f"{type(self).__name__} was built with condition_size={self.condition_size}; pass condition="
            )
        if condition.shape != (self.condition_size,):
            raise ValueError(
                f"{type(self).__name__}: condition must have shape ({self.condition_size},), got {condition.shape}"
            )
        c = condition.astype(x1.dtype)
        if x1.ndim > 1:  # images: one constant extra channel per condition entry
            c = jnp.broadcast_to(c.reshape(c.shape + (1,) * (x1.ndim - 1)), c.shape + x1.shape[1:])
        return jnp.concatenate([x1, c], axis=0)

    def _params(self, x1, n, condition=None):
        h = self.conditioner(self._conditioner_input(x1, condition))
        d2 = h.shape[0] // n
        return h.reshape((n, d2) + h.shape[1:])

    def forward(self, x, *, condition=None):
        x1, x2 = x[: self.split], x[self.split :]
        y2, logdet = self._transform(x2, self._params(x1, self.n_params, condition), inverse=False)
        return jnp.concatenate([x1, y2], axis=0), logdet

    def inverse(self, y, *, condition=None):
        y1, y2 = y[: self.split], y[self.split :]
        x2, logdet = self._transform(y2, self._params(y1, self.n_params, condition), inverse=True)
        return jnp.concatenate([y1, x2], axis=0), logdet


def _scale(h, kind):
    if kind == "sigmoid":  # Glow: bounded, starts near 0.88
        return jax.nn.log_sigmoid(h + 2.0)
    if kind == "exp":  # RealNVP: exp of a soft-clamped log-scale
        return 3.0 * jnp.tanh(h / 3.0)
    raise ValueError(f"unknown scale {kind!r}; use 'sigmoid' or 'exp'")


class AffineCoupling(_Coupling):
    """y2 = x2 * s(x1) + t(x1). `scale='sigmoid'` is Glow's s = sigmoid(h + 2);
    `scale='exp'` is RealNVP's s = exp(3 tanh(h / 3))."""

    scale: str = eqx.field(static=True)
    n_params: ClassVar[int] = 2
    example_shape: ClassVar = (4,)

    def __init__(
        self, shape, *, key, conditioner=None, split=None, scale="sigmoid", width=64, depth=2, condition_size=0
    ):
        self.split = _check_split(shape, split)
        _scale(jnp.zeros(()), scale)
        self.scale = scale
        self.condition_size = _check_condition_size(condition_size)
        self.conditioner = conditioner or default_conditioner(
            shape, self.split, 2, width=width, depth=depth, key=key, condition_size=condition_size
        )

    def _transform(self, x2, p, inverse):
        shift, log_s = p[0], _scale(p[1], self.scale)
        if inverse:
            return (x2 - shift) * jnp.exp(-log_s), -jnp.sum(log_s)
        return x2 * jnp.exp(log_s) + shift, jnp.sum(log_s)


class AdditiveCoupling(_Coupling):
    """y2 = x2 + t(x1) (NICE); volume preserving."""

    n_params: ClassVar[int] = 1
    example_shape: ClassVar = (2, 2, 2)

    def __init__(self, shape, *, key, conditioner=None, split=None, width=64, depth=2, condition_size=0):
        self.split = _check_split(shape, split)
        self.condition_size = _check_condition_size(condition_size)
        self.conditioner = conditioner or default_conditioner(
            shape, self.split, 1, width=width, depth=depth, key=key, condition_size=condition_size
        )

    def _transform(self, x2, p, inverse):
        zero = jnp.zeros((), x2.dtype)
        return (x2 - p[0], zero) if inverse else (x2 + p[0], zero)


class SplineCoupling(_Coupling):
    """Neural spline coupling (Durkan et al. 2019): a rational-quadratic spline
    with linear tails on each element of x2, its knots predicted from x1."""

    tail_bound: float = eqx.field(static=True)
    n_params: int = eqx.field(static=True)
    example_shape: ClassVar = (4,)

    def __init__(
        self,
        shape,
        *,
        key,
        conditioner=None,
        split=None,
        num_bins=8,
        tail_bound=3.0,
        width=64,
        depth=2,
        condition_size=0,
    ):
        self.split = _check_split(shape, split)
        self.tail_bound = float(tail_bound)
        self.n_params = num_spline_params(num_bins)
        self.condition_size = _check_condition_size(condition_size)
        self.conditioner = conditioner or default_conditioner(
            shape, self.split, self.n_params, width=width, depth=depth, key=key, condition_size=condition_size
        )

    def _transform(self, x2, p, inverse):
        # zero conditioner output -> identity derivatives at the knots (shifted inside the softplus, p is not copied)
        y2, ld = rq_spline(
            x2, jnp.moveaxis(p, 0, -1), tail_bound=self.tail_bound, inverse=inverse,
            derivative_shift=IDENTITY_DERIVATIVE,
        )
        return y2, jnp.sum(ld)
