"""The planar-flow VAE (DLGM) of Rezende & Mohamed (2015), section 6.3.

Generative model: z ~ N(0, I) (latent_dim), x | z ~ Bernoulli(sigmoid(dec(z)))
over the flattened pixels. Inference: the encoder maps x to mu, log sigma^2
and the raw parameters of all K flows; z0 = mu + sigma eps, zK = f_K o ... o
f_1(z0), log q(zK|x) = log q0(z0) - sum_k log|det df_k/dz|. The K flows'
parameters are a stacked `Planar`/`Radial` module run by one `lax.scan`
(`zoo.bijections.Scan`), built from the encoder output for each x
(`amortized=True`, the paper's setting) or stored as learned parameters shared
by every x (`amortized=False`, the ablation that reproduces badly).

Encoder and decoder are maxout MLPs (`hidden` units, each the max over a
window of `maxout_window` linear pieces).
"""

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from zoo.bijections import Scan
from zoo_planar_vae.flows import Planar, Radial

__all__ = ["PlanarVAEConfig", "PlanarVAE", "Maxout", "beta_schedule"]

_LOG_2PI = math.log(2.0 * math.pi)


def beta_schedule(step, *, start: float = 0.01, steps: int = 10000):
    """The paper's annealing weight beta_t = min(1, start + t / steps) on log p(x, z)."""
    return jnp.minimum(1.0, start + jnp.asarray(step, jnp.float32) / steps)


class Maxout(eqx.Module):
    """y_i = max_j (W x + b)_{i, j} over `window` linear pieces per unit."""

    linear: eqx.nn.Linear
    window: int = eqx.field(static=True)

    def __init__(self, in_size: int, out_size: int, window: int, *, key):
        self.linear = eqx.nn.Linear(in_size, out_size * window, key=key)
        self.window = window

    def __call__(self, x):
        return jnp.max(self.linear(x).reshape(-1, self.window), axis=-1)


def _mlp(in_size, hidden, layers, window, out_size, key):
    keys = jax.random.split(key, layers + 1)
    sizes = [in_size] + [hidden] * layers
    body = tuple(Maxout(a, hidden, window, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys))
    return body, eqx.nn.Linear(sizes[-1], out_size, key=keys[-1])


def _apply(body, head, x):
    for layer in body:
        x = layer(x)
    return head(x)


def _std_normal_logpdf(z):
    return -0.5 * jnp.sum(z * z) - 0.5 * z.size * _LOG_2PI


