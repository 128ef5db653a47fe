"""`scripts/continue_demo.sh` in its smoke-test mode (TINY=1, on the tests' demo shards): the
whole chain of the continued-pretraining demo (issue #26) runs, its page shows the starting model
(step 0) beside both continued models with the numbers of their results files, the report labels
the starting model, and a rerun skips every finished stage."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

STAGES = 7


def _run(data: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TINY": "1", "OMP_NUM_THREADS": "1"}
    cmd = ["bash", "scripts/continue_demo.sh", str(data), str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def test_tiny_continue_demo_runs_and_resumes(tmp_path: Path, demo_data: Path) -> None:
    out = tmp_path / "continue_demo"
    proc = _run(demo_data, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [f"== [{i}/{STAGES}]" in proc.stdout for i in range(1, STAGES + 1)] == [True] * STAGES

    page = (out / "continue_demo.md").read_text()
    header = next(line for line in page.splitlines() if line.startswith("| task |"))
    assert header == (
        "| task | starting model (step 0) | continued −recon (step 4) | "
        "continued +recon (step 4) |"
    )
    knn_row = next(line for line in page.splitlines() if line.startswith("| kNN top-1"))
    cells = [c.strip() for c in knn_row.strip("|").split("|")][1:]
    results = {
        (run, step): json.loads((out / run / "evals" / f"step_{step:08d}.json").read_text())
        for run in ("continue_recon", "continue_plain")
        for step in (0, 4)
    }
    knn = {key: r["metrics"]["eval/knn/top1"] for key, r in results.items()}
    assert knn[("continue_recon", 0)] == knn[("continue_plain", 0)]  # the same starting model
    expected = [knn[("continue_recon", 0)], knn[("continue_plain", 4)], knn[("continue_recon", 4)]]
    assert cells == [f"{v:.2f}" for v in expected]
    assert results[("continue_recon", 0)]["init"]["file"].endswith("baseline_export")
    assert "| rotation | full |" in page and "| rotation | context |" in page
    assert "(unfreeze)" in page and (out / "continue_demo" / "recon_grid.png").is_file()
    report = (out / "report" / "table.md").read_text()
    assert "| continue_recon [starting model: " in report
    assert "| continue_plain [starting model: " in report

    again = _run(demo_data, out)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    skipped = [line for line in again.stdout.splitlines() if line.endswith("done before, skipped")]
    assert len(skipped) == STAGES - 1, again.stdout
