"""Test-wide settings: offline, CPU, no wandb; LAPACK single-threaded so the
two shared cores do not stall (see DESIGN.md section 6)."""

import atexit
import gc
import os
import shutil
import tempfile

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ZOO_CACHE_DIR", tempfile.mkdtemp(prefix="zoo-test-cache-"))

# One persistent XLA cache for this run, made by the first process to load this file and
# inherited by the xdist workers and the CLIs the tests start: the same small models are
# compiled in many processes (about a third of the suite's CPU time). Fresh each run.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="zoo-test-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
# Every program, however small: a CLI re-compiles the dozens of small op-by-op programs
# that building and initialising a model take, each ~13 ms, and reading one back costs
# ~1 ms, writing one ~2 ms (test_reliability's ctrl_c and two_runs tests: 42.7 -> 36.9
# CPU s with 0 instead of 0.1).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# With PYTHONDONTWRITEBYTECODE set (some CI images and sandboxes set it), every process
# the suite starts -- the xdist workers and the ~90 CLIs -- compiles jax, equinox and
# orbax from source again: ~0.55 s CPU each (`python -c "import zoo.train"`: 2.8 s
# against 2.25 s). The sources stay as clean as that variable asks: the bytecode goes
# under a temporary prefix for this run, made like the XLA cache above. Opt out with
# ZOO_TEST_PYCACHE=0.
if (os.environ.get("PYTHONDONTWRITEBYTECODE") and "PYTHONPYCACHEPREFIX" not in os.environ
        and os.environ.get("ZOO_TEST_PYCACHE", "1") == "1"):
    del os.environ["PYTHONDONTWRITEBYTECODE"]
    os.environ["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="zoo-test-pycache-")
    atexit.register(shutil.rmtree, os.environ["PYTHONPYCACHEPREFIX"], ignore_errors=True)

# The suite is compile-bound (tiny models, few steps): LLVM's optimisation passes
# cost more than they save, so XLA:CPU compiles unoptimised machine code here
# (-30 % CPU time on the model conformance tests). It also emits fusions with its
# older, direct LLVM emitters instead of the MLIR fusion emitters, whose pass
# pipeline is most of what is left of a compile at this size, and in one codegen
# thread (test_models.py alone: 125 -> 69 CPU s). Same XLA programs (HLO), so
# every tolerance holds; benchmarks and real runs keep the default.
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1")
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", "") and os.environ.get("ZOO_TEST_FAST_COMPILE", "1") == "1":
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

# Tracing and lowering allocate millions of short-lived objects: with the default thresholds
# (700, 10, 10) the cyclic garbage collector ran ~10,000 times over test_models, test_selfnorm and
# test_configs and took 13.5 of their 156 CPU s. Collecting every 50,000 allocations: 2.1 s of
# 145, the same peak memory (3.1 GB). Only this process and the xdist workers; the CLIs the tests
# start keep Python's defaults.
gc.set_threshold(50_000, 50, 100)

# The longest tests start first, so that the two xdist workers finish together
# instead of one of them running the README test alone at the end.
LONGEST_FIRST = ("test_readme.py::test_readme_runs_as_written", "test_sharding.py::", "test_models.py::",
                 "test_checkpoint.py::test_killed_run", "test_reliability.py::test_ctrl_c")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        return next((i for i, key in enumerate(LONGEST_FIRST) if key in item.nodeid), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order
