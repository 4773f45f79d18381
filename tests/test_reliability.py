"""Reliability (DESIGN.md §8): every user error is one line and an exit
code, no save is silent, nothing corrupt or non-finite is loaded or
written, one writer per run directory, URL caches keyed by the URL."""

import dataclasses
import errno
import fcntl
import functools
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import zoo
from zoo._cli import Failure, UsageError, cli
from zoo.checkpoint import (
    CheckpointError, Checkpoints, CheckpointWriteError, CorruptCheckpointWarning, load_with_meta, model_arrays,
)
from zoo.train import TrainConfig, train
from zoo.train.loop import TrainingDiverged, init_opt_state, make_optimizer

ENV = {**os.environ, "WANDB_MODE": "disabled", "OPENBLAS_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}
ENV.pop("ZOO_DEBUG", None)


def _one_error_line(err: str, tool: str, *words) -> str:
    """`err` (a process's stderr) holds exactly one `TOOL: error: ...` line, holding `words`, and no traceback."""
    lines = [line for line in err.splitlines() if line.startswith(f"{tool}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _leaves(model):
    return [np.asarray(a) for a in jax.tree.leaves(eqx.filter(model, eqx.is_array))]


def _tiny(tmp_path, **overrides):
    model_cfg = dataclasses.replace(zoo.get_model_config("realnvp"), num_layers=2, width=16)
    cfg = TrainConfig(**{"steps": 20, "batch_size": 32, "eval_every": 0, "out_dir": str(tmp_path), "name": "run",
                         "progress": False, "num_samples": 4, "max_eval_ex": 64, **overrides})
    return model_cfg, cfg


def _flip_array_bytes(checkpoint: Path):
    """Change 4 bytes inside the largest array file of a checkpoint's model: values change, the
    files stay readable (orbax has no check of its own)."""
    data = max((f for f in (checkpoint / "model").rglob("*") if f.is_file() and f.parent.name == "d"),
               key=lambda f: f.stat().st_size)
    raw = bytearray(data.read_bytes())
    for i in range(len(raw) // 3, len(raw) // 3 + 4):
        raw[i] ^= 0x5A
    data.write_bytes(bytes(raw))


# ------------------------------------------------------------- the one place errors become lines


@pytest.mark.parametrize("exc, code, text", [
    (UsageError("--num must be positive; pass 1 or more"), 2, "zoo.t: error: --num must be positive; pass 1 or more"),
    (Failure("line one\n  line two"), 1, "zoo.t: error: line one line two"),
    (OSError(errno.ENOSPC, "No space left on device", "/d/f"), 1,
     "zoo.t: error: No space left on device: '/d/f'; free some space or write somewhere else"),
    (FileNotFoundError("mnist: missing x; get it with: cmd"), 1, "zoo.t: error: mnist: missing x; get it with: cmd"),
    (TypeError("boom"), 1, "zoo.t: error: internal error (TypeError: boom); rerun with ZOO_DEBUG=1"),
])
def test_cli_turns_exceptions_into_one_line_and_an_exit_code(exc, code, text, capsys, monkeypatch):
    monkeypatch.delenv("ZOO_DEBUG", raising=False)

    @cli("zoo.t")
    def main(argv=None):
        raise exc

    with pytest.raises(SystemExit) as e:
        main([])
    err = capsys.readouterr().err
    assert e.value.code == code and err.startswith(text) and err.count("\n") == 1, err
    monkeypatch.setenv("ZOO_DEBUG", "1")
    with pytest.raises(SystemExit):
        main([])
    assert "Traceback" in capsys.readouterr().err


def test_cli_passes_return_values_and_system_exit_through():
    assert cli("zoo.t")(lambda argv=None: 3)() == 3

    @cli("zoo.t")
    def main(argv=None):
        raise SystemExit(4)

    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 4


@pytest.mark.parametrize("tool, argv, words", [
    ("train", ["--model", "realnvp", "--data", "moons", "--steps", "abc"], ["Error parsing --steps", "'abc'", "see python -m zoo.train --help"]),
    ("train", ["--model", "realnvp", "--data", "moons", "--step", "3"], ["--step", "did you mean --steps"]),
    ("train", ["--model", "realnvp", "--data", "moons", "--model-cfg.nosuch", "3"], ["--model-cfg.nosuch"]),
    ("evaluate", [], ["missing --checkpoint", "see python -m zoo.evaluate --help"]),
    ("evaluate", ["--bogus"], ["missing --checkpoint", "unrecognized --bogus"]),
    ("evaluate", ["--checkpoint", "nsf.moons", "--num-importance", "0"], ["--num-importance must be at least 1"]),
    ("evaluate", ["--checkpoint", "nsf.moons", "--split", "tset"], ["--split 'tset'", "train, validation, test"]),
    ("sample", ["--checkpoint", "nsf.moons", "--temperature"], ["--temperature", "see python -m zoo.sample --help"]),
    ("sample", ["--checkpoint", "nsf.moons", "--tempreature", "3"], ["did you mean --temperature"]),
    ("data", ["frob"], ["invalid choice: 'frob'", "see python -m zoo.data --help"]),
    ("data", ["check", "--bogus"], ["unrecognized arguments: --bogus"]),
    ("download_data", [], ["required: NAME", "--help"]),
])
def test_argument_errors_are_one_line_with_exit_status_2(tool, argv, words, capsys, tmp_path, monkeypatch):
    """tyro's and argparse's own errors (a bad value, an unknown or missing option) are one line too,
    not a help box or a usage block."""
    import importlib

    monkeypatch.delenv("ZOO_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        module = {"train": "zoo.train.cli", "data": "zoo.data.__main__", "download_data": "zoo.data.download"}
        importlib.import_module(module.get(tool, f"zoo.{tool}")).main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    _one_error_line(err, f"zoo.{tool}", *words)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_mistyped_pretrained_name_is_answered_with_the_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="did you mean 'nsf.moons'"):
        zoo.load_pretrained("nsf.moon")
    with pytest.raises(CheckpointError, match=r"see zoo.list_pretrained\(\)"):
        zoo.load_pretrained("nothing.like_it")
    with pytest.raises(CheckpointError, match=r"check the path$"):  # a path is not taken for a name
        zoo.load_pretrained("runs/nsf.moon")


def _train_main(capsys, *argv):
    """zoo.train's main in this process: (exit status, stderr)."""
    from zoo.train.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--model", "realnvp", "--data", "moons", "--no-progress", "--steps", "3", *argv])
    return e.value.code, capsys.readouterr().err


def test_train_user_errors_are_one_line_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "runs"
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    (out / "empty" / "checkpoints").mkdir(parents=True)
    cases = [
        (["--resume", "--name", "nothing"], 2, "no run to resume"),
        (["--resume", "--name", "empty"], 2, "holds no checkpoint"),
        (["--batch-size", "0"], 2, "--batch-size must be at least 1"),
        (["--batch-size", "100000"], 2, "larger than moons's train split"),
        (["--lr", "inf"], 2, "--lr must be a finite positive number"),
        (["--log-interval", "0"], 2, "--log-interval"),
        (["--name", "a/b"], 2, "plain folder name"),
        (["--flip"], 2, "--flip mirrors images"),
    ]
    for argv, code, words in cases:
        got, err = _train_main(capsys, "--out-dir", str(out), *argv)
        assert got == code, (argv, err)
        _one_error_line(err, "zoo.train", words)
    assert sorted(p.name for p in out.iterdir()) == ["empty"]  # no run directory was made
    got, err = _train_main(capsys, "--out-dir", str(a_file / "sub"))
    assert got == 2
    _one_error_line(err, "zoo.train", "is a file, not a folder")
    got, err = _train_main(capsys, "--out-dir", str(out), "--data", "mnist_bundled")  # a vector model on images
    assert got == 2
    _one_error_line(err, "zoo.train", "realnvp")


def test_resume_with_other_settings_is_refused_before_the_restore(tmp_path, capsys):
    model_cfg, cfg = _tiny(tmp_path, steps=4, checkpoint_every=2)
    out = train("realnvp", model_cfg, "moons", cfg)
    before = sorted(p.name for p in out["checkpoints"].iterdir())
    got, err = _train_main(capsys, "--out-dir", str(tmp_path), "--name", "run", "--resume",
                           "--model-cfg.num-layers", "2", "--model-cfg.width", "32")
    assert got == 2
    _one_error_line(err, "zoo.train", "other settings", "--model-cfg.width 16 (asked: 32)")
    assert "corrupt" not in err and sorted(p.name for p in out["checkpoints"].iterdir()) == before


# ------------------------------------------------------------- saves are confirmed; corrupt steps moved aside


def test_save_that_orbax_declines_raises_and_nonfinite_states_are_refused(tmp_path):
    model = zoo.create_model("realnvp", key=jax.random.key(0), input_shape=(2,), num_layers=1, width=4)
    opt = {"m": jnp.zeros(3)}
    ckpt = Checkpoints(tmp_path / "c", asynchronous=False)
    ckpt.save(5, model, opt, {})
    ckpt.wait()
    for step in (5, 3):  # orbax's save returns False for a step at or below the newest
        with pytest.raises(CheckpointWriteError, match="already holds step 5"):
            ckpt.save(step, model, opt, {})
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, tree = jax.tree.flatten(params)
    nan_model = eqx.combine(jax.tree.unflatten(tree, [leaves[0] * jnp.nan, *leaves[1:]]), static)
    with pytest.raises(CheckpointError, match="not all finite"):
        ckpt.save(6, nan_model, opt, {})
    ckpt.close()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["5"]
    with pytest.raises(CheckpointError, match="not all finite"):
        zoo.save_pretrained(nan_model, tmp_path / "p", config=zoo.get_model_config("realnvp"), input_shape=(2,))
    assert not (tmp_path / "p").exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_newest_step_is_moved_aside_and_retrained_to_the_same_parameters(tmp_path):
    """`--resume --steps 40` with step 40 corrupt: 40 is moved aside (not deleted), the run
    resumes from 30 and the new step 40 equals the uninterrupted run's."""
    model_cfg, cfg = _tiny(tmp_path, steps=40, checkpoint_every=10)
    out = train("realnvp", model_cfg, "moons", cfg)
    ckpts = out["checkpoints"]
    want = _leaves(out["model"])
    _flip_array_bytes(ckpts / "40")
    with pytest.warns(CorruptCheckpointWarning) as record:
        again = train("realnvp", model_cfg, "moons", dataclasses.replace(cfg, resume=True))
    text = " ".join(str(w.message) for w in record)
    assert "step 40" in text and "differ from the digests" in text and "moved corrupt checkpoint step 40" in text
    assert (ckpts / "40.corrupt" / "model").is_dir()
    model, meta = load_with_meta(ckpts / "40")
    assert meta["step"] == 40
    for a, b, c in zip(_leaves(model), _leaves(again["model"]), want):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------- digests and finiteness on load


def test_flipped_bytes_in_an_array_are_caught_by_the_saved_digests(tmp_path):
    cfg = dataclasses.replace(zoo.get_model_config("realnvp"), num_layers=2, width=16)
    model = cfg.build(input_shape=(2,), key=jax.random.key(0))
    path = zoo.save_pretrained(model, tmp_path / "m", config=cfg, input_shape=(2,))
    _flip_array_bytes(path)
    with pytest.raises(CheckpointError, match="differ from the digests saved with them"):
        zoo.load_pretrained(path)
    # The same files without digests (as written before them) load, silently changed:
    # the digests are what caught it, and old checkpoints still load.
    meta_file = path / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    del meta["digests"]
    meta_file.write_text(json.dumps(meta))
    loaded = zoo.load_pretrained(path)
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(loaded), _leaves(model)))


def test_a_checkpoint_with_nonfinite_parameters_is_refused(tmp_path):
    cfg = dataclasses.replace(zoo.get_model_config("realnvp"), num_layers=1, width=4)
    model = cfg.build(input_shape=(2,), key=jax.random.key(0))
    arrays = model_arrays(model)
    leaves, tree = jax.tree.flatten(arrays)
    arrays = jax.tree.unflatten(tree, [leaves[0].at[0].set(jnp.inf), *leaves[1:]])
    meta = {"format": "zoo-checkpoint-1", "model": "realnvp", "model_cfg": dataclasses.asdict(cfg), "input_shape": [2]}
    path = tmp_path / "inf"  # written by another tool, without zoo's refusal
    ocp.Checkpointer(ocp.CompositeCheckpointHandler()).save(
        path, args=ocp.args.Composite(model=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)))
    with pytest.raises(CheckpointError, match="parameters are not all finite"):
        zoo.load_pretrained(path)


# ------------------------------------------------------------- non-finite states are never written


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_an_update_that_overflows_is_skipped_and_never_checkpointed(tmp_path):
    """--lr 1e39: step 1's loss and gradients are finite, the update is not."""
    model_cfg, cfg = _tiny(tmp_path, lr=1e39, checkpoint_every=1, max_nonfinite=3, log_interval=1)
    with pytest.raises(TrainingDiverged, match="3 consecutive steps"):
        train("realnvp", model_cfg, "moons", cfg)
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in records if r["split"] == "train_batch"}
    assert steps[1]["nonfinite"] == 1 and np.isfinite(steps[1]["loss"]) and np.isfinite(steps[1]["grad_norm"])


