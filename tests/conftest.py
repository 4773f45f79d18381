"""Test-wide settings: offline, CPU, no wandb; LAPACK single-threaded so the
two shared cores do not stall (see DESIGN.md section 6)."""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
