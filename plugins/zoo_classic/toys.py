"""The standard 2-D toy densities, with the shapes and scales of FFJORD's
`toy_data` (Grathwohl et al. 2019) that most flow papers plot.

Each split is a fixed sample drawn with numpy from its own seed, so splits are
different samples and every load returns the same array; no files are read.
"""

import abc
from typing import ClassVar

import numpy as np

from zoo.data import DatasetSource

__all__ = ["Moons", "Circles", "EightGaussians", "Checkerboard", "Pinwheel"]

SPLIT_SIZES = {"train": 10_000, "validation": 2_000, "test": 2_000}
_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


class _Toy2D(DatasetSource):
    shape: ClassVar[tuple[int, ...]] = (2,)
    dtype: ClassVar[str] = "float32"
    seed: ClassVar[int]  # per dataset; combined with the split's own seed

    @staticmethod
    @abc.abstractmethod
    def generate(n: int, *, rng: np.random.Generator) -> np.ndarray:
        """`n` fresh points, (n, 2) float64."""

    def load(self, split, *, data_dir=None):
        self.check_split(split)
        rng = np.random.default_rng([self.seed, _SPLIT_SEEDS[split]])
        return self.generate(SPLIT_SIZES[split], rng=rng).astype(np.float32)


def _half_split(n):
    return n // 2, n - n // 2


class Moons(_Toy2D):
    description = "Two interleaving half circles (sklearn make_moons, noise 0.1), scaled x2 and shifted by (-1, -0.2)."
    seed = 101

    @staticmethod
    def generate(n, *, rng):
        n_out, n_in = _half_split(n)
        t_out, t_in = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n_in)
        outer = np.stack([np.cos(t_out), np.sin(t_out)], 1)
        inner = np.stack([1 - np.cos(t_in), 1 - np.sin(t_in) - 0.5], 1)
        x = rng.permutation(np.concatenate([outer, inner]))
        x = x + 0.1 * rng.standard_normal(x.shape)
        return 2 * x + np.array([-1.0, -0.2])


class Circles(_Toy2D):
    description = "Two concentric circles (sklearn make_circles, factor 0.5, noise 0.08), scaled x3."
    seed = 102

    @staticmethod
    def generate(n, *, rng):
        n_out, n_in = _half_split(n)
        t_out = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
        t_in = np.linspace(0, 2 * np.pi, n_in, endpoint=False)
        outer = np.stack([np.cos(t_out), np.sin(t_out)], 1)
        inner = 0.5 * np.stack([np.cos(t_in), np.sin(t_in)], 1)
        x = rng.permutation(np.concatenate([outer, inner]))
        x = x + 0.08 * rng.standard_normal(x.shape)
        return 3 * x


class EightGaussians(_Toy2D):
    description = "Mixture of 8 Gaussians (std 0.5) on a circle of radius 4, all divided by 1.414."
    seed = 103

    @staticmethod
    def generate(n, *, rng):
        angles = np.arange(8) * (np.pi / 4)
        centers = 4.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
        x = 0.5 * rng.standard_normal((n, 2)) + centers[rng.integers(0, 8, size=n)]
        return x / 1.414


class Checkerboard(_Toy2D):
    description = "Uniform on the dark squares of a 4x4 checkerboard covering [-4, 4]^2."
    seed = 104

    @staticmethod
    def generate(n, *, rng):
        x1 = rng.random(n) * 4 - 2
        x2 = rng.random(n) - 2 * rng.integers(0, 2, size=n) + np.floor(x1) % 2
        return 2 * np.stack([x1, x2], 1)


class Pinwheel(_Toy2D):
    description = "Five curved arms (radial std 0.3, tangential std 0.1, twist rate 0.25), scaled x2."
    seed = 105

    @staticmethod
    def generate(n, *, rng):
        radial_std, tangential_std, num_arms, rate = 0.3, 0.1, 5, 0.25
        arm = np.arange(n) % num_arms
        f = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
        f[:, 0] += 1.0
        angles = arm * (2 * np.pi / num_arms) + rate * np.exp(f[:, 0])
        c, s = np.cos(angles), np.sin(angles)
        # row vector times [[c, -s], [s, c]], as FFJORD's einsum does
        x = np.stack([f[:, 0] * c + f[:, 1] * s, -f[:, 0] * s + f[:, 1] * c], 1)
        return 2 * rng.permutation(x)
