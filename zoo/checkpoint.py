"""Checkpoints and pretrained models: Orbax directories that carry their config.

A checkpoint (one step directory of a training run) and a pretrained model
share one layout, so either can be loaded with `load_pretrained`:

    <dir>/model/      every array of the model (Orbax StandardSave; integer
                      arrays such as permutations included)
    <dir>/meta/       JSON: model name, its config, input shape, training
                      config, step, data-iterator state, metrics, and the
                      sha256 of every saved array ("digests")
    <dir>/opt_state/  optimizer state (training checkpoints only)

Nothing is pickled: the model is rebuilt from its registered config class
(so a plugin model loads as long as its package is installed) and its arrays
are restored into that structure.

Integrity: no state with NaN/inf parameters is written; restored arrays are
checked against their digests (checkpoints older than the digests load
unchecked) and for finiteness, and a step that fails either is corrupt. A
save orbax declines, or whose files never reach the disk, raises.
"""

import dataclasses
import hashlib
import http.client
import itertools
import json
import math
import os
import re
import shutil
import tarfile
import tempfile
import types
import typing
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from zoo._cli import Failure

__all__ = [
    "save_pretrained", "load_pretrained", "load_with_meta", "read_meta", "model_arrays", "abstract_model",
    "array_digests", "nonfinite_arrays", "CheckpointError", "CheckpointWriteError", "CorruptCheckpointWarning",
    "Checkpoints",
]


class CheckpointError(Failure):
    """A checkpoint could not be read or written."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (a full disk, ...) or orbax declined it."""


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


def _host(a) -> np.ndarray:
    if isinstance(a, jax.Array) and not a.is_fully_addressable:  # replicated over hosts: one copy
        a = a.addressable_data(0)
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        a = jax.random.key_data(a)
    return np.asarray(a)


def _host_arrays(tree) -> dict[str, np.ndarray]:
    """Every array of `tree` on the host, by tree path (replicated arrays: one copy)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(k): _host(a) for k, a in leaves if _is_leaf_array(a)}


def _digests(host: dict) -> dict[str, str]:
    return {k: hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + np.ascontiguousarray(a).tobytes()).hexdigest()
            for k, a in host.items()}


def _nonfinite(host: dict) -> list[str]:
    return [k for k, a in host.items() if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a))]


def array_digests(tree) -> dict[str, str]:
    """sha256 of each array of `tree` (its dtype, shape and bytes), by tree path."""
    return _digests(_host_arrays(tree))


def nonfinite_arrays(tree) -> list[str]:
    """Tree paths of the float arrays of `tree` holding NaN or inf."""
    return _nonfinite(_host_arrays(tree))


def _names(paths: list[str], n: int = 3) -> str:
    return ", ".join(paths[:n]) + (f" and {len(paths) - n} more" if len(paths) > n else "")


def _verify(tree, meta: dict, item: str, where):
    """Raise CheckpointError when a restored `item` ("model", "opt_state")
    differs from the digests saved with it, or its model parameters are not finite."""
    host = _host_arrays(tree)
    saved = (meta.get("digests") or {}).get(item)
    if saved is not None:  # None: written before checkpoints carried digests
        got = _digests(host)
        bad = sorted(k for k in saved.keys() | got.keys() if saved.get(k) != got.get(k))
        if bad:
            raise CheckpointError(f"{where}: {len(bad)} {item} array(s) differ from the digests saved with them "
                                  f"({_names(bad)}); the files are corrupt")
    bad = _nonfinite(host) if item == "model" else []
    if bad:
        raise CheckpointError(f"{where}: parameters are not all finite (NaN/inf in {_names(bad)}); "
                              "this model cannot be used, load another step")


def _reason(e: BaseException) -> str:
    """An exception in one short line (orbax's run over many)."""
    if isinstance(e, CheckpointError):
        return str(e)
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")  # how tensorstore (orbax's writer) reports errno


def _os_error(e: BaseException) -> OSError | None:
    """The OS error (with an errno) behind `e`, through causes and exception groups."""
    todo, seen = [e], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e
        if code := _OS_ERROR_CODE.search(str(e)):
            return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
    return None


def config_to_json(model_cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(model_cfg)))


