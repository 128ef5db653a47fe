"""CLI argument handling: overrides may follow options; stray arguments are errors."""

from __future__ import annotations

import argparse

import pytest

import equirecon.cli as cli


@pytest.fixture()
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, argparse.Namespace]:
    seen: dict[str, argparse.Namespace] = {}

    def record(args: argparse.Namespace) -> int:
        seen["args"] = args
        return 0

    for name in ("_cmd_pretrain", "_cmd_eval_watch", "_cmd_launch"):
        monkeypatch.setattr(cli, name, record)
    return seen


def test_overrides_after_options(captured: dict[str, argparse.Namespace]) -> None:
    assert cli.main(["eval", "watch", "runs/x", "--executor", "slurm", "eval.tasks=knn"]) == 0
    args = captured["args"]
    assert (args.executor, args.overrides) == ("slurm", ["eval.tasks=knn"])
    cli.main(["pretrain", "--config", "c.yaml", "a.b=1", "--", "c.d=2"])
    assert captured["args"].overrides == ["a.b=1", "c.d=2"]


def test_unknown_option_is_an_error(
    captured: dict[str, argparse.Namespace], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pretrain", "--config", "c.yaml", "--bogus"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert "args" not in captured
