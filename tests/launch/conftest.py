"""A real single-node Slurm for the `slurm` tests (started here unless one already runs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "launch" / "local_slurm.sh"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: needs a running Slurm (a local one is started)")


def slurm_ready() -> bool:
    """True when `sinfo` answers and a node is usable."""
    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    states = out.stdout.split()
    return out.returncode == 0 and any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """A Slurm to submit to: the running one, else `launch/local_slurm.sh start` (stopped at the
    end of the session). Skips only where Slurm is absent and cannot be installed."""
    if slurm_ready():
        yield
        return
    if os.geteuid() != 0 and not shutil.which("slurmctld"):
        pytest.skip("no running Slurm, and not root: cannot install/start a local one")
    proc = subprocess.run(
        ["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900
    )
    if proc.returncode == 2:
        pytest.skip(f"local Slurm unavailable: {proc.stderr.strip()[-500:]}")
    assert proc.returncode == 0, f"launch/local_slurm.sh start failed:\n{proc.stderr[-3000:]}"
    try:
        yield
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=120)
