"""Every code block of README.md runs as written.

The fenced blocks run in document order in one test (later blocks use what
earlier ones wrote), from one scratch folder that links every top-level
entry of the repository except `runs/` and `samples/` (what the commands
write stays there); a failing block is reported with its line and the rest
still run:

- `bash` blocks with `bash -e -o pipefail`;
- `python` blocks each in a fresh namespace of one interpreter (a block
  imports what it uses) unless it `continues` the previous one, as the
  plugin guide's layer, model and tests do; a block's `test_*` functions are
  then called, as pytest would;
- `toml` blocks are parsed.

Fences without a language or marked `text` are layouts and synopses. A
block may be preceded by an HTML comment (GitHub does not show it):

    <!-- readme-test
    skip: why this test does not run the block (a long training, an install)
    instead: a shorter command run in its place, so later blocks find its outputs
    continues: what this python block uses from the previous one (it runs in that namespace)
    -->

Each skipped block is also a skipped test, so `-ra` lists it with its reason.
"""

import json
import os
import re
import select
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
WRITTEN = {"runs", "samples"}  # folders the README's commands write to: not linked into the scratch root
RUN = {"python", "bash", "toml"}
DIRECTIVES = ("skip", "instead", "continues")
TIMEOUT = 600



class BlockFailed(Exception):
    """A README block that did not run; the message holds its line and output."""


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    directives: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang}"


