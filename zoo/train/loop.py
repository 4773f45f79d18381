"""The shared training loop: one jitted, data-parallel step for every model.

The model supplies `loss(x, *, key) -> (scalar, aux)` and `log_prob`; this
module supplies data, optimisation, sharding, evaluation and logging.
Parameters are replicated and the global batch is split over a 1-D device
mesh (axis "data"), so the same code runs on 1 CPU, 4 fake CPU devices, or
several hosts after `jax.distributed.initialize()`.
"""

import dataclasses
import inspect
import json
import math
import time
import typing
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import zoo
from zoo._cli import Failure
from zoo.evaluate import evaluate, make_eval_step
from zoo.flow import bits_per_dim
from zoo.train.config import TrainConfig

__all__ = [
    "train", "make_mesh", "make_optimizer", "init_opt_state", "OptState", "make_train_step", "evaluate",
    "TrainingDiverged",
]


class TrainingDiverged(Failure):
    """Too many consecutive non-finite gradients."""


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None):
    """jax.distributed.initialize once (None: auto-detected on SLURM / TPU pods).
    CPU collectives go over gloo, so several CPU processes form one mesh too."""
    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


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
    return inner


class OptState(typing.NamedTuple):
    """The trainer's optimizer state: the optax state and the number of
    consecutive skipped (non-finite) steps."""

    inner: optax.OptState
    nonfinite_count: jax.Array


def init_opt_state(optimizer, params) -> OptState:
    return OptState(optimizer.init(params), jnp.zeros((), jnp.int32))


def _masked_mean(values, mask):
    """Mean over the batch axis of real (unmasked) examples; other axes kept."""
    w = mask.astype(values.dtype).reshape(mask.shape + (1,) * (values.ndim - 1))
    return jnp.sum(values * w, axis=0) / jnp.maximum(jnp.sum(mask), 1)


def _takes(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


_COND_MIN_SIZE = 2**19  # elements of the largest parameter array (measured crossover, see train_step)


def make_train_step(static, optimizer, mesh):
    """jit(step)(params, opt_state, x, mask, key, step) -> (params, opt_state,
    metrics); params/opt_state replicated and donated, the batch split over
    "data". The loss runs on `eqx.nn.inference_mode(model, False)` (layers
    with an `inference` field in their training behaviour) and gets `step=`
    if it takes it. After the update, `zoo.after_update` refreshes the layers'
    untrained state, then the model's `after_step` hook, if any, runs."""
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))

    def loss_fn(params, x, mask, key, step):
        model = eqx.nn.inference_mode(eqx.combine(params, static), False)
        extra = {"step": step} if _takes(model.loss, "step") else {}
        keys = jax.random.split(key, x.shape[0])
        losses, aux = jax.vmap(lambda xi, ki: model.loss(xi, key=ki, **extra))(x, keys)
        aux = jax.tree.map(lambda a: _masked_mean(a, mask), aux)
        return _masked_mean(losses, mask), aux

    def train_step(params, opt_state, x, mask, key, step):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, mask, key, step)
        # A step whose loss or gradient norm is NaN/inf is skipped whole (update,
        # after_update and after_step) and counted; the loop stops after
        # --max-nonfinite in a row. How to skip is chosen by size (same result):
        # with large arrays (FC at D = 784: 8.4 vs 12.7 ms per step; D = 4064:
        # 157 vs ~270 ms) a select between old and new state costs more than the
        # Adam update, so lax.cond skips the work; with small arrays (the bench
        # Glow, largest 221k elements: 235 vs 306 ms) the select fuses into the
        # update while a cond costs ~25% of the step on XLA:CPU.
        grad_sq = optax.tree.norm(grads, squared=True)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_sq)

        def update(operand):
            params, inner = operand
            updates, inner = optimizer.update(grads, inner, params)
            params = optax.apply_updates(params, updates)
            model = zoo.after_update(eqx.combine(params, static))
            if hasattr(model, "after_step"):
                model = model.after_step(aux, step=step)
            return eqx.filter(model, eqx.is_inexact_array), inner

        operand = (params, opt_state.inner)
        if max((a.size for a in jax.tree.leaves(params)), default=0) >= _COND_MIN_SIZE:
            params, inner = jax.lax.cond(finite, update, lambda operand: operand, operand)
        else:
            params, inner = jax.tree.map(lambda new, old: jnp.where(finite, new, old), update(operand), operand)
        count = jnp.where(finite, 0, opt_state.nonfinite_count + 1)
        metrics = {"loss": loss, "grad_norm": jnp.sqrt(grad_sq), "nonfinite": count, **aux}
        return params, OptState(inner, count), metrics

    return jax.jit(
        train_step,
        in_shardings=(replicated, replicated, batch, batch, replicated, replicated),
        out_shardings=(replicated, replicated, replicated),
        donate_argnums=(0, 1),
    )


