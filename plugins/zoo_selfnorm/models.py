"""The convolutional model configs: selfnorm_cnn and exact_cnn on the shared skeleton."""

import dataclasses

from zoo_selfnorm.cnn import CNNFlowConfig
from zoo_selfnorm.options import SelfNormOptions

__all__ = ["SelfNormCNNConfig", "ExactCNNConfig"]


@dataclasses.dataclass(frozen=True)
class ExactCNNConfig(CNNFlowConfig):
    """Convolutional flow (SNF paper, Table 1) with exact 3 x 3 convolutions: exact
    log-det (block LU of the convolution operator) and exact gradients."""

    conv_layer: str = "conv"
    """Registered layer used for every convolution (built with shape (C, H, W) only)."""


@dataclasses.dataclass(frozen=True)
class SelfNormCNNConfig(SelfNormOptions, CNNFlowConfig):
    """Self-normalizing convolutional flow (SNF paper, Table 1): 3 x 3 self-normalizing
    convolutions with spline activations, squeeze between blocks; exact evaluation."""

    conv_layer: str = "selfnorm_conv"
    """Registered layer used for every convolution (built with shape (C, H, W) only)."""

    def finish(self, flow):
        return self.wrap(flow)
