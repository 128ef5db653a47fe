"""Checkpoint manifests (size + SHA-256 of every file): written before publication, verified
by resume, `eval` and `equirecon checkpoints verify`; a damaged newest checkpoint is passed over."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import equirecon.cli as cli
from equirecon.config import load_config
from equirecon.errors import CheckpointError
from evals.run import resolve_checkpoint
from pretrain.checkpoint import Checkpointer, select_checkpoint
from pretrain.checkpoint_integrity import MANIFEST, verify_checkpoint
from pretrain.train import Trainer
from tests.conftest import REPO, TINY_OVERRIDES


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((64, 8), value)}, "trainer": {"step": torch.tensor(0)}}


def _data_file(ckpt: Path) -> Path:
    return sorted(ckpt.glob("*.distcp"))[0]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def delete(path: Path) -> None:
    path.unlink()


def bit_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {"truncate": truncate, "delete": delete, "bit_flip": bit_flip}


def test_manifest_lists_every_file_before_publication(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pretrain.checkpoint as checkpoint

    published: list[bool] = []
    real_replace = checkpoint.os.replace

    def replace(src, dst):  # noqa: ANN001, ANN202
        if Path(src).name.startswith(".tmp_step_"):
            published.append((Path(src) / MANIFEST).is_file())
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    path = Checkpointer(tmp_path).save(3, _state(1.0), "a: 1\n", {"world_size": 1})
    assert published == [True]
    files = json.loads((path / MANIFEST).read_text())["files"]
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert set(files) == on_disk - {MANIFEST}
    assert {".metadata", "config.yaml", "meta.json"} <= set(files)
    assert all(files[f]["size"] == (path / f).stat().st_size for f in files)
    assert verify_checkpoint(path).state == "ok"


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_is_found_and_named(tmp_path: Path, damage: str) -> None:
    ckpt = Checkpointer(tmp_path, keep=5)
    ckpt.save(1, _state(1.0), "", {})
    newest = ckpt.save(2, _state(2.0), "", {})
    target = _data_file(newest)
    DAMAGE[damage](target)
    state = verify_checkpoint(newest)
    assert state.state == "damaged" and len(state.problems) == 1
    assert state.problems[0].startswith(target.name)
    chosen, damaged = select_checkpoint(tmp_path / "checkpoints")
    assert chosen is not None and chosen.name == "step_00000001"
    assert [d.path for d in damaged] == [newest]
    # eval: `latest` falls back, an explicitly named damaged checkpoint is an error
    assert resolve_checkpoint(tmp_path / "checkpoints" / "latest").name == "step_00000001"
    with pytest.raises(CheckpointError, match=target.name):
        resolve_checkpoint(newest)


def test_checkpoint_without_manifest_is_unverified_and_loads(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(4, _state(4.0), "", {})
    (path / MANIFEST).unlink()  # as written before manifests existed
    assert verify_checkpoint(path).state == "unverified"
    assert select_checkpoint(tmp_path / "checkpoints") == (path, [])
    target = _state(0.0)
    ckpt.load(resolve_checkpoint(tmp_path / "checkpoints" / "latest"), target)
    assert torch.equal(target["model"]["w"], torch.full((64, 8), 4.0))


def test_every_checkpoint_damaged_is_an_error(tmp_path: Path) -> None:
    path = Checkpointer(tmp_path).save(1, _state(1.0), "", {})
    truncate(_data_file(path))
    with pytest.raises(CheckpointError, match="every checkpoint"):
        select_checkpoint(tmp_path / "checkpoints")


def test_verify_command_lists_each_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = Checkpointer(tmp_path, keep=5)
    for step in (1, 2, 3):
        ckpt.save(step, _state(float(step)), "", {})
    (tmp_path / "checkpoints" / "step_00000001" / MANIFEST).unlink()
    bit_flip(_data_file(tmp_path / "checkpoints" / "step_00000003"))
    assert cli.main(["checkpoints", "verify", str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("step_00000003 (latest)") and "damaged: __0_0.distcp" in lines[0]
    assert "sha256 mismatch" in lines[0]
    assert lines[1].startswith("step_00000002") and " ok (" in lines[1]
    assert lines[2].startswith("step_00000001") and "unverified" in lines[2]
    assert lines[3] == "a resume starts from: step_00000002"
    bit_flip(_data_file(tmp_path / "checkpoints" / "step_00000003"))  # flipped back: intact
    assert cli.main(["checkpoints", "verify", str(tmp_path)]) == 0


# ---- resume past a damaged checkpoint -----------------------------------------------------------

STEPS = ["train.max_steps=6", "checkpoint.every_steps=2", "checkpoint.keep=3"]


def _config(run_dir: Path, uri: str) -> object:
    return load_config(
        REPO / "configs" / "demo_cpu.yaml",
        [*TINY_OVERRIDES, *STEPS, "data.backend=synthetic", f"run.dir={run_dir}",
         f"tracking.uri={uri}"],
    )  # fmt: skip


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln]
    return [(r["step"], r["train/loss_total"]) for r in rows if "train/loss_total" in r]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, float]]:
    tmp = tmp_path_factory.mktemp("integrity_ref")
    Trainer(_config(tmp / "ref", f"sqlite:///{tmp / 'm.db'}")).fit()
    losses = _losses(tmp / "ref")
    assert [s for s, _ in losses] == list(range(1, 7))
    return losses


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_falls_back_past_a_damaged_newest_checkpoint(
    tmp_path: Path,
    damage: str,
    uninterrupted: list[tuple[int, float]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_dir = tmp_path / "run"
    Trainer(_config(run_dir, uri)).fit(stop_after=4)  # checkpoints of steps 2 and 4
    newest = run_dir / "checkpoints" / "step_00000004"
    target = _data_file(newest)
    DAMAGE[damage](target)
    with caplog.at_level(logging.WARNING, logger="equirecon.pretrain"):
        trainer = Trainer(_config(run_dir, uri))
        trainer.fit()
    assert trainer.resume_from.name == "step_00000002"
    warning = next(r.getMessage() for r in caplog.records if "damaged" in r.getMessage())
    assert "step_00000004" in warning and target.name in warning
    # The same losses as the uninterrupted run (bitwise: one process), steps 3-6 re-trained.
    assert _losses(run_dir) == uninterrupted
    # The damaged checkpoint was replaced by a good one of the same step.
    assert verify_checkpoint(newest).state == "ok"
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    tags = mlflow.MlflowClient(uri).get_run(run_id).data.tags
    assert target.name in tags["checkpoint.damaged"]
    assert tags["checkpoint.resumed_from"] == "step_00000002"
