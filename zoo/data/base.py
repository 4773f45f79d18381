"""The dataset-source contract shared by built-in and plugin datasets.

Layout for the whole project: images are uint8 N x C x H x W (channels
first, as `eqx.nn.Conv2d` expects for one example); vector data is float32
N x D.
"""

import abc
import os
from pathlib import Path
from typing import ClassVar

import numpy as np

__all__ = ["DatasetSource", "MissingDatasetError", "resolve_data_dir", "load_dataset"]


class MissingDatasetError(FileNotFoundError):
    """A dataset's files are missing or unreadable; the message says how to get them."""


def resolve_data_dir(path=None) -> Path:
    """`path`, else `$ZOO_DATA_DIR`, else `~/.cache/zoo/data`."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("ZOO_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "zoo" / "data"


class DatasetSource(abc.ABC):
    """One dataset, registered under the `zoo.datasets` entry-point group.

    Subclasses set the class attributes and implement `load`.
    """

    description: ClassVar[str]
    shape: ClassVar[tuple[int, ...]]  # one example
    dtype: ClassVar[str]  # "uint8" for images (C x H x W), "float32" for vectors
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test")

    @abc.abstractmethod
    def load(self, split: str, *, data_dir: Path) -> np.ndarray:
        """All examples of `split` as one array (N, *shape) of `dtype`."""

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"{type(self).__name__}: unknown split {split!r}; choose from {self.splits}")


def load_dataset(name: str, *, split: str, data_dir=None) -> np.ndarray:
    """Raw examples of one split of the registered dataset `name`."""
    from zoo.registry import get_dataset

    source = get_dataset(name)
    source.check_split(split)
    out = source.load(split, data_dir=resolve_data_dir(data_dir))
    expected = (out.shape[0],) + tuple(source.shape)
    if out.shape != expected or out.dtype != np.dtype(source.dtype):
        raise RuntimeError(
            f"dataset {name!r} returned {out.dtype}{list(out.shape)}, expected {source.dtype}{list(expected)}"
        )
    return out
