"""Plugin discovery through Python entry points.

Four entry-point groups, read lazily on first use and cached:

- `zoo.models`: a frozen dataclass config (fields = hyperparameters = CLI
  flags, every field with a default, docstring = help) with a method
  `build(*, input_shape, key) -> model`; optional ClassVars `input_kinds`
  (drawn from "image", "vector") and `default_data` say which datasets fit.
- `zoo.layers`: a `Bijection` class (or factory) called as
  `layer(shape, *, key, **options)`.
- `zoo.datasets`: a `zoo.data.DatasetSource` subclass.
- `zoo.pretrained`: a pretrained model named `architecture.tag`; the entry
  loads a card locator (`zoo.pretrained`: a callable name -> card path, or
  a path).

A plugin that fails to import is reported once, as a warning naming its
distribution and the error, and every other plugin still works. Two
distributions registering one name is an error naming both.
"""

import dataclasses
import difflib
import fnmatch
import importlib.metadata
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RegistryError",
    "PluginImportWarning",
    "list_models",
    "list_layers",
    "list_datasets",
    "get_model_config",
    "get_layer",
    "get_dataset",
    "model_name_of",
    "input_kind",
    "model_input_kinds",
    "compatible_datasets",
    "default_dataset",
    "check_compatible",
    "create_model",
    "create_layer",
    "register_model",
    "register_layer",
    "register_dataset",
    "provider",
    "refresh",
]

GROUPS = {"model": "zoo.models", "layer": "zoo.layers", "dataset": "zoo.datasets", "pretrained": "zoo.pretrained"}
IN_PROCESS = "<registered in-process>"


class RegistryError(LookupError):
    """An unknown name, a name claimed twice, or an invalid registration."""


class PluginImportWarning(UserWarning):
    """A plugin distribution failed to import; the others still load."""


@dataclass
class _Entry:
    name: str
    dist: str  # distribution that provides it, or IN_PROCESS
    source: str  # "module:attr"
    ep: Any = None
    obj: Any = None
    loaded: bool = False
    broken: bool = False


_entries: dict[str, dict[str, _Entry]] = {}
_in_process: dict[str, dict[str, _Entry]] = {kind: {} for kind in GROUPS}
_warned: set[tuple[str, str]] = set()


def refresh() -> None:
    """Forget discovered entry points (after installing a plugin in-process)."""
    _entries.clear()
    _warned.clear()
    importlib.invalidate_caches()


def _collision(kind, name, a: _Entry, b: _Entry) -> RegistryError:
    return RegistryError(
        f"{kind} {name!r} is registered twice: by {a.dist!r} ({a.source}) and by "
        f"{b.dist!r} ({b.source}). "
        + (
            "Rename the in-process registration."
            if IN_PROCESS in (a.dist, b.dist)
            else "Uninstall one of the two packages or rename one entry."
        )
    )


def _table(kind: str) -> dict[str, _Entry]:
    if kind not in _entries:
        table: dict[str, _Entry] = {}
        for ep in importlib.metadata.entry_points(group=GROUPS[kind]):
            dist = ep.dist.name if ep.dist is not None else "<unknown distribution>"
            entry = _Entry(ep.name, dist, ep.value, ep=ep)
            old = table.get(ep.name)
            if old is not None and old.dist != dist:
                raise _collision(kind, ep.name, old, entry)
            table.setdefault(ep.name, entry)  # one distribution seen twice on sys.path
        for name, entry in _in_process[kind].items():
            if name in table:
                raise _collision(kind, name, table[name], entry)
            table[name] = entry
        _entries[kind] = table
    return _entries[kind]


def _validate(kind: str, name: str, obj: Any) -> None:
    if kind == "model":
        problems = []
        if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
            problems.append("is not a dataclass")
        elif not obj.__dataclass_params__.frozen:
            problems.append("is not frozen (use @dataclass(frozen=True))")
        else:
            missing = [
                f.name
                for f in dataclasses.fields(obj)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            ]
            if missing:
                problems.append(f"has fields without defaults: {missing}")
        if not callable(getattr(obj, "build", None)):
            problems.append("has no build(*, input_shape, key) method")
        kinds = getattr(obj, "input_kinds", INPUT_KINDS)
        if isinstance(kinds, str) or not set(kinds) <= set(INPUT_KINDS):
            problems.append(f"input_kinds {kinds!r} is not a tuple drawn from {INPUT_KINDS}")
        if problems:
            raise TypeError(f"model config {getattr(obj, '__name__', obj)!r} " + "; ".join(problems))
    elif kind == "pretrained":
        if not (callable(obj) or isinstance(obj, (str, os.PathLike))):
            raise TypeError(f"pretrained {name!r} must load a card locator (callable or path), got {type(obj).__name__}")
    elif not callable(obj):
        raise TypeError(f"{kind} {name!r} must be a class or callable, got {type(obj).__name__}")


