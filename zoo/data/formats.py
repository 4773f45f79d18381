"""Readers for the real on-disk formats, with NumPy, Pillow and the stdlib only.

Every reader validates what it reads and raises `FormatError` (a
`ValueError`) with the reason when a file is truncated or not in the
format; the dataset sources turn that into a `CorruptDatasetError` that
names the file and the download command.
"""

import gzip
import io
import math
import pickle
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "FormatError",
    "READ_ERRORS",
    "read_idx",
    "read_amat",
    "read_cifar_batch",
    "png_members",
    "decode_png",
    "read_png_members",
    "read_npz_images",
    "load_npy",
    "carve_validation",
]


class FormatError(ValueError):
    """A file is truncated or not in the expected format."""


# What reading a damaged file raises besides FormatError (gzip, zlib, pickle,
# tar, zip, Pillow and NumPy all have their own); sources wrap these.
READ_ERRORS: tuple[type[BaseException], ...] = (
    FormatError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    pickle.UnpicklingError,
    tarfile.TarError,
    zipfile.BadZipFile,
    OSError,
    ValueError,
    KeyError,
    struct.error,
)


def _read_bytes(path: Path) -> bytearray:
    """The file's bytes, gunzipped if its name ends in .gz (bytearray, so
    arrays built on it are writable)."""
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return bytearray(f.read())
    return bytearray(path.read_bytes())


# --------------------------------------------------------------------- IDX


