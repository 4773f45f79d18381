"""`python -m zoo.train --model NAME --data NAME [flags]`.

Two-stage parse: the model and dataset names are read first, then tyro
builds the full CLI from the chosen model's config class, so `--help` shows
that model's typed fields (as `--model-cfg.FIELD`) and the choices come from
the plugin registry at run time.
"""

# No `from __future__ import annotations` here: the CLI dataclass is built at
# run time and tyro needs real types, not strings.
import argparse
import dataclasses
import difflib
import sys
import typing
import tomllib
from pathlib import Path
from typing import Annotated, Literal

import tyro

import zoo
from zoo._cli import UsageError, cli, parse_args
from zoo.train.config import TrainConfig

# The model `--data NAME` alone trains, by the kind of NAME's examples.
DEFAULT_MODELS = {"image": "glow", "vector": "realnvp"}
DEFAULT_PRESET = "quickstart"  # what a bare `python -m zoo.train` runs
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.toml"))


def load_preset(name: str) -> dict:
    """configs/NAME.toml (or a path to a .toml file) as a dict."""
    path = Path(name)
    if not (path.suffix == ".toml" and path.is_file()):
        path = CONFIGS_DIR / f"{name}.toml"
    if not path.is_file():
        hint = difflib.get_close_matches(name, list_presets(), n=3)
        _fail(f"unknown --config {name!r}; " + (f"did you mean {', '.join(map(repr, hint))}? " if hint else "")
              + f"choose from: {', '.join(list_presets())} (or a path to a .toml file)")
    try:
        preset = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        _fail(f"--config {path}: not valid TOML ({e})")
    unknown = sorted(set(preset) - {"description", "model", "data", "model_cfg", "train"})
    if unknown:
        _fail(f"--config {path}: unknown top-level keys {unknown}; use description, model, data, [model_cfg], [train]")
    return preset


def _replace(kind: str, obj, values: dict):
    fields = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(values) - fields)
    if unknown:
        _fail(f"{kind} has no field(s) {unknown}; valid: {', '.join(sorted(fields))}")
    from zoo.checkpoint import _is_tuple_hint

    hints = typing.get_type_hints(type(obj))
    values = {k: tuple(v) if isinstance(v, list) and _is_tuple_hint(hints.get(k)) else v for k, v in values.items()}
    return dataclasses.replace(obj, **values)


def _choices(names):
    return Literal[tuple(names)]  # type: ignore[valid-type]


def _help(kind, text: str):
    return Annotated[kind, tyro.conf.arg(help=text)]


def build_cli_class(model: str, models, datasets, data: str):
    """The dataclass tyro parses: training settings + --model/--data + the
    chosen model's config under --model-cfg."""
    cfg_cls = type(zoo.get_model_config(model))
    fits = ", ".join(zoo.registry.compatible_datasets(model))
    fields = [
        ("config", _help(str | None, "Preset: a name from configs/ or a path to a .toml file; flags override "
                                     "its values (bare `python -m zoo.train`: quickstart)."),
         dataclasses.field(default=None)),
        ("model", _help(_choices(models), "Registered model to train; `--model NAME --help` shows its "
                                          "--model-cfg.* hyperparameters."), dataclasses.field(default=model)),
        ("data", _help(_choices(datasets), f"Registered dataset; {model} takes {fits}. Without --data: "
                                           "the preset's dataset, else the model's own."),
         dataclasses.field(default=data)),
        ("model_cfg", cfg_cls, dataclasses.field(default_factory=cfg_cls)),
    ]
    cls = dataclasses.make_dataclass("TrainCommand", fields, bases=(TrainConfig,))
    cls.__doc__ = (
        "Train a registered flow model on a registered dataset.\n\n"
        f"Models: {', '.join(models)}.\nDatasets: {', '.join(datasets)}.\n"
        f"Presets (--config NAME, from configs/; flags override them): {', '.join(list_presets())}.\n"
        "--model-cfg.* flags are the chosen model's hyperparameters (see `--model NAME --help`).\n"
        f"With no --config/--model/--data this runs the {DEFAULT_PRESET!r} preset."
    )
    return cls


