"""`python -m zoo.sample --checkpoint PATH --num 64 --out samples/grid.png`.

Rebuilds the model from the checkpoint's stored config (no architecture
flags) and writes a PNG: an image grid for image models (pixels clipped to
[0, 1] there only), a 2-D histogram for vector models; `--npy` also saves
the raw samples. The temperature defaults to the one the checkpoint was
trained and shown at (its `sample_temperature`), and samples that are not
finite or, for images, far outside [0, 1] are counted in a warning.
"""

import dataclasses
import inspect
import math
import sys
from pathlib import Path

from zoo._cli import Failure, UsageError, cli, parse_args


@dataclasses.dataclass
class SampleCommand:
    """Sample a trained zoo model from its checkpoint."""

    checkpoint: str
    """A run's checkpoints/ directory (its best-validation step), a step or pretrained directory, or a .tar.gz of one (path or URL)."""
    num: int = 64
    """Number of samples."""
    temperature: float | None = None
    """Scales the base (prior) noise; < 1 gives smoother, more typical samples (default: the checkpoint's
    sample_temperature, the one it was trained and shown at; 1.0 if it has none)."""
    seed: int = 0
    """Random seed."""
    out: str | None = None
    """PNG to write (default: samples/NAME.png, NAME the run or archive)."""
    npy: str | None = None
    """Also save the raw samples (unclipped) as a NumPy .npy file here."""
    step: int | None = None
    """Load this training step instead of the best/newest one."""
    sha256: str | None = None
    """Expected sha256 of an archive checkpoint."""
    exact_inverse: bool = False
    """For models with a fast approximate inverse (self-normalizing flows): sample with the exact inverse."""
    batch: int = 256
    """Samples drawn per compiled call (bounds memory)."""
    condition: tuple[float, ...] | None = None
    """Conditional models: the class to draw (--condition 7), or the condition vector's values (default: a row
    of samples per class)."""


def sample(model, key, *, num: int, temperature: float = 1.0, batch: int = 256, condition=None, **options):
    """`num` samples as one NumPy array, drawn `batch` at a time by one compiled call;
    `condition` (conditional models): one condition per sample (class labels, or
    (num, *condition_shape) floats), or one for all."""
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
    keys = jax.random.split(key, num)
    if condition is None:
        draw = jax.jit(jax.vmap(lambda k: model.sample(k, **options)))
        return np.concatenate([np.asarray(draw(keys[i : i + batch])) for i in range(0, num, batch)])
    condition = np.asarray(condition)
    if condition.ndim == 0 or condition.shape == tuple(getattr(model, "condition_shape", None) or ()):
        condition = np.broadcast_to(condition, (num, *condition.shape))
    draw = jax.jit(jax.vmap(lambda k, c: model.sample(k, condition=c, **options)))
    return np.concatenate([np.asarray(draw(keys[i : i + batch], condition[i : i + batch]))
                           for i in range(0, num, batch)])


# Image samples live in [0, 1]; a pixel a whole range beyond that is no plausible image (an overflow).
IMAGE_RANGE = (-1.0, 2.0)


def checkpoint_temperature(meta: dict) -> float:
    """The temperature a checkpoint's samples are meant to be drawn at: its `sample_temperature`
    (model cards, `save_pretrained(..., extra=...)`), else its training run's --sample-temperature, else 1."""
    t = meta.get("sample_temperature", (meta.get("train") or {}).get("sample_temperature"))
    return 1.0 if t is None else float(t)


def sample_problems(xs, *, images: bool) -> str | None:
    """How many samples are not finite and, for images, how many have pixels outside IMAGE_RANGE
    (the trainer and zoo.sample warn with this); None when all are fine."""
    import numpy as np

    flat = np.asarray(xs).reshape(len(xs), -1)
    finite = np.isfinite(flat).all(axis=1)
    problems = []
    if not finite.all():
        problems.append(f"{int((~finite).sum())} of {len(flat)} samples are not finite (drawn grey)")
    if images:
        lo, hi = IMAGE_RANGE
        wild = finite & ((flat < lo) | (flat > hi)).any(axis=1)
        if wild.any():
            peak = float(np.abs(flat[wild]).max())
            problems.append(f"{int(wild.sum())} of {len(flat)} have pixels outside [{lo:g}, {hi:g}] "
                            f"(up to {peak:.3g}; the PNG clips pixels to [0, 1])")
    return "; ".join(problems) or None


