"""End to end on CPU: pretrain -> checkpoints -> interrupted + resumed run -> eval -> MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from equirecon.config import load_config
from pretrain.checkpoint import latest_checkpoint, list_checkpoints
from pretrain.train import Trainer
from tests.conftest import REPO, TINY_OVERRIDES

pytestmark = pytest.mark.slow

REQUIRED_TRAIN = {
    "train/loss_total",
    "train/loss_ssl",
    "train/loss_recon",
    "train/lr",
    "train/img_per_s",
    "train/data_wait_frac",
}


def make_cfg(run_dir: Path, data: Path, uri: str, *extra: str):  # noqa: ANN201
    return load_config(
        REPO / "configs" / "demo_cpu.yaml",
        TINY_OVERRIDES + [f"run.dir={run_dir}", f"data.path={data}", f"tracking.uri={uri}", *extra],
    )


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss_total"] for r in rows}


def test_pretrain_resume_and_eval(tmp_path: Path, demo_data: Path, tracking_uri: str) -> None:
    import mlflow

    steps = ["train.max_steps=6", "checkpoint.every_steps=2", "checkpoint.keep=2"]
    # Uninterrupted reference run.
    ref_dir = tmp_path / "ref"
    Trainer(make_cfg(ref_dir, demo_data, tracking_uri, *steps)).fit()
    ref = losses(ref_dir)
    assert sorted(ref) == [1, 2, 3, 4, 5, 6]

    # The same run, stopped after step 3 (as a preemption would), then resumed by a new process
    # state (a new Trainer reads checkpoints/latest).
    run_dir = tmp_path / "run"
    Trainer(make_cfg(run_dir, demo_data, tracking_uri, *steps)).fit(stop_after=3)
    assert latest_checkpoint(run_dir / "checkpoints").name == "step_00000003"
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    Trainer(make_cfg(run_dir, demo_data, tracking_uri, *steps)).fit()
    resumed = losses(run_dir)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    # Bitwise identical on CPU single process: same data, same θ, same RNG, same optimizer state.
    assert resumed == ref, (resumed, ref)
    assert (run_dir / "mlflow_run_id").read_text().strip() == run_id

    # Retention keeps the newest 2; latest names the final one; the config travels along.
    ckpts = [p.name for _, p in list_checkpoints(run_dir / "checkpoints")]
    assert ckpts == ["step_00000004", "step_00000006"]
    final = latest_checkpoint(run_dir / "checkpoints")
    assert (final / "config.yaml").is_file() and (final / ".metadata").is_file()
    assert not list((run_dir / "checkpoints").glob(".tmp_*"))
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert REQUIRED_TRAIN <= set(rows[-1])
    assert (run_dir / "recon_grid.png").stat().st_size > 0

    # Eval through the CLI, as a user would run it.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "equirecon",
            "eval",
            "--checkpoint",
            str(run_dir / "checkpoints" / "latest"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run_dir / "evals" / "step_00000006.json").read_text())
    r2 = result["metrics"]["eval/equivariance/rotation_r2"]
    top1 = result["metrics"]["eval/knn/top1"]
    assert -1.0 < r2 <= 1.0 and 0.0 <= top1 <= 100.0
    assert "eval/knn/top1" in proc.stdout

    # Everything landed in one MLflow run: params, train curves, eval metrics at the ckpt step.
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(run_id)
    assert run.data.params["recon.transform"] == "se2"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss_recon")] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    evals = client.get_metric_history(run_id, "eval/equivariance/rotation_r2")
    assert [(m.step, round(m.value, 6)) for m in evals] == [(6, round(r2, 6))]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert "config.yaml" in artifacts and "recon" in artifacts


def test_teacher_weights_in_checkpoint_are_what_eval_loads(
    tmp_path: Path, demo_data: Path, tracking_uri: str
) -> None:
    from evals.run import load_teacher_backbone

    trainer = Trainer(
        make_cfg(
            tmp_path / "r",
            demo_data,
            tracking_uri,
            "train.max_steps=2",
            "checkpoint.every_steps=10",
        )
    )
    trainer.fit()
    backbone, _ = load_teacher_backbone(latest_checkpoint(tmp_path / "r" / "checkpoints"))
    teacher = trainer.method.teacher.encoder.backbone
    for (name, a), (_, b) in zip(backbone.state_dict().items(), teacher.state_dict().items()):
        assert torch.equal(a, b), name
    # ... and they differ from the student's (EMA, not a copy).
    student = trainer.method.student.encoder.backbone.state_dict()
    assert any(
        not torch.equal(student[k], v)
        for k, v in teacher.state_dict().items()
        if v.is_floating_point()
    )


@pytest.mark.distributed
def test_torchrun_two_processes_ddp(tmp_path: Path, demo_data: Path, tracking_uri: str) -> None:
    """`torchrun --nproc_per_node=2 -m equirecon pretrain …` (gloo DDP) trains and checkpoints;
    the 2-rank checkpoint evaluates in a single process."""
    run_dir = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "equirecon", "pretrain", "--config", str(REPO / "configs" / "demo_cpu.yaml"),
        *TINY_OVERRIDES, f"run.dir={run_dir}", f"data.path={demo_data}", f"tracking.uri={tracking_uri}",
        "train.strategy=ddp", "train.max_steps=3", "checkpoint.every_steps=2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    final = latest_checkpoint(run_dir / "checkpoints")
    assert final.name == "step_00000003"
    assert json.loads((final / "meta.json").read_text())["world_size"] == 2
    assert len(list(final.glob("*.distcp"))) == 2  # one shard file per rank
    assert sorted(losses(run_dir)) == [1, 2, 3]
    from evals.run import load_teacher_backbone

    backbone, _ = load_teacher_backbone(final)
    assert all(torch.isfinite(p).all() for p in backbone.parameters())


def test_export_loads_in_plain_timm_with_same_features(
    tmp_path: Path, demo_data: Path, tracking_uri: str
) -> None:
    """`equirecon export` -> timm.create_model(..., pretrained_cfg_overlay=dict(file=...)) gives
    the same features as the backbone our evaluation code loads from the checkpoint."""
    import timm

    from evals.run import load_teacher_backbone
    from pretrain.export import load_exported_backbone

    run_dir = tmp_path / "r"
    Trainer(
        make_cfg(run_dir, demo_data, tracking_uri, "train.max_steps=2", "model.num_registers=2")
    ).fit()
    out = tmp_path / "export"
    proc = subprocess.run(
        [sys.executable, "-m", "equirecon", "export", "--checkpoint", str(run_dir / "checkpoints" / "latest"), "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "config.json").read_text())
    plain = timm.create_model(
        meta["architecture"],
        pretrained=True,
        pretrained_cfg_overlay={"file": str(out / "model.safetensors")},
        **meta["model_args"],
    ).eval()
    ours, _ = load_teacher_backbone(latest_checkpoint(run_dir / "checkpoints"))
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        ref = ours(x)
        assert torch.allclose(plain.forward_features(x), ref, atol=1e-6)
        assert torch.allclose(load_exported_backbone(out)(x), ref, atol=1e-6)
    assert meta["num_prefix_tokens"] == 3 and meta["equirecon"]["step"] == 2
