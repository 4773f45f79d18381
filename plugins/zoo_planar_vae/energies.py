"""The four unnormalised 2-D densities p(z) ~ exp(-U(z)) of Rezende & Mohamed
(2015), Table 1 / Figure 3, and reverse-KL fitting of a planar flow to them.

U2-U4 do not decay along z1 (exp(-U) is not integrable over the plane), so,
as the paper's plots do implicitly, we confine them to the plotted window
|z1| <= 4 with a wall 0.5 (max(|z1| - 4, 0) / 0.2)^2 that is zero inside it.
U1 (a ring) is integrable as it stands. Each function takes one point z (2,).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from zoo.bijections import Scan
from zoo_planar_vae.flows import Planar

__all__ = ["ENERGIES", "U1", "U2", "U3", "U4", "log_partition", "fit_planar", "reverse_kl", "PlanarFlowDensity"]


def _w1(z):
    return jnp.sin(2.0 * math.pi * z[0] / 4.0)


def _w2(z):
    return 3.0 * jnp.exp(-0.5 * ((z[0] - 1.0) / 0.6) ** 2)


def _w3(z):
    return 3.0 * jax.nn.sigmoid((z[0] - 1.0) / 0.3)


def _wall(z):
    return 0.5 * (jnp.maximum(jnp.abs(z[0]) - 4.0, 0.0) / 0.2) ** 2


def _neg_logsumexp2(a, b):
    # -ln(e^-a + e^-b)
    return -jnp.logaddexp(-a, -b)


def U1(z):
    ring = 0.5 * ((jnp.linalg.norm(z) - 2.0) / 0.4) ** 2
    return ring + _neg_logsumexp2(0.5 * ((z[0] - 2.0) / 0.6) ** 2, 0.5 * ((z[0] + 2.0) / 0.6) ** 2)


def U2(z):
    return 0.5 * ((z[1] - _w1(z)) / 0.4) ** 2 + _wall(z)


def U3(z):
    a = 0.5 * ((z[1] - _w1(z)) / 0.35) ** 2
    b = 0.5 * ((z[1] - _w1(z) + _w2(z)) / 0.35) ** 2
    return _neg_logsumexp2(a, b) + _wall(z)


def U4(z):
    a = 0.5 * ((z[1] - _w1(z)) / 0.4) ** 2
    b = 0.5 * ((z[1] - _w1(z) + _w3(z)) / 0.35) ** 2
    return _neg_logsumexp2(a, b) + _wall(z)


ENERGIES = {"U1": U1, "U2": U2, "U3": U3, "U4": U4}


def log_partition(energy, *, lim: float = 7.0, n: int = 1401) -> float:
    """log of the integral of exp(-U) over the plane, by the midpoint rule on
    [-lim, lim]^2 (every U here is negligible outside |z| < 6)."""
    axis = np.linspace(-lim, lim, n)
    pts = jnp.asarray(np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2))
    neg_u = jax.jit(jax.vmap(lambda z: -energy(z)))(pts)
    cell = (axis[1] - axis[0]) ** 2
    return float(jax.scipy.special.logsumexp(neg_u) + math.log(cell))


class PlanarFlowDensity(eqx.Module):
    """q_K: a standard normal pushed through K planar maps (stacked and scanned).
    `sample_and_log_prob` goes the sampling way (closed form); `log_prob` uses
    the numerical inverse, so densities can be drawn on a grid."""

    flows: Scan

    def __init__(self, k: int, *, key):
        self.flows = Scan(eqx.filter_vmap(lambda kk: Planar((2,), key=kk))(jax.random.split(key, k)), k)

    def sample_and_log_prob(self, key):
        z0 = jax.random.normal(key, (2,))
        log_q0 = -0.5 * jnp.sum(z0**2) - math.log(2 * math.pi)
        z, logdet = self.flows.inverse(z0)  # f_K o ... o f_1, the sampling direction
        return z, log_q0 - logdet

    def log_prob(self, z):
        z0, logdet = self.flows.forward(z)
        return -0.5 * jnp.sum(z0**2) - math.log(2 * math.pi) + logdet


def fit_planar(energy, k: int, *, key, steps: int = 10000, batch: int = 256, lr: float = 1e-3,
               anneal_steps: int = 5000):
    """Minimise the reverse KL E_q[log q(z) + beta_t U(z)] (+ log Z) of a K-step
    planar flow to exp(-U), with the paper's annealing beta_t = min(1, 0.01 +
    t / anneal_steps). Adam; returns (fitted density, per-step losses)."""
    k_init, k_train = jax.random.split(key)
    model = PlanarFlowDensity(k, key=k_init)
    opt = optax.adam(lr)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    def loss_fn(m, key, beta):
        z, log_q = jax.vmap(m.sample_and_log_prob)(jax.random.split(key, batch))
        return jnp.mean(log_q + beta * jax.vmap(energy)(z))

    @eqx.filter_jit
    def run(model, state, key):
        def step(carry, t):
            model, state = carry
            beta = jnp.minimum(1.0, 0.01 + t / anneal_steps)
            loss, grads = eqx.filter_value_and_grad(loss_fn)(model, jax.random.fold_in(key, t), beta)
            updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
            return (eqx.apply_updates(model, updates), state), loss

        (model, state), losses = jax.lax.scan(step, (model, state), jnp.arange(steps))
        return model, losses

    model, losses = run(model, state, k_train)
    return model, np.asarray(losses)


def reverse_kl(model: PlanarFlowDensity, energy, log_z: float, *, key, n: int = 100_000) -> tuple[float, float]:
    """Monte-Carlo KL(q || p) = E_q[log q + U] + log Z in nats, and its standard error."""
    terms = np.asarray(_kl_terms(model, energy, jax.random.split(key, n)), np.float64) + log_z
    return float(terms.mean()), float(terms.std() / math.sqrt(n))


@eqx.filter_jit
def _kl_terms(model, energy, keys):
    z, log_q = jax.vmap(model.sample_and_log_prob)(keys)
    return log_q + jax.vmap(energy)(z)
