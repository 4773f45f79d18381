"""Exact test likelihoods: one evaluation for the trainer, `zoo.evaluate` and model cards.

    python -m zoo.evaluate --checkpoint NAME_OR_PATH [--data NAME] [--split test]
        [--data-dir D] [--num-importance S] [--batch B] [--max-examples N] [--json]

prints the mean NLL in nats (for 8-bit images the papers' discrete NLL,
-log p(x) + D log 256) with its standard error over examples, bits/dim for
8-bit images, the number of examples and the seconds taken. Latent-variable
models (the planar VAE) are evaluated by importance sampling with S samples
(default: the model's own `num_importance`). The data default is the dataset
the checkpoint was trained on; the evaluation keys and dequantisation noise
are derived from the checkpoint's seed and step exactly as the trainer
derives them, so a training checkpoint reproduces the trainer's logged NLL.
"""

import dataclasses
import json
import math
import sys
import time

import numpy as np

from zoo._cli import UsageError, cli, parse_args

__all__ = ["make_eval_step", "evaluate", "eight_bit", "evaluation_key", "evaluate_checkpoint", "main"]


def make_eval_step(static, mesh):
    """jit(fn)(params, x, mask, key) -> (log p of every example, 0 where
    masked out; the mask), both global and replicated so that every process
    reads all of them. `x` is a batch, or a pair (batch, conditions) for a
    conditional model: log p(x | condition)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from zoo.flow import call_with_key

    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))

    def fn(params, x, mask, key):
        model = eqx.combine(params, static)
        x, condition = x if isinstance(x, tuple) else (x, None)
        keys = jax.random.split(key, mask.shape[0])
        lp = jax.vmap(lambda xi, ci, ki: call_with_key(model.log_prob, xi, key=ki, **_given(condition=ci)))(
            x, condition, keys)
        return jnp.where(mask, lp, 0.0), mask

    return jax.jit(fn, in_shardings=(replicated, batch, batch, replicated), out_shardings=(replicated, replicated))


def _given(**kwargs) -> dict:
    """The keyword arguments that are not None (a condition only for conditional models)."""
    return {k: v for k, v in kwargs.items() if v is not None}


def eight_bit(source) -> bool:
    """Whether a dataset's NLL is reported in the 8-bit convention (with bits/dim):
    images of 0..255 values, not binary data modelled as Bernoulli pixels."""
    images = source.dtype == "uint8" and len(source.shape) == 3
    return images and not source.binary and source.binarize is None


def evaluation_key(seed: int, step: int):
    """The key the trainer evaluates step `step` of a run seeded `seed` with."""
    import jax

    k_eval = jax.random.split(jax.random.key(seed), 4)[2]
    return jax.random.fold_in(k_eval, step)


def evaluate(eval_step, params, pipe, mesh, *, key, num_dims, images, max_examples=None, dtype=None, progress=False):
    """Mean NLL over a split in nats with its standard error over examples,
    and bits/dim for 8-bit images.

    For 8-bit images the NLL is the standard one of the papers (e.g. ~950
    nats for an FC flow on MNIST): -log P of the discrete pixels, i.e. the
    density of the data scaled to [0, 1) plus D log 256, so nll = bpd * D log 2."""
    import jax
    from tqdm.auto import tqdm

    from zoo.train.loop import global_batch

    n = pipe.num_examples if max_examples is None else min(max_examples, pipe.num_examples)
    total = -(-n // pipe.batch_size)
    log_ps = []
    for i, b in enumerate(tqdm(pipe, total=total, disable=not progress, unit="batch", leave=False)):
        seen = i * pipe.batch_size
        mask = b["mask"] & (np.arange(len(b["mask"])) + seen < n)
        x = global_batch(mesh, b["x"], dtype)
        x = (x, global_batch(mesh, b["y"], dtype)) if "y" in b else x
        lp, real = eval_step(params, x, global_batch(mesh, mask), jax.random.fold_in(key, i))
        log_ps.append(np.asarray(lp, np.float64)[np.asarray(real)])  # every process's rows
        if i + 1 >= total:
            break
    return summarize(np.concatenate(log_ps), num_dims=num_dims, images=images)


def summarize(log_p: np.ndarray, *, num_dims: int, images: bool) -> dict:
    """NLL (nats), its standard error, nats/dim, count, and bits/dim with its s.e. for 8-bit images."""
    count = len(log_p)
    nll = -float(np.mean(log_p)) + (num_dims * math.log(256.0) if images else 0.0)
    se = float(np.std(log_p, ddof=1) / math.sqrt(count)) if count > 1 else float("nan")
    out = {"nll": nll, "nll_se": se, "nats_per_dim": nll / num_dims, "examples": count}
    if images:
        out["bpd"] = nll / (num_dims * math.log(2.0))
        out["bpd_se"] = se / (num_dims * math.log(2.0))
    return out


def with_config(model, meta: dict, **overrides):
    """`model`'s arrays in the structure its stored config builds with
    `overrides` (static fields such as the planar VAE's `num_importance`)."""
    import equinox as eqx

    from zoo.checkpoint import _is_leaf_array, abstract_model, config_from_json

    cfg = config_from_json(meta["model"], {**meta["model_cfg"], **overrides})
    static = eqx.filter(abstract_model(meta["model"], cfg, meta["input_shape"]), _is_leaf_array, inverse=True)
    return eqx.combine(eqx.filter(model, _is_leaf_array), static)


def evaluate_checkpoint(model, meta: dict, *, data=None, split="test", data_dir=None, batch=None,
                        num_importance=None, max_examples=None, progress=False) -> dict:
    """Evaluate a loaded checkpoint (`load_with_meta`) on a split, with the
    trainer's data pipeline and keys. Returns `summarize`'s dict plus the
    dataset, split, seconds and, for latent-variable models, S."""
    import equinox as eqx
    import jax

    import zoo
    from zoo.data import pipeline
    from zoo.train.loop import make_mesh

    train = meta.get("train", {})
    data = data or meta["data"]
    source = zoo.get_dataset(data)
    if split not in source.splits:
        raise UsageError(f"--split {split!r}: {data} has the splits {', '.join(source.splits)}; pass one of them")
    if math.prod(source.shape) != math.prod(meta["input_shape"]):
        raise UsageError(f"dataset {data!r} has examples of shape {source.shape}; this model takes {tuple(meta['input_shape'])}; pass a --data of that shape")
    if num_importance is not None:
        if "num_importance" not in meta["model_cfg"]:
            raise UsageError(f"--num-importance: {meta['model']} is not a latent-variable model; "
                             "leave it out (its log-likelihood is exact)")
        model = with_config(model, meta, num_importance=int(num_importance))
    mesh = make_mesh()
    n_dev = mesh.devices.size
    bs = batch or train.get("eval_batch_size", 256)
    bs = max(n_dev, bs // n_dev * n_dev)
    seed = int(meta.get("seed", train.get("seed", 0)))
    # data the model was trained binarised is evaluated binarised the same way
    binarize = zoo.get_dataset(meta["data"]).binarize or source.binarize
    conditional = getattr(model, "condition_shape", None) is not None  # log p(x | the example's label)
    pipe = pipeline(data, split=split, batch_size=bs, seed=seed, data_dir=data_dir, shuffle=False, drop_remainder=False,
                    binarize=binarize, labels=True if conditional else None)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    dtype = jax.tree.leaves(params)[0].dtype
    t0 = time.perf_counter()
    out = evaluate(make_eval_step(static, mesh), params, pipe, mesh, key=evaluation_key(seed, int(meta.get("step", 0))),
                   num_dims=math.prod(source.shape), images=eight_bit(source) and binarize is None, max_examples=max_examples,
                   dtype=dtype, progress=progress)
    out = {"data": data, "split": split, **out, "seconds": time.perf_counter() - t0}
    if "num_importance" in meta["model_cfg"]:
        out["num_importance"] = int(num_importance or meta["model_cfg"]["num_importance"])
    return out


@dataclasses.dataclass
class EvaluateCommand:
    """Evaluate a trained zoo model's exact NLL (nats, bits/dim) on a dataset split."""

    checkpoint: str
    """A pretrained name (see zoo.list_pretrained()), a run directory or its checkpoints/, a step or pretrained directory, or a .tar.gz of one (path or URL)."""
    data: str | None = None
    """Dataset (default: the one the checkpoint was trained on)."""
    split: str = "test"
    """Split to evaluate."""
    data_dir: str | None = None
    """Dataset folder (default: $ZOO_DATA_DIR, then ~/.cache/zoo/data)."""
    num_importance: int | None = None
    """Importance samples S for latent-variable models (default: the model's own)."""
    batch: int | None = None
    """Examples per compiled call (default: the run's eval batch size)."""
    max_examples: int | None = None
    """Evaluate only the first N examples of the split."""
    step: int | None = None
    """A run's training step to load instead of its best-validation one."""
    sha256: str | None = None
    """Expected sha256 of an archive checkpoint."""
    json: bool = False
    """Print one JSON object instead of text."""
    progress: bool = True
    """Show a progress bar (on stderr)."""


def _report(r: dict) -> str:
    lines = [f"{r['data']} {r['split']}: {r['examples']} examples in {r['seconds']:.1f} s"
             + (f", S = {r['num_importance']} importance samples" if "num_importance" in r else "")]
    lines.append(f"  NLL       {r['nll']:.2f} ± {r['nll_se']:.2f} nats (± 1 s.e. over examples)")
    if "bpd" in r:
        lines.append(f"  bits/dim  {r['bpd']:.4f} ± {r['bpd_se']:.4f}")
    return "\n".join(lines)


@cli("zoo.evaluate")
def main(argv=None) -> int:
    from zoo.checkpoint import load_with_meta

    cmd = parse_args(EvaluateCommand, args=argv, prog="python -m zoo.evaluate")
    for flag in ("num_importance", "batch", "max_examples"):  # before anything is loaded
        value = getattr(cmd, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1, got {value}; pass a positive count "
                             "or leave it out")
    model, meta = load_with_meta(cmd.checkpoint, sha256=cmd.sha256, step=cmd.step)
    r = evaluate_checkpoint(model, meta, data=cmd.data, split=cmd.split, data_dir=cmd.data_dir, batch=cmd.batch,
                            num_importance=cmd.num_importance, max_examples=cmd.max_examples,
                            progress=cmd.progress and not cmd.json)
    print(json.dumps({"checkpoint": cmd.checkpoint, **r}) if cmd.json else _report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
