"""`equirecon pretrain` on an existing run directory with another config: the issue's cases
(model.embed_dim, method.name) end with the table of differences, not inside DCP."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import equirecon.cli as cli
from tests.conftest import REPO, TINY_OVERRIDES


def _argv(run_dir: Path, uri: str, *extra: str) -> list[str]:
    return [
        "pretrain", "--config", str(REPO / "configs" / "demo_cpu.yaml"), *TINY_OVERRIDES,
        "data.backend=synthetic", "checkpoint.every_steps=100", f"run.dir={run_dir}",
        f"tracking.uri={uri}", *extra,
    ]  # fmt: skip


def test_resume_refuses_other_model_or_method_and_accepts_more_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    run_dir, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'm.db'}"
    assert cli.main(_argv(run_dir, uri, "train.max_steps=2")) == 0
    saved = (run_dir / "config.yaml").read_text()
    capsys.readouterr()
    for override, key in (("model.embed_dim=64", "model.embed_dim"), ("method.name=ibot", "")):
        key = key or override.split("=")[0]
        assert cli.main(_argv(run_dir, uri, "train.max_steps=2", override)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.startswith(
            f"equirecon: error: cannot resume {run_dir}"
        )
        assert any(line.split()[:1] == [key] for line in err.splitlines()), err
        assert "run.dir=<new directory>" in err
        assert (run_dir / "config.yaml").read_text() == saved  # the saved config is untouched
    caplog.set_level(logging.INFO, logger="equirecon.pretrain")
    assert cli.main(_argv(run_dir, uri, "train.max_steps=3")) == 0
    assert "train.max_steps" in caplog.text and "changed settings" in caplog.text
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss_total" in r] == [1, 2, 3]
