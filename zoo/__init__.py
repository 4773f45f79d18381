"""zoo: normalizing flows as Equinox modules, with model families as plugins."""

from zoo import _runtime

if _runtime._running_as(("zoo.train",)):
    _runtime.reexec_with_malloc_tuning()  # before jax is imported; see zoo/_runtime.py

from zoo import bijections, distributions, testing
from zoo.bijections import Bijection, after_update, data_init
from zoo.checkpoint import load_pretrained, save_pretrained
from zoo.data import CorruptDatasetError, DatasetSource, MissingDatasetError, load_dataset
from zoo.flow import Flow, bits_per_dim
from zoo.pretrained import list_pretrained, pretrained_card
from zoo.train.fit import fit
from zoo.registry import (
    PluginImportWarning,
    RegistryError,
    create_layer,
    create_model,
    get_dataset,
    get_layer,
    get_model_config,
    list_datasets,
    list_layers,
    list_models,
    register_dataset,
    register_layer,
    register_model,
)

__version__ = "0.1.0"

__all__ = [
    "bijections", "distributions", "testing", "fit",
    "Bijection", "Flow", "bits_per_dim", "data_init", "after_update", "load_pretrained", "save_pretrained",
    "list_pretrained", "pretrained_card",
    "DatasetSource", "MissingDatasetError", "CorruptDatasetError", "load_dataset",
    "PluginImportWarning", "RegistryError",
    "create_layer", "create_model", "get_dataset", "get_layer", "get_model_config",
    "list_datasets", "list_layers", "list_models",
    "register_dataset", "register_layer", "register_model",
]
