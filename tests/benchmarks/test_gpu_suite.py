"""`benchmarks/gpu_suite.sh --tiny`: the whole GPU suite on a tiny ViT on the CPU, with the
libraries the GPU machines lack made unimportable."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Not installed on the lent GPU machines: the suite must not need them.
BLOCKED = ("mlflow", "webdataset", "nvidia", "deepspeed", "submitit", "xformers")
EXPECTED_CHECKS = {"step", "drop_path", "attention", "transform", "compile"}

BLOCKER = f"""
import sys

BLOCKED = {BLOCKED!r}


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: the GPU suite must not import it")
        return None


sys.meta_path.insert(0, _Blocker())
"""


def _table(stdout: str) -> list[list[str]]:
    """Rows of the final results table (after the header line and the separator)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## GPU suite results"))
    rows = [line for line in lines[start:] if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header == ["check", "variant", "metric", "value", "unit", "note"]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]


@pytest.fixture(scope="module")
def suite_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    site = tmp_path_factory.mktemp("blocker")
    (site / "sitecustomize.py").write_text(BLOCKER)  # runs at interpreter start-up
    env = dict(os.environ, PYTHON=sys.executable)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    probe = subprocess.run(
        [sys.executable, "-c", "import mlflow"], env=env, capture_output=True, text=True
    )
    assert probe.returncode != 0 and "blocked" in probe.stderr, "the import blocker is not active"
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--tiny"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_tiny_suite_prints_every_check_with_positive_numbers(suite_output: str) -> None:
    rows = _table(suite_output)
    assert {r[0] for r in rows} == EXPECTED_CHECKS
    for check, variant, metric, value, unit, note in rows:
        if value == "n/a":
            # Only what cannot run on a CPU may be missing, and it must say why.
            assert metric == "mfu" or check == "attention", (check, variant, metric)
            assert note, (check, variant, metric)
            continue
        number = float(value)
        assert math.isfinite(number) and number > 0, (check, variant, metric, value)
        assert unit


def test_tiny_suite_covers_recon_overhead_backends_transforms(suite_output: str) -> None:
    rows = _table(suite_output)
    by_key = {(r[0], r[1], r[2]): r[3] for r in rows}
    for variant in ("recon", "no_recon"):
        for metric in ("img/s", "step_time", "peak_mem"):
            assert by_key[("step", variant, metric)] != "n/a"
    assert float(by_key[("step", "recon", "step_time_ratio")]) > 0
    assert float(by_key[("compile", "compiled", "step_time_ratio")]) > 0
    assert float(by_key[("drop_path", "subset", "step_time_ratio")]) > 0
    attention = {r[1]: r[3] for r in rows if r[0] == "attention"}
    assert attention["explicit (model.attention=math)"] != "n/a"
    assert attention["sdpa auto (model.attention=sdpa)"] != "n/a"
    assert "xformers" in attention and "sdpa flash" in attention
    transforms = {r[1] for r in rows if r[0] == "transform"}
    assert {"se2", "rotation", "translation", "color", "blur"} <= transforms
