"""The shared training loop: one jitted, data-parallel step for every model.

The model supplies `loss(x, *, key) -> (scalar, aux)` and `log_prob`; this
module supplies data, optimisation, sharding, evaluation and logging.
Parameters are replicated and the global batch is split over a 1-D device
mesh (axis "data"), so the same code runs on 1 CPU, 4 fake CPU devices, or
several hosts after `jax.distributed.initialize()`.
"""

import dataclasses
import fcntl
import inspect
import itertools
import json
import math
import os
import signal
import socket
import sys
import threading
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
from zoo._cli import Failure, UsageError, message
from zoo.evaluate import _given, eight_bit, evaluate, make_eval_step
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


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]))


_COND_MIN_SIZE = 2**19  # elements of the largest parameter array (measured crossover, see train_step)


def make_train_step(static, optimizer, mesh, *, donate: bool = False):
    """step(params, opt_state, x, mask, key, step) -> (params, opt_state,
    metrics): one jitted update with params/opt_state replicated over `mesh`
    and the batch `x` (or a pair (x, conditions) for a conditional model)
    split over its "data" axis.

    Safe to call from user code: params and opt_state are put on the mesh's
    replicated sharding first (so it compiles once, wherever they were), and
    they are not deleted unless `donate=True` (the trainer's choice: it never
    reuses them, and donation saves a copy of the model per step). The state
    the previous call returned is known to be placed and goes straight in.
    The jitted function itself is `step.jitted`.

    The loss runs on `eqx.nn.inference_mode(model, False)` (layers with an
    `inference` field in their training behaviour) and gets `step=` if it
    takes it. After the update, `zoo.after_update` refreshes the layers'
    untrained state, then the model's `after_step` hook, if any, runs."""
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))

    def loss_fn(params, x, mask, key, step):
        model = eqx.nn.inference_mode(eqx.combine(params, static), False)
        extra = {"step": step} if _takes(model.loss, "step") else {}
        x, condition = x if isinstance(x, tuple) else (x, None)
        keys = jax.random.split(key, mask.shape[0])
        losses, aux = jax.vmap(lambda xi, ci, ki: model.loss(xi, key=ki, **_given(condition=ci), **extra))(
            x, condition, keys)
        aux = jax.tree.map(lambda a: _masked_mean(a, mask), aux)
        return _masked_mean(losses, mask), aux

    def train_step(params, opt_state, x, mask, key, step):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, mask, key, step)
        # A step whose loss, gradient norm or new parameters (after the hooks: a
        # finite gradient times a huge --lr overflows) are NaN/inf is skipped
        # whole (update, after_update and after_step) and counted; the loop stops after
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

        def update_if_finite(operand):  # the cond path: a second cond keeps the old state
            new = update(operand)
            ok = _all_finite(new[0])
            return jax.lax.cond(ok, lambda: (new, ok), lambda: (operand, ok))

        operand = (params, opt_state.inner)
        if max((a.size for a in jax.tree.leaves(params)), default=0) >= _COND_MIN_SIZE:
            (params, inner), finite = jax.lax.cond(
                finite, update_if_finite, lambda operand: (operand, jnp.asarray(False)), operand)
        else:
            new = update(operand)
            finite = finite & _all_finite(new[0])
            params, inner = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, operand)
        count = jnp.where(finite, 0, opt_state.nonfinite_count + 1)
        metrics = {"loss": loss, "grad_norm": jnp.sqrt(grad_sq), "nonfinite": count, **aux}
        return params, OptState(inner, count), metrics

    jitted = jax.jit(
        train_step,
        in_shardings=(replicated, replicated, batch, batch, replicated, replicated),
        out_shardings=(replicated, replicated, replicated),
        donate_argnums=(0, 1) if donate else (),
    )

    last = [None, None]  # the state this step returned last: placed already

    def step(params, opt_state, x, mask, key, step):
        if params is not last[0] or opt_state is not last[1]:
            # no copy when already there, but ~30 us per leaf: skipped for the state the last call returned
            params, opt_state = jax.device_put((params, opt_state), replicated)
        out = jitted(params, opt_state, x, mask, key, step)
        last[:] = out[:2]
        return out

    step.jitted = jitted
    return step


def global_batch(mesh, local: np.ndarray, dtype=None):
    """This process's rows -> one global array split over the "data" axis
    (float data cast to `dtype`, the model's, e.g. float64 under x64)."""
    if dtype is not None and np.issubdtype(local.dtype, np.floating):
        local = local.astype(dtype, copy=False)
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)


