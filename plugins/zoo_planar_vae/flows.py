"""Planar and radial flows (Rezende & Mohamed 2015, section 4.1).

Both maps are written for the SAMPLING direction z -> f(z) (base noise z0 to
zK), where the log-determinant is closed-form. In zoo's convention that is a
bijection's `inverse` (base -> data), so `Planar.inverse` / `Radial.inverse`
are the paper's maps and `forward` (data -> base, the normalizing direction)
is f^-1: for planar flows a scalar root-find along w (safeguarded Newton to
machine precision, then one implicit-function step so gradients are exact),
for radial flows the root of a quadratic. `Planar(direction="density")` swaps
the two: f becomes the normalizing `forward`. The pure functions (`planar`,
`planar_inverse`, `radial`, `radial_inverse`) take the parameters explicitly,
so the same code serves fixed learned parameters (density fitting) and
parameters predicted per example by an encoder (the amortised VAE).

Raw parameters are unconstrained; the invertibility constraints are applied
inside: planar u -> u_hat with w.u_hat = m(w.u), m(a) = -1 + softplus(a) > -1;
radial alpha = softplus(a) > 0, beta = -alpha + softplus(b) >= -alpha.
Every vector acts on all elements of its input (any shape; images are
treated as flat vectors).
"""

import math
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from zoo.bijections import Bijection

__all__ = [
    "planar_u_hat",
    "planar",
    "planar_inverse",
    "planar_root",
    "radial",
    "radial_inverse",
    "Planar",
    "Radial",
]


def _dot(a, b):
    return jnp.sum(a * b)


def planar_u_hat(u: Array, w: Array) -> tuple[Array, Array]:
    """The constrained u_hat = u + (m(w.u) - w.u) w / |w|^2 and s = 1 + w.u_hat
    = softplus(w.u) > 0 (computed directly, not as 1 + w.u_hat, which rounds
    to 0 in float32 when w.u << 0).

    For w = 0 the map is a pure shift whatever u is, so u_hat = u and s = 1;
    the `where`s keep values and gradients finite there (no 0/0). Near w = 0
    u_hat grows like 1/|w| along w: that is the paper's parametrisation, not
    a numerical artefact, and it stays finite."""
    a = _dot(w, u)
    n2 = _dot(w, w)
    nonzero = n2 > 0
    safe_n2 = jnp.where(nonzero, n2, 1.0)
    # m(a) - a = softplus(a) - 1 - a = softplus(-a) - 1
    u_hat = u + jnp.where(nonzero, jax.nn.softplus(-a) - 1.0, 0.0) * w / safe_n2
    s = jnp.where(nonzero, jax.nn.softplus(a), 1.0)
    return u_hat, s


def _planar_jacobian_factor(t, s, th=None):
    # 1 + u_hat.psi = 1 + (s - 1) sech^2(t) = tanh^2(t) + s sech^2(t): a sum of
    # non-negative terms, so it never rounds to 0 or below. `th`: tanh(t), when known.
    th = jnp.tanh(t) if th is None else th
    sech2 = 1.0 - th * th
    return th * th + s * sech2


def planar(z: Array, u: Array, w: Array, b: Array) -> tuple[Array, Array]:
    """f(z) = z + u_hat tanh(w.z + b); returns (f(z), log|1 + u_hat.psi(z)|)."""
    u_hat, s = planar_u_hat(u, w)
    t = _dot(w, z) + b
    th = jnp.tanh(t)  # once: XLA does not merge the two tanh of the map and its log-det (nor their gradients)
    return z + u_hat * th, jnp.log(_planar_jacobian_factor(t, s, th))


def _planar_g(alpha, c, s, b):
    # f(z) = y along w: alpha = w.z solves g(alpha) = 0
    return alpha + (s - 1.0) * jnp.tanh(alpha + b) - c