def _caller_stacklevel() -> int:
    """Stack level of the first frame outside this module, so a warning
    points at the user's line rather than at the registry."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    return level


def _load(kind: str, entry: _Entry) -> bool:
    if not entry.loaded:
        entry.loaded = True
        try:
            if entry.ep is not None:
                entry.obj = entry.ep.load()
            _validate(kind, entry.name, entry.obj)
        except Exception as e:  # a broken plugin must not take the others down
            entry.broken = True
            msg = f"{type(e).__name__}: {e}"
            if (entry.dist, msg) not in _warned:
                _warned.add((entry.dist, msg))
                warnings.warn(  # noqa: B028 (stacklevel computed below)
                    f"zoo: plugin package {entry.dist!r} failed to load its {kind} "
                    f"{entry.name!r} ({entry.source}): {msg}. Other plugins still work; "
                    f"reinstall or fix {entry.dist!r} to use it.",
                    PluginImportWarning,
                    stacklevel=_caller_stacklevel(),
                )
    return not entry.broken


def _names(kind: str, pattern: str) -> list[str]:
    table = _table(kind)
    return sorted(n for n, e in table.items() if fnmatch.fnmatchcase(n, pattern) and _load(kind, e))


def _get(kind: str, name: str) -> Any:
    table = _table(kind)
    entry = table.get(name)
    if entry is None or not _load(kind, entry):
        available = _names(kind, "*")
        hint = difflib.get_close_matches(name, available, n=3)
        why = (
            f"its package {entry.dist!r} failed to import (see the warning above)"
            if entry is not None
            else "no installed package registers it"
        )
        raise RegistryError(
            f"unknown {kind} {name!r}: {why}."
            + (f" Did you mean {', '.join(map(repr, hint))}?" if hint else "")
            + f" Available {kind}s: {', '.join(available) or '(none)'}"
        )
    return entry.obj


def provider(kind: str, name: str) -> str:
    """The distribution that registers `name` (or IN_PROCESS)."""
    _get(kind, name)
    return _table(kind)[name].dist


def list_models(pattern: str = "*") -> list[str]:
    """Names of all importable models, filtered by an fnmatch `pattern`."""
    return _names("model", pattern)


def list_layers(pattern: str = "*") -> list[str]:
    return _names("layer", pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    return _names("dataset", pattern)


def get_model_config(name: str):
    """The model's config with its default hyperparameters (a frozen dataclass
    instance; `type(config)` is the class the CLI builds its flags from)."""
    return _get("model", name)()


def get_layer(name: str):
    """The layer class/factory registered as `name`."""
    return _get("layer", name)


def get_dataset(name: str):
    """An instance of the dataset source registered as `name`."""
    return _get("dataset", name)()


INPUT_KINDS = ("image", "vector")


def input_kind(shape) -> str:
    """What one example of `shape` is: "image" (C x H x W) or "vector" (D,)."""
    return {1: "vector", 3: "image"}.get(len(tuple(shape)), f"{len(tuple(shape))}-d array")


def model_input_kinds(model: str) -> tuple[str, ...]:
    """The input kinds model `model` takes: its config's `input_kinds` ClassVar (default: every kind)."""
    return tuple(getattr(_get("model", model), "input_kinds", INPUT_KINDS))


def compatible_datasets(model: str) -> list[str]:
    """The registered datasets whose examples model `model` takes."""
    kinds = model_input_kinds(model)
    return [d for d in list_datasets() if input_kind(_get("dataset", d).shape) in kinds]


def default_dataset(model: str) -> str:
    """What model `model` trains on when no dataset is named: its config's
    `default_data` ClassVar, else the first that fits of mnist_bundled, moons, any."""
    declared = getattr(_get("model", model), "default_data", None)
    if declared is not None:
        return declared
    fits = compatible_datasets(model)
    if not fits:
        raise RegistryError(f"no installed dataset fits model {model!r} (it takes {' or '.join(model_input_kinds(model))}s); "
                            "install a dataset plugin or register one")
    return next((d for d in ("mnist_bundled", "moons") if d in fits), fits[0])


def check_compatible(model: str, data: str) -> None:
    """Raise `RegistryError` listing the datasets that fit when model `model` cannot take `data`'s examples."""
    kinds, shape = model_input_kinds(model), tuple(_get("dataset", data).shape)
    if input_kind(shape) not in kinds:
        raise RegistryError(
            f"model {model!r} takes {' or '.join(kinds)}s but dataset {data!r} holds {input_kind(shape)}s of shape "
            f"{shape}; datasets that fit {model!r}: {', '.join(compatible_datasets(model)) or '(none installed)'}"
        )


def model_name_of(config) -> str:
    """The registered name whose config class is exactly `type(config)`."""
    names = [n for n in list_models() if _table("model")[n].obj is type(config)]
    if len(names) != 1:
        raise RegistryError(
            f"{type(config).__name__} is registered under {len(names)} model names {names}; pass name=..."
            if names else f"{type(config).__name__} is not a registered model config; register it or pass name=..."
        )
    return names[0]


def create_model(name: str, *, key, input_shape, **overrides):
    """Build model `name` for examples of `input_shape`, with config fields
    replaced by `overrides`."""
    config = get_model_config(name)
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise RegistryError(
            f"model {name!r} has no field(s) {unknown}; its fields are: {', '.join(sorted(fields))}"
        )
    config = dataclasses.replace(config, **overrides)
    return config.build(input_shape=tuple(input_shape), key=key)


def create_layer(name: str, *, key, shape, **options):
    """Build layer `name` for events of `shape`."""
    return get_layer(name)(tuple(shape), key=key, **options)


def _register(kind: str, name: str):
    def decorator(obj):
        _validate(kind, name, obj)
        entry = _Entry(name, IN_PROCESS, f"{obj.__module__}:{obj.__qualname__}", obj=obj, loaded=True)
        old = _in_process[kind].get(name)
        if old is not None and old.source != entry.source:
            raise _collision(kind, name, old, entry)
        # Discover now (reads metadata, imports nothing), so a clash with an
        # installed plugin fails here rather than in every later list_*().
        table = _table(kind)
        if name in table and table[name].dist != IN_PROCESS:
            raise _collision(kind, name, table[name], entry)
        _in_process[kind][name] = entry  # re-running a notebook cell re-registers
        table[name] = entry
        return obj

    return decorator


def register_model(name: str):
    """Class decorator registering a model config in this process (notebooks)."""
    return _register("model", name)


def register_layer(name: str):
    return _register("layer", name)


def register_dataset(name: str):
    return _register("dataset", name)
