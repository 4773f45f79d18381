"""emerging_cnn and exponential_cnn: the SNF paper's convolutional MNIST flow
(`zoo_selfnorm.cnn.CNNFlowConfig`: blocks of k x k convolutions with spline
activations, squeeze between blocks) with emerging convolutions or
convolution exponentials as the convolutions."""

import dataclasses

from zoo_selfnorm.cnn import CNNFlowConfig

__all__ = ["EmergingCNNConfig", "ExponentialCNNConfig"]


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