def planar_root(c: Array, s: Array, b: Array, *, max_iters: int = 100) -> tuple[Array, Array]:
    """The root alpha of g(alpha) = alpha + (s - 1) tanh(alpha + b) - c, and
    the iterations taken (a debugging aid: typically 3-6).

    g is strictly increasing (g' = tanh^2 + s sech^2 > 0) and its root lies in
    c -+ |s - 1|. Newton steps from c, safeguarded by that bracket (Numerical
    Recipes' rtsafe): a bisection instead whenever the step would leave the
    bracket or not halve the step before last. It stops once a step is below
    the dtype's machine precision of g's terms, or after `max_iters` steps.
    Not differentiable (a `while_loop`); see `planar_inverse` for gradients."""
    half = jnp.abs(s - 1.0)
    eps = jnp.finfo(jnp.result_type(c, s, b)).eps

    def step(state):  # state: iterate, bracket, last two step sizes, converged, count
        x, lo, hi, dx, dx_before, _, i = state
        gx = _planar_g(x, c, s, b)
        dg = _planar_jacobian_factor(x + b, s)
        lo, hi = jnp.where(gx < 0, x, lo), jnp.where(gx > 0, x, hi)
        newton = x - gx / dg
        # bisect if Newton leaves the bracket or would not halve the step before last
        bisect = (newton < lo) | (newton > hi) | (2 * jnp.abs(gx) > jnp.abs(dx_before * dg))
        x_new = jnp.where(bisect, 0.5 * (lo + hi), newton)
        dx_new = jnp.where(bisect, 0.5 * (hi - lo), gx / dg)
        done = ~(jnp.abs(dx_new) > eps * (jnp.abs(x_new) + half))  # NaN counts as done: no spinning to the cap
        return x_new, lo, hi, dx_new, dx, done, i + 1

    def running(state):
        *_, done, i = state
        return ~done & (i < max_iters)

    # a few ulps of slack: with tanh saturated the root sits at an end, where a
    # rounded Newton step must not count as leaving the bracket
    pad = 4 * eps * (jnp.abs(c) + half)
    lo, hi = c - half - pad, c + half + pad
    init = (c, lo, hi, hi - lo, hi - lo, jnp.zeros((), bool), jnp.zeros((), jnp.int32))
    alpha, *_, iters = jax.lax.while_loop(running, step, init)
    return alpha, iters


def planar_inverse(y: Array, u: Array, w: Array, b: Array, *, max_iters: int = 100) -> tuple[Array, Array]:
    """f^-1(y) and log|det d f^-1/dy| = -log|1 + u_hat.psi(f^-1(y))|.

    With alpha = w.z, f(z) = y reads g(alpha) = alpha + (s - 1) tanh(alpha + b)
    - w.y = 0. `planar_root` (no gradient) finds alpha to machine precision;
    one Newton step with gradients then gives exact implicit-function
    derivatives d alpha = -dg / g' while leaving the value unchanged.
    Then z = y - u_hat tanh(alpha + b)."""
    u_hat, s = planar_u_hat(u, w)
    c = _dot(w, y)
    root, _ = planar_root(*jax.lax.stop_gradient((c, s, b)), max_iters=max_iters)
    alpha = root - _planar_g(root, c, s, b) / _planar_jacobian_factor(root + b, s)
    z = y - u_hat * jnp.tanh(alpha + b)
    return z, -jnp.log(_planar_jacobian_factor(alpha + b, s))


def _norm(v):
    # |v| with a finite gradient at v = 0
    n2 = _dot(v, v)
    nonzero = n2 > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, n2, 1.0)), 0.0), nonzero


def _radial_params(a_raw, b_raw):
    alpha = jax.nn.softplus(a_raw)
    return alpha, -alpha + jax.nn.softplus(b_raw)


def _radial_logdet(r, alpha, beta, d):
    h = 1.0 / (alpha + r)
    # det = (1 + beta h)^(d-1) (1 + beta h + beta h' r), h' = -h^2
    return (d - 1) * jnp.log1p(beta * h) + jnp.log1p(beta * alpha * h * h)


def radial(z: Array, z0: Array, a_raw: Array, b_raw: Array) -> tuple[Array, Array]:
    """f(z) = z + beta h(alpha, r) (z - z0), h = 1 / (alpha + r), r = |z - z0|."""
    alpha, beta = _radial_params(a_raw, b_raw)
    r, _ = _norm(z - z0)
    h = 1.0 / (alpha + r)
    return z + beta * h * (z - z0), _radial_logdet(r, alpha, beta, z.size)


