"""grain input pipelines: sharded per JAX process, shuffled and seeded,
epoch-aware, batched, dequantized, with exactly restorable iterator state.

    pipe = zoo.data.pipeline("mnist_bundled", split="train", batch_size=64, seed=0)
    it = iter(pipe)                      # a grain DatasetIterator
    batch = next(it)                     # {"x", "mask", "index", "epoch", "step"}
    state = it.get_state()               # small dict; save it with the checkpoint
    it = pipe.iterator(state)            # resumes with exactly the same batches

Built as a grain `MapDataset` over example indices:

    range(N)[process::processes]   disjoint shards that cover the split
      .shuffle(seed)               reshuffled every epoch (train)
      -> exactly steps_per_epoch * batch indices per epoch (cut, or padded with -1)
      .batch(batch)                batches never straddle two epochs
      .repeat(num_epochs)
      .map_with_index(make_batch)  gather + flip/dequantize/binarize, vectorised per batch

Randomness inside a batch comes from a NumPy generator seeded with (seed,
process, step), so batch `step` is a pure function of its position: restoring
the iterator's position restores the noise too, with or without workers.
"""

import dataclasses
import math

import grain
import numpy as np

from zoo.data.preprocess import Dequantizer, UniformDequantizer, binarize_dynamic, random_flip, scale

__all__ = ["pipeline", "Pipeline"]

_MODES = ("auto", "uniform", "scale", "identity")


class _FitLength(grain.MapDataset):
    """Exactly `length` elements per epoch of the parent: its first `length`
    (the rest of a shuffled epoch is dropped), or all of them followed by -1
    (padding, masked out of the loss). Epoch e of this dataset reads epoch e
    of the parent, so an upstream shuffle is reseeded every epoch."""

    def __init__(self, parent: grain.MapDataset, length: int):
        super().__init__(parent)
        self._length = length
        self._parent_length = len(parent)

    def __len__(self):
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, i = divmod(index, self._length)
        if i >= self._parent_length:
            return -1
        return self._parent[epoch * self._parent_length + i]

    def __str__(self):
        return f"_FitLength({self._length})"