class _Log:
    """metrics.jsonl in the run directory (one JSON object per line), written
    by process 0 only."""

    def __init__(self, path: Path | None):
        self.path = path  # None: nothing is written
        self.file = open(path, "a") if path is not None and jax.process_index() == 0 else None

    def write(self, **record):
        if self.file is None:
            return
        clean = {k: (float(v) if isinstance(v, (np.floating, jax.Array)) else v) for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def _fmt(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def _check_args(cfg: TrainConfig):
    """Settings wrong whatever the data: refused before anything is loaded, built or written."""
    at_least_1 = {"--batch-size": cfg.batch_size, "--eval-batch-size": cfg.eval_batch_size,
                  "--log-interval": cfg.log_interval, "--keep-checkpoints": cfg.keep_checkpoints,
                  "--max-nonfinite": cfg.max_nonfinite, "--num-samples": cfg.num_samples,
                  "--max-eval-ex": cfg.max_eval_ex if cfg.max_eval_ex is not None else 1}
    at_least_0 = {"--steps": cfg.steps, "--eval-every": cfg.eval_every, "--checkpoint-every": cfg.checkpoint_every,
                  "--sample-every": cfg.sample_every, "--warmup-steps": cfg.warmup_steps}
    for flag, v in at_least_1.items():
        if v < 1:
            raise UsageError(f"{flag} must be at least 1, got {v}; pass a positive number")
    for flag, v in at_least_0.items():
        if v < 0:
            raise UsageError(f"{flag} must not be negative, got {v}; pass 0 or more")
    positive = {"--lr": cfg.lr, "--epochs": cfg.epochs, "--eval-epochs": cfg.eval_epochs,
                "--sample-epochs": cfg.sample_epochs, "--grad-clip-norm": cfg.grad_clip_norm,
                "--sample-temperature": cfg.sample_temperature}
    for flag, v in positive.items():
        if v is not None and not (math.isfinite(v) and v > 0):
            raise UsageError(f"{flag} must be a finite positive number, got {v}")
    for flag, v in {"--warmup-epochs": cfg.warmup_epochs, "--momentum": cfg.momentum}.items():
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise UsageError(f"{flag} must be a finite number >= 0, got {v}")
    if not 0 <= cfg.seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2**32), got {cfg.seed}")
    if cfg.name is not None and (cfg.name in ("", ".", "..") or "/" in cfg.name or os.sep in cfg.name):
        raise UsageError(f"--name {cfg.name!r} must be a plain folder name; put the parent folder in --out-dir")
    out = Path(cfg.out_dir).expanduser().absolute()
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"--out-dir {cfg.out_dir}: {existing} is a file, not a folder; pass a folder")


