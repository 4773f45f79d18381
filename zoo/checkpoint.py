"""Checkpoints and pretrained models: Orbax directories that carry their config.

A checkpoint (one step directory of a training run) and a pretrained model
share one layout, so either can be loaded with `load_pretrained`:

    <dir>/model/      every array of the model (Orbax StandardSave; integer
                      arrays such as permutations included)
    <dir>/meta/       JSON: model name, its config, input shape, training
                      config, step, data-iterator state, metrics
    <dir>/opt_state/  optimizer state (training checkpoints only)

Nothing is pickled: the model is rebuilt from its registered config class
(so a plugin model loads as long as its package is installed) and its arrays
are restored into that structure.
"""

import dataclasses
import hashlib
import json
import math
import shutil
import tarfile
import tempfile
import typing
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import orbax.checkpoint as ocp

from zoo._cli import Failure

__all__ = [
    "save_pretrained", "load_pretrained", "load_with_meta", "read_meta", "model_arrays", "abstract_model",
    "CheckpointError", "CorruptCheckpointWarning", "Checkpoints",
]


class CheckpointError(Failure):
    """A checkpoint could not be read or written."""


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint step failed to restore and an older one is used instead."""


def _is_leaf_array(x) -> bool:
    # eqx.is_array misses ShapeDtypeStruct: restoring into an abstract model
    # would then silently treat every array as static.
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def model_arrays(model):
    """Every array of `model` (params and integer buffers), others None."""
    return eqx.filter(model, _is_leaf_array)


def _abstract(tree, sharding=None):
    def to_struct(a):
        if not _is_leaf_array(a):
            return a
        s = sharding if sharding is not None else getattr(a, "sharding", None)
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)

    return jax.tree.map(to_struct, tree)


def config_to_json(model_cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(model_cfg)))


def config_from_json(name: str, values: dict):
    """The registered config class of model `name`, with stored field values
    (JSON lists turned back into tuples where the field is a tuple)."""
    from zoo.registry import get_model_config

    cls = type(get_model_config(name))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CheckpointError(
            f"checkpoint config for model {name!r} has fields {unknown} that the installed "
            f"{cls.__name__} lacks; install the plugin version it was saved with"
        )
    for k, v in values.items():
        origin = typing.get_origin(hints.get(k))
        if isinstance(v, list) and (hints.get(k) is tuple or origin is tuple):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def abstract_model(name: str, model_cfg, input_shape):
    """The model's structure with `ShapeDtypeStruct` leaves (nothing computed)."""
    return eqx.filter_eval_shape(lambda: model_cfg.build(input_shape=tuple(input_shape), key=jax.random.key(0)))


def _checkpointer():
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save_pretrained(model, path, *, config, input_shape, name: str | None = None, extra: dict | None = None) -> Path:
    """Write `model` with its config so `load_pretrained(path)` rebuilds it.

    `config` is the model's registered config instance (its class finds the
    model name through the registry unless `name` is given); `input_shape`
    is the shape of one example (the model cannot be rebuilt without it).
    """
    from zoo.registry import model_name_of

    name = name or model_name_of(config)
    path = Path(path).absolute()
    meta = {
        "format": "zoo-checkpoint-1",
        "model": name,
        "model_cfg": config_to_json(config),
        "input_shape": list(input_shape),
        **(extra or {}),
    }
    if path.exists():
        shutil.rmtree(path)
    _checkpointer().save(
        path,
        args=ocp.args.Composite(model=ocp.args.StandardSave(model_arrays(model)), meta=ocp.args.JsonSave(meta)),
    )
    return path


def read_meta(path) -> dict:
    """The JSON metadata of a checkpoint or pretrained directory."""
    f = Path(path) / "meta" / "metadata"
    if not f.is_file():
        raise CheckpointError(f"{path} is not a zoo checkpoint (no meta/metadata)")
    try:
        return standard_nll(json.loads(f.read_text()))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable metadata ({e})") from None


