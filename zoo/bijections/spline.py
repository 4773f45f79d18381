"""Monotonic rational-quadratic splines with linear tails (Durkan et al. 2019).

`rq_spline` is the elementwise transform both the NSF coupling and the
self-normalizing flows' spline activation use.
"""

import functools
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


# The spline of one element is written on scalars, unrolled over the (static,
# small) number of bins: under vmap every quantity is one value per element,
# which XLA fuses, where bins-sized tables per element cost a pass each (and
# their gathers a scatter each in the gradient).


def _knots(unnorm, tail_bound):
    """The K + 1 knot positions on [-B, B] from K unnormalised bin sizes
    (softmax, at least MIN_BIN of the range each); end-points exact."""
    k = len(unnorm)
    top = functools.reduce(jnp.maximum, unnorm)
    e = [jnp.exp(u - top) for u in unnorm]
    total = sum(e)
    knots, cum = [-tail_bound], 0.0
    for v in e[:-1]:
        cum = cum + (MIN_BIN + (1 - MIN_BIN * k) * (v / total))
        knots.append(2 * tail_bound * cum - tail_bound)
    return knots + [tail_bound]


def _bin(v, ref, *tables):
    """(t[k], t[k+1]) from each table for the bin k of `ref` holding v
    (the last knot <= v, clipped to the K bins)."""
    picked = [(t[0], t[1]) for t in tables]
    for j in range(1, len(ref) - 1):
        above = ref[j] <= v
        picked = [(jnp.where(above, t[j], lo), jnp.where(above, t[j + 1], hi)) for t, (lo, hi) in zip(tables, picked)]
    return picked


def _scalar_spline(x, params, tail_bound, inverse, derivative_shift):
    k = (params.shape[-1] + 1) // 3
    p = [v[0] for v in jnp.split(params, params.shape[-1])]  # one split: its gradient is one concatenate
    xs = _knots(p[:k], tail_bound)
    ys = _knots(p[k : 2 * k], tail_bound)
    inner = [MIN_DERIVATIVE + jax.nn.softplus(v + derivative_shift) for v in p[2 * k :]]
    d = [1.0] + inner + [1.0]  # slope 1 joins the linear tails

    inside = (x > -tail_bound) & (x < tail_bound)
    xc = jnp.clip(x, -tail_bound, tail_bound)  # keep the unused branch finite
    (x_k, x_k1), (y_k, y_k1), (d_k, d_k1) = _bin(xc, ys if inverse else xs, xs, ys, d)
    w_k, h_k = x_k1 - x_k, y_k1 - y_k
    delta = h_k / w_k
    curv = d_k1 + d_k - 2 * delta

    if not inverse:
        xi = (xc - x_k) / w_k
        t = xi * (1 - xi)
        den = delta + curv * t
        out = y_k + h_k * (delta * xi**2 + d_k * t) / den
    else:
        r = xc - y_k
        a = h_k * (delta - d_k) + r * curv
        b = h_k * d_k - r * curv
        c = -delta * r
        disc = jnp.maximum(b**2 - 4 * a * c, 0.0)
        xi = (2 * c) / (-b - jnp.sqrt(disc))
        t = xi * (1 - xi)
        den = delta + curv * t
        out = x_k + xi * w_k
    num = delta**2 * (d_k1 * xi**2 + 2 * delta * t + d_k * (1 - xi) ** 2)
    logdet = jnp.log(num) - 2 * jnp.log(den)
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
