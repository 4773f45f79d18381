"""Dataset sources and loading."""

from zoo.data.base import DatasetSource, MissingDatasetError, load_dataset, resolve_data_dir

__all__ = ["DatasetSource", "MissingDatasetError", "load_dataset", "resolve_data_dir"]