def radial_inverse(y: Array, z0: Array, a_raw: Array, b_raw: Array) -> tuple[Array, Array]:
    """f^-1 in closed form: y - z0 = (1 + beta h(r)) (z - z0) with a positive
    factor, so |y - z0| = r + beta r / (alpha + r), a quadratic in r:
    r^2 + (alpha + beta - r_y) r - alpha r_y = 0, one root >= 0."""
    alpha, beta = _radial_params(a_raw, b_raw)
    d = y - z0
    r_y, nonzero = _norm(d)
    big_b = alpha + beta - r_y
    disc = jnp.sqrt(big_b * big_b + 4.0 * alpha * r_y)
    # the two algebraically equal forms of the positive root, each free of cancellation on its side
    r = jnp.where(big_b <= 0, 0.5 * (disc - big_b), 2.0 * alpha * r_y / jnp.where(big_b <= 0, 1.0, big_b + disc))
    scale = jnp.where(nonzero, r / jnp.where(nonzero, r_y, 1.0), 1.0 / (1.0 + beta / alpha))
    return z0 + scale * d, -_radial_logdet(r, alpha, beta, y.size)


def _uniform(key, shape, lim):
    return jax.random.uniform(key, shape, minval=-lim, maxval=lim)


class Planar(Bijection):
    """Planar flow f(z) = z + u_hat tanh(w.z + b) as a zoo bijection.

    `direction` says which way the closed-form map f runs. "sample" (the
    default; the paper's and the VAE's use): `inverse` is f (base -> data,
    the sampling direction) and `forward` is f^-1 by a scalar root-find (see
    `planar_inverse`), so the layer still evaluates densities exactly.
    "density" (flowjax's convention): `forward` is f (data -> base), so
    densities are closed form and only sampling root-finds. `max_iters` caps
    the root-find. Build it from a shape and key (fixed learned parameters, w
    and u uniform in +-1/sqrt(D), b = 0), or pass `u`, `w`, `b` directly, e.g.
    an encoder's per-example output; arrays with a leading axis make a stack
    for `zoo.bijections.Scan`.
    """

    u: Array
    w: Array
    b: Array
    direction: Literal["sample", "density"] = eqx.field(static=True, default="sample")
    max_iters: int = eqx.field(static=True, default=100)
    example_shape: ClassVar = (4,)

    def __init__(self, shape=None, *, key=None, u=None, w=None, b=None,
                 direction: Literal["sample", "density"] = "sample", max_iters: int = 100):
        if direction not in ("sample", "density"):
            raise ValueError(f"Planar: direction must be 'sample' or 'density', got {direction!r}")
        if u is None or w is None or b is None:
            if shape is None or key is None:
                raise ValueError("Planar: give shape and key, or all of u, w, b")
            shape = tuple(shape)
            lim = 1.0 / max(1, math.prod(shape)) ** 0.5
            ku, kw = jax.random.split(key)
            u, w, b = _uniform(ku, shape, lim), _uniform(kw, shape, lim), jnp.zeros(())
        self.u, self.w, self.b = jnp.asarray(u), jnp.asarray(w), jnp.asarray(b)
        self.direction = direction
        self.max_iters = max_iters

    def _map(self, z):
        return planar(z, self.u, self.w, self.b)

    def _root_find(self, y):
        return planar_inverse(y, self.u, self.w, self.b, max_iters=self.max_iters)

    def forward(self, x):
        return self._map(x) if self.direction == "density" else self._root_find(x)

    def inverse(self, y):
        return self._root_find(y) if self.direction == "density" else self._map(y)


class Radial(Bijection):
    """Radial flow f(z) = z + beta (z - z0) / (alpha + |z - z0|) as a zoo bijection.

    `inverse` is f (sampling direction); `forward` is f^-1 in closed form.
    `a_raw`, `b_raw` are unconstrained (alpha = softplus(a_raw),
    beta = -alpha + softplus(b_raw)). Build from shape and key (z0 ~ N(0, 1),
    a_raw = b_raw = 0) or pass `z0`, `a_raw`, `b_raw` per example.
    """

    z0: Array
    a_raw: Array
    b_raw: Array
    example_shape: ClassVar = (4,)

    def __init__(self, shape=None, *, key=None, z0=None, a_raw=None, b_raw=None):
        if z0 is None or a_raw is None or b_raw is None:
            if shape is None or key is None:
                raise ValueError("Radial: give shape and key, or all of z0, a_raw, b_raw")
            z0, a_raw, b_raw = jax.random.normal(key, tuple(shape)), jnp.zeros(()), jnp.zeros(())
        self.z0, self.a_raw, self.b_raw = jnp.asarray(z0), jnp.asarray(a_raw), jnp.asarray(b_raw)

    def inverse(self, y):
        return radial(y, self.z0, self.a_raw, self.b_raw)

    def forward(self, x):
        return radial_inverse(x, self.z0, self.a_raw, self.b_raw)