class PlanarVAE(eqx.Module):
    """One-example methods (the trainer vmaps): `loss(x, *, key, step=None)`
    (annealed free energy), `log_prob(x, *, key)` (importance-sampled),
    `diagnostics(x, *, key)` (-log p(x), free energy, KL to the posterior),
    `sample(key, *, temperature)` (Bernoulli means)."""

    enc_body: tuple
    enc_head: eqx.nn.Linear
    dec_body: tuple
    dec_head: eqx.nn.Linear
    shared_flows: Array | None  # (K, P) raw flow parameters when not amortized
    input_shape: tuple = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    flow_length: int = eqx.field(static=True)
    flow: str = eqx.field(static=True)
    amortized: bool = eqx.field(static=True)
    num_importance: int = eqx.field(static=True)
    eval_chunk: int = eqx.field(static=True)
    anneal_start: float = eqx.field(static=True)
    anneal_steps: int = eqx.field(static=True)
    binarize_input: bool = eqx.field(static=True)

    @property
    def flow_param_size(self) -> int:
        d = self.latent_dim
        return 2 * d + 1 if self.flow == "planar" else d + 2

    # ------------------------------------------------------------ pieces

    def _prepare(self, x, key):
        """Flatten; optionally draw x ~ Bernoulli(x) (grey levels in [0, 1])."""
        x = x.reshape(-1)
        if self.binarize_input:
            x = jax.random.bernoulli(key, jnp.clip(x, 0.0, 1.0)).astype(x.dtype)
        return x

    def _flows(self, raw: Array):
        """A stacked Planar/Radial module (K layers) from raw parameters (K, P)."""
        d = self.latent_dim
        if self.flow == "planar":
            layer = Planar(u=raw[:, :d], w=raw[:, d : 2 * d], b=raw[:, 2 * d])
        else:
            layer = Radial(z0=raw[:, :d], a_raw=raw[:, d], b_raw=raw[:, d + 1])
        return Scan(layer, self.flow_length)

    def encode(self, x_flat: Array):
        """mu, log sigma^2 (latent_dim each) and the stacked flows for this x."""
        d, k, p = self.latent_dim, self.flow_length, self.flow_param_size
        out = _apply(self.enc_body, self.enc_head, x_flat)
        mu, log_var = out[:d], out[d : 2 * d]
        raw = out[2 * d :].reshape(k, p) if self.amortized else self.shared_flows
        return mu, log_var, self._flows(raw)

    def _posterior_sample(self, mu, log_var, flows, key):
        """zK ~ q(.|x) and log q(zK|x)."""
        eps = jax.random.normal(key, mu.shape, mu.dtype)
        z0 = mu + jnp.exp(0.5 * log_var) * eps
        log_q0 = _std_normal_logpdf(eps) - 0.5 * jnp.sum(log_var)
        # Planar/Radial.inverse is the paper's map f (base -> posterior sample).
        zk, logdet = flows.inverse(z0)
        return zk, log_q0 - logdet

    def log_likelihood(self, x_flat, z):
        """log p(x|z), Bernoulli over pixels: x l - softplus(l) for logits l."""
        logits = _apply(self.dec_body, self.dec_head, z)
        return jnp.sum(x_flat * logits - jax.nn.softplus(logits))

    # ------------------------------------------------------------ contract

    def loss(self, x, *, key, step=None):
        """Annealed free energy (one posterior sample): E_q[log q(zK|x) - beta_t
        log p(x, zK)], beta_t = min(1, anneal_start + step / anneal_steps);
        beta = 1 (the negative ELBO) when `step` is None. aux: free_energy
        (beta = 1), reconstruction (-log p(x|z)), kl (log q - log p(z)), beta."""
        k_bin, k_z = jax.random.split(key)
        x = self._prepare(x, k_bin)
        mu, log_var, flows = self.encode(x)
        z, log_q = self._posterior_sample(mu, log_var, flows, k_z)
        log_lik = self.log_likelihood(x, z)
        log_prior = _std_normal_logpdf(z)
        if step is None or self.anneal_steps == 0:
            beta = jnp.ones((), log_q.dtype)
        else:
            beta = beta_schedule(step, start=self.anneal_start, steps=self.anneal_steps).astype(log_q.dtype)
        free_energy = log_q - log_lik - log_prior
        aux = {"free_energy": free_energy, "reconstruction": -log_lik, "kl": log_q - log_prior, "beta": beta}
        return log_q - beta * (log_lik + log_prior), aux

    def diagnostics(self, x, *, key, num_samples: int | None = None):
        """Importance-sampled -log p(x) with S = `num_samples` (default
        `num_importance`) posterior samples, evaluated `eval_chunk` at a time
        (lax.scan over chunks bounds memory), the free energy F = E_q[log q -
        log p(x, z)] over the same samples, and F - (-log p(x)), the KL from q
        to the true posterior. All in nats. The samples depend only on `key`
        and S, not on the chunk size."""
        s = self.num_importance if num_samples is None else int(num_samples)
        chunk = max(1, min(self.eval_chunk, s))
        n_chunks = -(-s // chunk)
        k_bin, k_z = jax.random.split(key)
        x = self._prepare(x, k_bin)
        mu, log_var, flows = self.encode(x)

        keys = jax.random.split(k_z, s)
        pad = n_chunks * chunk - s
        keys = jnp.concatenate([keys, keys[:pad]]) if pad else keys
        valid = (jnp.arange(n_chunks * chunk) < s).reshape(n_chunks, chunk)
        keys = keys.reshape(n_chunks, chunk)

        def log_weight(k):
            z, log_q = self._posterior_sample(mu, log_var, flows, k)
            return self.log_likelihood(x, z) + _std_normal_logpdf(z) - log_q

        def body(carry, inp):
            run_max, run_sum, total = carry  # streaming logsumexp and sum of log weights
            ks, ok = inp
            lw = jax.vmap(log_weight)(ks)
            new_max = jnp.maximum(run_max, jnp.max(jnp.where(ok, lw, -jnp.inf)))
            run_sum = run_sum * jnp.exp(run_max - new_max) + jnp.sum(jnp.where(ok, jnp.exp(lw - new_max), 0.0))
            return (new_max, run_sum, total + jnp.sum(jnp.where(ok, lw, 0.0))), None

        dtype = mu.dtype
        init = (jnp.full((), -jnp.inf, dtype), jnp.zeros((), dtype), jnp.zeros((), dtype))
        (run_max, run_sum, total), _ = jax.lax.scan(body, init, (keys, valid))
        nll = -(run_max + jnp.log(run_sum) - math.log(s))
        free_energy = -total / s
        return {"nll": nll, "free_energy": free_energy, "kl_posterior": free_energy - nll}

    def log_prob(self, x, *, key):
        """Importance-sampled log p(x) (nats; see `diagnostics`). A stochastic
        lower bound in expectation that tightens as num_importance grows."""
        return -self.diagnostics(x, key=key)["nll"]

    def sample(self, key, *, temperature: float = 1.0):
        """x-space sample with z ~ N(0, temperature^2 I): returns the Bernoulli
        MEANS sigmoid(dec(z)) in [0, 1] (the usual way to show a binary model's
        samples), shaped like the input; draw `jax.random.bernoulli` on them
        for binary samples."""
        z = temperature * jax.random.normal(key, (self.latent_dim,), self.dec_head.weight.dtype)
        return jax.nn.sigmoid(_apply(self.dec_body, self.dec_head, z)).reshape(self.input_shape)


@dataclass(frozen=True)
class PlanarVAEConfig:
    """Planar-flow VAE (Rezende & Mohamed 2015): maxout-MLP DLGM with a Bernoulli
    decoder; the encoder predicts mu, log sigma^2 and all K flows' parameters per
    input. -log p(x) by importance sampling. For binarised data in {0, 1}."""

    flow_length: int = 10
    """K, the number of flows (0: the diagonal-Gaussian VAE baseline)."""
    flow: Literal["planar", "radial"] = "planar"
    """Flow family of the approximate posterior."""
    latent_dim: int = 40
    """Latent dimension."""
    hidden: int = 400
    """Maxout units per hidden layer (encoder and decoder)."""
    maxout_window: int = 4
    """Linear pieces per maxout unit."""
    hidden_layers: int = 1
    """Hidden maxout layers in encoder and in decoder."""
    amortized: bool = True
    """Encoder predicts the flow parameters for each x (the paper); False: one learned set shared by all x."""
    num_importance: int = 200
    """S, importance samples for -log p(x) (log_prob / evaluation)."""
    eval_chunk: int = 50
    """Importance samples evaluated at once (memory bound)."""
    anneal_start: float = 0.01
    """beta_0 of the annealing beta_t = min(1, anneal_start + t / anneal_steps)."""
    anneal_steps: int = 10000
    """Steps over which beta_t rises to 1 (0: no annealing)."""
    binarize_input: bool = False
    """Draw x ~ Bernoulli(x) from grey levels in [0, 1] inside loss/log_prob (for data the pipeline does not
    binarise, e.g. mnist_bundled); leave off for binarized_mnist / binarized_mnist_dynamic."""

    example_input_shape: ClassVar = (1, 4, 4)
    input_kinds: ClassVar = ("image",)
    default_data: ClassVar = "binarized_mnist_dynamic"  # a Bernoulli decoder: binary pixels, as the paper
    example_overrides: ClassVar = dict(latent_dim=2, hidden=8, maxout_window=2, flow_length=3,
                                       num_importance=12, eval_chunk=5)
    domain: ClassVar = (0.0, 1.0)  # Bernoulli means: conformance inputs are drawn in (0, 1)

    def build(self, *, input_shape, key) -> PlanarVAE:
        bad = {k: v for k, v in dict(latent_dim=self.latent_dim, hidden=self.hidden, maxout_window=self.maxout_window,
                                     hidden_layers=self.hidden_layers, num_importance=self.num_importance,
                                     eval_chunk=self.eval_chunk).items() if v < 1}
        if self.flow_length < 0:
            bad["flow_length"] = self.flow_length
        if self.anneal_steps < 0:
            bad["anneal_steps"] = self.anneal_steps
        if bad:
            raise ValueError(f"planar_vae: invalid settings {bad} (flow_length, anneal_steps >= 0; the rest >= 1)")
        if self.flow not in ("planar", "radial"):
            raise ValueError(f"planar_vae: flow must be 'planar' or 'radial', got {self.flow!r}")
        input_shape = tuple(int(s) for s in input_shape)
        n_in, d, k = math.prod(input_shape), self.latent_dim, self.flow_length
        p = 2 * d + 1 if self.flow == "planar" else d + 2
        k_enc, k_dec, k_flow = jax.random.split(key, 3)
        enc_out = 2 * d + (k * p if self.amortized else 0)
        enc_body, enc_head = _mlp(n_in, self.hidden, self.hidden_layers, self.maxout_window, enc_out, k_enc)
        dec_body, dec_head = _mlp(d, self.hidden, self.hidden_layers, self.maxout_window, n_in, k_dec)
        # Flow parameters start as the fixed-flow init (planar u, w uniform in +-1/sqrt(d), b = 0; radial
        # z0 uniform, a = b = 0). Amortised: that is the bias of the encoder's flow outputs, whose weights
        # start at zero, so training begins from well-conditioned flows shared by all x and learns the
        # dependence on x (a random hypernetwork init gives each x random, often saturated tanh flows).
        lim = 1.0 / math.sqrt(d)
        flow_init = jax.random.uniform(k_flow, (k, p), minval=-lim, maxval=lim)
        flow_init = flow_init.at[:, 2 * d].set(0.0) if self.flow == "planar" else flow_init.at[:, d:].set(0.0)
        shared = None
        if self.amortized:
            enc_head = eqx.tree_at(lambda h: (h.weight, h.bias), enc_head,
                                   (enc_head.weight.at[2 * d :].set(0.0), enc_head.bias.at[2 * d :].set(flow_init.ravel())))
        else:
            shared = flow_init
        return PlanarVAE(
            enc_body=enc_body, enc_head=enc_head, dec_body=dec_body, dec_head=dec_head, shared_flows=shared,
            input_shape=input_shape, latent_dim=d, flow_length=k, flow=self.flow, amortized=self.amortized,
            num_importance=self.num_importance, eval_chunk=self.eval_chunk, anneal_start=self.anneal_start,
            anneal_steps=self.anneal_steps, binarize_input=self.binarize_input,
        )
