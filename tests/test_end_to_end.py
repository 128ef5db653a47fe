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

    # Eval through the CLI, as a user would run it (and as scripts/demo.sh does).
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

    # The rest of the demo's evaluation step (scripts/demo.sh): the probe's floors, its second
    # view, and the table of both views with their floors (a smaller h, to keep this quick).
    demo = (REPO / "scripts" / "demo.sh").read_text().splitlines()
    steps = [line for line in demo if line.startswith("$BIN/")]
    assert steps[-2:] == [
        '$BIN/equirecon eval --checkpoint "$RUN/checkpoints/latest"  # every task, as the config says',
        '$BIN/python scripts/demo_eval.py "$RUN"',
    ]
    small_h = ["eval.equivariance.epochs=1", "eval.equivariance.hidden=32"]
    proc = subprocess.run(
        [sys.executable, "scripts/demo_eval.py", str(run_dir), *small_h],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_demo_table(proc.stdout, run_dir, result)

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


def check_demo_table(stdout: str, run_dir: Path, result: dict) -> None:
    """The demo's table (scripts/demo_table.py): one row per transform, with the model, the pixel
    floor and the random-ViT floor in the context and in the full view, read from files of
    their own (issue #25)."""
    evals = run_dir / "evals"
    assert sorted(p.name for p in evals.glob("*.json")) == [
        "floor_pixels.full-global.json",
        "floor_pixels.json",
        "floor_random.full-global.json",
        "floor_random.json",
        "step_00000006.full-global.json",
        "step_00000006.json",
    ]
    lines = stdout[stdout.index("\n== results") :].splitlines()
    views = next(line for line in lines if "context view" in line and "full view" in line)
    assert views.index("context view") < views.index("full view")
    header = next(line for line in lines if line.startswith("transform "))
    assert header.split() == ["transform", *["model", "pixels", "random", "ViT"] * 2]
    rows = {line.split()[0]: line.split()[1:] for line in lines[lines.index(header) + 1 :][:5]}
    assert list(rows) == ["rotation", "translation", "se2", "color", "blur"]
    full = json.loads((evals / "step_00000006.full-global.json").read_text())["metrics"]
    pixels = json.loads((evals / "floor_pixels.json").read_text())["metrics"]
    for name in ("rotation", "translation", "se2"):  # g moves pixels out: each view its numbers
        cells = [float(c) for c in rows[name]]
        assert len(cells) == 6, rows[name]
        assert cells[0] == round(result["metrics"][f"eval/equivariance/{name}_r2"], 4)
        assert cells[1] == round(pixels[f"eval/equivariance/{name}_r2"], 4)
        assert cells[3] == round(full[f"eval/equivariance/full/global/{name}_r2"], 4)
    for name in ("color", "blur"):  # no fill: one set of images, the full view says so
        assert len(rows[name]) == 5 and rows[name][3:] == ["=", "context"], rows[name]
        assert all(-1e9 < float(c) <= 1.0 for c in rows[name][:3])


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