def parse_readme(text: str) -> list[Block]:
    """The README's fenced blocks in a language of RUN, with their readme-test directives."""
    lines, blocks, pending, i = text.splitlines(), [], None, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("<!-- readme-test"):
            end = next(j for j in range(i, len(lines)) if lines[j].rstrip().endswith("-->"))
            body = "\n".join(lines[i:end + 1]).removeprefix("<!-- readme-test").removesuffix("-->")
            pending = {}
            for entry in filter(None, (e.strip() for e in body.splitlines())):
                key, sep, value = entry.partition(":")
                if not sep or key not in DIRECTIVES:
                    raise ValueError(f"README.md:{i + 1}: unknown readme-test directive {entry!r} ({', '.join(DIRECTIVES)})")
                pending[key] = value.strip()
            if "instead" in pending and "skip" not in pending:
                raise ValueError(f"README.md:{i + 1}: readme-test 'instead:' needs a 'skip:' reason")
            i = end + 1
            continue
        fence = re.match(r"^```(\w*)", line)
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if "continues" in (pending or {}) and fence.group(1) != "python":
                raise ValueError(f"README.md:{i + 1}: readme-test 'continues:' is for python blocks")
            if fence.group(1) in RUN:
                blocks.append(Block(i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n", pending or {}))
            elif pending:
                raise ValueError(f"README.md:{i + 1}: a readme-test directive on a {fence.group(1) or 'plain'} block")
            pending, i = None, end + 1
            continue
        if pending is not None and line.strip():
            raise ValueError(f"README.md:{i + 1}: a readme-test comment must come right before a code block")
        i += 1
    return blocks


BLOCKS = parse_readme(README.read_text())

# One interpreter for all python blocks: blocks exec in fresh namespaces; replies come on a pipe.
DRIVER = r"""
import gc, json, os, sys, traceback
gc.set_threshold(50_000, 50, 100)  # as in the test processes (conftest.py): -0.7 CPU s over the blocks
replies = os.fdopen(int(sys.argv[1]), "w")
for line in sys.stdin:
    block = json.loads(line)
    if not block["continues"]:
        ns = {"__name__": "__main__"}
    try:
        exec(compile(block["code"], block["where"], "exec"), ns)
        for name, fn in list(ns.items()):
            if name.startswith("test_") and callable(fn):
                fn()
        reply = {"ok": True}
    except BaseException:
        reply = {"ok": False, "error": traceback.format_exc()}
    sys.stdout.flush()
    sys.stderr.flush()
    replies.write(json.dumps(reply) + "\n")
    replies.flush()
"""


class Scratch:
    """The scratch root, a log of everything the blocks print, and the python interpreter."""

    def __init__(self, root: Path):
        self.root, self.log = root, root / "readme-test.log"
        for entry in ROOT.iterdir():
            if entry.name not in WRITTEN | {".git"}:
                (root / entry.name).symlink_to(entry)
        self.python = None

    def _output_since(self, offset: int) -> str:
        return self.log.read_text(errors="replace")[offset:][-8000:]

    def bash(self, code: str, where: str):
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "a") as log:
            r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=self.root,
                               stdout=log, stderr=subprocess.STDOUT, timeout=TIMEOUT)
        if r.returncode:
            raise BlockFailed(f"{where}: exit status {r.returncode}\n{self._output_since(offset)}")

    def run_python(self, code: str, where: str, *, continues: bool):
        if self.python is None:
            read, write = os.pipe()
            log = open(self.log, "a")
            self.python = subprocess.Popen([sys.executable, "-c", DRIVER, str(write)], cwd=self.root,
                                           stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, text=True,
                                           pass_fds=(write,))
            os.close(write)
            self.replies = os.fdopen(read)
        offset = self.log.stat().st_size
        self.python.stdin.write(json.dumps({"code": code, "where": where, "continues": continues}) + "\n")
        self.python.stdin.flush()
        if not select.select([self.replies], [], [], TIMEOUT)[0]:
            raise BlockFailed(f"{where}: no result after {TIMEOUT} s\n{self._output_since(offset)}")
        line = self.replies.readline()
        if not line:  # the interpreter died: the next block gets a new one
            self.python = None
            raise BlockFailed(f"{where}: the interpreter died\n{self._output_since(offset)}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise BlockFailed(f"{where}:\n{self._output_since(offset)}\n{reply['error']}")

    def close(self):
        if self.python is not None:
            self.python.stdin.close()
            self.python.wait(timeout=60)


def _run(block: Block, scratch: Scratch):
    where = f"README.md:{block.line}"
    if "instead" in block.directives:
        scratch.bash(block.directives["instead"], f"{where} (instead)")
    if "skip" in block.directives:
        return
    if block.lang == "bash":
        scratch.bash(block.code, where)
    elif block.lang == "python":
        scratch.run_python(block.code, where, continues="continues" in block.directives)
    else:
        try:
            tomllib.loads(block.code)
        except tomllib.TOMLDecodeError as e:
            raise BlockFailed(f"{where}: {e}") from None


def test_readme_runs_as_written(tmp_path):
    scratch, failures = Scratch(tmp_path), []
    try:
        for block in BLOCKS:
            try:
                _run(block, scratch)
            except (BlockFailed, subprocess.TimeoutExpired) as e:
                failures.append(str(e))
    finally:
        scratch.close()
    assert not failures, "\n\n".join(failures)


SKIPPED = [b for b in BLOCKS if "skip" in b.directives]


@pytest.mark.parametrize("block", SKIPPED, ids=[b.id for b in SKIPPED])
def test_readme_block_not_run(block):
    pytest.skip(f"README.md:{block.line}: {block.directives['skip']}")


def test_directives_are_parsed_and_misplaced_ones_refused():
    text = ("<!-- readme-test\nskip: long\ninstead: echo hi\n-->\n```bash\nsleep 999\n```\n"
            "```\nnot code\n```\n```python\nx = 1\n```\n<!-- readme-test\ncontinues: x\n-->\n```python\ny = x\n```\n")
    blocks = parse_readme(text)
    assert [(b.lang, b.line, b.directives) for b in blocks] == [
        ("bash", 5, {"skip": "long", "instead": "echo hi"}), ("python", 11, {}), ("python", 17, {"continues": "x"})]
    assert blocks[1].code == "x = 1\n"
    for bad in ("<!-- readme-test\nskpi: typo\n-->\n```bash\n```\n",
                "<!-- readme-test\ninstead: echo\n-->\n```bash\n```\n",
                "<!-- readme-test\nskip: far\n-->\ntext\n```bash\n```\n",
                "<!-- readme-test\nskip: why\n-->\n```\nlayout\n```\n",
                "<!-- readme-test\ncontinues: x\n-->\n```bash\n```\n"):
        with pytest.raises(ValueError, match="readme-test"):
            parse_readme(bad)
