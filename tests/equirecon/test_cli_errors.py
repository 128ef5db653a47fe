"""User errors on the command line: one line and a hint on stderr, exit code 2, no traceback;
`--debug` or EQUIRECON_DEBUG=1 shows the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import equirecon.cli as cli
from equirecon.errors import UserError
from tests.conftest import REPO, TINY_OVERRIDES

DEMO = str(REPO / "configs" / "demo_cpu.yaml")


def _errors(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Each user error: (argv, what its line must say)."""
    run = f"run.dir={tmp_path / 'run'}"
    return {
        "unknown key": (["pretrain", "--config", DEMO, "recon.lamda=1"], "'recon.lamda'"),
        "bad value": (["pretrain", "--config", DEMO, "recon.lambda=-1"], "recon.lambda=-1.0"),
        "unknown method": (["pretrain", "--config", DEMO, "method.name=byol"], "method.name"),
        "missing config": (["pretrain", "--config", str(tmp_path / "no.yaml")], "no.yaml"),
        "missing data": (
            ["pretrain", "--config", DEMO, *TINY_OVERRIDES, run, f"data.path={tmp_path}/none"],
            f"{tmp_path}/none",
        ),
        "missing checkpoint": (
            ["eval", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "step_00000001")],
            "step_00000001",
        ),
        "wrong layout": (
            ["data", "build", "--format", "voc", "--src", str(tmp_path), "--out", str(tmp_path)],
            "data build --format voc: ",
        ),
        "export without data": (["eval", "--export", str(tmp_path)], "needs --data"),
        "bad sbatch option": (
            ["launch", "slurm", "--config", DEMO, "--gpus-per-node", "1", "--sbatch", "=x"],
            "--sbatch takes KEY=VALUE",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unknown key",
        "bad value",
        "unknown method",
        "missing config",
        "missing data",
        "missing checkpoint",
        "wrong layout",
        "export without data",
        "bad sbatch option",
    ],
)
def test_user_error_is_one_line_and_exit_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EQUIRECON_DEBUG", raising=False)
    argv, says = _errors(tmp_path)[case]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(("equirecon: error:", "hint:"))]
    assert len(lines) == 2, err
    assert lines[0].startswith("equirecon: error:") and says in lines[0], err
    assert lines[1].startswith("hint:")
    assert "Traceback" not in err


def test_debug_flag_lets_the_exception_through(tmp_path: Path) -> None:
    argv, _ = _errors(tmp_path)["bad value"]
    with pytest.raises(UserError, match="recon.lambda"):
        cli.main([*argv, "--debug"])


def test_exit_code_and_debug_variable_in_a_real_process(tmp_path: Path) -> None:
    argv, _ = _errors(tmp_path)["bad value"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("EQUIRECON_DEBUG", None)

    def run(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "equirecon", *argv],
            capture_output=True,
            text=True,
            env={**env, **extra},
            cwd=tmp_path,
            timeout=300,
        )

    plain = run()
    assert plain.returncode == 2, plain.stderr
    assert plain.stderr.startswith("equirecon: error: recon.lambda=-1.0: must be >= 0\nhint: ")
    assert "Traceback" not in plain.stderr
    debug = run(EQUIRECON_DEBUG="1")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "ConfigError: recon.lambda=-1.0" in debug.stderr