def _fail(msg: str):
    print(f"zoo.train: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def parse(argv=None):
    """argv -> (model name, model config, data name, TrainConfig).

    A preset (--config) gives the defaults; every flag overrides it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--model")
    pre.add_argument("--data")
    known, _ = pre.parse_known_args(argv)
    config = known.config
    if config is None and known.model is None and known.data is None:
        config = DEFAULT_PRESET
    preset = load_preset(config) if config else {}
    data = known.data or preset.get("data")
    if data is not None:
        zoo.get_dataset(data)  # an unknown name: RegistryError with "did you mean" (exit 2)
    model = known.model or preset.get("model")
    if model is None:
        kind = "image" if data is None else zoo.registry.input_kind(zoo.get_dataset(data).shape)
        model = DEFAULT_MODELS.get(kind, "realnvp")
    zoo.get_model_config(model)
    data = data or zoo.registry.default_dataset(model)
    try:
        zoo.registry.check_compatible(model, data)  # before anything is parsed further or written
    except zoo.RegistryError as e:
        if known.data is None and "data" in preset:
            raise UsageError(f"{e} (--data {data} comes from --config {config}; pass --data to choose)") from None
        raise
    models, datasets = zoo.list_models(), zoo.list_datasets()
    cls = build_cli_class(model, models, datasets, data)
    model_cfg = zoo.get_model_config(model)
    if preset and model == preset.get("model"):  # a preset's fields belong to its own model
        model_cfg = _replace(f"--config {config}: model {model!r}", model_cfg, preset.get("model_cfg", {}))
    train_values = dict(preset.get("train", {}))
    wandb_values = train_values.pop("wandb", {})
    train_cfg = _replace(f"--config {config}: [train]", TrainConfig(), train_values)
    train_cfg = dataclasses.replace(train_cfg, wandb=_replace(f"--config {config}: [train.wandb]", train_cfg.wandb, wandb_values))
    default = cls(config=config, model=model, data=data, model_cfg=model_cfg,
                  **{f.name: getattr(train_cfg, f.name) for f in dataclasses.fields(TrainConfig)})
    command = parse_args(cls, args=argv, default=default, prog="python -m zoo.train")
    train_cfg = TrainConfig(**{f.name: getattr(command, f.name) for f in dataclasses.fields(TrainConfig)})
    model_cfg = command.model_cfg
    if train_cfg.conditional:
        from zoo.train.loop import conditional_config

        model_cfg = conditional_config(command.model, model_cfg, command.data)
    check_builds(command.model, model_cfg, command.data)
    return command.model, model_cfg, command.data, train_cfg


def check_builds(model: str, model_cfg, data: str) -> None:
    """Trace the model's construction for the dataset's shape (no arrays are made), so an
    architecture that does not fit the data (e.g. too many Glow levels) fails before a run starts."""
    import equinox as eqx
    import jax

    shape = tuple(zoo.get_dataset(data).shape)
    try:
        eqx.filter_eval_shape(model_cfg.build, input_shape=shape, key=jax.random.key(0))
    except ValueError as e:
        raise UsageError(f"--model {model} cannot be built for --data {data} {shape}: {e}") from None


@cli("zoo.train")
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--distributed" in argv:  # before anything (plugins included) touches a JAX backend
        from zoo.train.loop import initialize_distributed

        pre = argparse.ArgumentParser(add_help=False)
        for flag, kind in (("--coordinator-address", str), ("--num-processes", int), ("--process-id", int)):
            pre.add_argument(flag, type=kind)
        known, _ = pre.parse_known_args(argv)
        initialize_distributed(known.coordinator_address, known.num_processes, known.process_id)
    model, model_cfg, data, cfg = parse(argv)
    from zoo.train.loop import train

    train(model, model_cfg, data, cfg)
