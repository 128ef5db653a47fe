"""The run-directory layout and atomic writes (equirecon/rundir.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from equirecon.errors import ConfigError
from equirecon.rundir import (
    checkpoint_step,
    list_checkpoints,
    step_dir_name,
    step_result_path,
    temp_path,
    write_json_atomic,
    write_text_atomic,
)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "latest"
    write_text_atomic(path, "step_00000001\n")
    write_text_atomic(path, "step_00000002\n")
    assert path.read_text() == "step_00000002\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]
    assert temp_path(path).name == f".latest.tmp{os.getpid()}"


def test_json_result_goes_to_the_evals_folder(tmp_path: Path) -> None:
    out = write_json_atomic(step_result_path(tmp_path, 7), {"metrics": {"a": 1.0}})
    assert out == tmp_path / "evals" / "step_00000007.json"
    assert out.read_text() == json.dumps({"metrics": {"a": 1.0}}, indent=1) + "\n"


def test_only_complete_checkpoints_are_listed(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for name, complete in (("step_00000002", True), ("step_00000001", True), (".tmp_step_00000003", True), ("step_00000004", False)):  # fmt: skip
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / ".metadata").write_text("")
    assert [(s, p.name) for s, p in list_checkpoints(root)] == [
        (1, "step_00000001"),
        (2, "step_00000002"),
    ]
    assert list_checkpoints(tmp_path / "missing") == []
    assert checkpoint_step(root / step_dir_name(12)) == 12
    with pytest.raises(ConfigError, match="step_XXXXXXXX"):
        checkpoint_step(root / "latest")
