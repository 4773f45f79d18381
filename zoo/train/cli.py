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
import sys
import tomllib
from pathlib import Path
from typing import Literal

import tyro

import zoo
from zoo._cli import cli
from zoo.train.config import TrainConfig

DEFAULT_MODEL = "realnvp"
DEFAULT_DATA = "moons"
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
        _fail(f"unknown --config {name!r}; choose from: {', '.join(list_presets())} (or a path to a .toml file)")
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
    return dataclasses.replace(obj, **values)


def _choices(names):
    return Literal[tuple(names)]  # type: ignore[valid-type]


def build_cli_class(model: str, models, datasets):
    """The dataclass tyro parses: training settings + --model/--data + the
    chosen model's config under --model-cfg."""
    cfg_cls = type(zoo.get_model_config(model))
    fields = [
        ("config", str | None, dataclasses.field(default=None)),
        ("model", _choices(models), dataclasses.field(default=model)),
        ("data", _choices(datasets), dataclasses.field(default=DEFAULT_DATA)),
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
    model = known.model or preset.get("model", DEFAULT_MODEL)
    data = known.data or preset.get("data", DEFAULT_DATA)
    models, datasets = zoo.list_models(), zoo.list_datasets()
    if model not in models:
        _fail(f"unknown --model {model!r}; choose from: {', '.join(models)}")
    if data not in datasets:
        _fail(f"unknown --data {data!r}; choose from: {', '.join(datasets)}")
    cls = build_cli_class(model, models, datasets)
    model_cfg = zoo.get_model_config(model)
    if preset and model == preset.get("model"):  # a preset's fields belong to its own model
        model_cfg = _replace(f"--config {config}: model {model!r}", model_cfg, preset.get("model_cfg", {}))
    train_values = dict(preset.get("train", {}))
    wandb_values = train_values.pop("wandb", {})
    train_cfg = _replace(f"--config {config}: [train]", TrainConfig(), train_values)
    train_cfg = dataclasses.replace(train_cfg, wandb=_replace(f"--config {config}: [train.wandb]", train_cfg.wandb, wandb_values))
    default = cls(config=config, model=model, data=data, model_cfg=model_cfg,
                  **{f.name: getattr(train_cfg, f.name) for f in dataclasses.fields(TrainConfig)})
    command = tyro.cli(cls, args=argv, default=default, prog="python -m zoo.train")
    train_cfg = TrainConfig(**{f.name: getattr(command, f.name) for f in dataclasses.fields(TrainConfig)})
    return command.model, command.model_cfg, command.data, train_cfg


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
