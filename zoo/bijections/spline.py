"""Monotonic rational-quadratic splines with linear tails (Durkan et al. 2019).

`rq_spline` is the elementwise transform both the NSF coupling and the
self-normalizing flows' spline activation use.
"""

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from zoo.bijections.base import Bijection

__all__ = ["rq_spline", "RationalQuadraticSpline", "num_spline_params", "IDENTITY_DERIVATIVE"]

MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3
# softplus(c) + MIN_DERIVATIVE == 1: unnormalised derivatives at this value
# make the spline the identity (with zero widths/heights).
IDENTITY_DERIVATIVE = math.log(math.expm1(1.0 - MIN_DERIVATIVE))  # plain math: importing zoo must not start a JAX backend


def num_spline_params(num_bins: int) -> int:
    """Unconstrained parameters per element: K widths, K heights, K-1 inner derivatives."""
    return 3 * num_bins - 1


def _knots(unnorm, tail_bound):
    """K + 1 increasing knots from -tail_bound to tail_bound (the end points exact)."""
    k = unnorm.shape[-1]
    sizes = MIN_BIN + (1 - MIN_BIN * k) * jax.nn.softmax(unnorm, axis=-1)
    inner = 2 * tail_bound * jnp.cumsum(sizes[:-1]) - tail_bound
    return jnp.concatenate([jnp.full(1, -tail_bound, inner.dtype), inner, jnp.full(1, tail_bound, inner.dtype)])


def _scalar_spline(x, params, tail_bound, inverse, derivative_shift):
    # Three knot arrays (x, y, derivative); a bin's width and height come from its
    # neighbouring knots. Fewer arrays and look-ups make the gradient cheaper too.
    k = (params.shape[-1] + 1) // 3
    cw, ch = _knots(params[:k], tail_bound), _knots(params[k : 2 * k], tail_bound)
    inner = MIN_DERIVATIVE + jax.nn.softplus(params[2 * k :] + derivative_shift)
    d = jnp.concatenate([jnp.ones(1, inner.dtype), inner, jnp.ones(1, inner.dtype)])  # slope 1 joins the tails

    inside = (x > -tail_bound) & (x < tail_bound)
    xc = jnp.clip(x, -tail_bound, tail_bound)  # keep the unused branch finite
    idx = jnp.sum(xc >= (ch if inverse else cw)[1:-1])  # the bin: inner knots at or below xc (K is small)
    x_k, y_k, d_k, d_k1 = cw[idx], ch[idx], d[idx], d[idx + 1]
    w_k, h_k = cw[idx + 1] - x_k, ch[idx + 1] - y_k
    delta = h_k / w_k

    if not inverse:
        xi = (xc - x_k) / w_k
        t = xi * (1 - xi)
        den = delta + (d_k1 + d_k - 2 * delta) * t
        out = y_k + h_k * (delta * xi**2 + d_k * t) / den
    else:
        r = xc - y_k
        a = h_k * (delta - d_k) + r * (d_k1 + d_k - 2 * delta)
        b = h_k * d_k - r * (d_k1 + d_k - 2 * delta)
        c = -delta * r
        disc = jnp.maximum(b**2 - 4 * a * c, 0.0)
        xi = (2 * c) / (-b - jnp.sqrt(disc))
        t = xi * (1 - xi)
        den = delta + (d_k1 + d_k - 2 * delta) * t
        out = x_k + xi * w_k
    num = delta**2 * (d_k1 * xi**2 + 2 * delta * t + d_k * (1 - xi) ** 2)
    logdet = jnp.log(num / den**2)  # one log: its gradient is the cheaper part of the step
    if inverse:
        logdet = -logdet
    return jnp.where(inside, out, x), jnp.where(inside, logdet, 0.0)


def rq_spline(x: Array, params: Array, *, tail_bound: float, inverse: bool = False, derivative_shift: float = 0.0):
    """Apply a rational-quadratic spline to every element of `x`.

    `params` has shape `x.shape + (3K - 1,)` (unconstrained widths, heights,
    inner derivatives). Outside [-tail_bound, tail_bound] the map is the
    identity. `derivative_shift` is added to the derivative parameters inside
    the softplus: with `IDENTITY_DERIVATIVE` all-zero params give the identity
    (a zero-initialised conditioner's output), without copying `params`.
    Returns `(y, logdet_per_element)`.
    """
    flat_x = x.reshape(-1)
    flat_p = params.reshape(flat_x.shape[0], params.shape[-1])
    y, ld = jax.vmap(lambda a, p: _scalar_spline(a, p, tail_bound, inverse, derivative_shift))(flat_x, flat_p)
    return y.reshape(x.shape), ld.reshape(x.shape)


class RationalQuadraticSpline(Bijection):
    """An independent learned spline on every element (initialised near identity)."""

    params: Array
    tail_bound: float = eqx.field(static=True)
    example_shape: ClassVar = (3, 2)

    def __init__(self, shape, *, key=None, num_bins: int = 8, tail_bound: float = 3.0):
        shape = tuple(shape)
        params = jnp.zeros(shape + (num_spline_params(num_bins),))
        params = params.at[..., 2 * num_bins :].set(IDENTITY_DERIVATIVE)
        if key is not None:  # break the symmetry a little so the layers differ
            params = params + 1e-2 * jax.random.normal(key, params.shape)
        self.params = params
        self.tail_bound = float(tail_bound)

    def forward(self, x):
        y, ld = rq_spline(x, self.params, tail_bound=self.tail_bound)
        return y, jnp.sum(ld)

    def inverse(self, y):
        x, ld = rq_spline(y, self.params, tail_bound=self.tail_bound, inverse=True)
        return x, jnp.sum(ld)
