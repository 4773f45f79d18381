"""Pretrained models by name: `zoo.load_pretrained("selfnorm_fc.mnist")`.

An entry is a model card (JSON) beside its archive, registered under the
entry-point group `zoo.pretrained` with a name `architecture.tag` (as timm
names its models). The entry point loads a *card locator*: a callable that
takes the entry's name and returns the card's path (or a path itself).
zoo's own entries are registered exactly as a plugin's would be:

    [project.entry-points."zoo.pretrained"]
    "selfnorm_fc.mnist" = "zoo.pretrained:first_party"   # -> pretrained/selfnorm_fc.mnist.json

A card holds: name, model, model_cfg, input_shape, data, split, command,
steps, epochs, wall_time_s, machine, metrics (what `zoo.evaluate` measured:
nll, nll_se, bpd, bpd_se, examples), paper (number and source, or null),
sample_temperature, data_licence, archive (a path relative to the card, or
a URL) and sha256 of that archive, checked on every load.
"""

import json
import os
from pathlib import Path

from zoo import registry

__all__ = ["list_pretrained", "pretrained_card", "is_pretrained_name", "archive_of", "first_party", "CARD_KEYS"]

CARD_KEYS = (
    "name", "model", "model_cfg", "input_shape", "data", "split", "command", "steps", "epochs", "wall_time_s",
    "machine", "metrics", "paper", "sample_temperature", "data_licence", "archive", "sha256",
)
FIRST_PARTY_DIR = Path(__file__).resolve().parent.parent / "pretrained"


def first_party(name: str) -> Path:
    """Card locator of zoo's own entries: `pretrained/<name>.json` in the clone."""
    return FIRST_PARTY_DIR / f"{name}.json"


def list_pretrained(pattern: str = "*") -> list[str]:
    """Names of the registered pretrained models, filtered by an fnmatch `pattern`."""
    return registry._names("pretrained", pattern)


def is_pretrained_name(s) -> bool:
    return isinstance(s, str) and s in registry._table("pretrained")


def _card_path(name: str) -> Path:
    locator = registry._get("pretrained", name)
    return Path(locator(name) if callable(locator) else locator)


def pretrained_card(name: str) -> dict:
    """The model card of pretrained entry `name` (a dict; see the module docstring)."""
    path = _card_path(name)
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise registry.RegistryError(
            f"pretrained {name!r}: its card {path} is missing (zoo's own cards live in the pretrained/ "
            "folder of a git clone; install zoo editable from one)"
        ) from None
    except (OSError, ValueError) as e:
        raise registry.RegistryError(f"pretrained {name!r}: unreadable card {path} ({e})") from None
    missing = [k for k in CARD_KEYS if k not in card]
    if missing or card["name"] != name:
        raise registry.RegistryError(
            f"pretrained {name!r}: card {path} " + (f"lacks {missing}" if missing else f"is named {card['name']!r}")
        )
    card["card_path"] = str(path)
    return card


def archive_of(card: dict) -> str:
    """The card's archive: a URL as it stands, a path relative to the card made absolute."""
    archive = card["archive"]
    if "://" in archive or os.path.isabs(archive):
        return archive
    return str(Path(card["card_path"]).parent / archive)


# ---------------------------------------------------------------- publishing


def machine() -> str:
    """CPU model, cores, jax version and backend, for a card's `machine`."""
    import platform

    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores; jax {jax.__version__} on {jax.default_backend()}"


def run_wall_time(run_dir) -> float:
    """Seconds of training in a run: the sum over its summary records (one per invocation, resumes included)."""
    total = 0.0
    with open(Path(run_dir) / "metrics.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("split") == "summary":
                total += float(rec["seconds"])
    return total


def write_archive(folder, archive) -> str:
    """A reproducible .tar.gz of `folder` (sorted, zeroed times and owners); its sha256."""
    import gzip
    import hashlib
    import tarfile

    folder, archive = Path(folder), Path(archive)

    def clean(info):
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    tmp = archive.with_name(archive.name + ".part")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for p in [folder, *sorted(folder.rglob("*"))]:
                tar.add(p, arcname=str(Path(archive.name.removesuffix(".tar.gz")) / p.relative_to(folder)),
                        recursive=False, filter=clean)
    os.replace(tmp, archive)
    return hashlib.sha256(archive.read_bytes()).hexdigest()


def publish(run, name: str, *, out_dir, command: str, step=None, sample_temperature=None, **card_fields) -> dict:
    """Archive a run's best-validation checkpoint (or `step`) as pretrained
    entry `name` in `out_dir/<name>.tar.gz`, then `write_card` for it.
    `sample_temperature` (default: the run's) is stored in the archive too,
    so `zoo.sample` defaults to the card's temperature."""
    import tempfile

    from zoo.checkpoint import config_from_json, load_with_meta, save_pretrained

    run = Path(run)
    model, meta = load_with_meta(run / "checkpoints", step=step)
    cfg = config_from_json(meta["model"], meta["model_cfg"])
    keep = {k: meta[k] for k in ("data", "train", "step", "seed", "metrics", "best_validation_nll") if k in meta}
    if sample_temperature is not None:
        keep["sample_temperature"] = float(sample_temperature)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / f"{name}.tar.gz"
    with tempfile.TemporaryDirectory() as d:
        folder = save_pretrained(model, Path(d) / name, config=cfg, input_shape=meta["input_shape"],
                                 name=meta["model"], extra=keep)
        write_archive(folder, archive)
    return write_card(archive, name, command=command, wall_time_s=round(run_wall_time(run), 1), machine_name=machine(),
                      **card_fields)


def write_card(archive, name: str, *, command: str, wall_time_s, paper=None, data_dir=None, num_importance=None,
               notes: str = "", machine_name: str | None) -> dict:
    """Load `archive` as users will (sha256-verified), evaluate it on the full
    test split with `zoo.evaluate`'s function, and write `<name>.json` beside
    it; its sampling temperature is the archive's (what `zoo.sample` uses)."""
    import hashlib
    import math

    import equinox as eqx
    import jax
    import numpy as np

    import zoo
    from zoo.checkpoint import load_with_meta
    from zoo.evaluate import evaluate_checkpoint

    archive = Path(archive)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    model, meta = load_with_meta(archive, sha256=sha)
    params = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    if not all(np.isfinite(np.asarray(a)).all() for a in params):
        raise ValueError(f"{archive}: the model has non-finite parameters; no card written")
    metrics = evaluate_checkpoint(model, meta, split="test", data_dir=data_dir, num_importance=num_importance,
                                  progress=True)
    train = meta["train"]
    n_train = len(zoo.load_dataset(meta["data"], split="train", data_dir=data_dir))
    from zoo.sample import checkpoint_temperature
    card = {
        "name": name, "model": meta["model"], "model_cfg": meta["model_cfg"], "input_shape": meta["input_shape"],
        "data": meta["data"], "split": "test", "command": command, "steps": meta["step"],
        "epochs": round(meta["step"] / (n_train // train["batch_size"]), 2), "wall_time_s": wall_time_s,
        "machine": machine_name, "metrics": metrics, "paper": paper, "sample_temperature": checkpoint_temperature(meta),
        "data_licence": zoo.get_dataset(meta["data"]).licence, "archive": archive.name, "sha256": sha,
        "parameters": sum(int(math.prod(a.shape)) for a in params),
        "best_validation_nll": meta.get("best_validation_nll"), "notes": notes,
    }
    (archive.parent / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card
