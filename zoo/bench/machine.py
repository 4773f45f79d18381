"""What the numbers were measured on: the CPU, the cores this process may
use, the library versions and the settings that change CPU speed. Read in
the parent process without importing jax (each case reports its backend)."""

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

__all__ = ["machine", "cpu_model", "load1"]


def cpu_model() -> str:
    """The first "model name" of /proc/cpuinfo, else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load1() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    """The zoo checkout's commit (with "+dirty" for uncommitted changes), if it is a git work tree."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_usable": cores,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "equinox": _version("equinox"),
        "optax": _version("optax"),
        "flowjax": _version("flowjax"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS"),
        "glibc_hugetlb_malloc": "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", ""),
        "zoo_commit": _commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