@dataclasses.dataclass(frozen=True)
class NanHookFrom3:
    """A RealNVP whose after_step hook makes its parameters NaN from step 3 on."""

    example_input_shape: ClassVar = (2,)

    def build(self, *, input_shape, key):
        return _NanHook(zoo.create_model("realnvp", key=key, input_shape=input_shape, num_layers=1, width=8))


class _NanHook(eqx.Module):
    flow: zoo.Flow

    def log_prob(self, x):
        return self.flow.log_prob(x)

    def sample(self, key, *, temperature=1.0):
        return self.flow.sample(key, temperature=temperature)

    def loss(self, x, *, key):
        return self.flow.loss(x, key=key)

    def after_step(self, aux, *, step):
        return jax.tree.map(lambda a: jnp.where(step >= 3, jnp.nan, a) if eqx.is_inexact_array(a) else a, self)


def test_an_after_step_hook_that_makes_nan_is_skipped_and_never_checkpointed(tmp_path):
    if "test_nan_hook_from_3" not in zoo.list_models():  # registered here: conformance tests never see it
        zoo.register_model("test_nan_hook_from_3")(NanHookFrom3)
    cfg = TrainConfig(steps=20, batch_size=16, eval_every=0, checkpoint_every=1, max_nonfinite=2,
                      out_dir=str(tmp_path), name="hook", progress=False, log_interval=1)
    with pytest.raises(TrainingDiverged, match="2 consecutive"):
        train("test_nan_hook_from_3", NanHookFrom3(), "moons", cfg)
    ckpts = Checkpoints(tmp_path / "hook" / "checkpoints", create=False, asynchronous=False)
    assert ckpts.steps() == [1, 2]
    assert all(np.all(np.isfinite(a)) for a in _leaves(load_with_meta(ckpts.step_dir(2))[0]))


