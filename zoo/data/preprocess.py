"""Preprocessing: dequantization and binarisation in the data pipeline, the
logit transform in the model.

Bits per dimension. The pipeline hands the model x in [0, 1): x = (k + u) / 256
for 8-bit pixel values k and uniform noise u. A model of the density of x gives
the standard number with `zoo.bits_per_dim` = (-log p(x) + D log 256) / (D log 2)
(the D log 256 undoes the 1/256 scaling). Everything after the scaling, the
logit transform included, must be a bijection INSIDE the model so its log-det
enters log p(x): put `preprocessing_bijection()` first in the flow's chain.

The SNF reference (akandykeller/SelfNormalizingFlows, snf/experiments/*.py:
`Dequantization(UniformDistribution)`, `Normalization(0, 256)`,
`Normalization(-alpha, 1 / (1 - 2 alpha))`, `LogitTransform()`, alpha = 1e-6
for MNIST, CIFAR-10 and ImageNet32) maps x to logit((x + alpha)(1 - 2 alpha));
`zoo.bijections.Logit` uses logit(alpha + (1 - 2 alpha) x), which differs by
2 alpha^2 = 2e-12 inside the logit.
"""

import abc

import numpy as np

from zoo.bijections import Logit

__all__ = [
    "SNF_LOGIT_ALPHA",
    "preprocessing_bijection",
    "Dequantizer",
    "UniformDequantizer",
    "scale",
    "binarize_dynamic",
    "random_flip",
]

SNF_LOGIT_ALPHA = 1e-6


def preprocessing_bijection(alpha: float = SNF_LOGIT_ALPHA) -> Logit:
    """The logit transform of the SNF reference, as the first layer of a flow
    on pipeline outputs in [0, 1)."""
    return Logit(alpha=alpha)


class Dequantizer(abc.ABC):
    """Turns a batch of integer pixels into continuous model inputs, in the
    pipeline (NumPy, one batch at a time).

    `rng` is seeded from (seed, process, step), so the noise is part of the
    restorable iterator state. This is the hook for other noise
    distributions. Learned (variational, Flow++) dequantization needs gradients,
    so it belongs in the model: run the pipeline with `dequantize="scale"`
    (x = k / 256, from which the model recovers k = 256 x exactly), let the
    model draw u ~ q(u | k) with its own key, score (k + u) / 256 and subtract
    log q(u | k) in its `loss`.
    """

    @abc.abstractmethod
    def __call__(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 batch (B, *shape) -> float32 batch of the same shape."""


class UniformDequantizer(Dequantizer):
    """x = (k + u) / 256 with u ~ U[0, 1), so x lies in [k/256, (k+1)/256).

    u is drawn on a grid of 2^-16 so that every x is exactly representable
    in float32 (x = m / 2^24, m an integer): float32 rounding can then never
    push x into the next bin or onto 1.0. 2^-24 is float32's resolution just
    below 1, so this is as fine as float32 allows there.
    """

    def __call__(self, pixels, rng):
        k = pixels.astype(np.uint32) << 16
        m = k | rng.integers(0, 1 << 16, size=pixels.shape, dtype=np.uint32)
        return m.astype(np.float32) * np.float32(2.0**-24)


def scale(pixels: np.ndarray) -> np.ndarray:
    """x = k / 256 without noise (input for a model with its own dequantizer)."""
    return pixels.astype(np.float32) * np.float32(1 / 256)


def binarize_dynamic(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bernoulli(k / 255) pixels as float32 0/1 (dynamic binarisation)."""
    # r uniform on {0, ..., 254}: P(r < k) = k / 255 exactly.
    r = rng.integers(0, 255, size=pixels.shape, dtype=np.uint8)
    return (r < pixels).astype(np.float32)


def random_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror each image (B, C, H, W) left-right with probability 1/2."""
    flip = rng.random(images.shape[0]) < 0.5
    return np.where(flip[:, None, None, None], images[..., ::-1], images)