def _is_tuple_hint(hint) -> bool:
    """`tuple`, `tuple[...]`, or a union holding one (`tuple[int, ...] | None`)."""
    origin = typing.get_origin(hint)
    if hint is tuple or origin is tuple:
        return True
    return origin in (typing.Union, types.UnionType) and any(map(_is_tuple_hint, typing.get_args(hint)))


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
        if isinstance(v, list) and _is_tuple_hint(hints.get(k)):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def abstract_model(name: str, model_cfg, input_shape):
    """The model's structure with `ShapeDtypeStruct` leaves (nothing computed)."""
    return eqx.filter_eval_shape(lambda: model_cfg.build(input_shape=tuple(input_shape), key=jax.random.key(0)))


def _ocp():
    """orbax.checkpoint, imported on first use: ~0.25 s of CPU that a command
    which fails before reading or writing a checkpoint (or prints --help) skips."""
    import orbax.checkpoint

    return orbax.checkpoint


def _checkpointer():
    ocp = _ocp()
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save_pretrained(model, path, *, config, input_shape, name: str | None = None, extra: dict | None = None) -> Path:
    """Write `model` with its config so `load_pretrained(path)` rebuilds it.

    `config` is the model's registered config instance (its class finds the
    model name through the registry unless `name` is given); `input_shape`
    is the shape of one example (the model cannot be rebuilt without it).
    """
    from zoo.registry import model_name_of

    name = name or model_name_of(config)
    path = Path(path).expanduser().absolute()
    arrays = model_arrays(model)
    host = _host_arrays(arrays)
    if bad := _nonfinite(host):
        raise CheckpointError(f"refusing to save {path}: parameters are not all finite (NaN/inf in {_names(bad)})")
    meta = {
        "format": "zoo-checkpoint-1",
        "model": name,
        "model_cfg": config_to_json(config),
        "input_shape": list(input_shape),
        **(extra or {}),
        "digests": {"model": _digests(host)},
    }
    # Written beside the old one and swapped in: a failed save leaves the old one whole.
    new = path.with_name(f"{path.name}.saving-{os.getpid()}")
    shutil.rmtree(new, ignore_errors=True)
    ocp = _ocp()
    try:
        _checkpointer().save(new, args=ocp.args.Composite(model=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)))
    except Exception as e:
        shutil.rmtree(new, ignore_errors=True)
        raise _write_error(path, e) from e
    old = path.with_name(f"{path.name}.old-{os.getpid()}")
    if path.exists():
        path.rename(old)
    new.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _write_error(where, e: BaseException) -> CheckpointWriteError:
    os_error = _os_error(e)
    reason = os_error.strerror if os_error is not None else _reason(e)
    return CheckpointWriteError(f"could not write {where} ({reason}); free some space or choose another "
                                "directory, then try again")


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
    path = Path(path).absolute()  # orbax takes absolute paths only
    cfg = config_from_json(meta["model"], meta["model_cfg"])
    abstract = abstract_model(meta["model"], cfg, meta["input_shape"])
    # onto this machine's first device, whatever topology it was saved from
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = _abstract(model_arrays(abstract), sharding)
    ocp = _ocp()
    try:
        restored = _checkpointer().restore(path, args=ocp.args.Composite(model=ocp.args.StandardRestore(target)))
    except Exception as e:
        raise CheckpointError(f"{path} is corrupt or incomplete ({_reason(e)}); load another step or get "
                              "the checkpoint again") from e
    arrays = restored["model"]
    _verify(arrays, meta, "model", path)
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


def _extract_cached(archive: Path, digest: str) -> Path:
    """`archive` extracted once into the cache folder named by its sha256."""
    out = _cache_dir() / digest
    if not out.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=f"{digest}.", dir=out.parent))
        _extract_found(_extract_into(archive, tmp), archive)
        try:
            tmp.replace(out)
        except OSError:  # another process extracted it first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
            if not out.is_dir():
                raise
    return _extract_found(out, archive)


def _extract_found(dest: Path, archive: Path) -> Path:
    found = [p.parent.parent for p in dest.rglob("meta/metadata")]
    if len(found) != 1:
        raise CheckpointError(f"{archive}: expected one zoo checkpoint inside, found {len(found)}")
    return found[0]


