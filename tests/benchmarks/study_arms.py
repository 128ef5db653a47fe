"""The study's arm names as the shell scripts resolve them (benchmarks/study_arms.lib.sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def arm_overrides(arm: str, check: bool = True) -> subprocess.CompletedProcess:
    """`arm_overrides ARM` of study_arms.lib.sh, run by bash from the repository root (stdout:
    the arm's key=value flags, one per line)."""
    return subprocess.run(
        ["bash", "-c", f"source benchmarks/study_arms.lib.sh && arm_overrides {arm}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=check,
    )
