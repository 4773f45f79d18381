"""The shared training loop: one jitted, data-parallel step for every model.

The model supplies `loss(x, *, key) -> (scalar, aux)` and `log_prob`; this
module supplies data, optimisation, sharding, evaluation and logging.
Parameters are replicated and the global batch is split over a 1-D device
mesh (axis "data"), so the same code runs on 1 CPU, 4 fake CPU devices, or
several hosts after `jax.distributed.initialize()`.
"""

import dataclasses
import json
import math
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import zoo
from zoo.flow import bits_per_dim, call_with_key
from zoo.train.config import TrainConfig

__all__ = ["train", "make_mesh", "make_optimizer", "make_train_step", "evaluate", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite gradients."""


def make_mesh(devices=None):
    """A 1-D mesh over all devices with axis "data" (Auto axes, so jit
    propagates the shardings we place on inputs)."""
    devices = jax.devices() if devices is None else devices
    return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def make_optimizer(cfg: TrainConfig, *, steps_per_epoch: int, total_steps: int):
    warmup = cfg.warmup_steps
    if cfg.warmup_epochs is not None:
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if warmup > 0:
        schedule = optax.linear_schedule(0.0, cfg.lr, warmup)
    else:
        schedule = optax.constant_schedule(cfg.lr)
    inner = {
        "adam": lambda: optax.adam(schedule),
        "adamax": lambda: optax.adamax(schedule),
        "rmsprop": lambda: optax.rmsprop(schedule, momentum=cfg.momentum or None),
    }[cfg.optimizer]()
    if cfg.grad_clip_norm is not None:
        inner = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), inner)
    # Skips updates whose gradients are NaN/inf and counts them; the loop stops
    # before the limit, so a poisoned update is never applied.
    return optax.apply_if_finite(inner, max_consecutive_errors=cfg.max_nonfinite + 1)


def _masked_mean(values, mask):
    w = mask.astype(values.dtype)
    return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1.0)


def make_train_step(static, optimizer, mesh):
    """jit(step)(params, opt_state, x, mask, key) -> (params, opt_state, metrics);
    params/opt_state replicated and donated, the batch split over "data"."""
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))

    def loss_fn(params, x, mask, key):
        model = eqx.combine(params, static)
        keys = jax.random.split(key, x.shape[0])
        losses, aux = jax.vmap(lambda xi, ki: model.loss(xi, key=ki))(x, keys)
        aux = jax.tree.map(lambda a: _masked_mean(a, mask), aux)
        return _masked_mean(losses, mask), aux

    def step(params, opt_state, x, mask, key):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, mask, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return params, opt_state, metrics

    return jax.jit(
        step,
        in_shardings=(replicated, replicated, batch, batch, replicated),
        out_shardings=(replicated, replicated, replicated),
        donate_argnums=(0, 1),
    )


def make_eval_step(static, mesh):
    """jit(fn)(params, x, mask, key) -> (sum of log p over real examples, count)."""
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))

    def fn(params, x, mask, key):
        model = eqx.combine(params, static)
        keys = jax.random.split(key, x.shape[0])
        lp = jax.vmap(lambda xi, ki: call_with_key(model.log_prob, xi, key=ki))(x, keys)
        w = mask.astype(lp.dtype)
        return jnp.sum(jnp.where(mask, lp, 0.0)), jnp.sum(w)

    return jax.jit(fn, in_shardings=(replicated, batch, batch, replicated), out_shardings=replicated)


def global_batch(mesh, local: np.ndarray):
    """This process's rows -> one global array split over the "data" axis."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)


def evaluate(eval_step, params, pipe, mesh, *, key, num_dims, images, max_examples=None):
    """Exact mean NLL over a split in nats (and bits/dim for 8-bit images)."""
    total, count = 0.0, 0.0
    for i, b in enumerate(pipe):
        x, mask = b["x"], b["mask"]
        if max_examples is not None:
            seen = i * pipe.batch_size
            mask = mask & (np.arange(len(mask)) + seen < max_examples)
        s, c = eval_step(params, global_batch(mesh, x), global_batch(mesh, mask), jax.random.fold_in(key, i))
        total, count = total + float(s), count + float(c)
        if max_examples is not None and (i + 1) * pipe.batch_size >= max_examples:
            break
    nll = -total / max(count, 1.0)
    out = {"nll": nll, "nats_per_dim": nll / num_dims, "examples": int(count)}
    if images:
        out["bpd"] = float(bits_per_dim(jnp.asarray(-nll), num_dims))
    return out


class _Log:
    """metrics.jsonl in the run directory (one JSON object per line)."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "a")

    def write(self, **record):
        clean = {k: (float(v) if isinstance(v, (np.floating, jax.Array)) else v) for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()


def _fmt(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def train(model: str, model_cfg, data: str, cfg: TrainConfig) -> dict:
    """Train `model_cfg` (the config of registered model `model`) on dataset
    `data`; returns the final metrics and the paths written."""
    from tqdm.auto import tqdm

    from zoo.data import pipeline

    source = zoo.get_dataset(data)
    images = source.dtype == "uint8" and len(source.shape) == 3
    num_dims = math.prod(source.shape)
    mesh = make_mesh()
    n_dev = mesh.devices.size
    if cfg.batch_size % n_dev:
        raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the {n_dev} devices")
    eval_bs = max(n_dev, cfg.eval_batch_size // n_dev * n_dev)

    name = cfg.name or f"{model}-{data}"
    run_dir = Path(cfg.out_dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(
        json.dumps(
            {"model": model, "data": data, "model_cfg": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(cfg)},
            indent=2,
        )
    )

    train_pipe = pipeline(data, split="train", batch_size=cfg.batch_size, seed=cfg.seed, data_dir=cfg.data_dir, flip=cfg.flip)

    def eval_pipe(split):
        return pipeline(data, split=split, batch_size=eval_bs, seed=cfg.seed, data_dir=cfg.data_dir, shuffle=False, drop_remainder=False)

    splits = [s for s in ("validation", "test") if s in source.splits]
    eval_pipes = {s: eval_pipe(s) for s in splits + (["train"] if cfg.eval_train else [])}
    steps_per_epoch = train_pipe.steps_per_epoch
    total_steps = cfg.steps if cfg.epochs is None else int(round(cfg.epochs * steps_per_epoch))
    eval_every = cfg.eval_every if cfg.eval_epochs is None else max(1, int(round(cfg.eval_epochs * steps_per_epoch)))

    key = jax.random.key(cfg.seed)
    k_model, k_train, k_eval, k_sample = jax.random.split(key, 4)
    net = model_cfg.build(input_shape=tuple(source.shape), key=k_model)
    it = iter(train_pipe)
    first = next(it)
    # Data-dependent init (ActNorm) once, jitted, on the global batch: its
    # statistics are global across devices.
    net = eqx.filter_jit(zoo.data_init)(net, global_batch(mesh, first["x"]))
    it = train_pipe.iterator()  # train from the first batch again
    params, static = eqx.partition(net, eqx.is_inexact_array)
    replicated = NamedSharding(mesh, P())
    params = jax.device_put(params, replicated)
    optimizer = make_optimizer(cfg, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    opt_state = jax.device_put(optimizer.init(params), replicated)
    step_fn = make_train_step(static, optimizer, mesh)
    eval_fn = make_eval_step(static, mesh)
    n_params = sum(a.size for a in jax.tree.leaves(params))

    log = _Log(run_dir / "metrics.jsonl")
    print(
        f"zoo.train: {model} on {data} {tuple(source.shape)}; {n_params:,} parameters; "
        f"{total_steps} steps of batch {cfg.batch_size} ({steps_per_epoch} steps/epoch) on {n_dev} device(s)"
    )

    def run_eval(step):
        results = {}
        for split, pipe in eval_pipes.items():
            r = evaluate(eval_fn, params, pipe, mesh, key=jax.random.fold_in(k_eval, step), num_dims=num_dims,
                         images=images, max_examples=cfg.max_eval_ex)
            log.write(step=step, split=split, **r)
            results[split] = r
        return results

    history = {"first_eval": run_eval(0)}
    tqdm.write(f"step 0: " + "; ".join(f"{s} {_fmt(r)}" for s, r in history["first_eval"].items()))
    bar = tqdm(total=total_steps, disable=not cfg.progress, unit="step", dynamic_ncols=True)
    t_start, t_last, nonfinite = time.perf_counter(), time.perf_counter(), 0
    best = math.inf
    for step in range(1, total_steps + 1):
        b = next(it)
        params, opt_state, metrics = step_fn(
            params, opt_state, global_batch(mesh, b["x"]), global_batch(mesh, b["mask"]), jax.random.fold_in(k_train, step)
        )
        if step % cfg.log_interval == 0 or step == total_steps:
            metrics = {k: float(v) for k, v in metrics.items()}
            nonfinite = int(opt_state.notfinite_count)
            now = time.perf_counter()
            rate = cfg.log_interval / max(now - t_last, 1e-9)
            t_last = now
            shown = {"loss": metrics["loss"]}
            if images and math.isfinite(metrics["loss"]):
                shown["bpd"] = float(bits_per_dim(jnp.asarray(-metrics["loss"]), num_dims))
            bar.set_postfix(**{k: f"{v:.4g}" for k, v in shown.items()}, steps_s=f"{rate:.1f}")
            log.write(step=step, split="train_batch", epoch=int(b["epoch"]), steps_per_sec=rate, **metrics)
        bar.update(1)
        if nonfinite >= cfg.max_nonfinite:
            bar.close()
            log.close()
            raise TrainingDiverged(
                f"stopped at step {step}: {nonfinite} consecutive steps had NaN/inf gradients (updates skipped). "
                "Lower --lr, set --grad-clip-norm, or check the data."
            )
        if eval_every and step % eval_every == 0 and step != total_steps:
            r = run_eval(step)
            tqdm.write(f"step {step}: " + "; ".join(f"{s} {_fmt(v)}" for s, v in r.items()))
            best = min(best, r.get("validation", {}).get("nll", math.inf))
    bar.close()
    elapsed = time.perf_counter() - t_start
    history["final_eval"] = final = run_eval(total_steps)
    best = min(best, final.get("validation", {}).get("nll", math.inf))
    print(f"step {total_steps}: " + "; ".join(f"{s} {_fmt(r)}" for s, r in final.items()))

    model_out = eqx.combine(params, static)
    samples = jax.vmap(lambda k: model_out.sample(k))(jax.random.split(k_sample, cfg.num_samples))
    from zoo.images import save_grid, save_points

    samples_path = run_dir / "samples.png"
    if images:
        save_grid(np.asarray(samples), samples_path)
    elif num_dims >= 2:
        more = jax.vmap(lambda k: model_out.sample(k))(jax.random.split(k_sample, 20000))
        save_points(np.asarray(more), samples_path)
    log.write(step=total_steps, split="summary", seconds=elapsed, best_validation_nll=best)
    log.close()
    print(f"zoo.train: {total_steps} steps in {elapsed:.1f} s. Wrote {run_dir}/metrics.jsonl, {samples_path}")
    return {"model": model_out, "history": history, "run_dir": run_dir, "samples": samples_path}
