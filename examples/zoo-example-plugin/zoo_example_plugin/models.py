"""The plugin's model: a config dataclass that builds a `zoo.Flow`."""

import dataclasses
from typing import ClassVar

import jax

import zoo
from zoo.bijections import AffineCoupling, Chain, Reverse
from zoo.distributions import StandardNormal
from zoo_example_plugin.layers import LeakyReLU


@dataclasses.dataclass(frozen=True)
class ExampleFlowConfig:
    """Example flow for vector data: `num_blocks` x (affine coupling -> leaky ReLU -> reverse)."""

    num_blocks: int = 4
    """Number of coupling / leaky-ReLU / reverse blocks."""
    width: int = 32
    """Hidden units of each coupling's MLP conditioner."""
    depth: int = 2
    """Hidden layers of each coupling's MLP conditioner."""
    negative_slope: float = 0.5
    """Initial slope of the leaky ReLU for negative inputs (learned)."""

    # Not fields (ClassVars): the shape zoo's conformance tests build this model for, the kinds of
    # data it takes ("vector" (D,) and/or "image" C x H x W) and what it trains on by default.
    example_input_shape: ClassVar = (2,)
    input_kinds: ClassVar = ("vector",)
    default_data: ClassVar = "moons"

    def build(self, *, input_shape, key):
        input_shape = tuple(input_shape)
        if len(input_shape) != 1 or input_shape[0] < 2:
            raise ValueError(f"example_flow models vectors of size >= 2, got input_shape={input_shape}")
        layers = []
        for k in jax.random.split(key, self.num_blocks):
            layers += [
                AffineCoupling(input_shape, key=k, scale="exp", width=self.width, depth=self.depth),
                LeakyReLU(input_shape, negative_slope=self.negative_slope),
                Reverse(input_shape),
            ]
        # Chain stacks the repeated blocks and runs them with lax.scan.
        return zoo.Flow(Chain(layers), StandardNormal(input_shape))
