"""`SelfNormModel`: wraps any flow containing self-normalizing layers and
gives it the self-normalized training objective and GECO.

* `log_prob` is the wrapped model's: exact (every self-normalizing layer's
  `forward` computes its exact log-det). Evaluation NLL comes from here.
* `loss` swaps every self-normalizing layer (wherever it sits: a Chain, a
  stacked Scan, another family's multi-scale architecture) for a training
  view that uses `train_forward`: no determinant and no inverse is computed;
  the log-det gradients come from R (custom JVP rules in `layers`), and the
  reconstruction penalty lambda_l * ||x - R W x||^2 adds its gradient.
  The VALUE returned is therefore -log p(x) WITHOUT the self-normalizing
  layers' log|det W| terms (they are never computed in training -- that is
  where the speed comes from); it is also reported as aux
  `nll_without_snf_logdet`. Aux `recon_error` holds every layer's
  reconstruction error (in model order; stacked layers in stack order), read
  off in the same pass as the derivative of the loss w.r.t. a zero "probe"
  per layer (forward mode: one one-hot tangent per layer on the scalar
  log-det path).
* `after_step` is GECO (per-layer, as the reference): an EMA of each layer's
  reconstruction error, ema <- a * ema + (1 - a) * rec (first step: rec), and
  lambda <- lambda * exp(lr * (ema - tolerance)). lambda and the EMA are
  arrays inside the layers used under stop_gradient, so the optimizer leaves
  them alone (zero gradients); lr = 0 keeps lambda fixed.
* `sample` uses the fast approximate inverse through R (`approx_sample`,
  as the reference samples) or the exact inverse.
* A conditional wrapped model (`condition_shape` set, e.g. selfnorm_glow with
  `condition_shape`) gets `condition=` through every method.
"""

import math
from functools import partial
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from zoo.bijections import Bijection
from zoo.flow import call_with_key
from zoo_selfnorm.layers import AbstractSelfNorm

__all__ = ["SelfNormModel", "snf_layers", "stack_shape", "configure_selfnorm", "geco_update"]


def _is_snf(node) -> bool:
    return isinstance(node, AbstractSelfNorm)


def snf_layers(tree) -> list[AbstractSelfNorm]:
    """Every self-normalizing layer in `tree`, in pytree (model) order."""
    return [n for n in jax.tree.leaves(tree, is_leaf=_is_snf) if _is_snf(n)]


def stack_shape(layer: AbstractSelfNorm) -> tuple[int, ...]:
    """Leading stacking axes of a layer inside a Scan (() for a plain layer)."""
    return layer.weight.shape[: layer.weight.ndim - layer.weight_ndim]


def _replace(tree, fn):
    return jax.tree.map(lambda n: fn(n) if _is_snf(n) else n, tree, is_leaf=_is_snf)


def _with_static(layer, **changes):
    # Static options live in the treedef: copy the module with new values
    # (the same route Equinox's own unflattening takes).
    new = object.__new__(type(layer))
    for name in layer.__dataclass_fields__:
        object.__setattr__(new, name, changes.pop(name, getattr(layer, name)))
    if changes:
        raise TypeError(f"{type(layer).__name__} has no options {sorted(changes)}")
    return new


def configure_selfnorm(model, *, recon_loss_weight=None, **static):
    """Set options on every self-normalizing layer of a built model (for
    architectures that create layers by registry name without options):
    `recon_loss_weight` (re)initialises lambda; other keywords set static
    options (modified_grad, nll_grad_scale, sym_recon_grad, only_R_recon)."""

    def fn(layer):
        changes = dict(static)
        if recon_loss_weight is not None:
            changes["recon_weight"] = jnp.full(stack_shape(layer), float(recon_loss_weight), layer.weight.dtype)
        return _with_static(layer, **changes)

    return _replace(model, fn)


class _TrainView(Bijection):
    layer: AbstractSelfNorm
    probe: jax.Array

    def forward(self, x):
        return self.layer.train_forward(x, self.probe)

    def inverse(self, y):
        return self.layer.inverse(y)


class _ApproxInverseView(Bijection):
    layer: AbstractSelfNorm

    def forward(self, x):
        return self.layer.forward(x)

    def inverse(self, y):
        return self.layer.approx_inverse(y)


def geco_update(lam, ema, rec, *, lr, alpha, tolerance):
    """One GECO step for one layer (arrays broadcast): EMA of the reconstruction
    error (started at the first value; ema < 0 means not started) and the
    multiplicative update of its weight lambda."""
    ema = jnp.where(ema < 0, rec, alpha * ema + (1 - alpha) * rec)
    return lam * jnp.exp(lr * (ema - tolerance)), ema


