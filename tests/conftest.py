"""Test-session setup.

One intra-op thread: the test models are tiny, and on a shared 2-core machine OpenMP threads
that spin-wait for each other make small matmuls up to 40x slower (measured: a tiny DeltaNet
step took 11 s with 2 threads under load, 0.27 s with 1). Set before torch is imported so it
also reaches subprocesses the tests start.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Triton kernels run in Triton's CPU interpreter where there is no GPU; the flag is read when a
# kernel module is imported, so it is set before any test imports one.
os.environ.setdefault("TRITON_INTERPRET", "1")