# ------------------------------------------------------------- one writer per run directory


def _cli_train(out, name, steps, *extra):
    return [sys.executable, "-m", "zoo.train", "--model", "realnvp", "--data", "moons", "--steps", str(steps),
            "--checkpoint-every", "10", "--eval-every", "0", "--max-eval-ex", "64", "--out-dir", str(out),
            "--name", name, "--no-progress", "--model-cfg.num-layers", "2", "--model-cfg.width", "16",
            "--num-samples", "4", *extra]


def _train_cmd(out, name, *extra):
    """A run long enough to be stopped midway: signalled at its first log (step 50), it has ~3 s
    of steps left (the last of a repeated flag wins)."""
    return _cli_train(out, name, STEPS, "--checkpoint-every", "400", "--log-interval", "50", *extra)


STEPS = 600


def _stop_midway(tmp_path, name, sig) -> tuple[int, str]:
    """Start a run, send `sig` once it has logged, and return its exit status and last stderr line."""
    import time

    interactive = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                   "sys.argv = ['zoo.train', *sys.argv[1:]]; runpy.run_module('zoo.train', run_name='__main__')")
    p = subprocess.Popen([sys.executable, "-c", interactive, *_train_cmd(tmp_path, name)[3:]], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # Ctrl-C as in a terminal
    metrics = tmp_path / name / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and '"train_batch"' in metrics.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    p.send_signal(sig)
    _, err = p.communicate(timeout=600)
    return p.returncode, err.strip().splitlines()[-1]


def test_ctrl_c_and_sigterm_checkpoint_the_step_they_stop_at_and_resume_ends_where_an_uninterrupted_run_does(
        tmp_path, capsys):
    import signal

    from zoo.train.cli import main

    # the uninterrupted run and the resumes are expected to succeed: their main() runs in this
    # process (a failure raises SystemExit); the runs that are stopped are processes
    main(_train_cmd(tmp_path, "full")[3:])
    want = _leaves(load_with_meta(tmp_path / "full" / "checkpoints" / str(STEPS))[0])
    for name, sig, by in (("ctrl_c", signal.SIGINT, ""), ("sigterm", signal.SIGTERM, "by SIGTERM ")):
        code, line = _stop_midway(tmp_path, name, sig)
        assert code == 128 + sig and line.startswith(f"zoo.train: interrupted {by}at step "), (code, line)
        step = int(line.split("at step ")[1].split(";")[0])
        assert 50 <= step < STEPS and f"checkpoint {step} saved" in line and "continue with --resume" in line, line
        assert (tmp_path / name / "checkpoints" / str(step)).is_dir()
        capsys.readouterr()
        main(_train_cmd(tmp_path, name, "--resume")[3:])
        out, err = capsys.readouterr()
        assert f"from step {step}" in out + err, err[-2000:]
        got = _leaves(load_with_meta(tmp_path / name / "checkpoints" / str(STEPS))[0])
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), name  # nothing lost, nothing changed


