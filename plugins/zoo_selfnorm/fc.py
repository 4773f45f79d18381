"""Fully connected flows of the SNF paper (MNIST, Table 1): num_layers dense
D x D layers (D = C*H*W) with an invertible activation between them, on
logit-transformed data, over a standard normal."""

import dataclasses
import math
from typing import ClassVar

import jax

from zoo.bijections import Chain
from zoo.data.preprocess import SNF_LOGIT_ALPHA, preprocessing_bijection
from zoo.distributions import StandardNormal
from zoo.flow import Flow
from zoo_selfnorm.activations import Flatten
from zoo_selfnorm.cnn import build_activation
from zoo_selfnorm.layers import Dense, SelfNormDense
from zoo_selfnorm.options import SelfNormOptions

__all__ = ["ExactFCConfig", "SelfNormFCConfig"]


def _fc_flow(cfg, input_shape, key, make_dense):
    shape = tuple(int(s) for s in input_shape)
    if cfg.num_layers < 1:
        raise ValueError(f"{type(cfg).__name__}: num_layers must be >= 1")
    d = math.prod(shape)
    layers = [preprocessing_bijection(cfg.logit_alpha), Flatten(shape)]
    keys = jax.random.split(key, 2 * cfg.num_layers)
    for i in range(cfg.num_layers):
        layers.append(make_dense((d,), keys[2 * i]))
        if i < cfg.num_layers - 1:
            layers.append(build_activation(cfg.activation, (d,), key=keys[2 * i + 1], spline_bins=cfg.spline_bins,
                                           spline_tail_bound=cfg.spline_tail_bound))
    return Flow(Chain(layers), StandardNormal((d,)))


@dataclasses.dataclass(frozen=True)
class _FCFields:
    """The architecture fields both FC flows share."""

    num_layers: int = 2
    """Dense D x D layers (D = C*H*W)."""
    activation: str = "slr"
    """Registered elementwise layer between dense layers (slr, llr, spline, selu)."""
    spline_bins: int = 5
    """Bins of the spline activation."""
    spline_tail_bound: float = 10.0
    """The spline acts on [-B, B]."""
    logit_alpha: float = SNF_LOGIT_ALPHA
    """Data in [0, 1) enter through logit(alpha + (1 - 2 alpha) x)."""

    example_input_shape: ClassVar = (1, 2, 3)
    input_kinds: ClassVar = ("image",)  # 8-bit images in [0, 1): the logit needs that range
    default_data: ClassVar = "mnist_bundled"
    domain: ClassVar = (0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class ExactFCConfig(_FCFields):
    """Fully connected flow with exact log-det (slogdet) and exact gradients (SNF paper's baseline)."""

    def build(self, *, input_shape, key):
        return _fc_flow(self, input_shape, key, lambda shape, k: Dense(shape, key=k))


@dataclasses.dataclass(frozen=True)
class SelfNormFCConfig(_FCFields, SelfNormOptions):
    """Self-normalizing fully connected flow (SNF paper, Table 1): dense layers with learned
    approximate inverses trained with the self-normalized gradient; exact evaluation."""

    def build(self, *, input_shape, key):
        flow = _fc_flow(self, input_shape, key, lambda shape, k: SelfNormDense(shape, key=k))
        return self.wrap(flow)
