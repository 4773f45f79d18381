"""The convolutional flow skeleton of the self-normalizing flows paper's MNIST
experiments (Table 1): `num_blocks` blocks of `layers_per_block` k x k
convolutions with invertible activations between them, a squeeze between
blocks, on logit-transformed data, over a standard normal.

`CNNFlowConfig` is shared: the convolution is any registered layer, named by
`conv_layer` and built as `zoo.create_layer(conv_layer, key=k, shape=(C, H, W))`
with no other options, so other families reuse the skeleton by subclassing it
with another default (`selfnorm_cnn` uses `selfnorm_conv`, `exact_cnn` the
exact `conv`; the emerging plugin uses it for `emerging` and `conv_exp`).
"""

import dataclasses
from typing import ClassVar

import jax

import zoo
from zoo.bijections import Chain, Squeeze
from zoo.data.preprocess import SNF_LOGIT_ALPHA, preprocessing_bijection
from zoo.distributions import StandardNormal
from zoo.flow import Flow

__all__ = ["CNNFlowConfig", "build_activation"]


def build_activation(name: str, shape, *, key, spline_bins: int, spline_tail_bound: float):
    """A registered elementwise layer by name; the spline gets the bin settings."""
    if name == "spline":
        return zoo.create_layer("spline", key=key, shape=shape, num_bins=spline_bins, tail_bound=spline_tail_bound)
    return zoo.create_layer(name, key=key, shape=shape)


@dataclasses.dataclass(frozen=True)
class CNNFlowConfig:
    """Convolutional flow (SNF paper, MNIST Table 1): num_blocks x layers_per_block
    convolutions with invertible activations between them, squeeze between blocks."""

    conv_layer: str = "conv"
    """Registered layer used for every convolution (built with shape (C, H, W) only)."""
    num_blocks: int = 3
    """Blocks; a squeeze (C x H x W -> 4C x H/2 x W/2) sits between consecutive blocks."""
    layers_per_block: int = 3
    """Convolutions per block."""
    activation: str = "spline"
    """Registered elementwise layer between convolutions (spline, slr, llr, selu); none after the last."""
    spline_bins: int = 5
    """Bins of each per-element spline activation."""
    spline_tail_bound: float = 10.0
    """The splines act on [-B, B] and are the identity outside."""
    logit_alpha: float = SNF_LOGIT_ALPHA
    """Data in [0, 1) enter through logit(alpha + (1 - 2 alpha) x); its log-det is counted."""

    example_input_shape: ClassVar = (1, 4, 4)
    input_kinds: ClassVar = ("image",)
    default_data: ClassVar = "mnist_bundled"
    domain: ClassVar = (0.0, 1.0)  # pipeline images; the model starts with a logit
    example_overrides: ClassVar = {"num_blocks": 2, "layers_per_block": 2}

    def build(self, *, input_shape, key):
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3:
            raise ValueError(f"{type(self).__name__}: needs C x H x W images, got input_shape {shape}")
        if self.num_blocks < 1 or self.layers_per_block < 1:
            raise ValueError(f"{type(self).__name__}: num_blocks and layers_per_block must be >= 1")
        c, h, w = shape
        if h % 2 ** (self.num_blocks - 1) or w % 2 ** (self.num_blocks - 1):
            raise ValueError(
                f"{type(self).__name__}: {self.num_blocks} blocks squeeze {self.num_blocks - 1} times; "
                f"H, W = {h}, {w} must be divisible by {2 ** (self.num_blocks - 1)}"
            )
        layers = [preprocessing_bijection(self.logit_alpha)]
        keys = iter(jax.random.split(key, 2 * self.num_blocks * self.layers_per_block))
        for b in range(self.num_blocks):
            for i in range(self.layers_per_block):
                layers.append(zoo.create_layer(self.conv_layer, key=next(keys), shape=shape))
                last = b == self.num_blocks - 1 and i == self.layers_per_block - 1
                k_act = next(keys)
                if not last:
                    layers.append(build_activation(self.activation, shape, key=k_act, spline_bins=self.spline_bins,
                                                   spline_tail_bound=self.spline_tail_bound))
            if b < self.num_blocks - 1:
                layers.append(Squeeze(shape))
                shape = (shape[0] * 4, shape[1] // 2, shape[2] // 2)
        # Chain stacks the repeated (conv, activation) pairs of a block into one scan.
        return self.finish(Flow(Chain(layers), StandardNormal(shape)))

    def finish(self, flow):
        """Hook for subclasses: turn the built flow into the model (default: unchanged)."""
        return flow
