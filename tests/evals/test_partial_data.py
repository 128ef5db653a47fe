"""Eval on a dataset root that has only some subsets (evals/dispatch.py `plan_tasks`, the `eval`
CLI): tasks without their data are skipped with one line each, or refused when named in
--tasks; a task that fails does not lose the others' results (exit code 1)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from equirecon.cli import main
from equirecon.errors import DataError, MissingPathError
from evals.dispatch import explicit_tasks, missing_data, plan_tasks
from evals.tasks import base as task_registry

ALL = ["equivariance", "knn", "linear", "homography", "segmentation", "depth"]
KNN_LINEAR = [
    "eval.labelled_train_images=60",
    "eval.labelled_test_images=30",
    "eval.linear.epochs=2",
    "eval.linear.lrs=0.01",
]


def partial_root(demo_data: Path, root: Path, subsets: tuple[str, ...]) -> Path:
    """A dataset root with only `subsets` of the demo data (links) and its manifest."""
    root.mkdir(parents=True)
    shutil.copy(demo_data / "manifest.json", root / "manifest.json")
    for subset in subsets:
        (root / subset).symlink_to(demo_data / subset, target_is_directory=True)
    return root


def test_plan_skips_or_refuses_tasks_without_their_subset(
    tmp_path: Path, demo_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = partial_root(demo_data, tmp_path / "data", ("natural", "labelled"))
    with caplog.at_level(logging.WARNING, logger="equirecon.eval"):
        to_run, skipped = plan_tasks(ALL, str(root))
    assert to_run == ["equivariance", "knn", "linear", "homography"]
    assert skipped == {
        "segmentation": f"no segmentation/ subset in {root} (make one with "
        f"equirecon data build --format ade20k|voc --src ROOT --out {root})",
        "depth": f"no depth/ subset in {root} (make one with "
        f"equirecon data build --format nyu-depth --src NYU --out {root})",
    }
    assert [r.getMessage() for r in caplog.records] == [
        f"skipped {task}: {why}" for task, why in skipped.items()
    ]
    # Named explicitly: an error naming every task without its data.
    assert explicit_tasks("knn,segmentation") and not explicit_tasks("all")
    assert not explicit_tasks("") and not explicit_tasks(None)
    with pytest.raises(MissingPathError, match="eval task segmentation: no segmentation/.*; eval"):
        plan_tasks(["knn", "segmentation", "depth"], str(root), explicit=True)
    assert plan_tasks(["knn"], str(root), explicit=True) == (["knn"], {})

    # A subset without its val split (a plain `data build` writes only train).
    (tmp_path / "train_only" / "natural").mkdir(parents=True)
    for tar in (demo_data / "natural").glob("train-*.tar"):
        (tmp_path / "train_only" / "natural" / tar.name).symlink_to(tar)
    why = missing_data("homography", str(tmp_path / "train_only"))
    assert why == (
        f"no natural/val-*.tar shards in {tmp_path / 'train_only'} (make them with "
        f"equirecon data build --src IMAGES --out {tmp_path / 'train_only'} --split val)"
    )
    # No task left: a user error; so is a path that does not exist.
    with pytest.raises(
        DataError, match="no eval task has its data in .*homography: no natural/val"
    ):
        plan_tasks(["homography", "depth"], str(tmp_path / "train_only"))
    with pytest.raises(MissingPathError, match="does not exist"):
        plan_tasks(ALL, str(tmp_path / "nowhere"))
    # A folder of shards (no dataset root) gives every task the same shards: nothing skipped.
    assert plan_tasks(ALL, str(demo_data / "natural")) == (ALL, {})


def test_plan_checks_the_subset_the_equivariance_probe_is_set_to_read(
    tmp_path: Path, demo_data: Path
) -> None:
    from equirecon.config import load_config

    scenes = load_config(None, ["eval.equivariance.subset=segmentation"]).eval
    photos = str(partial_root(demo_data, tmp_path / "photos", ("natural", "labelled")))
    tasks = ["equivariance", "knn"]
    assert plan_tasks(tasks, photos) == (tasks, {})
    assert plan_tasks(tasks, photos, settings=scenes) == (
        ["knn"],
        {
            "equivariance": f"no segmentation/ subset in {photos} (make one with "
            f"equirecon data build --format ade20k|voc --src ROOT --out {photos})"
        },
    )
    scenes_only = str(partial_root(demo_data, tmp_path / "scenes", ("segmentation",)))
    assert plan_tasks(["equivariance"], scenes_only, settings=scenes) == (["equivariance"], {})
    with pytest.raises(MissingPathError, match="eval task equivariance: no natural/"):
        plan_tasks(["equivariance"], scenes_only, explicit=True)


def test_eval_cli_on_partial_data(
    tmp_path: Path,
    demo_data: Path,
    tracking_uri: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow

    from launch.entry import pretrain
    from tests.test_end_to_end import make_cfg

    monkeypatch.delenv("EQUIRECON_DEBUG", raising=False)
    run_dir = tmp_path / "run"
    pretrain(make_cfg(run_dir, demo_data, tracking_uri, "train.max_steps=2"))
    root = partial_root(demo_data, tmp_path / "data", ("natural", "labelled"))
    ckpt = str(run_dir / "checkpoints" / "step_00000002")
    result_file = run_dir / "evals" / "step_00000002.json"
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    client = mlflow.MlflowClient(tracking_uri)
    base = ["eval", "--checkpoint", ckpt, "--data", str(root), "--device", "cpu", *KNN_LINEAR]

    # The run's task list (eval.tasks): the tasks without data are skipped, the others run.
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="equirecon.eval"):
        assert main([*base, "eval.tasks=knn,segmentation,depth"]) == 0
    out = capsys.readouterr().out
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert [s.split(":")[0] for s in skips] == ["skipped segmentation", "skipped depth"]
    assert "skipped (no data, see above): segmentation, depth" in out
    result = json.loads(result_file.read_text())
    assert set(result["metrics"]) == {"eval/knn/top1"} and result["failed"] == {}
    assert set(result["skipped"]) == {"segmentation", "depth"}
    assert [m.step for m in client.get_metric_history(run_id, "eval/knn/top1")] == [2]

    # Named with --tasks: an error (exit code 2, one line and a hint), nothing evaluated.
    assert main([*base, "--tasks", "knn,segmentation"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1].startswith("hint: "), err
    assert err[0].startswith("equirecon: error: eval task segmentation: no segmentation/ subset")

    # One task fails: the other's results are written and logged; exit code 1.
    def broken(provider, ctx):  # noqa: ANN001, ANN202
        raise RuntimeError("out of memory, say")

    monkeypatch.setitem(task_registry._TASKS, "knn", broken)
    assert main([*base, "eval.tasks=knn,linear"]) == 1
    assert "failed knn: RuntimeError: out of memory, say" in capsys.readouterr().out
    result = json.loads(result_file.read_text())
    assert set(result["metrics"]) == {"eval/linear/top1"}
    assert result["failed"] == {"knn": "RuntimeError: out of memory, say"}
    assert [m.step for m in client.get_metric_history(run_id, "eval/linear/top1")] == [2]
