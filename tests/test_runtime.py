"""The training entry points' process set-up (zoo/_runtime.py)."""

import sys

import pytest

from zoo import _runtime


@pytest.fixture
def execv(monkeypatch):
    calls = []
    monkeypatch.setattr(_runtime.os, "execv", lambda exe, argv: calls.append((exe, argv)))
    monkeypatch.setattr(_runtime.sys, "platform", "linux")
    monkeypatch.setattr(_runtime.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(_runtime.sys, "orig_argv", ["python", "-X", "dev", "-m", "zoo.train", "--model", "glow"])
    monkeypatch.delenv("ZOO_MALLOC_TUNING", raising=False)
    return calls


def test_reexec_keeps_the_command_line_and_other_tunables(execv, monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    _runtime.reexec_with_malloc_tuning()
    assert execv == [(sys.executable, [sys.executable, "-X", "dev", "-m", "zoo.train", "--model", "glow"])]
    assert _runtime.os.environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert _runtime.malloc_tuned()


def test_reexec_sets_the_tunable_when_none_is_set(execv, monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    _runtime.reexec_with_malloc_tuning()
    assert len(execv) == 1 and _runtime.os.environ["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("env, libc", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "glibc"),  # already re-executed: no loop
    ({"ZOO_MALLOC_TUNING": "0"}, "glibc"),  # opted out
    ({}, ""),  # not glibc (musl, ...)
])
def test_no_reexec(execv, monkeypatch, env, libc):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(_runtime.platform, "libc_ver", lambda: (libc, ""))
    _runtime.reexec_with_malloc_tuning()
    assert execv == []


def test_only_the_training_cli_is_detected(monkeypatch):
    monkeypatch.setattr(_runtime.sys, "orig_argv", ["python", "-m", "zoo.train", "--help"])
    assert _runtime._running_as(("zoo.train",))
    for argv in (["python", "-m", "pytest", "zoo.train"], ["python", "-c", "-m zoo.train"], ["python", "-m"]):
        monkeypatch.setattr(_runtime.sys, "orig_argv", argv)
        assert not _runtime._running_as(("zoo.train",))


@pytest.mark.parametrize("platforms, devices, accelerator", [
    ("cpu", ["/dev/nvidia0"], False),  # asked for CPU: tuned even on a GPU machine
    ("cuda", [], True), ("tpu,cpu", [], True),
    ("", ["/dev/nvidia0"], True), ("", ["/dev/accel0"], True), ("", [], False),
])
def test_no_reexec_on_an_accelerator_backend(execv, monkeypatch, platforms, devices, accelerator):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    monkeypatch.setattr(_runtime.glob, "glob", lambda pattern: [d for d in devices if d.startswith(pattern[:9])])
    assert _runtime.accelerator_backend() is accelerator
    _runtime.reexec_with_malloc_tuning()
    assert len(execv) == (0 if accelerator else 1)
