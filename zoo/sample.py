"""`python -m zoo.sample --checkpoint PATH --num 64 --out grid.png`.

Rebuilds the model from the checkpoint's stored config (no architecture
flags) and writes a PNG: an image grid for image models, a 2-D histogram for
vector models; `--npy` also saves the raw samples.
"""

import dataclasses
import inspect
import math
from pathlib import Path

import tyro

from zoo._cli import Failure, UsageError, cli


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
        raise UsageError(f"{type(model).__name__}.sample takes no option(s) {unknown}; it takes {list(params)[1:]}")
    if "temperature" in params:
        options["temperature"] = temperature
    elif temperature != 1.0:
        raise UsageError(f"{type(model).__name__}.sample has no temperature; leave --temperature at 1.0")
    draw = jax.jit(jax.vmap(lambda k: model.sample(k, **options)))
    keys = jax.random.split(key, num)
    return np.concatenate([np.asarray(draw(keys[i : i + batch])) for i in range(0, num, batch)])


def _validate(cmd: SampleCommand):
    if cmd.num < 1 or cmd.batch < 1:
        raise UsageError(f"--num and --batch must be at least 1 (got {cmd.num} and {cmd.batch}); pass positive counts")
    if not (math.isfinite(cmd.temperature) and cmd.temperature > 0):
        raise UsageError(f"--temperature must be a positive number, got {cmd.temperature}; 1.0 samples the model itself")


@cli("zoo.sample")
def main(argv=None):
    cmd = tyro.cli(SampleCommand, args=argv, prog="python -m zoo.sample")
    _validate(cmd)
    import jax
    import numpy as np

    from zoo.checkpoint import load_with_meta
    from zoo.images import save_grid, save_points

    model, meta = load_with_meta(cmd.checkpoint, sha256=cmd.sha256, step=cmd.step)
    # models with a fast approximate inverse take sample(..., exact=True) for the true one
    options = {"exact": True} if cmd.exact_inverse else {}
    xs = sample(model, jax.random.key(cmd.seed), num=cmd.num, temperature=cmd.temperature, batch=cmd.batch, **options)
    if not np.isfinite(xs).reshape(len(xs), -1).all(axis=1).any():
        raise Failure(f"all {len(xs)} samples are NaN/inf (nothing written); try a lower --temperature "
                      "or a better-trained checkpoint")
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
