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
from typing import Literal

import tyro

import zoo
from zoo.train.config import TrainConfig

DEFAULT_MODEL = "realnvp"
DEFAULT_DATA = "moons"


def _choices(names):
    return Literal[tuple(names)]  # type: ignore[valid-type]


def build_cli_class(model: str, models, datasets):
    """The dataclass tyro parses: training settings + --model/--data + the
    chosen model's config under --model-cfg."""
    cfg_cls = type(zoo.get_model_config(model))
    fields = [
        ("model", _choices(models), dataclasses.field(default=model)),
        ("data", _choices(datasets), dataclasses.field(default=DEFAULT_DATA)),
        ("model_cfg", cfg_cls, dataclasses.field(default_factory=cfg_cls)),
    ]
    cls = dataclasses.make_dataclass("TrainCommand", fields, bases=(TrainConfig,))
    cls.__doc__ = (
        "Train a registered flow model on a registered dataset.\n\n"
        f"Models: {', '.join(models)}.\nDatasets: {', '.join(datasets)}.\n"
        "--model-cfg.* flags are the chosen model's hyperparameters (see `--model NAME --help`)."
    )
    return cls


def _fail(msg: str):
    print(f"zoo.train: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def parse(argv=None):
    """argv -> (model name, model config, data name, TrainConfig)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", default=DEFAULT_MODEL)
    pre.add_argument("--data", default=DEFAULT_DATA)
    known, _ = pre.parse_known_args(argv)
    models, datasets = zoo.list_models(), zoo.list_datasets()
    if known.model not in models:
        _fail(f"unknown --model {known.model!r}; choose from: {', '.join(models)}")
    if known.data not in datasets:
        _fail(f"unknown --data {known.data!r}; choose from: {', '.join(datasets)}")
    cls = build_cli_class(known.model, models, datasets)
    command = tyro.cli(cls, args=argv, prog="python -m zoo.train")
    train_cfg = TrainConfig(**{f.name: getattr(command, f.name) for f in dataclasses.fields(TrainConfig)})
    return command.model, command.model_cfg, command.data, train_cfg


def main(argv=None):
    model, model_cfg, data, cfg = parse(argv)
    from zoo.data import MissingDatasetError
    from zoo.train.loop import TrainingDiverged, train

    try:
        train(model, model_cfg, data, cfg)
    except MissingDatasetError as e:
        print(f"zoo.train: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except TrainingDiverged as e:
        print(f"zoo.train: {e}", file=sys.stderr)
        raise SystemExit(1) from None