def read_idx(path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format), plain or gzipped: a big-endian
    header (two zero bytes, type code 0x08 = ubyte, number of dimensions,
    then one uint32 per dimension; magic 2051 for images, 2049 for labels)
    followed by the uint8 values in row-major order."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise FormatError(f"{len(raw)} bytes is too short for an IDX header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        magic = int.from_bytes(raw[:4], "big")
        raise FormatError(f"not an unsigned-byte IDX file (magic number {magic}, expected 2051 or 2049)")
    ndim = raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise FormatError(f"truncated IDX header ({len(raw)} bytes, need {start})")
    dims = struct.unpack(f">{ndim}I", bytes(raw[4:start]))
    count = math.prod(dims)
    if len(raw) != start + count:
        what = "truncated" if len(raw) < start + count else "has trailing bytes"
        raise FormatError(
            f"{what}: header says {'x'.join(map(str, dims))} values ({start + count} bytes), file has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=count, offset=start).reshape(dims)


# -------------------------------------------------------------------- .amat


def read_amat(path, *, width: int = 784) -> np.ndarray:
    """Larochelle's binarized-MNIST `.amat`: one example per line, `width`
    whitespace-separated 0/1 values. Returns uint8 (N, width)."""
    raw = np.fromfile(path, dtype=np.uint8)
    digit = (raw == ord("0")) | (raw == ord("1"))
    space = np.isin(raw, np.frombuffer(b" \t\r\n", np.uint8))
    if np.all(digit | space) and not np.any(digit[:-1] & digit[1:]):
        # Fast path for the real files: every token is a single '0' or '1'.
        newline = np.flatnonzero(raw == ord("\n"))
        cum = np.concatenate([[0], np.cumsum(digit)])  # cum[p] = digits before byte p
        counts = cum[np.append(newline, raw.size)] - cum[np.insert(newline + 1, 0, 0)]
        counts = counts[counts > 0]  # blank lines
        values = raw[digit] - ord("0")
    else:  # anything else (e.g. "0.0"): parse generally, then insist on 0/1
        lines = [ln.split() for ln in bytes(raw).splitlines() if ln.strip()]
        counts = np.array([len(ln) for ln in lines], dtype=np.int64)
        try:
            flat = np.array([float(t) for ln in lines for t in ln])
        except ValueError as e:
            raise FormatError(f"non-numeric value in .amat file ({e})") from None
        if not np.all((flat == 0) | (flat == 1)):
            raise FormatError("values other than 0 and 1 in a binarized .amat file")
        values = flat.astype(np.uint8)
    if counts.size == 0:
        raise FormatError("empty .amat file")
    bad = np.flatnonzero(counts != width)
    if bad.size:
        i = int(bad[0])
        raise FormatError(f"line {i + 1} has {int(counts[i])} values, expected {width} (truncated?)")
    return values.reshape(-1, width)


# ----------------------------------------------------------- CIFAR pickles


def _np_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _np_frombuffer():
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.numeric import _frombuffer
    return _frombuffer


class ArrayUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except the few a pickle uses to
    rebuild NumPy arrays (so a crafted file cannot run code)."""

    format_name = "a pickle of NumPy arrays"

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct(),
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct(),
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # NumPy's own protocol-5 pickles rebuild arrays with _frombuffer.
        ("numpy.core.numeric", "_frombuffer"): _np_frombuffer(),
        ("numpy._core.numeric", "_frombuffer"): _np_frombuffer(),
        # Python 3 writes bytes as _codecs.encode(str, "latin1") at protocol 2.
        ("_codecs", "encode"): __import__("codecs").encode,
    }

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: not part of {self.format_name}") from None


class _CifarUnpickler(ArrayUnpickler):
    """The CIFAR batches were written by Python 2 `cPickle`; read them with
    encoding="bytes", as the CIFAR page says, so keys are bytes."""

    format_name = "the CIFAR batch format"


def read_cifar_batch(path) -> tuple[np.ndarray, list[int]]:
    """One `cifar-10-batches-py` batch: a pickled dict with b'data', a uint8
    N x 3072 array whose rows are the R plane, then G, then B (each 32x32
    row-major), and b'labels'. Returns (data N x 3 x 32 x 32, labels)."""
    with open(path, "rb") as f:
        batch = _CifarUnpickler(f, encoding="bytes").load()
        if f.read(1):
            raise FormatError("trailing bytes after the pickled batch")
    if not isinstance(batch, dict) or b"data" not in batch:
        raise FormatError("not a CIFAR batch: expected a pickled dict with key b'data'")
    data = batch[b"data"]
    labels = batch.get(b"labels", batch.get(b"fine_labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype}{list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise FormatError(f"b'data' is {got}, expected uint8 [N, 3072]")
    if labels is None or len(labels) != len(data):
        raise FormatError(f"b'labels' missing or of the wrong length for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), [int(y) for y in labels]


# -------------------------------------------------------------- tar of PNGs


def png_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The PNG files of `tar`, sorted by member name (the canonical order).
    A tar cut short is refused (FormatError), not read as a smaller one."""
    members = tar.getmembers()
    check_complete(tar)
    members = [m for m in members if m.isfile() and m.name.lower().endswith(".png")]
    return sorted(members, key=lambda m: m.name)


def check_complete(tar: tarfile.TarFile):
    """FormatError unless `tar` (fully listed) ends with its end-of-archive
    block. Python's tarfile ends the listing silently at a truncated or
    damaged header after the first, so a cut archive looks like a short one."""
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        raise FormatError(f"truncated or damaged after {len(tar.getmembers())} members (no end-of-archive "
                          f"block at byte {tar.offset})")


def decode_png(data: bytes, *, size: int = 32, name: str = "image") -> np.ndarray:
    """One PNG as uint8 3 x size x size (greyscale or RGBA are converted to RGB)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode != "RGB":
                im = im.convert("RGB")
            a = np.asarray(im)
    except Exception as e:  # Pillow raises many types for damaged data
        raise FormatError(f"{name}: not a readable PNG ({type(e).__name__}: {e})") from None
    if a.shape != (size, size, 3):
        raise FormatError(f"{name}: image is {a.shape[1]}x{a.shape[0]}, expected {size}x{size}")
    return a.transpose(2, 0, 1)


def read_png_members(tar, members, *, size: int = 32, out=None, progress=None) -> np.ndarray:
    """Decode `members` of an open tar into uint8 N x 3 x size x size
    (into `out` if given, e.g. a memory-mapped .npy being written)."""
    if out is None:
        out = np.empty((len(members), 3, size, size), np.uint8)
    for i, m in enumerate(members):
        f = tar.extractfile(m)
        data = f.read() if f is not None else b""
        if len(data) != m.size:
            raise FormatError(f"{m.name}: truncated ({len(data)} of {m.size} bytes)")
        out[i] = decode_png(data, size=size, name=m.name)
        if progress is not None:
            progress(1)
    return out


# ------------------------------------------------------------ npz batches


def read_npz_images(path, *, size: int = 32) -> np.ndarray:
    """A Chrabaszcz et al. Imagenet32 batch (`train_data_batch_K.npz`,
    `val_data.npz`): key 'data', uint8 N x 3*size*size with the R, G and B
    planes one after the other (as CIFAR). Returns N x 3 x size x size."""
    with np.load(path, allow_pickle=False) as z:
        if "data" not in z.files:
            raise FormatError(f"no 'data' array (keys: {z.files})")
        data = z["data"]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * size * size:
        raise FormatError(f"'data' is {data.dtype}{list(data.shape)}, expected uint8 [N, {3 * size * size}]")
    return data.reshape(-1, 3, size, size)


# ------------------------------------------------------- converted arrays


def load_npy(path, *, shape: tuple[int, ...], dtype="uint8") -> np.ndarray:
    """A converted N x `shape` array, memory-mapped (read-only) so a 4 GB
    training split costs no RAM until touched."""
    a = np.load(path, mmap_mode="r", allow_pickle=False)
    if a.dtype != np.dtype(dtype) or a.shape[1:] != tuple(shape):
        raise FormatError(f"holds {a.dtype}{list(a.shape)}, expected {dtype}[N, {', '.join(map(str, shape))}]")
    return a


# ----------------------------------------------------------------- splits


def carve_validation(n: int, *, size: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices into `n` training examples: a fixed random
    validation subset of min(size, n // 64) examples (`size` for the real
    ImageNet32, a proportional handful for small files), both sorted."""
    n_val = min(size, n // 64)
    val = np.sort(np.random.default_rng(seed).choice(n, size=n_val, replace=False))
    keep = np.ones(n, bool)
    keep[val] = False
    return np.flatnonzero(keep), val
