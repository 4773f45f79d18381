"""flowjax twins of zoo's vector flows, for the side-by-side cases.

Imported only when flowjax is importable (`pip install 'zoo[bench]'`). A
twin has zoo's dimension, number of layers, conditioner width and depth and
spline bins, over a standard normal; flowjax's own choices stay as they are
(a random permutation after every layer, affine scales by softplus, inner
knots = bins - 1). Densities are flowjax's fast direction (`invert=True`),
as zoo's are.
"""

import flowjax  # noqa: F401  (first: a missing flowjax is the error, not one of its dependencies)
import equinox as eqx
import jax
import jax.numpy as jnp
import paramax
from flowjax.bijections import RationalQuadraticSpline
from flowjax.distributions import Normal
from flowjax.flows import coupling_flow, masked_autoregressive_flow, planar_flow
from flowjax.train.losses import MaximumLikelihoodLoss
from flowjax.train.train_utils import step as flowjax_step

__all__ = ["twin", "partition_spec", "nll", "train_step", "log_prob", "sample", "SAMPLE_UNSUPPORTED"]

# flowjax's tanh Planar has no inverse ("only implemented with the leaky relu activation").
SAMPLE_UNSUPPORTED = {"planar": "flowjax's tanh Planar layer has no inverse, so its density-direction flow cannot sample"}


def twin(family: str, cfg, dim: int, key):
    """The flowjax flow matching zoo's `family` config `cfg` at dimension `dim`."""
    base = Normal(jnp.zeros(dim))
    common = dict(base_dist=base, flow_layers=cfg.num_layers, invert=True)
    if family == "planar":
        return planar_flow(key, **common)
    common.update(nn_width=cfg.width, nn_depth=cfg.depth)
    if family == "realnvp":
        return coupling_flow(key, **common)
    if family == "maf":
        return masked_autoregressive_flow(key, **common)
    if family == "nsf":
        spline = RationalQuadraticSpline(knots=cfg.num_bins - 1, interval=cfg.tail_bound)
        return coupling_flow(key, transformer=spline, **common)
    raise ValueError(f"no flowjax twin for {family!r}")


def partition_spec():
    """(filter_spec, is_leaf) of flowjax's own training loops."""
    return eqx.is_inexact_array, lambda leaf: isinstance(leaf, paramax.NonTrainable)


def nll(dist, x):
    return -jnp.mean(paramax.unwrap(dist).log_prob(x))


def train_step(dist, optimizer, x, *, seed: int = 0):
    """flowjax's own training step (`flowjax.train.train_utils.step`, what
    `fit_to_data` calls per batch, with its default `MaximumLikelihoodLoss`) as a thunk."""
    spec, is_leaf = partition_spec()
    params, static = eqx.partition(dist, spec, is_leaf=is_leaf)
    state = {"params": params, "opt": optimizer.init(params)}
    loss_fn, key, x = MaximumLikelihoodLoss(), jax.random.key(seed), jnp.asarray(x)

    def call():
        state["params"], state["opt"], loss = flowjax_step(state["params"], static, x, optimizer=optimizer,
                                                           opt_state=state["opt"], loss_fn=loss_fn, key=key)
        jax.block_until_ready((state["params"], loss))

    return call


def _jit_on_params(dist, fn):
    spec, is_leaf = partition_spec()
    params, static = eqx.partition(dist, spec, is_leaf=is_leaf)
    jitted = jax.jit(lambda p, *args: fn(eqx.combine(p, static), *args))
    return lambda *args: jitted(params, *args)


def log_prob(dist, x):
    fn = _jit_on_params(dist, lambda d, x: d.log_prob(x))
    x = jnp.asarray(x)
    return lambda: jax.block_until_ready(fn(x))


def sample(dist, num: int, *, seed: int = 0):
    fn = _jit_on_params(dist, lambda d, key: d.sample(key, (num,)))
    key = jax.random.key(seed)
    return lambda: jax.block_until_ready(fn(key))
