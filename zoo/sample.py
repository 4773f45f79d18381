"""`python -m zoo.sample --checkpoint PATH --num 64 --out grid.png`.

Rebuilds the model from the checkpoint's stored config (no architecture
flags) and writes a PNG: an image grid for image models, a 2-D histogram for
vector models; `--npy` also saves the raw samples.
"""

import dataclasses
import inspect
import sys
from pathlib import Path

import tyro


@dataclasses.dataclass
class SampleCommand:
    """Sample a trained zoo model from its checkpoint."""

    checkpoint: str
    """A run's checkpoints/ directory (its best-validation step), a step or pretrained directory, or a .tar.gz of one (path or URL)."""
    num: int = 64
    """Number of samples."""
    temperature: float = 1.0
    """Scales the base (prior) noise; < 1 gives smoother, more typical samples."""
    seed: int = 0
    """Random seed."""
    out: str = "samples.png"
    """PNG to write."""
    npy: str | None = None
    """Also save the raw samples as a NumPy .npy file here."""
    step: int | None = None
    """Load this training step instead of the best/newest one."""
    sha256: str | None = None
    """Expected sha256 of an archive checkpoint."""
    exact_inverse: bool = False
    """For models with a fast approximate inverse (self-normalizing flows): sample with the exact inverse."""
    batch: int = 256
    """Samples drawn per compiled call (bounds memory)."""


def sample(model, key, *, num: int, temperature: float = 1.0, batch: int = 256, **options):
    import jax
    import numpy as np

    params = inspect.signature(model.sample).parameters
    unknown = [k for k in options if k not in params]
    if unknown:
        raise ValueError(f"{type(model).__name__}.sample takes no option(s) {unknown}")
    if "temperature" in params:
        options["temperature"] = temperature
    elif temperature != 1.0:
        raise ValueError(f"{type(model).__name__}.sample has no temperature")
    draw = jax.jit(jax.vmap(lambda k: model.sample(k, **options)))
    keys = jax.random.split(key, num)
    return np.concatenate([np.asarray(draw(keys[i : i + batch])) for i in range(0, num, batch)])


def main(argv=None):
    cmd = tyro.cli(SampleCommand, args=argv, prog="python -m zoo.sample")
    import jax
    import numpy as np

    from zoo.checkpoint import CheckpointError, load_with_meta
    from zoo.images import save_grid, save_points

    try:
        model, meta = load_with_meta(cmd.checkpoint, sha256=cmd.sha256, step=cmd.step)
    except CheckpointError as e:
        print(f"zoo.sample: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    # models with a fast approximate inverse take sample(..., exact=True) for the true one
    options = {"exact": True} if cmd.exact_inverse else {}
    try:
        xs = sample(model, jax.random.key(cmd.seed), num=cmd.num, temperature=cmd.temperature, batch=cmd.batch, **options)
    except ValueError as e:
        print(f"zoo.sample: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    out = Path(cmd.out)
    if len(meta["input_shape"]) == 3:
        save_grid(xs, out)
    else:
        save_points(xs.reshape(len(xs), -1), out)
    if cmd.npy:
        np.save(cmd.npy, xs)
    print(f"zoo.sample: {cmd.num} samples of {meta['model']} (trained on {meta.get('data', '?')}, step "
          f"{meta.get('step', '?')}) at temperature {cmd.temperature} -> {out}" + (f", {cmd.npy}" if cmd.npy else ""))


if __name__ == "__main__":
    main()
