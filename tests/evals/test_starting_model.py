"""The starting model of a continued run (issue #26, point 4): a fresh run with `model.init`
saves the loaded backbone as checkpoint step 0 before its first update, so that `eval watch`,
`equirecon eval` and `report` evaluate and show it beside the later steps, labelled with its
file. Writing it changes nothing in the training (the optimizer's first step stays the first);
a resume never writes it again, nor does the watcher evaluate it twice; retention keeps it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from equirecon.config import load_config
from equirecon.rundir import list_checkpoints
from pretrain.models.backbone import backbone_kwargs, build_backbone
from pretrain.train import Trainer
from tests.conftest import REPO, TINY_OVERRIDES
from tests.pretrain.released import save_hub_file
from tests.test_end_to_end import make_cfg

KNN = "eval/knn/top1"
# kNN only, on few images: what is checked here is where the numbers go, not their size.
SMALL_EVAL = ["eval.tasks=knn", "eval.labelled_train_images=100", "eval.labelled_test_images=50"]
SYNTHETIC = [*TINY_OVERRIDES, "data.backend=synthetic", "tracking.enabled=false"]


def _config(*extra: str):  # noqa: ANN202
    """The tiny model of the demo-data runs (`make_cfg`) on the synthetic reader."""
    return load_config(REPO / "configs" / "demo_cpu.yaml", [*SYNTHETIC, *extra])


@pytest.fixture(scope="module")
def init_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A released backbone of the tiny model (DINOv2 hub layout: timm keys + mask token)."""
    path = tmp_path_factory.mktemp("released") / "dinov2_tiny_pretrain.pth"
    return save_hub_file(_config(), path, seed=3)


def _meta(ckpt: Path) -> dict:
    return json.loads((ckpt / "meta.json").read_text())


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.method.state_dict().items()}


def _optimizer_state(trainer: Trainer) -> dict[int, dict[str, torch.Tensor]]:
    return trainer.optimizer.state_dict()["state"]