def conditions(model, values, num: int):
    """The condition of each sample and the grid layout for `--condition values`:
    None for an unconditional model; one class label, or the condition vector,
    for all `num` samples; by default a row of num // K samples per class."""
    import numpy as np

    shape = getattr(model, "condition_shape", None)
    if shape is None:
        if values is not None:
            raise UsageError("--condition: this model is unconditional; leave --condition out")
        return None, {}
    size = math.prod(shape)
    if values is None:
        if len(shape) != 1:
            raise UsageError(f"--condition: the model's condition has shape {tuple(shape)}; pass its {size} values")
        per = max(1, num // shape[0])
        return np.repeat(np.arange(shape[0]), per), {"ncol": per}
    if len(values) == 1 and size > 1:  # a class label
        label = values[0]
        if label != int(label) or not 0 <= label < shape[0]:
            raise UsageError(f"--condition {label:g}: a class is an integer in [0, {shape[0]}); pass one of them")
        return np.full(num, int(label), np.int32), {}
    if len(values) != size:
        raise UsageError(f"--condition takes one class in [0, {shape[0]}) or the condition's {size} values; "
                         f"got {len(values)}")
    return np.broadcast_to(np.asarray(values, np.float32).reshape(shape), (num, *shape)), {}


def _describe(values, grid) -> str:
    if values is None:
        return f"a row of {grid['ncol']} per class"
    return f"class {int(values[0])}" if len(values) == 1 else f"condition {list(values)}"


def default_out(checkpoint: str) -> Path:
    """samples/NAME.png, NAME the run (of OUT/NAME, OUT/NAME/checkpoints[/STEP]) or the archive."""
    parts = Path(checkpoint.rstrip("/").split("?")[0]).parts or ("samples",)
    if len(parts) >= 2 and parts[-2] == "checkpoints":  # one step of a run
        parts = parts[:-1]
    if parts[-1] == "checkpoints" and len(parts) >= 2:
        parts = parts[:-1]
    name = parts[-1]
    for suffix in (".tar.gz", ".tgz", ".tar"):
        name = name.removesuffix(suffix)
    return Path("samples") / f"{name}.png"


def _validate(cmd: SampleCommand):
    if cmd.num < 1 or cmd.batch < 1:
        raise UsageError(f"--num and --batch must be at least 1 (got {cmd.num} and {cmd.batch}); pass positive counts")
    if cmd.temperature is not None and not (math.isfinite(cmd.temperature) and cmd.temperature > 0):
        raise UsageError(f"--temperature must be a positive number, got {cmd.temperature}; 1.0 samples the model itself")


@cli("zoo.sample")
def main(argv=None):
    cmd = parse_args(SampleCommand, args=argv, prog="python -m zoo.sample")
    _validate(cmd)
    import jax
    import numpy as np

    from zoo.checkpoint import load_with_meta
    from zoo.images import save_grid, save_points

    model, meta = load_with_meta(cmd.checkpoint, sha256=cmd.sha256, step=cmd.step)
    condition, grid = conditions(model, cmd.condition, cmd.num)
    trained_t = checkpoint_temperature(meta)
    temperature = trained_t if cmd.temperature is None else cmd.temperature
    # models with a fast approximate inverse take sample(..., exact=True) for the true one
    options = {"exact": True} if cmd.exact_inverse else {}
    num = cmd.num if condition is None else len(condition)
    xs = sample(model, jax.random.key(cmd.seed), num=num, temperature=temperature, batch=cmd.batch,
                condition=condition, **options)
    if not np.isfinite(xs).reshape(len(xs), -1).all(axis=1).any():
        raise Failure(f"all {len(xs)} samples are NaN/inf (nothing written); try a lower --temperature "
                      "or a better-trained checkpoint")
    images = len(meta["input_shape"]) == 3
    out = Path(cmd.out) if cmd.out else default_out(cmd.checkpoint)
    save_grid(xs, out, **grid) if images else save_points(xs.reshape(len(xs), -1), out)
    if cmd.npy:
        np.save(cmd.npy, xs)
    source = "the checkpoint's" if cmd.temperature is None else f"the checkpoint's is {trained_t:g}"
    what = "" if condition is None else f" ({_describe(cmd.condition, grid)})"
    print(f"zoo.sample: {num} samples{what} of {meta['model']} (trained on {meta.get('data', '?')}, step "
          f"{meta.get('step', '?')}) at temperature {temperature:g} ({source}) -> {out}"
          + (f", {cmd.npy}" if cmd.npy else ""), flush=True)
    problems = sample_problems(xs, images=images)
    if problems:
        print(f"zoo.sample: warning: {problems}; try a lower --temperature or a longer-trained model",
              file=sys.stderr)


if __name__ == "__main__":
    main()
