"""RealNVP, MAF and NSF on vector data: the configs behind `zoo.create_model`.

Each model is a `zoo.Flow` over a standard normal. Its blocks are built
structurally identical, so `Chain` stacks them into one `lax.scan` and
compile time does not grow with `num_layers`. With `condition_shape=(K,)`
they model p(x | y): the condition goes into every coupling / MADE.
"""

from dataclasses import dataclass
from typing import ClassVar, Literal

import jax

from zoo.bijections import ActNorm, AffineCoupling, Chain, Permute, Reverse, SplineCoupling
from zoo.distributions import StandardNormal
from zoo.flow import Flow, condition_size
from zoo_classic.maf import MaskedAffine

__all__ = ["RealNVPConfig", "MAFConfig", "NSFConfig"]


def _vector_shape(model: str, input_shape) -> tuple[int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 1 or shape[0] < 2:
        raise ValueError(
            f"{model} models vectors of dimension D >= 2 (input_shape (D,)), got input_shape {shape}; "
            "flatten images or use an image model"
        )
    return shape


def _check_positive(model: str, **values) -> None:
    bad = {k: v for k, v in values.items() if v < 1}
    if bad:
        raise ValueError(f"{model}: these settings must be >= 1: {bad}")


def _flow(blocks, shape, condition_shape) -> Flow:
    # flatten the per-block lists; Chain finds the repeated block and scans it
    layers = [layer for block in blocks for layer in block]
    return Flow(Chain(layers), StandardNormal(shape), condition_shape=condition_shape)


@dataclass(frozen=True)
class RealNVPConfig:
    """RealNVP (Dinh et al. 2017) for vectors: blocks of ActNorm -> affine coupling
    (s = exp of a soft-clamped log-scale) -> permutation, over a standard normal."""

    num_layers: int = 8
    """Number of coupling blocks."""
    width: int = 64
    """Hidden units of each coupling's MLP conditioner."""
    depth: int = 2
    """Hidden layers of each coupling's MLP conditioner."""
    actnorm: bool = True
    """Put a data-initialised ActNorm at the start of every block."""
    permutation: Literal["reverse", "random"] = "reverse"
    """Feature permutation ending each block: reverse the order, or a fixed random permutation."""
    condition_shape: tuple[int, ...] | None = None
    """Model p(x | y) given a condition of shape (K,): K classes (integer labels, one-hot encoded) or a K-vector."""

    example_input_shape: ClassVar[tuple] = (2,)
    input_kinds: ClassVar[tuple] = ("vector",)
    default_data: ClassVar[str] = "moons"

    def build(self, *, input_shape, key) -> Flow:
        shape = _vector_shape("realnvp", input_shape)
        _check_positive("realnvp", num_layers=self.num_layers, width=self.width)
        cs = condition_size(self.condition_shape, model="realnvp")
        blocks = []
        for k in jax.random.split(key, self.num_layers):
            k_coupling, k_perm = jax.random.split(k)
            block = [ActNorm(shape)] if self.actnorm else []
            block.append(
                AffineCoupling(
                    shape, key=k_coupling, scale="exp", width=self.width, depth=self.depth, condition_size=cs
                )
            )
            block.append(Reverse(shape) if self.permutation == "reverse" else Permute(shape, key=k_perm))
            blocks.append(block)
        return _flow(blocks, shape, self.condition_shape)


@dataclass(frozen=True)
class MAFConfig:
    """Masked autoregressive flow (Papamakarios et al. 2017): blocks of MADE affine
    autoregressive layers and order reversals; one-pass density, D-pass sampling."""

    num_layers: int = 5
    """Number of MADE layers."""
    width: int = 64
    """Hidden units of each MADE."""
    depth: int = 2
    """Hidden layers of each MADE."""
    actnorm: bool = True
    """Put a data-initialised ActNorm before every MADE layer (in place of MAF's batch norm)."""
    condition_shape: tuple[int, ...] | None = None
    """Model p(x | y) given a condition of shape (K,): K classes (integer labels, one-hot encoded) or a K-vector."""

    example_input_shape: ClassVar[tuple] = (2,)
    input_kinds: ClassVar[tuple] = ("vector",)
    default_data: ClassVar[str] = "moons"

    def build(self, *, input_shape, key) -> Flow:
        shape = _vector_shape("maf", input_shape)
        _check_positive("maf", num_layers=self.num_layers, width=self.width)
        cs = condition_size(self.condition_shape, model="maf")
        blocks = []
        for k in jax.random.split(key, self.num_layers):
            block = [ActNorm(shape)] if self.actnorm else []
            block += [
                MaskedAffine(shape, key=k, width=self.width, depth=self.depth, condition_size=cs),
                Reverse(shape),
            ]
            blocks.append(block)
        return _flow(blocks, shape, self.condition_shape)


@dataclass(frozen=True)
class NSFConfig:
    """Neural spline flow (Durkan et al. 2019), coupling version: blocks of ActNorm ->
    rational-quadratic spline coupling with linear tails -> reversal."""

    num_layers: int = 4
    """Number of spline coupling blocks."""
    num_bins: int = 8
    """Spline bins per dimension."""
    tail_bound: float = 4.0
    """The spline acts on [-tail_bound, tail_bound]; outside it is the identity."""
    width: int = 64
    """Hidden units of each coupling's MLP conditioner."""
    depth: int = 2
    """Hidden layers of each coupling's MLP conditioner."""
    actnorm: bool = True
    """Put a data-initialised ActNorm at the start of every block."""
    condition_shape: tuple[int, ...] | None = None
    """Model p(x | y) given a condition of shape (K,): K classes (integer labels, one-hot encoded) or a K-vector."""

    example_input_shape: ClassVar[tuple] = (2,)
    input_kinds: ClassVar[tuple] = ("vector",)
    default_data: ClassVar[str] = "moons"

    def build(self, *, input_shape, key) -> Flow:
        shape = _vector_shape("nsf", input_shape)
        _check_positive("nsf", num_layers=self.num_layers, num_bins=self.num_bins, width=self.width)
        if self.tail_bound <= 0:
            raise ValueError(f"nsf: tail_bound must be > 0, got {self.tail_bound}")
        cs = condition_size(self.condition_shape, model="nsf")
        blocks = []
        for k in jax.random.split(key, self.num_layers):
            block = [ActNorm(shape)] if self.actnorm else []
            block.append(
                SplineCoupling(
                    shape,
                    key=k,
                    num_bins=self.num_bins,
                    tail_bound=self.tail_bound,
                    width=self.width,
                    depth=self.depth,
                    condition_size=cs,
                )
            )
            block.append(Reverse(shape))
            blocks.append(block)
        return _flow(blocks, shape, self.condition_shape)
