"""Training settings: typed fields with the meaning of the SNF reference's options."""

import dataclasses
from typing import Literal

__all__ = ["TrainConfig", "WandbConfig"]


@dataclasses.dataclass
class WandbConfig:
    """Weights & Biases logging: off unless --wandb.project is given."""

    project: str | None = None
    """wandb project; setting it turns wandb logging on."""
    entity: str | None = None
    """wandb entity (user or team)."""
    mode: Literal["online", "offline", "disabled"] = "online"
    """online, offline (sync later with `wandb sync`), or disabled."""
    tags: tuple[str, ...] = ()
    """Run tags."""


@dataclasses.dataclass
class TrainConfig:
    """Training settings shared by every model (model and data are chosen with --model/--data)."""

    steps: int = 2000
    """Training steps (optimizer updates)."""
    epochs: float | None = None
    """If set, train this many passes over the training split instead of --steps."""
    batch_size: int = 64
    """Global batch size, split over all devices and processes."""
    lr: float = 1e-3
    """Peak learning rate."""
    optimizer: Literal["adam", "adamax", "rmsprop"] = "adam"
    """Optimizer (optax)."""
    momentum: float = 0.0
    """Momentum for rmsprop."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up from 0 to --lr over this many steps."""
    warmup_epochs: float | None = None
    """Warm-up length in epochs (overrides --warmup-steps)."""
    grad_clip_norm: float | None = None
    """Clip gradients to this global norm."""
    eval_every: int = 500
    """Steps between evaluations of the exact validation NLL (0: only at the end)."""
    eval_epochs: float | None = None
    """Evaluation interval in epochs (overrides --eval-every)."""
    eval_train: bool = False
    """Also evaluate the NLL on the training split."""
    eval_batch_size: int = 256
    """Batch size for evaluation."""
    max_eval_ex: int | None = None
    """Evaluate on at most this many examples per split (for expensive models)."""
    log_interval: int = 50
    """Steps between training-loss log lines (metrics.jsonl and progress bar)."""
    num_samples: int = 64
    """Samples drawn for samples.png at the end of training."""
    sample_every: int = 0
    """Steps between intermediate sample grids samples_STEP.png (0: only samples.png at the end)."""
    sample_epochs: float | None = None
    """The same interval in epochs (overrides --sample-every)."""
    sample_temperature: float = 1.0
    """Temperature of those samples (scales the base noise; Glow's samples are usually shown at 0.7)."""
    seed: int = 0
    """Seeds model initialisation, data order, dequantization noise."""
    conditional: bool = False
    """Model p(x | y) of the data given its class label y (fed to the model as `condition`); the model's
    --model-cfg.condition-shape defaults to (number of classes,). Sample a class with zoo.sample --condition."""
    data_dir: str | None = None
    """Dataset folder (default: $ZOO_DATA_DIR, then ~/.cache/zoo/data)."""
    out_dir: str = "runs"
    """Runs are written to OUT_DIR/NAME."""
    name: str | None = None
    """Run name (default: MODEL-DATA)."""
    flip: bool = False
    """Random horizontal flips of training images (CIFAR-10 / ImageNet32 augmentation)."""
    max_nonfinite: int = 20
    """Stop after this many consecutive steps whose gradients are NaN/inf (those updates are skipped)."""
    progress: bool = True
    """Show a progress bar."""
    log_timing: bool = False
    """Time every step (synchronising the device) and report mean/std seconds per batch and per example."""
    checkpoint_every: int = 0
    """Steps between checkpoints (0: at every evaluation and at the end)."""
    keep_checkpoints: int = 3
    """Keep the latest N checkpoints (plus the best-validation one)."""
    distributed: bool = False
    """Multi-host: call jax.distributed.initialize() first (auto-detected on SLURM and TPU pods, else give the
    three flags below); each process feeds its own shard of the data."""
    coordinator_address: str | None = None
    """With --distributed: host:port of process 0."""
    num_processes: int | None = None
    """With --distributed: number of processes."""
    process_id: int | None = None
    """With --distributed: this process's index."""
    resume: bool = False
    """Continue the run in OUT_DIR/NAME from its newest good checkpoint."""
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)
