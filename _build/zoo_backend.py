"""PEP 517 backend: setuptools, with an editable install that finds zoo first.

zoo's packages live in two folders (`zoo/` and `plugins/zoo_*`), so
setuptools' editable install maps them with an import finder that it
*appends* to `sys.meta_path`. Python's path finder runs before it and, in a
folder whose child `zoo/` is a directory without `__init__.py` (the parent
of a clone named `zoo`, e.g. a notebook next to it), returns that directory
as an empty namespace package: `import zoo` "works" and `zoo.load_pretrained`
is missing. Moving the finder to the front makes the installed zoo win. It
answers only for zoo's own top-level names, so nothing else is shadowed.
"""

import base64
import hashlib
import zipfile
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 (every other hook is setuptools')

_APPEND = "sys.meta_path.append(_EditableFinder)"
_FRONT = "sys.meta_path.insert(0, _EditableFinder)"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def finder_first(wheel: Path) -> bool:
    """Rewrite the editable wheel's finder to go first on sys.meta_path; False if it has none."""
    with zipfile.ZipFile(wheel) as zf:
        members = {info.filename: (info, zf.read(info)) for info in zf.infolist()}
    finders = [n for n in members if n.startswith("__editable__") and n.endswith("_finder.py")]
    if not finders or _APPEND not in members[finders[0]][1].decode():
        return False  # a static .pth layout: sys.path already holds the real package
    name = finders[0]
    new = members[name][1].decode().replace(_APPEND, _FRONT).encode()
    record = next(n for n in members if n.endswith(".dist-info/RECORD"))
    lines = [_record_line(name, new) if line.startswith(f"{name},") else line
             for line in members[record][1].decode().splitlines()]
    members[name] = (members[name][0], new)
    members[record] = (members[record][0], ("\n".join(lines) + "\n").encode())
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members.values():
            zf.writestr(info, data)
    return True


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    finder_first(Path(wheel_directory) / name)
    return name