def standard_nll(meta: dict) -> dict:
    """Restate metrics saved before the trainer reported the standard NLL of 8-bit images.

    Those checkpoints (the shipped quickstart archive among them: nll -3021.09) stored
    -log p(x) of the dequantized pixels in [0, 1)^D, which is D log 256 below the standard
    -log P(pixels) = bpd * D log 2 (1326.33 there). A record is old when its nll + D log 256,
    not its nll, matches its bits/dim; its nll (and nats_per_dim) gain that offset."""
    d = math.prod(meta.get("input_shape") or [0])
    shift = d * math.log(256)

    def old(r):
        standard = r["bpd"] * d * math.log(2)
        return not math.isclose(r["nll"], standard, rel_tol=1e-4) and math.isclose(r["nll"] + shift, standard, rel_tol=1e-4)

    records = [r for r in (meta.get("metrics") or {}).values() if isinstance(r, dict) and {"nll", "bpd"} <= r.keys()]
    if d and records and all(old(r) for r in records):
        for r in records:
            r["nll"] += shift
            if "nats_per_dim" in r:
                r["nats_per_dim"] += math.log(256)
        if isinstance(meta.get("best_validation_nll"), (int, float)) and math.isfinite(meta["best_validation_nll"]):
            meta["best_validation_nll"] += shift
    return meta


