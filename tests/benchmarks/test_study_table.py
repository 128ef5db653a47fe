"""benchmarks/study_table.py: the round-3 table reads every arm's result files, pairs arms by
seed (the reconstruction's own effect against lambda0, the paper's claim against baseline,
-disk arms against lambda0-disk) and keeps floors and curves apart."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import study_table
from tests.benchmarks.study_arms import REPO, arm_overrides


def _probe(path: Path, rotation: float, se2: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    details = {"rotation": {"r2": rotation}, "se2": {"r2": se2}}
    path.write_text(json.dumps({"metrics": {}, "details": {"equivariance": details}}))


def _cls(path: Path, knn: float, linear: float) -> None:
    path.write_text(json.dumps({"metrics": {"eval/knn/top1": knn, "eval/linear/top1": linear}}))


def _run(runs: Path, arm: str, seed: int, full: float, context: float, final: int = 1200) -> Path:
    run = runs / f"{arm}_s{seed}"
    _probe(run / "evals" / "model_full.json", full, full / 2)
    _probe(run / "evals" / "model_context.json", context, 0.0)
    _cls(run / "evals" / "model_cls.json", 40.0 + seed, 30.0)
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text(f"step_{final:08d}\n")
    return run


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    for seed, (base, lam0, lam4) in enumerate(
        [(0.30, 0.10, 0.20), (0.32, 0.12, 0.25), (0.28, 0.08, 0.15)]
    ):
        _run(runs, "baseline", seed, base, 0.0)
        _run(runs, "lambda0", seed, lam0, 0.01)
        _run(runs, "lambda4", seed, lam4, 0.02)
    _run(runs, "lambda0-disk", 0, 0.05, 0.30)
    _run(runs, "lambda4-disk", 0, 0.06, 0.50)
    floors = runs / "floors" / "evals"
    _probe(floors / "floor_random_full.json", -0.01, 0.0)
    _probe(floors / "floor_pixels_full.json", 0.86, 0.8)
    _probe(runs / "lambda4_s0" / "evals" / "step_00000300_full.json", 0.05, 0.0)
    (runs / "not_a_run").mkdir()
    return runs


def test_pairs_by_seed_against_lambda0_and_baseline(runs: Path) -> None:
    data = study_table.collect(runs)
    own = study_table.paired(data["runs"], "lambda4", "lambda0", "full/rotation")
    assert own == pytest.approx({0: 0.10, 1: 0.13, 2: 0.07})
    claim = study_table.paired(data["runs"], "lambda4", "baseline", "full/rotation")
    assert claim == pytest.approx({0: -0.10, 1: -0.07, 2: -0.13})
    # a -disk arm is paired with lambda0-disk, never with the zero-fill lambda0
    assert study_table.paired(data["runs"], "lambda4-disk", "lambda0", "context/rotation") == (
        pytest.approx({0: 0.20})
    )
    assert study_table.reference_arm("lambda4-disk-dequi224", "lambda0") == "lambda0-disk"


def test_the_table_reports_mean_std_and_the_paired_z(runs: Path) -> None:
    text = study_table.render(study_table.collect(runs))
    row = next(
        line
        for line in text.splitlines()
        if line.startswith("| lambda4 − lambda0 | full: rotation")
    )
    diffs = [0.10, 0.13, 0.07]
    mean = sum(diffs) / 3
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert f"+{mean:.3f} ± {std:.3f}" in row
    assert f"| {mean / (std / math.sqrt(3)):.1f} |" in row and row.endswith("| 3/3 |")
    assert "| floor: pixels | – | 0.860 |" in text
    curve = next(
        line for line in text.splitlines() if line.startswith("| lambda4 | full: rotation R² |")
    )
    assert curve.split("|")[3].strip() == "0.050 (n=1)"  # step 300: seed 0 only
    assert curve.split("|")[-2].strip() == f"{(0.20 + 0.25 + 0.15) / 3:.3f} (n=3)"  # step 1200
    assert "not_a_run" not in text


def test_cli_writes_the_table_and_the_plot(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "table.md"
    assert study_table.main([str(runs), "--out", str(out), "--plot"]) == 0
    assert out.read_text().startswith("## Every arm")
    assert (out.parent / "dose_response.png").stat().st_size > 1000
    with pytest.raises(SystemExit):
        study_table.main([str(tmp_path / "missing")])


@pytest.mark.parametrize(
    ("arm", "expected"),
    [
        ("baseline", {"recon.enabled": False}),
        ("lambda16", {"recon.lam": 16.0, "recon.fill": "zero"}),
        ("control25", {"recon.lam": 0.0, "recon.theta_head_weight": 25.0}),
        (
            "thetaonly-disk-steps600",
            {
                "method.vicreg_sim_weight": 0.0,
                "recon.fill": "disk",
                "train.max_steps": 600,
                "recon.theta_head_weight": 1.0,
            },
        ),
        ("lambda4-dequi224", {"recon.lam": 4.0, "recon.d_equi": 224}),
        ("thetaonly-disk-lr2", {"train.base_lr": 2e-3, "recon.fill": "disk"}),
        (
            "thetaonly-disk-px64",
            {"data.global_size": 64, "model.patch_size": 8, "recon.fill": "disk"},
        ),
    ],
)
def test_every_arm_name_is_its_flags_on_the_study_config(arm: str, expected: dict) -> None:
    from equirecon.config import load_config

    flags = arm_overrides(arm).stdout.split()
    cfg = load_config(str(REPO / "configs/study/vicreg_rot_recon.yaml"), flags)
    for key, value in expected.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value, key


def test_an_unknown_arm_is_refused_with_its_name() -> None:
    proc = arm_overrides("lambda4-fill", check=False)
    assert proc.returncode == 2 and "unknown arm suffix 'fill' in 'lambda4-fill'" in proc.stderr
    proc = arm_overrides("lambda4-px60", check=False)  # 8 x 8 tokens need a multiple of 8
    assert proc.returncode == 2 and "px60 in 'lambda4-px60' is not a multiple of 8" in proc.stderr


def test_archives_of_several_sessions_meet_in_one_table(runs: Path, tmp_path: Path) -> None:
    """A seed archived by another session (no checkpoints, a final_step file) pairs with the
    live runs; the same run in two folders is refused with its name; floors come from the first
    folder that has them."""
    archive = tmp_path / "archive"
    for arm, full in (("baseline", 0.40), ("lambda0", 0.20), ("lambda4", 0.10)):
        run = archive / f"{arm}_s7"
        _probe(run / "evals" / "model_full.json", full, 0.0)
        (run / "final_step").write_text("1200\n")
    _probe(archive / "floors" / "evals" / "floor_pixels_full.json", 0.1, 0.1)
    data = study_table.collect(runs, archive)
    assert study_table.paired(data["runs"], "lambda4", "lambda0", "full/rotation")[
        7
    ] == pytest.approx(-0.10)
    assert 7 in {s for a, s in data["runs"] if a == "baseline"} and 0 in {
        s for a, s in data["runs"]
    }
    assert data["floors"]["pixels"]["full/rotation"] == 0.86  # the first folder's floor
    assert data["curves"][("lambda0", "full/rotation")][1200][-1] == pytest.approx(0.20)
    _probe(archive / "lambda0_s0" / "evals" / "model_full.json", 0.5, 0.0)
    with pytest.raises(study_table.DuplicateRunError, match="lambda0_s0"):
        study_table.collect(runs, archive)
    with pytest.raises(SystemExit):
        study_table.main([str(runs), str(archive)])


def test_other_features_are_their_own_columns_and_pairs(runs: Path) -> None:
    """Probes on grid/equi features (RUN/evals/model_VIEW-FEATURE.json) never mix with the
    global vector's: own metric, own column, paired like the rest; the floor's grid too."""
    for seed, (lam0, lam4) in enumerate([(0.5, 0.7), (0.4, 0.5)]):
        _probe(runs / f"lambda0_s{seed}" / "evals" / "model_full-grid2.json", lam0, 0.0)
        _probe(runs / f"lambda4_s{seed}" / "evals" / "model_full-grid2.json", lam4, 0.0)
    _probe(runs / "lambda4_s0" / "evals" / "model_full-equi.json", 0.9, 0.0)
    _probe(runs / "floors" / "evals" / "floor_random_full-grid2.json", 0.33, 0.0)
    data = study_table.collect(runs)
    assert data["runs"][("lambda4", 0)]["full/rotation"] == 0.20  # global untouched
    assert data["runs"][("lambda4", 0)]["full-grid2/rotation"] == 0.7
    assert data["floors"]["random"]["full-grid2/rotation"] == 0.33
    diffs = study_table.paired(data["runs"], "lambda4", "lambda0", "full-grid2/rotation")
    assert diffs == pytest.approx({0: 0.2, 1: 0.1})
    text = study_table.render(data)
    assert "full, grid2: rotation R²" in text and "full, equi: rotation R²" in text
    assert "| lambda4 − lambda0 | full, grid2: rotation R² | s0: +0.200, s1: +0.100 |" in text


def test_training_losses_are_summarized_live_and_archived(
    runs: Path, capsys: pytest.CaptureFixture
) -> None:
    """The θ head's and L_recon's last-100-step means come from a live run's metrics.jsonl or
    an archive's train_losses.json (written by --train-losses), and land in their own section."""
    live = runs / "lambda4_s0" / "metrics.jsonl"
    rows = [{"step": s, "train/loss_recon": 1.0 if s <= 100 else 0.3} for s in range(1, 201)]
    live.write_text("\n".join(json.dumps(r) for r in rows) + "\n{cut")
    summary = study_table.train_losses(live)
    assert summary["recon"]["last"] == pytest.approx(0.3)
    assert summary["recon"]["every"] == [(100, 1.0), (200, 0.3)]
    archived = runs / "lambda4_s1" / study_table.TRAIN_LOSSES
    archived.write_text(json.dumps({"recon": {"last": 0.5, "every": []}, "theta": {"last": 0.33}}))
    data = study_table.collect(runs)
    assert data["losses"][("lambda4", 0)] == {"recon": pytest.approx(0.3)}
    assert data["losses"][("lambda4", 1)] == {"recon": 0.5, "theta": 0.33}
    text = study_table.render(data)
    assert "| arm | seeds | theta | recon |" in text
    assert "| lambda4 | 0,1 | 0.330 | 0.400 ± 0.141 |" in text  # θ: seed 1 only
    assert study_table.main([str(runs / "lambda4_s0"), "--train-losses"]) == 0
    assert json.loads(capsys.readouterr().out)["recon"]["last"] == pytest.approx(0.3)
    with pytest.raises(SystemExit):  # no metrics.jsonl
        study_table.main([str(runs / "lambda0_s0"), "--train-losses"])