class _Examples:
    """The raw example array, picklable cheaply for grain worker processes:
    a memory-mapped .npy file travels as its path, not its 4 GB of data."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __getstate__(self):
        a = self.array
        if isinstance(a, np.memmap) and a.filename:
            try:
                whole = np.load(a.filename, mmap_mode="r")
                if whole.shape == a.shape and whole.dtype == a.dtype:
                    return {"path": a.filename}
            except (OSError, ValueError):
                pass
        return {"array": np.asarray(a)}

    def __setstate__(self, state):
        self.array = np.load(state["path"], mmap_mode="r") if "path" in state else state["array"]


class _MakeBatch:
    """map_with_index transform: (step, example indices) -> batch dict."""

    def __init__(self, examples, *, seed, process_index, steps_per_epoch, dequantize, binarize, flip, labels=None):
        self.examples = _Examples(examples)
        self.labels = labels
        self.seed = seed
        self.process_index = process_index
        self.steps_per_epoch = steps_per_epoch
        self.dequantize = dequantize
        self.binarize = binarize
        self.flip = flip

    def __call__(self, step, idx):
        idx = np.asarray(idx, dtype=np.int64)
        mask = idx >= 0
        raw = np.take(self.examples.array, np.where(mask, idx, 0), axis=0)
        rng = np.random.default_rng([self.seed, self.process_index, step])
        if self.flip:
            raw = random_flip(raw, rng)
        if self.binarize == "dynamic":
            x = binarize_dynamic(raw, rng)
        elif isinstance(self.dequantize, Dequantizer):
            x = self.dequantize(raw, rng)
        elif self.dequantize == "scale":
            x = scale(raw)
        else:  # "identity"
            x = raw.astype(np.float32)
        batch = {
            "x": x,
            "mask": mask,
            "index": idx,
            "epoch": np.int64(step // self.steps_per_epoch),
            "step": np.int64(step),
        }
        if self.labels is not None:  # padding rows get example 0's label (masked out anyway)
            batch["y"] = np.take(self.labels, np.where(mask, idx, 0), axis=0)
        return batch


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """Batches of one split for this process. Iterate it for a grain
    `DatasetIterator` (`get_state()` / `set_state()`), or call
    `iterator(state)` to resume.

    Every batch is a dict: `x` float32 (batch_size, *shape); `mask` bool
    (batch_size,), False on padding (only when `drop_remainder=False`);
    `index` int64 row of each example in the split (-1 for padding);
    `epoch` and `step` (global step, counted from 0); with `labels`, `y`
    (batch_size, ...) the label or condition of each example.

    With `num_workers > 0` the batches live in shared memory: call the
    iterator's `close()` and drop it and its batches before the interpreter
    exits, or grain prints teardown warnings."""

    dataset: grain.MapDataset
    batch_size: int  # per process
    global_batch_size: int
    steps_per_epoch: int
    num_epochs: int | None  # None: repeats forever
    num_examples: int  # in the whole split
    shard_size: int  # examples in this process's shard
    shape: tuple[int, ...]
    raw_dtype: str  # of the examples before dequantization ("uint8" for 8-bit images)
    process_index: int
    process_count: int
    num_workers: int
    prefetch: int

    def __len__(self) -> int:
        if self.num_epochs is None:
            raise TypeError("an endless pipeline (num_epochs=None) has no length")
        return self.steps_per_epoch * self.num_epochs

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def iterator(self, state: dict | None = None) -> grain.DatasetIterator:
        """A fresh iterator, positioned by `state` (from `get_state()`) if given."""
        read = grain.ReadOptions(num_threads=1 if self.prefetch else 0, prefetch_buffer_size=self.prefetch)
        ds = self.dataset.to_iter_dataset(read)
        if self.num_workers > 0:
            _absl_flags_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers))
        it = iter(ds)
        if state is not None:
            it.set_state(state)
        return it

    def __iter__(self):
        return self.iterator()


def _absl_flags_parsed():
    # grain's worker processes read absl flags, which a plain script never parses.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def pipeline(
    data,
    *,
    split: str = "train",
    batch_size: int,
    seed: int = 0,
    data_dir=None,
    shuffle: bool | None = None,
    drop_remainder: bool | None = None,
    num_epochs: int | None | str = "auto",
    dequantize: str | Dequantizer = "auto",
    binarize: str | None = "auto",
    flip: bool = False,
    labels=None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int = 0,
    prefetch: int = 2,
) -> Pipeline:
    """Build the grain pipeline for a registered dataset name or a raw array.

    Args:
      data: a `zoo.datasets` name (read with `load_dataset(name, split=...,
        data_dir=...)`) or an array (N, *shape): uint8 images or float vectors.
      split: which split; also picks the defaults below (train shuffles).
      batch_size: the GLOBAL batch size; each of `process_count` processes
        gets `batch_size // process_count` examples per step.
      seed: seeds the shuffle and all per-batch noise (0 <= seed < 2**32).
      shuffle: reshuffle every epoch (default: split == "train").
      drop_remainder: True (default when shuffling) gives full batches only,
        `steps_per_epoch = (N // processes) // per-process batch`, the unused
        examples changing every epoch; False covers every example exactly
        once per epoch and pads the last batch (`mask` False), with the same
        number of steps on every process.
      num_epochs: None repeats forever (default when shuffling), else that
        many epochs (default 1 otherwise).
      dequantize: "uniform" (x = (k + u) / 256 in [0, 1), the default for
        8-bit images), "scale" (k / 256, for models that dequantize
        themselves), "identity" (cast to float32: the default for binary and
        float data), or a `Dequantizer`.
      binarize: "dynamic" draws Bernoulli(k / 255) pixels anew for every
        batch; None leaves pixels alone; "auto" takes the dataset's default
        (`binarized_mnist_dynamic` binarizes, the rest do not).
      flip: mirror images left-right with probability 1/2 (augmentation;
        CIFAR-10 / ImageNet32 training).
      labels: add each example's `y` to its batch: True takes a named
        dataset's class labels (`load_labels`); an array (N, ...) gives one
        label or condition per example of an array `data`.
      process_index, process_count: this process's shard (default
        `jax.process_index()` / `jax.process_count()`).
      num_workers: grain worker processes (0: none, the default; they pay
        off only with spare cores and heavy per-batch work).
      prefetch: batches a background thread prepares ahead (0: none).
    """
    from zoo.registry import get_dataset

    labels = None if labels is False else labels
    if isinstance(data, str):
        from zoo.data.base import load_dataset

        source = get_dataset(data)
        examples = load_dataset(data, split=split, data_dir=data_dir)
        binary, default_binarize, label = source.binary, source.binarize, repr(data)
        if labels is True:
            from zoo.data.base import load_labels

            labels = load_labels(data, split=split, data_dir=data_dir)
    else:
        examples = data if isinstance(data, np.ndarray) else np.asarray(data)
        binary, default_binarize, label = False, None, "array"
    if examples.ndim < 2:
        raise ValueError(f"pipeline: {label} must be (N, *shape), got shape {examples.shape}")
    n, shape = examples.shape[0], tuple(examples.shape[1:])
    if labels is True:
        raise ValueError("pipeline: labels=True needs a dataset name; pass the labels array with an array `data`")
    if labels is not None:
        labels = np.asarray(labels)
        labels = labels.astype(np.int32) if labels.dtype.kind in "iub" else labels  # class indices, as jax's default int
        if labels.ndim < 1 or len(labels) != n:
            raise ValueError(f"pipeline: labels must have one row per example ({n}), got shape {labels.shape}")
    integer = examples.dtype == np.uint8

    if not 0 <= seed < 2**32:
        raise ValueError(f"pipeline: seed must be in [0, 2**32), got {seed}")
    binarize = default_binarize if binarize == "auto" else binarize
    if binarize not in (None, "dynamic"):
        raise ValueError(f"pipeline: binarize must be None, 'dynamic' or 'auto', got {binarize!r}")
    if binarize and (not integer or binary):
        raise ValueError(f"pipeline: binarize='dynamic' needs 8-bit uint8 images; {label} is "
                         f"{'already binary' if binary else examples.dtype}")
    if not isinstance(dequantize, Dequantizer) and dequantize not in _MODES:
        raise ValueError(f"pipeline: dequantize must be one of {_MODES} or a Dequantizer, got {dequantize!r}")
    if dequantize == "auto":
        dequantize = "uniform" if integer and not binary else "identity"
    if dequantize == "uniform":
        dequantize = UniformDequantizer()
    if (isinstance(dequantize, Dequantizer) or dequantize == "scale") and not integer and not binarize:
        raise ValueError(f"pipeline: dequantizing needs uint8 data; {label} is {examples.dtype}")
    if flip and examples.ndim != 4:
        raise ValueError(f"pipeline: flip needs images (N, C, H, W); {label} has shape {examples.shape}")

    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"pipeline: process_index {process_index} not in [0, {process_count})")
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(f"pipeline: batch_size {batch_size} must be a positive multiple of {process_count} processes")
    local = batch_size // process_count

    shuffle = (split == "train") if shuffle is None else shuffle
    drop_remainder = shuffle if drop_remainder is None else drop_remainder
    if num_epochs == "auto":
        num_epochs = None if shuffle else 1
    if num_epochs is not None and num_epochs <= 0:
        raise ValueError(f"pipeline: num_epochs must be positive or None, got {num_epochs}")
    if drop_remainder:
        steps = (n // process_count) // local
        if steps == 0:
            raise ValueError(
                f"pipeline: {label} ({n} examples over {process_count} processes) cannot fill one batch of "
                f"{local} per process; lower batch_size or pass drop_remainder=False"
            )
    else:
        steps = max(1, math.ceil(math.ceil(n / process_count) / local))

    ds = grain.MapDataset.range(n)[process_index::process_count]
    shard_size = len(ds)
    if shuffle:
        # Hash the seed: grain reseeds epoch e with seed + e, so nearby user
        # seeds would otherwise replay each other's epochs.
        ds = ds.shuffle(seed=int(np.random.SeedSequence(seed).generate_state(1)[0]))
    ds = _FitLength(ds, steps * local).batch(local, batch_fn=np.asarray)
    ds = ds.repeat(num_epochs) if num_epochs != 1 else ds
    ds = ds.map_with_index(
        _MakeBatch(
            examples,
            seed=seed,
            process_index=process_index,
            steps_per_epoch=steps,
            dequantize=dequantize,
            binarize=binarize,
            flip=flip,
            labels=labels,
        )
    )
    return Pipeline(
        dataset=ds,
        batch_size=local,
        global_batch_size=batch_size,
        steps_per_epoch=steps,
        num_epochs=num_epochs,
        num_examples=n,
        shard_size=shard_size,
        shape=shape,
        raw_dtype=examples.dtype.name,
        process_index=process_index,
        process_count=process_count,
        num_workers=num_workers,
        prefetch=prefetch,
    )
