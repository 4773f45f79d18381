"""The editable install finds the real zoo even where a folder named `zoo` shadows it."""

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "_build"))
from zoo_backend import finder_first  # noqa: E402


def test_import_zoo_next_to_a_clone_named_zoo(tmp_path):
    """A notebook in the parent of a clone named `zoo`: the clone's root (no __init__.py) is
    on sys.path first as ''; the installed package must still win over that namespace package."""
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "README.md").write_text("a clone's root\n")
    code = "import zoo; print(zoo.__file__); zoo.load_pretrained; zoo.list_models"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == ROOT / "zoo" / "__init__.py"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def test_finder_first_rewrites_the_finder_and_its_record(tmp_path):
    finder = "__editable___zoo_0_1_0_finder.py"
    old = b"def install():\n    sys.meta_path.append(_EditableFinder)\n"
    wheel = tmp_path / "zoo-0.1.0-0.editable-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(finder, old)
        zf.writestr("zoo-0.1.0.dist-info/METADATA", "Name: zoo\n")
        zf.writestr("zoo-0.1.0.dist-info/RECORD", f"{finder},sha256={_b64(old)},{len(old)}\n"
                    "zoo-0.1.0.dist-info/METADATA,sha256=x,10\nzoo-0.1.0.dist-info/RECORD,,\n")
    assert finder_first(wheel)
    with zipfile.ZipFile(wheel) as zf:
        new = zf.read(finder)
        record = zf.read("zoo-0.1.0.dist-info/RECORD").decode().splitlines()
        assert zf.read("zoo-0.1.0.dist-info/METADATA") == b"Name: zoo\n"
    assert new == b"def install():\n    sys.meta_path.insert(0, _EditableFinder)\n"
    assert record[0] == f"{finder},sha256={_b64(new)},{len(new)}"
    assert record[1:] == ["zoo-0.1.0.dist-info/METADATA,sha256=x,10", "zoo-0.1.0.dist-info/RECORD,,"]
    assert not finder_first(wheel)  # already first: nothing to do
