"""Equivariance probes with different settings never overwrite each other (issue #25): the view
and features are in the metric names, the results file and the MLflow record, and `report`
labels every number with them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from equirecon.cli import main
from equirecon.config import EvalConfig
from equirecon.eval_tasks import (
    is_unqualified_metric,
    probe_tag,
    qualified_metric,
    split_qualified_metric,
    task_probes,
)
from equirecon.eval_tasks.equivariance import EquivarianceSettings, settings_probe
from equirecon.rundir import RESULT_FILE_RE, floor_result_path, step_result_path
from evals.results import labelled_metrics, read_step_results, result_probes

R2 = "eval/equivariance/rotation_r2"
TINY_PROBE = [
    "eval.tasks=equivariance",
    "eval.equivariance.transforms=rotation",
    "eval.equivariance.train_images=24",
    "eval.equivariance.test_images=12",
    "eval.equivariance.views_per_image=1",
    "eval.equivariance.epochs=1",
    "eval.equivariance.hidden=16",
]


def test_probe_names() -> None:
    assert settings_probe(EquivarianceSettings()) == "context/global"
    assert settings_probe({"view": "full", "features": "grid", "grid": 0}) == "full/grid0"
    assert settings_probe({"view": "disk", "features": "equi", "grid": 3}) == "disk/equi"
    assert settings_probe({"transforms": "rotation"}) is None  # saved before views existed
    assert task_probes(["knn", "equivariance"], EvalConfig()) == {"equivariance": "context/global"}
    probes = {"equivariance": "full/global"}
    assert probe_tag(probes) == "full-global"
    assert qualified_metric(R2, probes) == "eval/equivariance/full/global/rotation_r2"
    assert qualified_metric("eval/knn/top1", {**probes, "knn": "x"}) == "eval/knn/x/top1"
    assert qualified_metric("eval/knn/top1", probes) == "eval/knn/top1"
    assert split_qualified_metric("eval/equivariance/full/grid2/se2_r2_std") == (
        "full/grid2",
        "eval/equivariance/se2_r2_std",
    )
    assert split_qualified_metric(R2) is None
    assert split_qualified_metric("eval/knn/a/b/top1") is None  # knn has no probe
    assert is_unqualified_metric(R2, probes) and not is_unqualified_metric(R2, {})
    assert not is_unqualified_metric("eval/equivariance/full/global/rotation_r2", probes)
    run = Path("RUN")
    assert step_result_path(run, 7) == run / "evals" / "step_00000007.json"
    assert step_result_path(run, 7, "full-grid2").name == "step_00000007.full-grid2.json"
    assert floor_result_path(run, "pixels", "full-global").name == "floor_pixels.full-global.json"
    assert RESULT_FILE_RE.match("step_00000007.full-grid2.json").groups() == (
        "00000007",
        "full-grid2",
    )
    assert RESULT_FILE_RE.match("step_00000007.json").groups() == ("00000007", None)


def test_the_subset_is_in_the_label_unless_it_is_the_default() -> None:
    scenes = EquivarianceSettings(view="full", subset="segmentation")
    assert settings_probe(scenes) == "full/global/segmentation"
    assert settings_probe({"view": "context", "features": "global", "subset": "natural"}) == (
        "context/global"
    )
    assert settings_probe({"view": "context", "subset": "labelled"}) == "context/global/labelled"
    probes = task_probes(["equivariance"], EvalConfig(equivariance=scenes))
    assert probe_tag(probes) == "full-global-segmentation"
    name = qualified_metric(R2, probes)
    assert name == "eval/equivariance/full/global/segmentation/rotation_r2"
    assert split_qualified_metric(name) == ("full/global/segmentation", R2)
    assert RESULT_FILE_RE.match(f"step_00000007.{probe_tag(probes)}.json")
    assert result_probes({"eval": {"equivariance": dataclasses.asdict(scenes)}}) == probes


def test_a_bad_subset_names_the_key_and_the_choices() -> None:
    from equirecon.config import load_config
    from equirecon.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(None, ["eval.equivariance.subset=photos"])
    message = str(info.value)
    assert message == (
        "eval.equivariance.subset='photos': must be one of "
        "['depth', 'labelled', 'natural', 'segmentation']"
    )


def test_the_subset_is_where_the_probe_reads_its_images(demo_data: Path) -> None:
    from data_pipeline.eval_images import load_images
    from evals.providers import PixelFeatures
    from evals.tasks import EvalContext, get_task

    images = {}
    for subset in ("natural", "segmentation"):
        settings = EquivarianceSettings(
            transforms="color", subset=subset, train_images=8, test_images=4, epochs=1, hidden=8
        )
        ctx = EvalContext(EvalConfig(equivariance=settings), str(demo_data), 16)
        _, details = get_task("equivariance")(PixelFeatures(4), ctx)
        assert details["color"]["subset"] == subset
        read = {key[1:3]: value[0] for key, value in ctx.cache.items() if key[0] == "images"}
        assert set(read) == {(subset, "train"), (subset, "val")}
        expected, _ = load_images(str(demo_data), subset, "train", 16, False, 8)
        assert torch.equal(read[(subset, "train")], expected)
        images[subset] = read[(subset, "train")]
    assert not torch.equal(images["natural"], images["segmentation"])


@pytest.mark.parametrize(
    ("result", "probe"),
    [
        ({"probes": {"equivariance": "disk/equi"}, "eval": {}}, "disk/equi"),
        ({"eval": {"equivariance": {"view": "full", "features": "grid", "grid": 2}}}, "full/grid2"),
        ({"eval": {"equivariance_view": "context", "equivariance_features": "equi"}}, "context/equi"),
        ({"eval": {"equivariance_transforms": "rotation"}}, None),  # before views existed
        ({}, None),
    ],
)  # fmt: skip
def test_result_probes_of_every_record_format(result: dict, probe: str | None) -> None:
    assert result_probes(result) == ({"equivariance": probe} if probe else {})
    labelled = labelled_metrics({**result, "metrics": {R2: 0.5, "eval/knn/top1": 9.0}})
    qualified = qualified_metric(R2, {"equivariance": probe or "?"})
    assert labelled == {qualified: 0.5, "eval/knn/top1": 9.0}


def test_two_views_of_one_checkpoint_survive_on_disk_in_mlflow_and_in_the_report(
    tmp_path: Path, demo_data: Path, tracking_uri: str
) -> None:
    import mlflow

    from evals.report import build_report
    from evals.run import evaluate_checkpoint
    from launch.entry import pretrain
    from tests.test_end_to_end import make_cfg

    run_dir = tmp_path / "run"  # its configured probe: the default, view context, features global
    pretrain(make_cfg(run_dir, demo_data, tracking_uri, "train.max_steps=2", *TINY_PROBE))
    ckpt = run_dir / "checkpoints" / "step_00000002"
    evals = run_dir / "evals"

    full = evaluate_checkpoint(ckpt, overrides=["eval.equivariance.view=full"], device="cpu")
    own = evaluate_checkpoint(ckpt, device="cpu")  # the run's configured eval, after it
    assert Path(full["path"]) == evals / "step_00000002.full-global.json"
    assert Path(own["path"]) == evals / "step_00000002.json"
    on_disk = {p.name: json.loads(p.read_text()) for p in evals.glob("step_*.json")}
    assert set(on_disk) == {"step_00000002.json", "step_00000002.full-global.json"}
    r2_full, r2_own = full["metrics"][R2], own["metrics"][R2]
    assert r2_full != r2_own
    assert on_disk["step_00000002.full-global.json"]["metrics"] == {
        R2: r2_full,
        "eval/equivariance/full/global/rotation_r2": r2_full,
    }
    assert on_disk["step_00000002.json"]["metrics"] == {
        R2: r2_own,
        "eval/equivariance/context/global/rotation_r2": r2_own,
    }
    assert on_disk["step_00000002.json"]["probes"] == {"equivariance": "context/global"}
    assert on_disk["step_00000002.full-global.json"]["probes"] == {"equivariance": "full/global"}
    assert on_disk["step_00000002.full-global.json"]["eval"]["equivariance"]["view"] == "full"
    assert [r["path"] for r in read_step_results(run_dir)][-1] == own["path"]

    # MLflow: each probe under its own name; the interface name is the configured probe's only.
    client = mlflow.MlflowClient(tracking_uri)
    run_id = (run_dir / "mlflow_run_id").read_text().strip()

    def history(name: str) -> list[tuple[int, float]]:
        return [(m.step, round(m.value, 6)) for m in client.get_metric_history(run_id, name)]

    assert history("eval/equivariance/full/global/rotation_r2") == [(2, round(r2_full, 6))]
    assert history("eval/equivariance/context/global/rotation_r2") == [(2, round(r2_own, 6))]
    assert history(R2) == [(2, round(r2_own, 6))]

    # A floor in another view has its own file too; an explicit --out (the study scripts'
    # command line) is written where it says, with the interface names, and touches nothing else.
    floor = evaluate_checkpoint(
        ckpt, floor="pixels", overrides=["eval.equivariance.view=full"], device="cpu"
    )
    assert Path(floor["path"]) == evals / "floor_pixels.full-global.json"
    out = tmp_path / "study_full.json"
    argv = ["eval", "--checkpoint", str(run_dir / "checkpoints" / "latest"), "--tasks"]
    argv += ["equivariance", "eval.equivariance.view=full", "--out", str(out), "--no-mlflow"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert json.loads(out.read_text())["metrics"][R2] == r2_full  # deterministic
    assert sorted(p.name for p in evals.glob("*_*.json")) == [
        "floor_pixels.full-global.json",
        "step_00000002.full-global.json",
        "step_00000002.json",
    ]
    assert history(R2) == [(2, round(r2_own, 6))]

    # The report shows both views, each labelled, and the floor beside them.
    report = build_report([run_dir], out=tmp_path / "report", log_mlflow=False)
    rows = {r["run"]: r for r in report["rows"]}
    assert rows["run"]["eval/equivariance/rotation_r2 (context, global)"] == r2_own
    assert rows["run"]["eval/equivariance/rotation_r2 (full, global)"] == r2_full
    floor_row = rows["run [pixels floor]"]
    assert floor_row["eval/equivariance/rotation_r2 (full, global)"] == floor["metrics"][R2]
    assert R2 not in report["columns"]