def test_two_runs_started_together_get_their_own_directories(tmp_path):
    procs = [subprocess.Popen(_cli_train(tmp_path, "same", 30), env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    dirs = sorted(line.rsplit("run directory ", 1)[1] for o, _ in outs for line in o.splitlines()
                  if "run directory" in line)
    assert dirs == [str(tmp_path / "same"), str(tmp_path / "same-2")]
    for d in map(Path, dirs):
        records = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert [r["split"] for r in records].count("summary") == 1  # one run's metrics, not two interleaved
        assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["10", "20", "30"]
        assert (d / "run.lock").read_text() == ""  # released


_HOLD_LOCKS = """
import fcntl, os, sys, time
files = [open(p, "a+") for p in sys.argv[1:]]
for f in files:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.write(f"pid {os.getpid()} on test\\n")
    f.flush()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_run_held_by_another_process_is_refused_to_resume_and_skipped_by_a_fresh_run(tmp_path, capsys):
    model_cfg, cfg = _tiny(tmp_path, steps=2)
    train("realnvp", model_cfg, "moons", cfg)
    (tmp_path / "starting").mkdir()  # a run that has not written a checkpoint yet
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCKS, str(tmp_path / "run" / "run.lock"),
                               str(tmp_path / "starting" / "run.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        got, err = _train_main(capsys, "--out-dir", str(tmp_path), "--name", "run", "--resume",
                               "--model-cfg.num-layers", "2", "--model-cfg.width", "16")
        assert got == 1
        _one_error_line(err, "zoo.train", "in use by pid", str(holder.pid))
        fresh = train("realnvp", model_cfg, "moons", dataclasses.replace(cfg, name="starting"))
    finally:
        holder.kill()
        holder.wait()
    assert fresh["run_dir"].name == "starting-2"
    assert not (tmp_path / "starting" / "checkpoints").exists()
    # the holder died without releasing: the next run says so and goes on
    again = train("realnvp", model_cfg, "moons", dataclasses.replace(cfg, steps=4, resume=True))
    assert again["run_dir"].name == "run"
    assert f"left locked by pid {holder.pid}" in capsys.readouterr().err


# ------------------------------------------------------------- URLs: cache keyed by URL, clear failures


class _Server:
    """http.server on 127.0.0.1 serving `root`, counting GETs by path;
    /short.tar.gz promises 1000 bytes and sends 10."""

    def __init__(self, root: Path):
        self.gets: dict[str, int] = {}
        gets = self.gets

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                gets[self.path] = gets.get(self.path, 0) + 1
                if self.path == "/short.tar.gz":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"x" * 10)
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _archive(model, cfg, folder: Path) -> str:
    path = zoo.save_pretrained(model, folder / "m", config=cfg, input_shape=(2,))
    with tarfile.open(folder / "model.tar.gz", "w:gz") as tar:
        tar.add(path, arcname="m")
    return hashlib.sha256((folder / "model.tar.gz").read_bytes()).hexdigest()


def test_url_cache_is_keyed_by_the_whole_url_and_refetches_a_bad_file(tmp_path, monkeypatch, capsys):
    cfg = dataclasses.replace(zoo.get_model_config("realnvp"), num_layers=1, width=4)
    models = [cfg.build(input_shape=(2,), key=jax.random.key(i)) for i in (1, 2)]
    digests = []
    for i, m in enumerate(models):
        (tmp_path / f"host{i}").mkdir()
        digests.append(_archive(m, cfg, tmp_path / f"host{i}"))
    servers = [_Server(tmp_path / f"host{i}") for i in (0, 1)]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOO_CACHE_DIR", "cache")  # relative: works too
    x = jnp.array([0.3, -0.7])
    try:
        urls = [f"{s.url}/model.tar.gz" for s in servers]  # one file name, two hosts
        first = zoo.load_pretrained(urls[0])
        second = zoo.load_pretrained(urls[1], sha256=digests[1])
        np.testing.assert_allclose(first.log_prob(x), models[0].log_prob(x), rtol=1e-6)
        np.testing.assert_allclose(second.log_prob(x), models[1].log_prob(x), rtol=1e-6)
        zoo.load_pretrained(urls[1], sha256=digests[1])
        assert servers[1].gets == {"/model.tar.gz": 1}  # cached
        for f in (tmp_path / "cache").rglob("model.tar.gz"):  # damage the cached downloads
            f.write_bytes(b"junk")
        again = zoo.load_pretrained(urls[1], sha256=digests[1])
        np.testing.assert_allclose(again.log_prob(x), models[1].log_prob(x), rtol=1e-6)
        assert servers[1].gets == {"/model.tar.gz": 2}  # downloaded once more
        assert not list((tmp_path / "cache").rglob("*.part"))

        with pytest.raises(CheckpointError, match="cannot download .*HTTP 404"):
            zoo.load_pretrained(f"{servers[0].url}/missing.tar.gz")
        with pytest.raises(CheckpointError, match="short.tar.gz"):  # a download cut short is not cached
            zoo.load_pretrained(f"{servers[0].url}/short.tar.gz")
        assert not list((tmp_path / "cache").rglob("short.tar.gz*"))
        from zoo.sample import main as sample_main

        with pytest.raises(SystemExit) as e:
            sample_main(["--checkpoint", f"{servers[0].url}/missing.tar.gz", "--out", "x.png"])
        assert e.value.code == 1
        _one_error_line(capsys.readouterr().err, "zoo.sample", "HTTP 404", "check the URL")
    finally:
        for s in servers:
            s.close()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CheckpointError, match="cannot download .*refused"):
        zoo.load_pretrained(f"http://127.0.0.1:{port}/model.tar.gz")


# ------------------------------------------------------------- paths: relative, run directories, one corrupt step


def test_relative_paths_and_run_directories_load(tmp_path, monkeypatch, capsys):
    model_cfg, cfg = _tiny(tmp_path / "runs", steps=4, checkpoint_every=2)
    out = train("realnvp", model_cfg, "moons", cfg)
    monkeypatch.chdir(tmp_path)
    want = _leaves(out["model"])
    for path in ("runs/run", "runs/run/checkpoints", "runs/run/checkpoints/4"):  # a run directory means its checkpoints/
        assert all(np.array_equal(a, b) for a, b in zip(_leaves(zoo.load_pretrained(path)), want)), path
    zoo.save_pretrained(out["model"], "mymodel", config=model_cfg, input_shape=(2,))
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(zoo.load_pretrained("mymodel")), want))

    from zoo.sample import main as sample_main

    sample_main(["--checkpoint", "runs/run", "--num", "16", "--out", "s.png"])
    assert Path("s.png").is_file()
    _flip_array_bytes(Path("runs/run/checkpoints/4"))  # one step given directly: refused in one line
    with pytest.raises(SystemExit) as e:
        sample_main(["--checkpoint", "runs/run/checkpoints/4", "--out", "t.png"])
    assert e.value.code == 1 and not Path("t.png").exists()
    _one_error_line(capsys.readouterr().err, "zoo.sample", "differ from the digests")
    with pytest.warns(CorruptCheckpointWarning, match="step 4"):  # the run falls back to step 2
        _, meta = load_with_meta("runs/run")
    assert meta["step"] == 2


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_sample_cli_refuses_when_every_sample_is_nonfinite(tmp_path, capsys):
    cfg = dataclasses.replace(zoo.get_model_config("realnvp"), num_layers=1, width=4)
    model = cfg.build(input_shape=(2,), key=jax.random.key(0))
    path = zoo.save_pretrained(model, tmp_path / "m", config=cfg, input_shape=(2,))
    from zoo.sample import main as sample_main

    with pytest.raises(SystemExit) as e:
        sample_main(["--checkpoint", str(path), "--temperature", "1e39", "--num", "8", "--out", str(tmp_path / "s.png")])
    assert e.value.code == 1 and not (tmp_path / "s.png").exists()
    _one_error_line(capsys.readouterr().err, "zoo.sample", "all 8 samples are NaN/inf")


# ------------------------------------------------------------- a disk that fills up during a save


_FILE_SIZE_LIMIT = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
sys.argv = ["zoo.train", *sys.argv[2:]]
runpy.run_module("zoo.train", run_name="__main__")
"""


def test_a_save_that_cannot_be_written_is_one_line_and_earlier_checkpoints_survive(tmp_path):
    from zoo.train.cli import main

    args = ["--model-cfg.width", "128"]  # array files of ~0.5 MB
    main(_cli_train(tmp_path, "full", 20, *args)[3:])  # in this process: a failure raises SystemExit
    ckpts = tmp_path / "full" / "checkpoints"
    before = {s: _leaves(load_with_meta(ckpts / s)[0]) for s in ("10", "20")}
    # stdout/stderr are pipes: the limit binds only the files the run writes
    r = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMIT, "100000",
                        *_cli_train(tmp_path, "full", 40, *args, "--resume")[3:]],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    line = _one_error_line(r.stderr, "zoo.train", "could not write checkpoint step 30", "File too large",
                           "checkpoints [10, 20]", "continue with --resume")
    assert len(r.stderr.splitlines()) < 10, r.stderr[-3000:]
    assert line
    for s, want in before.items():
        assert all(np.array_equal(a, b) for a, b in zip(_leaves(load_with_meta(ckpts / s)[0]), want))
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["10", "20"]