def global_batch(mesh, local: np.ndarray, dtype=None):
    """This process's rows -> one global array split over the "data" axis
    (float data cast to `dtype`, the model's, e.g. float64 under x64)."""
    if dtype is not None and np.issubdtype(local.dtype, np.floating):
        local = local.astype(dtype, copy=False)
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)


class _Log:
    """metrics.jsonl in the run directory (one JSON object per line), written
    by process 0 only."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "a") if jax.process_index() == 0 else None

    def write(self, **record):
        if self.file is None:
            return
        clean = {k: (float(v) if isinstance(v, (np.floating, jax.Array)) else v) for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()


def _fmt(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def _run_dir(cfg: TrainConfig, name: str) -> Path:
    """OUT_DIR/NAME; a fresh run never overwrites one that has checkpoints
    (it gets NAME-2, NAME-3, ...); --resume continues it."""
    base = Path(cfg.out_dir) / name
    if jax.process_count() > 1:  # processes must agree on one directory: no renaming
        return base
    if cfg.resume:
        if not (base / "checkpoints").is_dir():
            raise FileNotFoundError(f"--resume: no checkpoints in {base}/checkpoints to resume from")
        return base
    run_dir, i = base, 1
    while (run_dir / "checkpoints").is_dir():
        i += 1
        run_dir = base.with_name(f"{name}-{i}")
    return run_dir


class _Wandb:
    """wandb when --wandb.project is set; otherwise every call does nothing."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, name: str, config: dict):
        self.run = None
        if cfg.wandb.project is None or jax.process_index() != 0:
            return
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.wandb.project, entity=cfg.wandb.entity, mode=cfg.wandb.mode, name=name,
            dir=str(run_dir), config=config, tags=list(cfg.wandb.tags), resume="allow",
        )

    def log(self, data: dict, step: int):
        if self.run is not None:
            self.run.log({k: v for k, v in data.items() if isinstance(v, (int, float))}, step=step)

    def image(self, key: str, path: Path, step: int):
        if self.run is not None:
            self.run.log({key: self.wandb.Image(str(path))}, step=step)

    def finish(self):
        if self.run is not None:
            self.run.finish()


