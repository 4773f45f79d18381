"""`zoo.fit`: train a model on your own arrays from Python, with the trainer's own loop.

    model = zoo.create_model("nsf", key=jax.random.key(0), input_shape=(2,))
    best, history = zoo.fit(model, x, key=0, epochs=20, patience=3)

Everything `python -m zoo.train` does per step is done here by the same code
(`zoo.train.loop._Run`): the jitted step sharded over every local device,
the non-finite guard, data-dependent initialisation, the `after_update` and
`after_step` hooks, the exact evaluation, and with `checkpoint_dir` the same
Orbax checkpoints and exact resume.
"""

import dataclasses
import math

import numpy as np

__all__ = ["fit"]


def _seed_of(key) -> int:
    """An int seed (the CLI's --seed) as itself; a PRNG key as a seed drawn from it."""
    if isinstance(key, (int, np.integer)):
        return int(key)
    import jax

    return int(jax.random.randint(key, (), 0, 2**31 - 1))


def _split_validation(x, y, val_fraction, seed):
    """A random `val_fraction` of the rows (at least one) held out for validation."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"zoo.fit: val_fraction must be in (0, 1), got {val_fraction}; or pass x_val")
    n = len(x)
    n_val = max(1, int(round(val_fraction * n)))
    if n_val >= n:
        raise ValueError(f"zoo.fit: {n} examples leave none to train on after a validation fraction of {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:n_val], order[n_val:]
    pick = (lambda a, rows: None if a is None else a[rows])  # noqa: E731
    return x[train], pick(y, train), x[val], pick(y, val)


def _as_examples(name, a):
    from zoo.data import Pipeline

    if a is None or isinstance(a, Pipeline):
        return a
    a = np.asarray(a)
    if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"zoo.fit: {name} must hold uint8 images or float vectors, got {a.dtype}; "
                         "cast it (8-bit images stay uint8: they are dequantized like the datasets)")
    return a


def fit(model, x, *, key, x_val=None, val_fraction: float = 0.1, condition=None, condition_val=None,
        steps: int | None = None, epochs: float | None = None, batch_size: int = 64, optimizer=None,
        lr: float = 1e-3, patience: int | None = None, checkpoint_dir=None, data_init: bool = True,
        progress: bool = True):
    """Train `model` by maximum likelihood (its `loss`) on the examples `x`;
    returns `(best_model, history)`.

    Args:
      model: a zoo model (`zoo.create_model(...)`, a config's `build`, or any
        module with the model contract: `loss(x, *, key)` and `log_prob`).
      x: training examples (N, *shape): float vectors, or uint8 8-bit images
        (uniformly dequantized to [0, 1) every step, as the datasets are); or a
        `zoo.data.pipeline(...)` of them.
      key: an int (exactly the CLI's --seed: the same data order, noise and
        step keys, so `zoo.fit` on a dataset's arrays reproduces
        `python -m zoo.train` with that seed) or a PRNG key.
      x_val: validation examples; default: a random `val_fraction` of `x`.
      condition, condition_val: for a conditional model (`condition_shape`),
        the condition of every example of `x` / `x_val` (class labels or
        (N, *condition_shape) floats).
      steps, epochs: how long (one of them; default 10 epochs). The
        validation NLL is measured after every epoch (and before the first).
      batch_size: global, split over every local device.
      optimizer: an optax transformation (default: Adam at `lr`).
      patience: stop after this many epochs without a better validation NLL.
      checkpoint_dir: write the trainer's run directory there (config.json,
        metrics.jsonl, Orbax checkpoints every epoch); if it already holds
        checkpoints of this run, training resumes exactly where they stop.
      data_init: run the data-dependent initialisation (ActNorm) on the first
        batch; pass False to continue training an initialised model.
      progress: show a progress bar.

    Returns:
      The model at its best validation NLL, and `history`: a dict of lists
      `epoch`, `step`, `train_nll` (mean training loss over the epoch, in the
      validation NLL's units; None before the first epoch) and
      `validation_nll` (nats; for 8-bit data -log P of the discrete pixels),
      plus `best_step` and `stopped_early`.
    """
    from pathlib import Path

    from zoo.train.config import TrainConfig
    from zoo.train.loop import Arrays, _Run

    if steps is not None and epochs is not None:
        raise ValueError("zoo.fit: pass steps or epochs, not both")
    if patience is not None and patience < 1:
        raise ValueError(f"zoo.fit: patience must be at least 1, got {patience}")
    seed = _seed_of(key)
    x, x_val = _as_examples("x", x), _as_examples("x_val", x_val)
    condition = None if condition is None else np.asarray(condition)
    condition_val = None if condition_val is None else np.asarray(condition_val)
    if x_val is None:
        if not isinstance(x, np.ndarray):
            raise ValueError("zoo.fit: with a pipeline as x, pass x_val (a pipeline or array) too")
        x, condition, x_val, condition_val = _split_validation(x, condition, val_fraction, seed)
    if (condition is None) != (condition_val is None):
        raise ValueError("zoo.fit: pass conditions for both the training and the validation examples, or neither")
    if steps is None and epochs is None:
        epochs = 10
    cfg = TrainConfig(steps=steps or 0, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, eval_every=0,
                      eval_epochs=1.0, progress=progress, conditional=condition is not None)
    if checkpoint_dir is not None:
        path = Path(checkpoint_dir).expanduser().absolute()
        resume = (path / "checkpoints").is_dir() and any(p.name.isdigit() for p in (path / "checkpoints").iterdir())
        cfg = dataclasses.replace(cfg, out_dir=str(path.parent), name=path.name, resume=resume)
    run = _Run(type(model).__name__, None, Arrays(x, x_val, condition, condition_val), cfg, net=model,
               optimizer=optimizer, run_dir=checkpoint_dir is not None, patience=patience, keep_best=True,
               quiet=True, init=data_init)
    try:
        run.restore_or_init()
        run.loop()
        out = run.finish()
    finally:
        run.close()
    return out.get("best_model", out["model"]), _history(run, out)


def _history(run, out) -> dict:
    evals = run.history["evaluations"]
    return {
        "epoch": [e["epoch"] for e in evals],
        "step": [e["step"] for e in evals],
        "train_nll": [e.get("train_nll") for e in evals],
        "validation_nll": [e.get("validation_nll", math.nan) for e in evals],
        "best_step": out.get("best_step", run.last_step),
        "stopped_early": run.stopped_early,
    }