def _cond(condition) -> dict:
    # an unconditional inner model is called exactly as before, without the keyword
    return {} if condition is None else {"condition": condition}


def _one_hot_tangents(probes):
    """Stacked one-hot tangents for a list of probe arrays: row i is 1 at the i-th of
    their concatenated entries (model order, stacked layers in stack order)."""
    sizes = [p.size for p in probes]
    columns = jnp.split(jnp.eye(sum(sizes), dtype=probes[0].dtype), np.cumsum(sizes)[:-1], axis=1)
    return [c.reshape((-1,) + p.shape) for c, p in zip(columns, probes)]


class SelfNormModel(eqx.Module):
    """A flow with self-normalizing layers, trained with the self-normalized gradient."""

    model: Any
    geco_lr: float = eqx.field(static=True, default=0.0)
    geco_alpha: float = eqx.field(static=True, default=0.9)
    geco_tolerance: float = eqx.field(static=True, default=0.0)
    approx_sample: bool = eqx.field(static=True, default=True)

    @property
    def condition_shape(self):
        return getattr(self.model, "condition_shape", None)

    # -- evaluation: exact
    def log_prob(self, x, **kwargs):
        return self.model.log_prob(x, **kwargs)

    def forward(self, x, *, condition=None):
        return self.model.forward(x, **_cond(condition))

    def inverse(self, z, *, condition=None):
        return self.model.inverse(z, **_cond(condition))

    def bits_per_dim(self, x, *, condition=None, n_bits: int = 8):
        from zoo.flow import bits_per_dim

        return bits_per_dim(self.log_prob(x, **_cond(condition)), x.size, n_bits=n_bits)

    def sample(self, key, *, condition=None, temperature: float = 1.0, exact: bool | None = None):
        """One sample; through R (fast) if `approx_sample`, else (or with exact=True) the true inverse."""
        exact = (not self.approx_sample) if exact is None else exact
        model = self.model if exact else _replace(self.model, _ApproxInverseView)
        return model.sample(key, temperature=temperature, **_cond(condition))

    def data_init(self, xs, *, condition=None):
        if hasattr(self.model, "data_init"):
            inner, zs = self.model.data_init(xs, **_cond(condition))
            return eqx.tree_at(lambda m: m.model, self, inner), zs
        return self, xs

    # -- training: self-normalized
    def loss(self, x, *, key=None, condition=None):
        layers = snf_layers(self.model)
        dtype = layers[0].weight.dtype if layers else x.dtype
        probes = [jnp.zeros(stack_shape(layer), dtype) for layer in layers]

        def nll(model, probes):
            it = iter(probes)
            view = _replace(model, lambda layer: _TrainView(layer, next(it)))
            return -call_with_key(view.log_prob, x, key=key, **_cond(condition))

        if not layers:
            loss = nll(self.model, probes)
            return loss, {"nll_without_snf_logdet": loss, "recon_error": jnp.zeros((0,), dtype),
                          "recon_error_mean": jnp.zeros((), dtype)}
        # Each layer's reconstruction error is the loss's derivative w.r.t. its probe, taken
        # in forward mode (one one-hot tangent per probe) in the same pass as the loss.
        # Reverse mode (differentiating the output of jax.vjp(nll, probes)) would run the
        # custom rules' primal code inside lax.scan and drop the log-det gradient of
        # stacked layers.
        loss, rec = jax.vmap(lambda t: jax.jvp(partial(nll, self.model), (probes,), (t,)),
                             out_axes=(None, 0))(_one_hot_tangents(probes))
        rec = jax.lax.stop_gradient(rec)
        aux = {"nll_without_snf_logdet": loss, "recon_error": rec, "recon_error_mean": jnp.mean(rec)}
        return loss, aux

    def after_step(self, aux, *, step):
        """GECO (see module docstring); `aux` is the batch mean of `loss`'s aux."""
        layers = snf_layers(self.model)
        if not layers:
            return self
        rec = aux["recon_error"]
        lams, emas, i = [], [], 0
        for layer in layers:
            shape = stack_shape(layer)
            n = math.prod(shape)
            r = rec[i : i + n].reshape(shape).astype(layer.recon_weight.dtype)
            i += n
            lam, ema = geco_update(layer.recon_weight, layer.recon_ema, r, lr=self.geco_lr,
                                   alpha=self.geco_alpha, tolerance=self.geco_tolerance)
            lams.append(lam)
            emas.append(ema)
        model = eqx.tree_at(lambda m: [layer.recon_weight for layer in snf_layers(m)], self.model, lams)
        model = eqx.tree_at(lambda m: [layer.recon_ema for layer in snf_layers(m)], model, emas)
        return eqx.tree_at(lambda s: s.model, self, model)
