"""Process set-up for the training entry points: back glibc's large allocations with huge pages.

XLA:CPU allocates an executable's temporary buffer afresh on every call (about
150 MB for a 3-level Glow step at batch 64). glibc serves a block that large
with a new mmap, so every step the kernel faults in and zeroes it 4 KiB at a
time: ~38,000 page faults and ~80 ms of system time per Glow step on a 2-core
CPU. glibc's `glibc.malloc.hugetlb=1` tunable (glibc >= 2.35; older versions
ignore it) asks for transparent huge pages on those mappings instead: ~500
faults, and the step is ~15 % faster (`python -m zoo.bench --cases
glow_cifar_small`, with and without ZOO_MALLOC_TUNING=0). Tunables are
read only when a process starts, so `python -m zoo.train` and
`python -m zoo.bench` re-execute themselves once with it set, before jax
starts a backend. It is a CPU fix: a run whose JAX backend is an
accelerator (JAX_PLATFORMS naming cuda/gpu/rocm/tpu first, or, with
JAX_PLATFORMS unset, a GPU or TPU device node present) is not re-executed.
Set ZOO_MALLOC_TUNING=0 to opt out; a library user sets
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 in their own environment.
"""

import glob
import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
_OPT_OUT = "ZOO_MALLOC_TUNING"


def malloc_tuned() -> bool:
    """Whether this process started with glibc's hugetlb tunable set."""
    return "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", "")


ACCELERATOR_DEVICES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def accelerator_backend() -> bool:
    """Whether jax will run on an accelerator, judged before it is imported: the
    first of JAX_PLATFORMS, else whether a GPU/TPU device node exists."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() not in ("cpu", "")
    return any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICES)


def reexec_with_malloc_tuning() -> None:
    """Re-run this process (same interpreter, same arguments) with GLIBC_TUNABLES
    extended by `TUNABLE`; a no-op off Linux/glibc, on an accelerator backend,
    when it is already set, or when ZOO_MALLOC_TUNING=0. Call it before importing jax."""
    if malloc_tuned() or os.environ.get(_OPT_OUT, "1") == "0" or sys.platform != "linux":
        return
    if accelerator_backend():
        return
    if platform.libc_ver()[0] != "glibc":
        return
    current = os.environ.get("GLIBC_TUNABLES", "")
    os.environ["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}" if current else TUNABLE
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _running_as(modules: tuple[str, ...]) -> bool:
    """Whether the interpreter was started as `python ... -m <one of modules> ...`."""
    argv = sys.orig_argv
    return any(a == "-m" and i + 1 < len(argv) and argv[i + 1] in modules for i, a in enumerate(argv))
