"""Invertible elementwise activations of the self-normalizing flows paper
(Keller et al. 2021): SLR, LLR, per-element rational-quadratic spline, SELU;
and `Flatten` for the fully connected models."""

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from zoo.bijections import Bijection, RationalQuadraticSpline
from zoo.bijections.spline import num_spline_params

__all__ = ["SmoothLeakyReLU", "LearnableLeakyReLU", "SELU", "spline_activation", "Flatten"]


class SmoothLeakyReLU(Bijection):
    """SLR: y = a x + (1 - a) softplus(x), slope in (a, 1); a = 0.3 in the paper.

    The inverse has no closed form: Newton's method on this convex, increasing
    map converges monotonically after the first step; it stops when every
    residual |f(x) - y| is within `tol` * (1 + |y|) (default: 8 machine
    epsilons of the dtype) or after `max_iter` steps.
    """

    alpha: float = eqx.field(static=True)
    tol: float | None = eqx.field(static=True)
    max_iter: int = eqx.field(static=True)
    example_shape: ClassVar = (5,)

    def __init__(self, shape=None, *, key=None, alpha: float = 0.3, tol: float | None = None, max_iter: int = 100):
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"SmoothLeakyReLU: alpha must be in (0, 1), got {alpha}")
        self.alpha, self.max_iter = float(alpha), int(max_iter)
        self.tol = None if tol is None else float(tol)

    def _f(self, x):
        return self.alpha * x + (1 - self.alpha) * jax.nn.softplus(x)

    def _log_slope(self, x):
        return jnp.log(self.alpha + (1 - self.alpha) * jax.nn.sigmoid(x))

    def forward(self, x):
        return self._f(x), jnp.sum(self._log_slope(x))

    def inverse(self, y):
        # Start on the correct asymptote: slope 1 for y > 0, slope alpha below.
        x0 = jnp.where(y > 0, y, y / self.alpha)
        rel = 8 * jnp.finfo(y.dtype).eps if self.tol is None else self.tol
        tol = rel * (1 + jnp.abs(y))

        def cond(state):
            i, _, err = state
            return (i < self.max_iter) & jnp.any(err > tol)

        def body(state):
            i, x, _ = state
            r = self._f(x) - y
            x = x - r / jnp.exp(self._log_slope(x))
            return i + 1, x, jnp.abs(self._f(x) - y)

        _, x, _ = jax.lax.while_loop(cond, body, (0, x0, jnp.full_like(y, jnp.inf)))
        return x, -jnp.sum(self._log_slope(x))


class LearnableLeakyReLU(Bijection):
    """LLR: y = x for x >= 0, a x below, with one learned slope
    a = sigmoid(logit) + 0.5 in (0.5, 1.5) (starts at 1, as the reference)."""

    slope_logit: Array
    example_shape: ClassVar = (5,)

    def __init__(self, shape=None, *, key=None, init_slope: float = 1.0):
        if not 0.5 < init_slope < 1.5:
            raise ValueError(f"LearnableLeakyReLU: init_slope must be in (0.5, 1.5), got {init_slope}")
        p = init_slope - 0.5
        self.slope_logit = jnp.asarray(math.log(p / (1 - p)))

    def slope(self):
        return jax.nn.sigmoid(self.slope_logit) + 0.5

    def forward(self, x):
        a = self.slope()
        neg = x < 0
        return jnp.where(neg, a * x, x), jnp.sum(neg) * jnp.log(a)

    def inverse(self, y):
        a = self.slope()
        neg = y < 0
        return jnp.where(neg, y / a, y), -jnp.sum(neg) * jnp.log(a)


class SELU(Bijection):
    """SELU as an invertible map onto (-scale*alpha, inf):
    y = scale x (x > 0), scale alpha (e^x - 1) (x <= 0)."""

    alpha: float = eqx.field(static=True)
    scale: float = eqx.field(static=True)
    example_shape: ClassVar = (5,)

    def __init__(self, shape=None, *, key=None, alpha: float = 1.6733, scale: float = 1.0507):
        self.alpha, self.scale = float(alpha), float(scale)

    def forward(self, x):
        pos = x > 0
        xn = jnp.minimum(x, 0.0)  # keeps exp finite on the unused branch
        y = jnp.where(pos, self.scale * x, self.scale * self.alpha * jnp.expm1(xn))
        log_slope = jnp.where(pos, math.log(self.scale), math.log(self.scale * self.alpha) + xn)
        return y, jnp.sum(log_slope)

    def inverse(self, y):
        pos = y > 0
        # log1p(y / (scale alpha)), finite on the unused branch
        u = jnp.log1p(jnp.minimum(y, 0.0) / (self.scale * self.alpha))
        x = jnp.where(pos, y / self.scale, u)
        log_slope = jnp.where(pos, math.log(self.scale), math.log(self.scale * self.alpha) + u)
        return x, -jnp.sum(log_slope)


def spline_activation(shape, *, key=None, num_bins: int = 5, tail_bound: float = 10.0, init_scale: float = 0.01):
    """The paper's spline activation: an independent rational-quadratic spline
    per element (zoo's `RationalQuadraticSpline`) with the reference's
    defaults, 5 bins on [-10, 10] and every raw parameter drawn from
    N(0, 0.01^2) (so inner knot slopes start near softplus(0) = 0.69, not at
    the identity). With `key=None` the parameters start at zero."""
    shape = tuple(shape)
    layer = RationalQuadraticSpline(shape, key=None, num_bins=num_bins, tail_bound=tail_bound)
    n = num_spline_params(num_bins)
    params = jnp.zeros(shape + (n,)) if key is None else init_scale * jax.random.normal(key, shape + (n,))
    return eqx.tree_at(lambda s: s.params, layer, params)


spline_activation.example_shape = (3, 2)


class Flatten(Bijection):
    """Reshape an event of `shape` to a vector (log-det 0)."""

    shape: tuple[int, ...] = eqx.field(static=True)
    example_shape: ClassVar = (2, 3)

    def __init__(self, shape, *, key=None):
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x):
        return x.reshape(-1), jnp.zeros((), x.dtype)

    def inverse(self, y):
        return y.reshape(self.shape), jnp.zeros((), y.dtype)