class _RunLock:
    """An exclusive lock on RUN_DIR/run.lock, held for the run's life. It is
    an flock, so the kernel drops it when the process dies however it dies;
    the file names the holder (pid, host) and is emptied on release, so one
    found non-empty was left by a process that did not finish: reported."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.lock"
        self.file = open(self.path, "a+")

    @classmethod
    def take(cls, run_dir: Path) -> "_RunLock | None":
        """The lock, or None when another live process holds it."""
        lock = cls(run_dir)
        try:
            fcntl.flock(lock.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held; any other error (no locks on this file system) is raised
            lock.file.close()
            return None
        except BaseException:
            lock.file.close()
            raise
        lock.file.seek(0)
        stale = lock.file.read().strip()
        if stale:
            print(f"zoo.train: warning: {run_dir} was left locked by {stale}, which ended without finishing "
                  "(killed?); taking it over", file=sys.stderr)
        lock.file.truncate(0)
        lock.file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.file.flush()
        return lock

    @staticmethod
    def holder(run_dir: Path) -> str:
        try:
            return (run_dir / "run.lock").read_text().strip() or "another process"
        except OSError:
            return "another process"

    def release(self):
        if not self.file.closed:
            self.file.truncate(0)
            self.file.close()  # closing drops the flock


def _stored_run_config(run_dir: Path, steps: list[int]) -> dict | None:
    """The run's config.json, else the newest step's metadata that reads."""
    from zoo.checkpoint import CheckpointError, read_meta

    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        pass
    for s in sorted(steps, reverse=True):
        try:
            return read_meta(run_dir / "checkpoints" / str(s))
        except CheckpointError:
            continue
    return None


def _settings_differ(stored: dict, run_config: dict) -> list[str]:
    diff = [f"--{k} {stored.get(k)} (asked: {run_config[k]})" for k in ("model", "data") if stored.get(k) != run_config[k]]
    if not diff:
        old, new = stored.get("model_cfg") or {}, run_config["model_cfg"] or {}
        diff = [f"--model-cfg.{k.replace('_', '-')} {old.get(k)} (asked: {new.get(k)})"
                for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    return diff


def _check_resumable(run_dir: Path, run_config: dict):
    """--resume: the run has a step and was trained with these settings (checked before anything is built)."""
    ckpts = run_dir / "checkpoints"
    steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit() and p.is_dir()]
    if not steps:
        raise UsageError(f"--resume: {ckpts} holds no checkpoint yet; drop --resume to start the run afresh")
    stored = _stored_run_config(run_dir, steps)
    diff = _settings_differ(stored, run_config) if stored is not None else []
    if diff:
        raise UsageError(f"--resume: {run_dir} holds a run of {stored.get('model')} on {stored.get('data')} with other "
                         f"settings ({', '.join(diff[:4])}); resume with the same --model/--data/--model-cfg flags "
                         "or pick another --name")


def _claim_run_dir(cfg: TrainConfig, name: str, run_config: dict) -> tuple[Path, "_RunLock | None"]:
    """OUT_DIR/NAME, locked. A fresh run never shares a directory that has
    checkpoints or that another run holds: it gets NAME-2, NAME-3, ...;
    --resume continues NAME, refused while another process holds it."""
    base = Path(cfg.out_dir) / name
    if cfg.resume and not (base / "checkpoints").is_dir():
        raise UsageError(f"--resume: no run to resume in {base} (no checkpoints/ folder); check --out-dir and "
                         "--name, or drop --resume to start a run")
    if jax.process_count() > 1 or cfg.resume:  # processes agree on one directory: no renaming; process 0 locks
        base.mkdir(parents=True, exist_ok=True)
        lock = _RunLock.take(base) if jax.process_index() == 0 else None
        if lock is None and jax.process_index() == 0:
            raise Failure(f"{'--resume: ' if cfg.resume else ''}{base} is in use by {_RunLock.holder(base)}; wait "
                          "for it to finish or pick another --name")
        try:
            if cfg.resume:
                _check_resumable(base, run_config)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return base, lock
    for i in itertools.count(1):
        run_dir = base if i == 1 else base.with_name(f"{name}-{i}")
        if (run_dir / "checkpoints").is_dir():
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = _RunLock.take(run_dir)
        if lock is None:  # another run is starting here
            continue
        if (run_dir / "checkpoints").is_dir():  # ... or finished between the check and the lock
            lock.release()
            continue
        return run_dir, lock


class _Wandb:
    """wandb when --wandb.project is set; otherwise every call does nothing."""

    def __init__(self, cfg: TrainConfig, run_dir: Path | None, config: dict):
        self.run = None
        if cfg.wandb.project is None or jax.process_index() != 0:
            return
        name = None if run_dir is None else run_dir.name
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.wandb.project, entity=cfg.wandb.entity, mode=cfg.wandb.mode, name=name,
            dir=None if run_dir is None else str(run_dir), config=config, tags=list(cfg.wandb.tags), resume="allow",
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
            self.run = None


def _scalars(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        a = np.asarray(v)
        if a.ndim == 0:
            out[k] = a.item() if a.dtype.kind in "iub" else float(a)
    return out


class RunStopped(KeyboardInterrupt):
    """The run stopped on a signal after checkpointing its last step; the exit status is 128 + the signal."""

    def __init__(self, signum: int, text: str):
        super().__init__(text)
        self.exit_status = 128 + signum


class _StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM (a scheduler's preemption) during the loop asks it
    to stop after the step in flight, with that step checkpointed (the data state
    matches it); a second signal acts at once. Only for signals left at Python's
    defaults, in one process's main thread."""

    DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}

    def __init__(self):
        self.signum, self.previous = None, {}

    @property
    def asked(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            for sig, default in self.DEFAULTS.items():
                if signal.getsignal(sig) is default:
                    self.previous[sig] = signal.signal(sig, self._ask)
        return self

    def _ask(self, signum, frame):
        self.signum = self.signum or signum
        signal.signal(signum, self.previous[signum])

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train(model: str, model_cfg, data: str, cfg: TrainConfig) -> dict:
    """Train `model_cfg` (the config of registered model `model`) on dataset
    `data`; returns the final metrics and the paths written.

    The run's life, one phase each: `_Run(...)` checks the arguments and
    loads the data, then claims the run directory (nothing is written
    before); `restore_or_init` builds the model (from a checkpoint with
    --resume); `loop` trains; `finish` evaluates, saves and reports. On any
    failure `_Run.explain` is the one place an error becomes the message
    the user reads, and `close` waits for the last good checkpoint."""
    if cfg.distributed:
        initialize_distributed(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    run = _Run(model, model_cfg, data, cfg)
    try:
        run.restore_or_init()
        run.loop()
        return run.finish()
    except Exception as e:
        explained = run.explain(e)
        if explained is None:
            raise
        raise explained from e
    finally:
        run.close()


@dataclasses.dataclass(frozen=True)
class Arrays:
    """In-memory data for `zoo.fit`: training examples (N, *shape), uint8 images
    or float vectors, or a `zoo.data.Pipeline` of them; validation examples;
    and, for a conditional model, the condition (label) of each example."""

    x: typing.Any
    x_val: typing.Any
    y: np.ndarray | None = None
    y_val: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:  # (N, *example shape); a pipeline's N is its split's size
        return tuple(self.x.shape) if isinstance(self.x, np.ndarray) else (self.x.num_examples, *self.x.shape)


def conditional_config(model: str, model_cfg, data: str):
    """`model_cfg` for a --conditional run on `data`: condition_shape (classes,) unless set."""
    source = zoo.get_dataset(data)
    if not any(f.name == "condition_shape" for f in dataclasses.fields(model_cfg)):
        conditional = [m for m in zoo.list_models()
                       if any(f.name == "condition_shape" for f in dataclasses.fields(zoo.get_model_config(m)))]
        raise UsageError(f"--conditional: {model} has no conditional version; the conditional models are "
                         f"{', '.join(conditional)}")
    if source.num_classes is None:
        raise UsageError(f"--conditional: {data} has no labels to condition on; datasets with labels: "
                         + ", ".join(d for d in zoo.list_datasets() if zoo.get_dataset(d).num_classes))
    if model_cfg.condition_shape is None:
        model_cfg = dataclasses.replace(model_cfg, condition_shape=(source.num_classes,))
    if tuple(model_cfg.condition_shape) != (source.num_classes,):
        raise UsageError(f"--model-cfg.condition-shape {tuple(model_cfg.condition_shape)} does not fit {data}'s "
                         f"{source.num_classes} classes; leave it out (it is set to ({source.num_classes},))")
    return model_cfg


class _Run:
    """One training run; see `train` for the order of its phases.

    `data` is a dataset name, or `Arrays` (from `zoo.fit`); `net` a built model
    to train instead of building `model_cfg`'s; `optimizer` an optax
    transformation instead of the one `cfg` describes; `init=False` skips the
    data-dependent initialisation (for a model trained before). `run_dir=False` writes
    nothing: no run directory, log or checkpoint (`zoo.fit` without a
    `checkpoint_dir`). `keep_best`: return the parameters of the best
    validation NLL; `patience`: stop after that many evaluations without a
    better one."""

    def __init__(self, model: str, model_cfg, data, cfg: TrainConfig, *, net=None, optimizer=None,
                 run_dir: bool = True, patience: int | None = None, keep_best: bool = False, quiet: bool = False,
                 init: bool = True):
        from zoo.checkpoint import Checkpoints, config_to_json

        _check_args(cfg)
        self.model, self.model_cfg, self.data, self.cfg = model, model_cfg, data, cfg
        self.net, self.optimizer, self.patience, self.quiet, self.init = net, optimizer, patience, quiet, init
        self.lock = self.ckpt = self.log = self.wb = self.bar = self.run_dir = None
        self.history: dict = {"evaluations": []}
        self.keep_best, self.best_params, self.best_eval, self.since_best = keep_best, None, math.inf, 0
        self.stopped_early, self.losses, self.last_eval = False, [], None
        self.arrays = data if isinstance(data, Arrays) else None
        if self.arrays is None:
            source = zoo.get_dataset(data)
            self.input_shape, self.eight_bit = tuple(source.shape), eight_bit(source)  # binary data: nats only
            self.images = source.dtype == "uint8" and len(source.shape) == 3
            self.conditional = cfg.conditional
        else:
            self.input_shape = self.arrays.shape[1:]
            x = self.arrays.x
            integer = np.dtype(x.dtype if isinstance(x, np.ndarray) else x.raw_dtype) == np.uint8
            self.eight_bit = integer
            self.images = integer and len(self.input_shape) == 3
            self.conditional = self.arrays.y is not None
        self.num_dims = math.prod(self.input_shape)
        self.mesh = make_mesh()
        n_dev = self.mesh.devices.size
        if cfg.batch_size % n_dev:
            raise UsageError(f"--batch-size {cfg.batch_size} must be divisible by the {n_dev} devices; "
                             f"pass a multiple of {n_dev}")
        if cfg.flip and not self.images:
            raise UsageError(f"--flip mirrors images; {self._data_name} holds vectors: drop --flip")
        self._check_conditional()
        self._load_data(n_dev)
        self.run_config = {"model": model, "data": self._data_name,
                           "model_cfg": None if model_cfg is None else config_to_json(model_cfg),
                           "input_shape": list(self.input_shape), "train": dataclasses.asdict(cfg)}
        if not run_dir:
            return
        # Nothing is written before this line.
        self.run_dir, self.lock = _claim_run_dir(cfg, cfg.name or f"{model}-{self._data_name}", self.run_config)
        try:
            (self.run_dir / "config.json").write_text(json.dumps(self.run_config, indent=2))
            self.ckpt = Checkpoints(self.run_dir / "checkpoints", keep=cfg.keep_checkpoints)
        except BaseException:
            self.close()
            raise

    @property
    def _data_name(self) -> str:
        return "arrays" if self.arrays is not None else self.data

    def _check_conditional(self):
        shape = getattr(self.net if self.net is not None else self.model_cfg, "condition_shape", None)
        if self.conditional and shape is None:
            what = "pass condition=None" if self.arrays is not None else "drop --conditional"
            raise UsageError(f"{self.model} is not conditional (no condition_shape), but conditions were given; "
                             f"{what} or build a conditional model")
        if shape is not None and not self.conditional:
            what = "pass condition=" if self.arrays is not None else "add --conditional"
            raise UsageError(f"{self.model} is conditional (condition_shape {tuple(shape)}); {what} so that the "
                             "data's labels are fed to it")

    def _load_data(self, n_dev: int):
        from zoo.data import Pipeline, load_dataset, pipeline

        cfg, data = self.cfg, self.data
        eval_bs = max(n_dev, cfg.eval_batch_size // n_dev * n_dev)
        if self.arrays is not None:
            a = self.arrays

            def pipe(x, y, split, bs):
                if isinstance(x, Pipeline):
                    return x
                return pipeline(x, split=split, batch_size=bs, seed=cfg.seed, flip=cfg.flip and split == "train",
                                labels=y, **({} if split == "train" else {"shuffle": False, "drop_remainder": False}))

            try:
                self.train_pipe = pipe(a.x, a.y, "train", cfg.batch_size)
                self.eval_pipes = {"validation": pipe(a.x_val, a.y_val, "validation", eval_bs)}
            except ValueError as e:
                raise UsageError(str(e)) from None
        else:
            labels = True if self.conditional else None
            try:
                self.train_pipe = pipeline(data, split="train", batch_size=cfg.batch_size, seed=cfg.seed,
                                           data_dir=cfg.data_dir, flip=cfg.flip, labels=labels)
            except ValueError as e:
                n = len(load_dataset(data, split="train", data_dir=cfg.data_dir))
                if cfg.batch_size > n // jax.process_count():
                    raise UsageError(f"--batch-size {cfg.batch_size} is larger than {data}'s train split "
                                     f"({n} examples); pass --batch-size {n} or less") from None
                raise UsageError(f"{data}: {e}") from None

            def eval_pipe(split):
                return pipeline(data, split=split, batch_size=eval_bs, seed=cfg.seed, data_dir=cfg.data_dir,
                                shuffle=False, drop_remainder=False, labels=labels)

            splits = [s for s in ("validation", "test") if s in zoo.get_dataset(data).splits]
            self.eval_pipes = {s: eval_pipe(s) for s in splits + (["train"] if cfg.eval_train else [])}
        per_epoch = self.steps_per_epoch = self.train_pipe.steps_per_epoch

        def every(steps, epochs):
            return steps if epochs is None else max(1, int(round(epochs * per_epoch)))

        self.total_steps = cfg.steps if cfg.epochs is None else int(round(cfg.epochs * per_epoch))
        self.eval_every = every(cfg.eval_every, cfg.eval_epochs)
        self.save_every = cfg.checkpoint_every or self.eval_every
        self.sample_every = every(cfg.sample_every, cfg.sample_epochs)

    # ---------------------------------------------------------------- restore or fresh init

    def restore_or_init(self):
        cfg = self.cfg
        k_model, self.k_train, self.k_eval, self.k_sample = jax.random.split(jax.random.key(cfg.seed), 4)
        net = self.net if self.net is not None else self.model_cfg.build(input_shape=self.input_shape, key=k_model)
        self.dtype = jax.tree.leaves(eqx.filter(net, eqx.is_inexact_array))[0].dtype  # data is fed in this dtype
        replicated = NamedSharding(self.mesh, P())
        optimizer = self.optimizer or make_optimizer(cfg, steps_per_epoch=self.steps_per_epoch,
                                                     total_steps=self.total_steps)
        self.start, self.best, data_state, opt_state = 0, math.inf, None, None
        if cfg.resume:
            net, opt_state, data_state = self._restore(net, optimizer, replicated)
        elif self.init:
            # Data-dependent init (ActNorm) once, jitted, on the global batch: its
            # statistics are global across devices.
            first = next(iter(self.train_pipe))
            y = global_batch(self.mesh, first["y"], self.dtype) if self.conditional else None
            net = eqx.filter_jit(zoo.data_init)(net, global_batch(self.mesh, first["x"], self.dtype),
                                                **_given(condition=y))
        params, self.static = eqx.partition(net, eqx.is_inexact_array)
        self.params = jax.device_put(params, replicated)
        self.opt_state = jax.device_put(init_opt_state(optimizer, params) if opt_state is None else opt_state,
                                        replicated)
        self.it = self.train_pipe.iterator(data_state)  # from the first batch again, or where the checkpoint left off
        self.step_fn = make_train_step(self.static, optimizer, self.mesh, donate=True)
        self.eval_fn = make_eval_step(self.static, self.mesh)
        n_params = sum(a.size for a in jax.tree.leaves(self.params))
        self.log = _Log(None if self.run_dir is None else self.run_dir / "metrics.jsonl")
        self.wb = _Wandb(cfg, self.run_dir, self.run_config)
        self._say(
            f"zoo.train: {self.model} on {self._data_name} {self.input_shape}; {n_params:,} parameters; "
            f"{self.total_steps} steps of batch {cfg.batch_size} ({self.steps_per_epoch} steps/epoch) on "
            f"{self.mesh.devices.size} device(s)" + (f"; run directory {self.run_dir}" if self.run_dir else "")
        )

    def _say(self, text: str):
        if not self.quiet:
            from tqdm.auto import tqdm

            tqdm.write(text)

    def _restore(self, net, optimizer, replicated):
        """(model, optimizer state, data-iterator state) of the newest good step;
        newer corrupt steps are moved aside so that they can be saved again."""
        params = eqx.filter(net, eqx.is_inexact_array)
        restored = self.ckpt.restore(net, init_opt_state(optimizer, params), sharding=replicated, move_aside=True)
        if restored is None:
            raise UsageError(f"--resume: no checkpoints in {self.ckpt.directory}; drop --resume to start afresh")
        diff = _settings_differ(restored.meta, self.run_config)
        if diff:  # config.json agreed (checked at set-up) but the step itself does not
            raise UsageError(f"--resume: step {restored.step} in {self.ckpt.directory} was trained with other "
                             f"settings ({', '.join(diff[:4])}); pick another --name")
        self.start, self.best = restored.step, restored.meta.get("best_validation_nll", math.inf)
        self._say(f"zoo.train: resuming {self.run_dir} from step {self.start}")
        return restored.model, restored.opt_state, restored.meta["data_state"]

    # ---------------------------------------------------------------- the loop

    def run_eval(self, step):
        results = {}
        for split, pipe in self.eval_pipes.items():
            r = evaluate(self.eval_fn, self.params, pipe, self.mesh, key=jax.random.fold_in(self.k_eval, step),
                         num_dims=self.num_dims, images=self.eight_bit, max_examples=self.cfg.max_eval_ex,
                         dtype=self.dtype)
            self.log.write(step=step, split=split, **r)
            self.wb.log({f"{split}/{k}": v for k, v in r.items()}, step)
            results[split] = r
        self._record(step, results)
        return results

    def _record(self, step, results):
        """history["evaluations"] gets the step, epoch, each split's NLL and the mean training
        loss since the last evaluation (in the NLL's units); the best validation NLL is tracked
        for `keep_best` and `patience`."""
        entry = {"step": step, "epoch": step / self.steps_per_epoch}
        if self.losses:
            offset = self.num_dims * math.log(256.0) if self.eight_bit else 0.0
            entry["train_nll"] = float(np.mean([float(v) for v in self.losses])) + offset
            self.losses.clear()
        entry |= {f"{split}_nll": r["nll"] for split, r in results.items()}
        self.history["evaluations"].append(entry)
        val = results.get("validation", {}).get("nll", math.nan)
        if val < self.best_eval:
            self.best_eval, self.since_best = val, 0
            if self.keep_best:  # the next step donates self.params
                self.best_params = (step, jax.tree.map(jnp.copy, self.params))
        elif step > 0 and math.isfinite(self.best_eval):
            self.since_best += 1
            self.stopped_early = self.patience is not None and self.since_best >= self.patience
        self.last_eval = (step, results)

    def save(self, step, results):
        if self.ckpt is None:
            return
        val = results.get("validation", {}).get("nll") if results else None
        if val is not None:
            self.best = min(self.best, val)
        meta = {**self.run_config, "format": "zoo-checkpoint-1", "step": step, "data_state": self.it.get_state(),
                "seed": self.cfg.seed, "metrics": results or {}, "best_validation_nll": self.best}
        self.ckpt.save(step, eqx.combine(self.params, self.static), self.opt_state, json.loads(json.dumps(meta)),
                       validation_nll=val)

    def write_samples(self, path, model_now, step):
        """A PNG of samples (image grid, or a 2-D histogram for vectors), also to wandb."""
        from tqdm.auto import tqdm

        from zoo.images import save_grid, save_points
        from zoo.sample import sample as draw, sample_problems

        if self.run_dir is None or jax.process_index() != 0 or not (self.images or self.num_dims >= 2):
            return None
        cfg = self.cfg
        num = cfg.num_samples if self.images else 20000
        condition, grid = None, {}
        if self.conditional:  # a row per class
            classes = model_now.condition_shape[0]
            per = max(1, num // classes)
            condition, grid = np.repeat(np.arange(classes), per), {"ncol": per}
        xs = draw(model_now, self.k_sample, num=num if condition is None else len(condition),
                  temperature=cfg.sample_temperature, batch=256 if self.images else 4096, condition=condition)
        problems = sample_problems(xs, images=self.images)
        if problems:
            tqdm.write(f"zoo.train: warning: {path.name}: {problems}; try a lower --sample-temperature or train longer")
        save_grid(xs, path, **grid) if self.images else save_points(xs, path)
        self.wb.image("samples", path, step)
        return path

    def check(self, metrics, step):
        nonfinite = int(metrics["nonfinite"])
        if nonfinite >= self.cfg.max_nonfinite:
            raise TrainingDiverged(
                f"stopped at step {step}: {nonfinite} consecutive steps had a NaN/inf loss, gradient or updated "
                "parameters (updates skipped, no checkpoint written from them); lower --lr, set --grad-clip-norm, "
                "or check the data"
            )
        return nonfinite

    def loop(self):
        """Steps start+1 .. total: train, log, and evaluate, sample and checkpoint on schedule."""
        from tqdm.auto import tqdm

        cfg, total_steps, mesh = self.cfg, self.total_steps, self.mesh
        if self.start == 0:
            self.history["first_eval"] = self.run_eval(0)
            self._say("step 0: " + "; ".join(f"{s} {_fmt(r)}" for s, r in self.history["first_eval"].items()))
        self.bar = tqdm(total=total_steps, initial=self.start, disable=not cfg.progress, unit="step",
                        dynamic_ncols=True)
        self.t_start = self.t_last = time.perf_counter()
        self.step_last = self.start
        times: list[float] = []
        pending, self.last_step = None, total_steps
        with _StopRequest() as stop:
            for step in range(self.start + 1, total_steps + 1):
                stopping = stop.asked and step != total_steps  # read once: this step is then checkpointed
                pending = self._step(step, pending, times, checkpoint=stopping)
                if stopping:
                    self._stop(step, stop.signum)
                if self.stopped_early:
                    self.last_step = step
                    self._say(f"step {step}: no better validation NLL in {self.patience} evaluations; stopping")
                    break
        if pending is not None:
            self.check(pending, self.last_step)
        self.pending = pending
        self.bar.close()
        self.elapsed = time.perf_counter() - self.t_start

    def _step(self, step, pending, times, *, checkpoint=False):
        """One training step and what is due after it (a checkpoint also when asked);
        returns its metrics (checked one step late, so dispatch runs ahead)."""
        from tqdm.auto import tqdm

        cfg, total_steps, mesh = self.cfg, self.total_steps, self.mesh
        b = next(self.it)
        t0 = time.perf_counter()
        x = global_batch(mesh, b["x"], self.dtype)
        x = (x, global_batch(mesh, b["y"], self.dtype)) if self.conditional else x
        self.params, self.opt_state, metrics = self.step_fn(
            self.params, self.opt_state, x, global_batch(mesh, b["mask"]),
            jax.random.fold_in(self.k_train, step), jnp.asarray(step, jnp.int32),
        )
        self.losses.append(metrics["loss"])
        if cfg.log_timing:
            jax.block_until_ready(metrics)
            if step > self.start + 1:  # the first step includes compilation
                times.append(time.perf_counter() - t0)
        if pending is not None:
            self.check(pending, step - 1)
        self.bar.update(1)
        if step % cfg.log_interval == 0 or step == total_steps:
            self._log_step(step, b, metrics, times)
        results = {}
        if self.eval_every and step % self.eval_every == 0 and step != total_steps:
            results = self.run_eval(step)
            self._say(f"step {step}: " + "; ".join(f"{s} {_fmt(v)}" for s, v in results.items()))
        if self.sample_every and self.run_dir and step % self.sample_every == 0 and step != total_steps:
            self.write_samples(self.run_dir / f"samples_{step}.png", eqx.combine(self.params, self.static), step)
        due = self.save_every and step % self.save_every == 0 and step != total_steps
        if (due or checkpoint) and self.check(metrics, step) == 0:
            # never checkpoint a state reached through skipped (non-finite) updates
            self.save(step, results)
        return metrics

    def _stop(self, step, signum):
        """After Ctrl-C or SIGTERM: the checkpoint of `step` (saved by `_step` unless its state was
        not finite) is on disk before the run stops."""
        self.bar.close()
        if self.ckpt is None:
            raise RunStopped(signum, f"at step {step}; nothing saved (no checkpoint directory)")
        self.ckpt.wait()
        steps = self._settle()
        saved = f"checkpoint {step} saved" if step in steps else f"checkpoints {steps} on disk"
        by = "" if signum == signal.SIGINT else f"by {signal.Signals(signum).name} "
        raise RunStopped(signum, f"{by}at step {step}; {saved} in {self.ckpt.directory}: continue with --resume")

    def _log_step(self, step, b, metrics, times):
        """The training-loss line (metrics.jsonl, progress bar, wandb); its rate is since the last one."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        last_metrics = _scalars(metrics)
        self.check(last_metrics, step)
        now = time.perf_counter()
        rate = (step - self.step_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.step_last = now, step
        shown = {"loss": last_metrics["loss"]}
        if self.eight_bit and math.isfinite(last_metrics["loss"]):
            shown["bpd"] = float(bits_per_dim(jnp.asarray(-last_metrics["loss"]), self.num_dims))
        if times:
            last_metrics["sec_per_batch"] = float(np.mean(times))
            last_metrics["sec_per_batch_std"] = float(np.std(times))
            last_metrics["sec_per_example"] = float(np.mean(times)) / cfg.batch_size
            times.clear()
        self.bar.set_postfix(**{k: f"{v:.4g}" for k, v in shown.items()}, steps_s=f"{rate:.1f}")
        self.log.write(step=step, split="train_batch", epoch=int(b["epoch"]), steps_per_sec=rate, **last_metrics)
        self.wb.log({f"train/{k}": v for k, v in last_metrics.items()} | {"train/steps_per_sec": rate}, step)
        if cfg.log_timing and "sec_per_batch" in last_metrics:
            tqdm.write(f"step {step}: {last_metrics['sec_per_batch'] * 1e3:.1f} ± "
                       f"{last_metrics['sec_per_batch_std'] * 1e3:.1f} ms/batch, "
                       f"{last_metrics['sec_per_example'] * 1e6:.1f} µs/example")

    # ---------------------------------------------------------------- finishing

    def finish(self) -> dict:
        """Final evaluation and checkpoint (confirmed on disk), samples, summary."""
        last, run_dir = self.last_step, self.run_dir
        if self.last_eval is not None and self.last_eval[0] == last:  # stopped early right after evaluating
            final = self.last_eval[1]
        else:
            final = self.run_eval(last)
        self.history["final_eval"] = final
        self._say(f"step {last}: " + "; ".join(f"{s} {_fmt(r)}" for s, r in final.items()))
        if last > self.start and (self.pending is None or int(self.pending["nonfinite"]) == 0):
            self.save(last, final)
        if self.ckpt is not None:
            self.ckpt.wait()
            self.ckpt.close()  # idempotent: close() calls it again
        model_out = eqx.combine(self.params, self.static)
        samples_path = None if run_dir is None else self.write_samples(run_dir / "samples.png", model_out, last)
        self.log.write(step=last, split="summary", seconds=self.elapsed, best_validation_nll=self.best)
        self.log.close()
        self.wb.finish()
        out = {"model": model_out, "history": self.history, "run_dir": run_dir, "samples": samples_path,
               "checkpoints": None, "params": self.params}
        if self.best_params is not None:
            out["best_step"], best = self.best_params
            out["best_model"] = eqx.combine(best, self.static)
        if run_dir is None:
            return out
        out["checkpoints"] = directory = self.ckpt.directory
        self._say(f"zoo.train: {last - self.start} steps in {self.elapsed:.1f} s. Wrote {run_dir}/metrics.jsonl, "
                  f"{samples_path}, checkpoints in {directory}")
        condition = " --condition 0" if self.conditional else ""
        self._say(f"  sample more: python -m zoo.sample --checkpoint {run_dir}{condition} --num 64 "
                  f"--out {run_dir}/grid.png")
        return out

    def _settle(self) -> list[int]:
        """Wait for the last checkpoint; the steps on disk. A save that failed
        meanwhile is reported here, not raised over the error already on its way."""
        try:
            self.ckpt.close()
        except Exception as e:
            print(f"zoo.train: warning: {message(e)}", file=sys.stderr)
        return sorted(int(p.name) for p in self.ckpt.directory.iterdir() if p.name.isdigit() and p.is_dir())

    def explain(self, e: Exception) -> Failure | None:
        """The one place an error of a started run becomes its message: a
        failed write (a full disk, ...) says which checkpoints are intact and
        how to go on. None: `e` says all there is to say."""
        from zoo.checkpoint import CheckpointWriteError

        write_failed = isinstance(e, CheckpointWriteError) or (isinstance(e, OSError) and e.errno is not None)
        if self.ckpt is None or not write_failed:
            return None
        steps = self._settle()
        if not steps:
            return Failure(f"{message(e)}; no checkpoint of this run was written")
        return Failure(f"{message(e)}; checkpoints {steps} in {self.ckpt.directory} are intact: continue with --resume")

    def close(self):
        """On any exit: the last checkpoint finishes writing, files close, the lock is released (each once)."""
        if self.bar is not None:
            self.bar.close()
        if self.ckpt is not None:
            self._settle()
        if self.log is not None:
            self.log.close()
        if self.wb is not None:
            self.wb.finish()
        if self.lock is not None:
            self.lock.release()