def _cache_dir() -> Path:
    root = Path(os.environ.get("ZOO_CACHE_DIR") or Path.home() / ".cache" / "zoo").expanduser().absolute()
    path = root / "pretrained"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fetch(url: str, dest: Path):
    """Download `url` to a temporary name beside `dest`, renamed when complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as r:
            shutil.copyfileobj(r, f, 1 << 20)
            expected = r.headers.get("Content-Length")
            if expected is not None and f.tell() != int(expected):
                raise CheckpointError(f"{url}: download ended after {f.tell()} of {expected} bytes; try again")
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException, ValueError) as e:
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else (
            getattr(e, "reason", None) or getattr(e, "strerror", None) or _reason(e))
        raise CheckpointError(f"cannot download {url} ({reason}); check the URL and the network") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _download(url: str, sha256: str | None) -> tuple[Path, str]:
    """(cached file, its sha256) of `url`. The cache is keyed by the full URL
    and the expected sha256, so two files of one name from two hosts never
    mix; a cached file that does not match `sha256` is downloaded once more."""
    key = hashlib.sha256(f"{url}\n{(sha256 or '').lower()}".encode()).hexdigest()[:32]
    local = _cache_dir() / "urls" / key / (Path(urllib.parse.urlparse(url).path).name or "download")
    for attempt in range(2):
        if attempt or not local.is_file():
            _fetch(url, local)
        digest = _sha256(local)
        if sha256 is None or digest == sha256.lower():
            return local, digest
    raise CheckpointError(f"{url}: sha256 {digest} does not match the expected {sha256}; check the URL and the sha256")


def _pretrained_hint(s: str) -> str:
    """For a missing path that looks like a pretrained name (`arch.tag`, no folder): the names to use."""
    import difflib

    from zoo.pretrained import list_pretrained

    if "/" in s or os.sep in s or "." not in s.strip(".") or s.endswith(".tar.gz"):
        return ""
    close = difflib.get_close_matches(s, list_pretrained(), n=3)
    return (f", or a pretrained name (did you mean {', '.join(map(repr, close))}?)" if close
            else ", or a pretrained name (see zoo.list_pretrained())")


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
    digest = None
    if urllib.parse.urlparse(s).scheme in ("http", "https"):
        path, digest = _download(s, sha256)
    else:
        path = Path(s).expanduser().absolute()
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; check the path" + _pretrained_hint(s))
    if path.is_dir():
        if sha256 is not None:
            raise CheckpointError("sha256 verifies an archive file (.tar.gz); pass the archive, not a directory")
        if not (path / "meta").is_dir() and (path / "checkpoints").is_dir():  # a training run's directory
            return path / "checkpoints"
        return path
    digest = digest or _sha256(path)
    if sha256 is not None and digest != sha256.lower():
        raise CheckpointError(f"{path}: sha256 {digest} does not match the expected {sha256}; "
                              "check the file and the sha256")
    return _extract_cached(path, digest)


def load_pretrained(path_or_url, *, sha256: str | None = None, step: int | None = None):
    """Rebuild a model from a checkpoint without being told its architecture.

    `path_or_url`: a pretrained or checkpoint directory, a run's
    `checkpoints/` directory or the run directory holding it (its
    best-validation step, else the newest one that restores; or `step`), or
    a `.tar`/`.tar.gz` archive of one, local or http(s). `sha256` verifies
    an archive before it is opened. The model's family must be installed
    (it is rebuilt through the registry). A model whose arrays do not match
    their saved digests or are not all finite is refused (CheckpointError).
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
    asynchronously. Every save is confirmed (`wait`) or raises. Restoring
    falls back past steps that fail to load or to verify, and can move them
    aside (`N.corrupt`, never deleted) so that the run can save step N again."""

    def __init__(self, directory, *, keep: int = 3, create: bool = True, asynchronous: bool = True):
        ocp = _ocp()
        cm = ocp.checkpoint_managers

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
        self._pending = None  # the step of a save not yet confirmed on disk

    def save(self, step: int, model, opt_state, meta: dict, *, validation_nll: float | None = None):
        """Start writing `step` (asynchronously); raises CheckpointError when the
        state is not finite, the previous save failed, or orbax declines this one."""
        arrays = model_arrays(model)
        host = _host_arrays(arrays)
        if bad := _nonfinite(host):
            raise CheckpointError(f"refusing to write checkpoint step {step}: parameters are not all finite "
                                  f"(NaN/inf in {_names(bad)})")
        meta = {**meta, "digests": {"model": _digests(host), "opt_state": array_digests(opt_state)}}
        self.wait()
        metrics = None if validation_nll is None else {"validation_nll": float(validation_nll)}
        ocp = _ocp()
        try:
            saved = self.manager.save(
                step,
                args=ocp.args.Composite(
                    model=ocp.args.StandardSave(arrays),
                    opt_state=ocp.args.StandardSave(opt_state),
                    meta=ocp.args.JsonSave(meta),
                ),
                metrics=metrics,
            )
        except Exception as e:
            raise _write_error(f"checkpoint step {step} to {self.directory}", e) from e
        if not saved:  # orbax skips a step at or below the newest one on disk
            raise CheckpointWriteError(f"checkpoint step {step} was not written: {self.directory} already holds "
                                       f"step {self.manager.latest_step()}; resume from it (--resume) or use "
                                       "another --name")
        self._pending = step

    def wait(self):
        """Block until the last save is complete; CheckpointError if it did not reach the disk."""
        step, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise _write_error(f"checkpoint step {step} to {self.directory}", e) from e
        if step is not None:
            self.manager.reload()
            if step not in self.manager.all_steps():
                raise CheckpointWriteError(f"checkpoint step {step} did not reach {self.directory}; check the "
                                           "disk and resume from the newest step there (--resume)")

    def close(self):
        """Wait for (and confirm) the last save, then release orbax's threads; a second call does nothing."""
        if self.manager is None:
            return
        try:
            self.wait()
        finally:
            self.manager.close()
            self.manager = None

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

    def move_aside(self, step: int) -> Path:
        """Rename step folder N to N.corrupt (N.corrupt-2, ...): kept for
        inspection, no longer a step, so N can be saved again."""
        src = self.step_dir(step)
        names = (f"{step}.corrupt" + (f"-{i}" if i > 1 else "") for i in itertools.count(1))
        dest = next(d for d in map(src.with_name, names) if not d.exists())
        if jax.process_index() == 0:
            src.rename(dest)
        if jax.process_count() > 1:  # every process must see the rename before it saves
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"zoo:move_aside:{step}")
        self.manager.reload()
        return dest

    def _restore_step(self, s: int, arrays_target, opt_target, static) -> Restored:
        meta = read_meta(self.step_dir(s))
        ocp = _ocp()
        out = self.manager.restore(
            s,
            args=ocp.args.Composite(
                model=ocp.args.StandardRestore(arrays_target),
                opt_state=ocp.args.StandardRestore(opt_target),
            ),
        )
        where = f"checkpoint step {s} in {self.directory}"
        _verify(out["model"], meta, "model", where)
        _verify(out["opt_state"], meta, "opt_state", where)
        return Restored(s, eqx.combine(out["model"], static), out["opt_state"], meta)

    def restore(self, model, opt_state, *, step: int | None = None, sharding=None,
                move_aside: bool = False) -> Restored | None:
        """Restore into the structure of `model`/`opt_state` (concrete or
        abstract): the newest step that loads and verifies, warning about
        each that does not; with `move_aside`, those newer than the restored
        one are moved aside (only then: if none restores, the fault may be
        ours, not the files'). None when there is no checkpoint at all."""
        arrays_target = _abstract(model_arrays(model), sharding)
        opt_target = _abstract(opt_state, sharding)
        static = eqx.filter(model, _is_leaf_array, inverse=True)
        candidates = self._candidates(step)
        failed = []
        for s in candidates:
            try:
                restored = self._restore_step(s, arrays_target, opt_target, static)
            except Exception as e:  # any failure to read means this step is unusable
                failed.append(s)
                warnings.warn(
                    f"checkpoint step {s} in {self.directory} is corrupt or incomplete ({_reason(e)}); "
                    + ("trying an older one" if s != candidates[-1] else "no older checkpoint left"),
                    CorruptCheckpointWarning,
                    stacklevel=2,
                )
                continue
            for bad in failed if move_aside else ():
                warnings.warn(f"moved corrupt checkpoint step {bad} aside to {self.move_aside(bad)} (kept for "
                              "inspection; delete it when done)", CorruptCheckpointWarning, stacklevel=2)
            return restored
        if candidates and step is not None:
            raise CheckpointError(f"checkpoint step {step} in {self.directory} could not be restored; "
                                  "pick another step")
        if candidates:
            raise CheckpointError(f"no checkpoint in {self.directory} could be restored (tried {candidates}); "
                                  "the warnings above say why")
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
            raise CheckpointError(f"no checkpoints in {self.directory}; pass a run's checkpoints/ folder, "
                                  "a step folder or a pretrained model")
        for s in order:
            try:
                meta = read_meta(self.step_dir(s))
                model, _ = _restore_model(self.step_dir(s), meta)
                return model, meta
            except Exception as e:
                if len(order) == 1 or s == order[-1]:
                    raise CheckpointError(f"checkpoint step {s} in {self.directory} could not be loaded "
                                          f"({_reason(e)})") from e
                warnings.warn(f"checkpoint step {s} in {self.directory} failed to load ({_reason(e)}); "
                              "trying an older one", CorruptCheckpointWarning, stacklevel=2)
