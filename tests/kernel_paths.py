"""Another CPU kernel path on the same machine, for tests whose numbers must not depend on it.

torch picks its CPU kernels by the machine: the vectorized ATen kernels by the instruction set
(AVX-512 on many Intel Xeons, AVX2 on the AMD EPYCs seen here), MKL's GEMM by the CPU's vendor
and family, oneDNN's by its ISA, and reductions by the thread count. A float32 result of a deep
computation compared with a stored value at a tolerance that only the capturing machine meets
fails on the next CPU family. `OTHER_KERNEL_ENV` moves every one of those choices on the machine
that runs the tests, so a test that would fail on another CPU fails here too:

- `ATEN_CPU_CAPABILITY=default`: ATen's scalar (non-vectorized) kernels, valid on every CPU;
- `MKL_CBWR=COMPATIBLE`: MKL's vendor-neutral GEMM code path (ignored where torch has no MKL);
- `ONEDNN_MAX_CPU_ISA=SSE41`: oneDNN's oldest x86 ISA (ignored on other architectures);
- one thread instead of the default, so every reduction sums in another order.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OTHER_KERNEL_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def run_on_other_kernel_path(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """`python ARGS` from the repository root with `OTHER_KERNEL_ENV`; output captured."""
    env = {**os.environ, **OTHER_KERNEL_ENV, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
