"""emerging_cnn and exponential_cnn: the SNF paper's convolutional MNIST flow
(`zoo_selfnorm.cnn.CNNFlowConfig`: blocks of k x k convolutions with spline
activations, squeeze between blocks) with emerging convolutions or
convolution exponentials as the convolutions."""

import dataclasses
import inspect

import equinox as eqx
from jax import Array

from zoo_emerging.convexp import refresh_power_vectors
from zoo_selfnorm.cnn import CNNFlowConfig

__all__ = ["EmergingCNNConfig", "ExponentialCNNConfig", "ConvExpFlow"]


@dataclasses.dataclass(frozen=True)
class EmergingCNNConfig(CNNFlowConfig):
    """Convolutional flow (SNF paper, Table 1) with 3 x 3 emerging convolutions
    (Hoogeboom et al. 2019: 1x1 conv + two opposite 2 x 2 autoregressive convs):
    exact log-det from the kernels' centre diagonals; sampling inverts each one
    by substitution."""

    conv_layer: str = "emerging"
    """Registered layer used for every convolution (built with shape (C, H, W) only)."""


@dataclasses.dataclass(frozen=True)
class ExponentialCNNConfig(CNNFlowConfig):
    """Convolutional flow (SNF paper, Table 1) with convolution exponentials
    (Hoogeboom et al. 2020: 1x1 conv + exp of a spectrally normalised 3 x 3 conv):
    log-det = trace; 6 series terms in the training loss, 13 for log_prob and sampling."""

    conv_layer: str = "conv_exp"
    """Registered layer used for every convolution (built with shape (C, H, W) only)."""

    def finish(self, flow):
        return ConvExpFlow(flow)


def _takes(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class ConvExpFlow(eqx.Module):
    """A flow holding `ConvExp` layers, as the trainer should see it:
    `loss` runs every convolution exponential with its `terms_train` series
    terms (`eqx.nn.inference_mode(flow, False)`), everything else (`log_prob`,
    `sample`, `forward`, `inverse`) with `terms_eval`; `after_step` stores the
    advanced power-iteration vectors after each optimiser update."""

    flow: eqx.Module

    @property
    def base(self):
        return self.flow.base

    def forward(self, x: Array):
        return self.flow.forward(x)

    def inverse(self, z: Array):
        return self.flow.inverse(z)

    def log_prob(self, x: Array) -> Array:
        return self.flow.log_prob(x)

    def sample(self, key, *, temperature: float = 1.0) -> Array:
        return self.flow.sample(key, temperature=temperature)

    def bits_per_dim(self, x: Array, *, n_bits: int = 8) -> Array:
        return self.flow.bits_per_dim(x, n_bits=n_bits)

    def loss(self, x: Array, *, key=None, step=None):
        training = eqx.nn.inference_mode(self.flow, False)
        extra = {"step": step} if step is not None and _takes(training.loss, "step") else {}
        return training.loss(x, key=key, **extra)

    def after_step(self, aux, *, step):
        flow = self.flow
        if hasattr(flow, "after_step"):
            flow = flow.after_step(aux, step=step)
        return ConvExpFlow(refresh_power_vectors(flow))

    def data_init(self, xs: Array):
        flow, zs = self.flow.data_init(xs)
        return ConvExpFlow(flow), zs