def test_step_0_is_the_loaded_backbone_and_changes_no_update(
    init_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 0 holds the file's backbone (student and teacher) and names the file; training with
    it, resumed from it, and without it (the save skipped) are bitwise the same run: the
    zero-lr step that creates the optimizer's state for the save is not kept."""
    from pretrain.init_weights import load_backbone_init
    from pretrain.restore import load_teacher_backbone

    def cfg(name: str):  # noqa: ANN202
        run = [f"run.dir={tmp_path / name}", f"model.init={init_file}"]
        return _config("train.max_steps=3", "checkpoint.every_steps=100", *run)

    ref = Trainer(cfg("ref"))
    ref.fit()
    step0 = tmp_path / "ref" / "checkpoints" / "step_00000000"
    meta = _meta(step0)
    assert meta["init"]["file"] == str(init_file) and meta["init"]["format"] == "dinov2"
    assert meta["init"]["sha256"] == ref.init_source.sha256
    assert meta["no_optimizer_state"] is True
    assert _meta(tmp_path / "ref" / "checkpoints" / "step_00000003")["init"] == meta["init"]
    assert "no_optimizer_state" not in _meta(tmp_path / "ref" / "checkpoints" / "step_00000003")
    saved, _ = load_teacher_backbone(step0)
    loaded = build_backbone(**backbone_kwargs(ref.cfg.model, ref.cfg.data.global_size))
    load_backbone_init(loaded, init_file)
    for key, value in loaded.state_dict().items():
        assert torch.equal(saved.state_dict()[key], value), key

    # Stopped right after step 0 was written, resumed by a new Trainer: the file is not read.
    Trainer(cfg("cut")).fit(stop_after=0)
    resumed = Trainer(cfg("cut"))
    assert resumed.init_source is None and resumed.init_record == meta["init"]
    resumed.fit()

    # The same run without the step-0 checkpoint.
    save = Trainer.save_checkpoint
    monkeypatch.setattr(
        Trainer, "save_checkpoint", lambda self: None if self.step == 0 else save(self)
    )
    plain = Trainer(cfg("plain"))
    plain.fit()
    assert [s for s, _ in list_checkpoints(tmp_path / "plain" / "checkpoints")] == [3]

    reference = _weights(ref)
    for other in (resumed, plain):
        for key, value in _weights(other).items():
            assert torch.equal(value, reference[key]), key
        for index, state in _optimizer_state(ref).items():
            for name, value in state.items():
                assert torch.equal(_optimizer_state(other)[index][name], value), (index, name)
    assert int(_optimizer_state(ref)[0]["step"]) == 3  # three updates, not four


def test_starting_model_watched_reported_and_never_redone(
    init_file: Path, tmp_path: Path, demo_data: Path, tracking_uri: str
) -> None:
    import mlflow

    from evals.report import build_report
    from evals.watch import format_state, watch

    run = tmp_path / "cont"
    steps = ["train.max_steps=4", "checkpoint.every_steps=2", "checkpoint.keep=1"]
    cfg = make_cfg(run, demo_data, tracking_uri, *steps, f"model.init={init_file}", *SMALL_EVAL)
    Trainer(cfg).fit(stop_after=2)
    ckpts = run / "checkpoints"
    assert [s for s, _ in list_checkpoints(ckpts)] == [0, 2]  # keep=1, and the starting model
    written = _meta(ckpts / "step_00000000")["time"]

    state = watch(run, executor="debug", once=True, poll_seconds=0.05)["checkpoints"]
    assert state["step_00000000"]["state"] == "done"
    assert state["step_00000000"]["starting_model"] == str(init_file)
    assert "starting_model" not in state["step_00000002"]
    assert f"[starting model: {init_file}]" in format_state({"checkpoints": state})
    start = json.loads((run / "evals" / "step_00000000.json").read_text())
    assert start["init"]["file"] == str(init_file) and start["step"] == 0

    # Resumed to the end: step 0 is not written again, the watcher does not evaluate it again.
    resumed = Trainer(cfg)
    assert resumed.init_source is None
    resumed.fit()
    assert [s for s, _ in list_checkpoints(ckpts)] == [0, 4]
    assert _meta(ckpts / "step_00000000")["time"] == written
    assert _meta(ckpts / "step_00000004")["init"]["file"] == str(init_file)
    again = watch(run, executor="debug", once=True, poll_seconds=0.05)["checkpoints"]
    assert again["step_00000000"] == state["step_00000000"]
    assert again["step_00000004"]["state"] == "done"
    assert "step_00000002" in again  # evaluated before retention removed it

    # The report: the starting model's row (step 0) before the run's (its latest step).
    report = build_report([run], out=tmp_path / "report", log_mlflow=False)
    rows = {r["run"]: r for r in report["rows"]}
    label = f"cont [starting model: {init_file}]"
    assert [r["run"] for r in report["rows"]] == [label, "cont"]
    assert rows[label]["step"] == 0 and rows[label][KNN] == start["metrics"][KNN]
    assert rows[label]["recon"] == "-"
    final = json.loads((run / "evals" / "step_00000004.json").read_text())
    assert rows["cont"]["step"] == 4 and rows["cont"][KNN] == final["metrics"][KNN]
    assert f"| {label} |" in report["markdown"]
    assert any(p.endswith("eval_knn_top1.png") for p in report["plots"])

    # MLflow: the curve starts at step 0.
    run_id = (run / "mlflow_run_id").read_text().strip()
    history = mlflow.MlflowClient(tracking_uri=tracking_uri).get_metric_history(run_id, KNN)
    assert sorted(m.step for m in history) == [0, 2, 4]


def test_runs_without_init_have_no_step_0(tmp_path: Path) -> None:
    cfg = _config("train.max_steps=2", "checkpoint.every_steps=1", f"run.dir={tmp_path}")
    trainer = Trainer(cfg)
    trainer.fit()
    assert trainer.init_record is None
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [1, 2]
    assert "init" not in _meta(tmp_path / "checkpoints" / "step_00000002")