def _scalars(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        a = np.asarray(v)
        if a.ndim == 0:
            out[k] = a.item() if a.dtype.kind in "iub" else float(a)
    return out


def train(model: str, model_cfg, data: str, cfg: TrainConfig) -> dict:
    """Train `model_cfg` (the config of registered model `model`) on dataset
    `data`; returns the final metrics and the paths written."""
    from tqdm.auto import tqdm

    if cfg.distributed:
        initialize_distributed(cfg.coordinator_address, cfg.num_processes, cfg.process_id)

    from zoo.checkpoint import Checkpoints, config_to_json
    from zoo.data import pipeline

    source = zoo.get_dataset(data)
    images = source.dtype == "uint8" and len(source.shape) == 3
    # bits/dim is the 8-bit convention; binary data (Bernoulli models) is reported in nats only
    eight_bit = images and not source.binary and source.binarize is None
    input_shape = tuple(source.shape)
    num_dims = math.prod(input_shape)
    mesh = make_mesh()
    n_dev = mesh.devices.size
    if cfg.batch_size % n_dev:
        raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the {n_dev} devices")
    eval_bs = max(n_dev, cfg.eval_batch_size // n_dev * n_dev)

    train_pipe = pipeline(data, split="train", batch_size=cfg.batch_size, seed=cfg.seed, data_dir=cfg.data_dir, flip=cfg.flip)

    def eval_pipe(split):
        return pipeline(data, split=split, batch_size=eval_bs, seed=cfg.seed, data_dir=cfg.data_dir, shuffle=False, drop_remainder=False)

    splits = [s for s in ("validation", "test") if s in source.splits]
    eval_pipes = {s: eval_pipe(s) for s in splits + (["train"] if cfg.eval_train else [])}
    steps_per_epoch = train_pipe.steps_per_epoch
    total_steps = cfg.steps if cfg.epochs is None else int(round(cfg.epochs * steps_per_epoch))
    eval_every = cfg.eval_every if cfg.eval_epochs is None else max(1, int(round(cfg.eval_epochs * steps_per_epoch)))
    save_every = cfg.checkpoint_every or eval_every
    sample_every = cfg.sample_every if cfg.sample_epochs is None else max(1, int(round(cfg.sample_epochs * steps_per_epoch)))

    name = cfg.name or f"{model}-{data}"
    run_dir = _run_dir(cfg, name)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_config = {"model": model, "data": data, "model_cfg": config_to_json(model_cfg),
                  "input_shape": list(input_shape), "train": dataclasses.asdict(cfg)}
    (run_dir / "config.json").write_text(json.dumps(run_config, indent=2))

    key = jax.random.key(cfg.seed)
    k_model, k_train, k_eval, k_sample = jax.random.split(key, 4)
    net = model_cfg.build(input_shape=input_shape, key=k_model)
    dtype = jax.tree.leaves(eqx.filter(net, eqx.is_inexact_array))[0].dtype  # data is fed in this dtype
    replicated = NamedSharding(mesh, P())
    optimizer = make_optimizer(cfg, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    ckpt = Checkpoints(run_dir / "checkpoints", keep=cfg.keep_checkpoints)

    start, best, data_state, opt_state = 0, math.inf, None, None
    if cfg.resume:
        params = eqx.filter(net, eqx.is_inexact_array)
        restored = ckpt.restore(net, init_opt_state(optimizer, params), sharding=replicated)
        if restored is None:
            raise FileNotFoundError(f"--resume: no checkpoints in {ckpt.directory}")
        stored = restored.meta
        if stored.get("model") != model or stored.get("model_cfg") != run_config["model_cfg"] or stored.get("data") != data:
            raise ValueError(
                f"--resume: {run_dir} holds a run of {stored.get('model')} on {stored.get('data')} with other "
                "settings; resume with the same --model/--data/--model-cfg flags or pick another --name"
            )
        net, opt_state = restored.model, restored.opt_state
        start, best, data_state = restored.step, stored.get("best_validation_nll", math.inf), stored["data_state"]
        print(f"zoo.train: resuming {run_dir} from step {start}")
    else:
        # Data-dependent init (ActNorm) once, jitted, on the global batch: its
        # statistics are global across devices.
        first = next(iter(train_pipe))
        net = eqx.filter_jit(zoo.data_init)(net, global_batch(mesh, first["x"], dtype))
    params, static = eqx.partition(net, eqx.is_inexact_array)
    params = jax.device_put(params, replicated)
    opt_state = jax.device_put(init_opt_state(optimizer, params) if opt_state is None else opt_state, replicated)
    it = train_pipe.iterator(data_state)  # from the first batch again, or where the checkpoint left off
    step_fn = make_train_step(static, optimizer, mesh)
    eval_fn = make_eval_step(static, mesh)
    n_params = sum(a.size for a in jax.tree.leaves(params))

    log = _Log(run_dir / "metrics.jsonl")
    wb = _Wandb(cfg, run_dir, run_dir.name, run_config)
    print(
        f"zoo.train: {model} on {data} {input_shape}; {n_params:,} parameters; "
        f"{total_steps} steps of batch {cfg.batch_size} ({steps_per_epoch} steps/epoch) on {n_dev} device(s); "
        f"run directory {run_dir}"
    )

    def run_eval(step):
        results = {}
        for split, pipe in eval_pipes.items():
            r = evaluate(eval_fn, params, pipe, mesh, key=jax.random.fold_in(k_eval, step), num_dims=num_dims,
                         images=eight_bit, max_examples=cfg.max_eval_ex, dtype=dtype)
            log.write(step=step, split=split, **r)
            wb.log({f"{split}/{k}": v for k, v in r.items()}, step)
            results[split] = r
        return results

    def save(step, results):
        nonlocal best
        val = results.get("validation", {}).get("nll") if results else None
        if val is not None:
            best = min(best, val)
        meta = {**run_config, "format": "zoo-checkpoint-1", "step": step, "data_state": it.get_state(),
                "seed": cfg.seed, "metrics": results or {}, "best_validation_nll": best}
        ckpt.save(step, eqx.combine(params, static), opt_state, json.loads(json.dumps(meta)), validation_nll=val)

    def write_samples(path, model_now, step):
        """A PNG of samples (image grid, or a 2-D histogram for vectors), also to wandb."""
        from zoo.images import save_grid, save_points
        from zoo.sample import sample as draw, sample_problems

        if jax.process_index() != 0 or not (images or num_dims >= 2):
            return path
        num = cfg.num_samples if images else 20000
        xs = draw(model_now, k_sample, num=num, temperature=cfg.sample_temperature, batch=256 if images else 4096)
        problems = sample_problems(xs, images=images)
        if problems:
            tqdm.write(f"zoo.train: warning: {path.name}: {problems}; try a lower --sample-temperature or train longer")
        save_grid(xs, path) if images else save_points(xs, path)
        wb.image("samples", path, step)
        return path

    history = {}
    if start == 0:
        history["first_eval"] = run_eval(0)
        tqdm.write("step 0: " + "; ".join(f"{s} {_fmt(r)}" for s, r in history["first_eval"].items()))
    bar = tqdm(total=total_steps, initial=start, disable=not cfg.progress, unit="step", dynamic_ncols=True)
    t_start = t_last = time.perf_counter()
    times: list[float] = []
    pending = None  # the previous step's metrics: read one step late so dispatch runs ahead
    last_metrics: dict = {}
    results: dict = {}

    def check(metrics, step):
        nonfinite = int(metrics["nonfinite"])
        if nonfinite >= cfg.max_nonfinite:
            raise TrainingDiverged(
                f"stopped at step {step}: {nonfinite} consecutive steps had NaN/inf gradients (updates skipped, "
                "no checkpoint written from them). Lower --lr, set --grad-clip-norm, or check the data."
            )
        return nonfinite

    try:
        for step in range(start + 1, total_steps + 1):
            b = next(it)
            t0 = time.perf_counter()
            params, opt_state, metrics = step_fn(
                params, opt_state, global_batch(mesh, b["x"], dtype), global_batch(mesh, b["mask"]),
                jax.random.fold_in(k_train, step), jnp.asarray(step, jnp.int32),
            )
            if cfg.log_timing:
                jax.block_until_ready(metrics)
                if step > start + 1:  # the first step includes compilation
                    times.append(time.perf_counter() - t0)
            if pending is not None:
                check(pending, step - 1)
            pending = metrics
            bar.update(1)
            if step % cfg.log_interval == 0 or step == total_steps:
                last_metrics = _scalars(metrics)
                check(last_metrics, step)
                now = time.perf_counter()
                rate = cfg.log_interval / max(now - t_last, 1e-9)
                t_last = now
                shown = {"loss": last_metrics["loss"]}
                if eight_bit and math.isfinite(last_metrics["loss"]):
                    shown["bpd"] = float(bits_per_dim(jnp.asarray(-last_metrics["loss"]), num_dims))
                if times:
                    last_metrics["sec_per_batch"] = float(np.mean(times))
                    last_metrics["sec_per_batch_std"] = float(np.std(times))
                    last_metrics["sec_per_example"] = float(np.mean(times)) / cfg.batch_size
                    times.clear()
                bar.set_postfix(**{k: f"{v:.4g}" for k, v in shown.items()}, steps_s=f"{rate:.1f}")
                log.write(step=step, split="train_batch", epoch=int(b["epoch"]), steps_per_sec=rate, **last_metrics)
                wb.log({f"train/{k}": v for k, v in last_metrics.items()} | {"train/steps_per_sec": rate}, step)
                if cfg.log_timing and "sec_per_batch" in last_metrics:
                    tqdm.write(f"step {step}: {last_metrics['sec_per_batch'] * 1e3:.1f} ± "
                               f"{last_metrics['sec_per_batch_std'] * 1e3:.1f} ms/batch, "
                               f"{last_metrics['sec_per_example'] * 1e6:.1f} µs/example")
            results = {}
            if eval_every and step % eval_every == 0 and step != total_steps:
                results = run_eval(step)
                tqdm.write(f"step {step}: " + "; ".join(f"{s} {_fmt(v)}" for s, v in results.items()))
            if sample_every and step % sample_every == 0 and step != total_steps:
                write_samples(run_dir / f"samples_{step}.png", eqx.combine(params, static), step)
            if save_every and step % save_every == 0 and step != total_steps:
                # never checkpoint a state reached through skipped (non-finite) updates
                if check(metrics, step) == 0:
                    save(step, results)
        if pending is not None:
            check(pending, total_steps)
    except BaseException:
        ckpt.wait()  # let the last good checkpoint finish writing
        ckpt.close()
        log.close()
        wb.finish()
        raise
    finally:
        bar.close()
    elapsed = time.perf_counter() - t_start
    history["final_eval"] = final = run_eval(total_steps)
    print(f"step {total_steps}: " + "; ".join(f"{s} {_fmt(r)}" for s, r in final.items()))
    if total_steps > start and (pending is None or int(pending["nonfinite"]) == 0):
        save(total_steps, final)
    ckpt.wait()
    ckpt.close()

    model_out = eqx.combine(params, static)
    samples_path = write_samples(run_dir / "samples.png", model_out, total_steps)
    log.write(step=total_steps, split="summary", seconds=elapsed, best_validation_nll=best)
    log.close()
    wb.finish()
    print(f"zoo.train: {total_steps - start} steps in {elapsed:.1f} s. Wrote {run_dir}/metrics.jsonl, "
          f"{samples_path}, checkpoints in {ckpt.directory}")
    print(f"  sample more: python -m zoo.sample --checkpoint {ckpt.directory} --num 64 --out {run_dir}/grid.png")
    return {"model": model_out, "history": history, "run_dir": run_dir, "samples": samples_path,
            "checkpoints": ckpt.directory, "params": params}