def _restore_model(path: Path, meta: dict, sharding=None):
    cfg = config_from_json(meta["model"], meta["model_cfg"])
    abstract = abstract_model(meta["model"], cfg, meta["input_shape"])
    # onto this machine's first device, whatever topology it was saved from
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = _abstract(model_arrays(abstract), sharding)
    restored = _checkpointer().restore(path, args=ocp.args.Composite(model=ocp.args.StandardRestore(target)))
    arrays = restored["model"]
    static = eqx.filter(abstract, _is_leaf_array, inverse=True)
    return eqx.combine(arrays, static), cfg


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _extract_into(archive: Path, dest: Path) -> Path:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")  # refuses absolute paths and links out of dest
    except (tarfile.TarError, OSError, EOFError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise CheckpointError(f"{archive}: not a readable checkpoint archive ({e})") from None
    return dest


def _extract_found(dest: Path, archive: Path) -> Path:
    found = [p.parent.parent for p in dest.rglob("meta/metadata")]
    if len(found) != 1:
        raise CheckpointError(f"{archive}: expected one zoo checkpoint inside, found {len(found)}")
    return found[0]


def _cache_dir() -> Path:
    import os

    root = Path(os.environ.get("ZOO_CACHE_DIR") or Path.home() / ".cache" / "zoo")
    path = root / "pretrained"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _resolve(path_or_url, sha256):
    """A local checkpoint directory for a directory, an archive file or a URL
    (downloads and extractions are cached under $ZOO_CACHE_DIR, default
    ~/.cache/zoo). A registered pretrained name (`selfnorm_fc.mnist`) means
    its card's archive, verified against the card's sha256."""
    from zoo.pretrained import archive_of, is_pretrained_name, pretrained_card

    if is_pretrained_name(path_or_url):
        card = pretrained_card(path_or_url)
        if sha256 is not None and sha256.lower() != card["sha256"]:
            raise CheckpointError(f"pretrained {path_or_url!r}: its card records sha256 {card['sha256']}, not {sha256}; "
                                  "leave sha256 out to use the card's")
        return _resolve(archive_of(card), card["sha256"])
    s = str(path_or_url)
    if urllib.parse.urlparse(s).scheme in ("http", "https"):
        cache = _cache_dir()
        local = cache / Path(urllib.parse.urlparse(s).path).name
        if not local.exists():
            tmp = local.with_suffix(local.suffix + ".part")
            urllib.request.urlretrieve(s, tmp)
            tmp.replace(local)
        path = local
    else:
        path = Path(s)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if path.is_dir():
        if sha256 is not None:
            raise CheckpointError("sha256 verifies an archive file (.tar.gz); pass the archive, not a directory")
        return path
    digest = _sha256(path)
    if sha256 is not None and digest != sha256.lower():
        raise CheckpointError(f"{path}: sha256 {digest} does not match the expected {sha256}")
    out = _cache_dir() / digest
    if out.is_dir():
        return _extract_found(out, path)
    tmp = Path(tempfile.mkdtemp(prefix=f"{digest}.", dir=out.parent))
    _extract_found(_extract_into(path, tmp), path)
    tmp.replace(out)
    return _extract_found(out, path)


def load_pretrained(path_or_url, *, sha256: str | None = None, step: int | None = None):
    """Rebuild a model from a checkpoint without being told its architecture.

    `path_or_url`: a pretrained or checkpoint directory, a run's
    `checkpoints/` directory (its best-validation step, else the newest one
    that restores; or `step`), or a `.tar`/`.tar.gz` archive of one, local
    or http(s). `sha256` verifies an archive before it is opened. The
    model's family must be installed (it is rebuilt through the registry).
    """
    return load_with_meta(path_or_url, sha256=sha256, step=step)[0]


def load_with_meta(path_or_url, *, sha256: str | None = None, step: int | None = None):
    """`load_pretrained`, also returning the stored metadata (config, input
    shape, metrics, ...)."""
    path = _resolve(path_or_url, sha256)
    if not (path / "meta").is_dir():  # a CheckpointManager directory
        with Checkpoints(path, create=False, asynchronous=False) as ckpts:
            return ckpts.load_model(step=step)
    meta = read_meta(path)
    model, _ = _restore_model(path, meta)
    return model, meta


@dataclasses.dataclass
class Restored:
    step: int
    model: typing.Any
    opt_state: typing.Any
    meta: dict


class Checkpoints:
    """A run's `checkpoints/` directory: an Orbax CheckpointManager keeping
    the latest `keep` steps plus the best-validation one, saving
    asynchronously. Restoring falls back past steps that fail to load."""

    def __init__(self, directory, *, keep: int = 3, create: bool = True, asynchronous: bool = True):
        from orbax.checkpoint import checkpoint_managers as cm

        self.directory = Path(directory).absolute()
        if not create and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoint directory at {self.directory}")
        policy = cm.AnyPreservationPolicy([
            cm.LatestN(n=keep),
            # lowest validation NLL: sorted descending, the last one is kept
            cm.BestN(get_metric_fn=lambda m: m["validation_nll"], reverse=True, n=1,
                     keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, create=create, enable_async_checkpointing=asynchronous,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("model", "opt_state", "meta"))

    def save(self, step: int, model, opt_state, meta: dict, *, validation_nll: float | None = None):
        metrics = None if validation_nll is None else {"validation_nll": float(validation_nll)}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(model_arrays(model)),
                opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(meta),
            ),
            metrics=metrics,
        )

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def best_step(self) -> int | None:
        self.manager.reload()
        return self.manager.best_step()

    def _candidates(self, step):
        if step is not None:
            return [step]
        return sorted(self.steps(), reverse=True)

    def restore(self, model, opt_state, *, step: int | None = None, sharding=None) -> Restored | None:
        """Restore into the structure of `model`/`opt_state` (concrete or
        abstract): the newest step that loads, warning about each that does
        not. None when there is no checkpoint at all."""
        arrays_target = _abstract(model_arrays(model), sharding)
        opt_target = _abstract(opt_state, sharding)
        static = eqx.filter(model, _is_leaf_array, inverse=True)
        candidates = self._candidates(step)
        for s in candidates:
            try:
                meta = read_meta(self.step_dir(s))
                out = self.manager.restore(
                    s,
                    args=ocp.args.Composite(
                        model=ocp.args.StandardRestore(arrays_target),
                        opt_state=ocp.args.StandardRestore(opt_target),
                    ),
                )
                return Restored(s, eqx.combine(out["model"], static), out["opt_state"], meta)
            except Exception as e:  # any failure to read means this step is unusable
                warnings.warn(
                    f"checkpoint step {s} in {self.directory} is corrupt or incomplete "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                    + ("trying an older one" if s != candidates[-1] else "no older checkpoint left"),
                    CorruptCheckpointWarning,
                    stacklevel=2,
                )
        if candidates and step is not None:
            raise CheckpointError(f"checkpoint step {step} in {self.directory} could not be restored")
        if candidates:
            raise CheckpointError(f"no checkpoint in {self.directory} could be restored (tried {candidates})")
        return None

    def load_model(self, *, step: int | None = None):
        """(model, meta): the model rebuilt from the stored config: `step`, else the
        best-validation step, else the newest that restores."""
        if step is None:
            best = self.best_step()
            order = ([best] if best is not None else []) + [s for s in sorted(self.steps(), reverse=True) if s != best]
        else:
            order = [step]
        if not order:
            raise CheckpointError(f"no checkpoints in {self.directory}")
        for s in order:
            try:
                meta = read_meta(self.step_dir(s))
                model, _ = _restore_model(self.step_dir(s), meta)
                return model, meta
            except Exception as e:
                if len(order) == 1 or s == order[-1]:
                    raise CheckpointError(f"checkpoint step {s} in {self.directory} could not be loaded: {e}") from e
                warnings.warn(f"checkpoint step {s} in {self.directory} failed to load ({type(e).__name__}); "
                              "trying an older one", CorruptCheckpointWarning, stacklevel=2)
