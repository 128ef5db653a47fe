"""The eval settings moved into one section per task (`eval.knn_k` -> `eval.knn.k`, issue #15):
every shipped config resolves exactly as before, and the old names keep working for a release
(files, overrides, saved run configs, resume) with one FutureWarning naming the new keys."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from equirecon.config import (
    MOVED_KEYS,
    Config,
    ConfigError,
    flat_dict,
    get_value,
    load_config,
    rename_moved_keys,
    save_config,
    unflatten,
)
from equirecon.resume_config import config_changes, load_saved_config

REPO = Path(__file__).resolve().parents[2]
# flat_dict(load_config(path)) of every config in configs/, captured with the code before the
# move (flat eval keys), keyed by the path relative to the repository.
BEFORE = json.loads(
    (Path(__file__).parent / "fixtures/configs_before_eval_sections.json").read_text()
)


def _quiet_load(path: Path | None = None, overrides: list[str] | None = None) -> Config:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped configs use the new names only
        return load_config(path, overrides)


# Keys added after the capture, with the default every config that predates them resolves to
# (an added key must not change what an existing config trains).
ADDED_SINCE = {
    "recon.theta_head_weight": 0.0,  # the study's θ control (issue #25), off
    "eval.equivariance.subset": "natural",  # the probe's images (issue #25), the photos
    "recon.fill": "zero",  # training views show g's zero fill (the paper; issue #25)
    "model.init": "",  # continued pretraining from a backbone file (issue #26), random init
    "model.init_format": "auto",
    # the backbone's own lr schedule for continued pretraining (issue #26), off
    "train.freeze_backbone_steps": 0,
    "train.backbone_lr_scale": 1.0,
    "train.backbone_warmup_steps": 0,
}
# Configs shipped after the capture (nothing to compare them with).
ADDED_CONFIGS = {
    "configs/study/gpu_vicreg_rot_baseline.yaml",  # the GPU study (issue #25)
    "configs/study/gpu_vicreg_rot_recon.yaml",
    "configs/continue/dinov2_vits14_se2.yaml",  # continued pretraining presets (issue #26)
    "configs/continue/dinov2_vitl14_se2.yaml",
}
# Values a shipped config has changed since the capture: the demo's probe reads the segmentation
# scenes (upright items: content that tells the rotation, issue #25).
CHANGED_SINCE = {"configs/demo_cpu.yaml": {"eval.equivariance.subset": "segmentation"}}


def _renamed(flat: dict) -> dict:
    return {**{MOVED_KEYS.get(k, k): v for k, v in flat.items()}, **ADDED_SINCE}


def test_the_fixture_covers_every_shipped_config() -> None:
    paths = {str(p.relative_to(REPO)) for p in REPO.glob("configs/**/*.yaml")}
    assert set(BEFORE) == paths - ADDED_CONFIGS and ADDED_CONFIGS <= paths


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_shipped_config_resolves_as_before_the_move(name: str) -> None:
    expected = {**_renamed(BEFORE[name]), **CHANGED_SINCE.get(name, {})}
    assert flat_dict(_quiet_load(REPO / name)) == expected


def test_the_table_maps_removed_flat_keys_to_existing_section_keys() -> None:
    now = flat_dict(Config())
    for old, new in MOVED_KEYS.items():
        assert old not in now and new in now, (old, new)
        assert new.count(".") == 2 and new.split(".")[0] == "eval"
        assert get_value(Config(), old) == get_value(Config(), new)
    assert len(set(MOVED_KEYS.values())) == len(MOVED_KEYS)
    # Every eval key that is not shared is a task section key: nothing was left flat by mistake.
    flat_eval = {k for k in now if k.startswith("eval.") and k.count(".") == 1}
    assert flat_eval == {
        "eval.data", "eval.tasks", "eval.img_size", "eval.seed", "eval.pooling",
        "eval.batch_size", "eval.feature_layers", "eval.labelled_train_images",
        "eval.labelled_test_images", "eval.watch", "eval.watch_poll_seconds",
        "eval.watch_timeout_min",
    }  # fmt: skip


def _old_spelling(flat: dict) -> dict:
    back = {new: old for old, new in MOVED_KEYS.items()}
    return {back.get(k, k): v for k, v in flat.items()}


def test_old_key_file_warns_once_naming_the_new_keys_and_gives_the_same_config(
    tmp_path: Path,
) -> None:
    old = tmp_path / "old.yaml"
    old.write_text(
        "eval:\n  tasks: knn,linear\n  knn_k: 7\n  linear_lrs: '0.5'\n  r2_views: 3\n"
        "train:\n  max_steps: 5\n"
    )
    new = tmp_path / "new.yaml"
    new.write_text(
        "eval:\n  tasks: knn,linear\n  knn:\n    k: 7\n  linear:\n    lrs: '0.5'\n"
        "  equivariance:\n    views_per_image: 3\ntrain:\n  max_steps: 5\n"
    )
    with pytest.warns(FutureWarning) as caught:
        from_old = load_config(old)
    moved = [w for w in caught if "renamed" in str(w.message)]
    assert len(moved) == 1
    message = str(moved[0].message)
    assert str(old) in message
    for old_key, new_key in (
        ("eval.knn_k", "eval.knn.k"),
        ("eval.linear_lrs", "eval.linear.lrs"),
        ("eval.r2_views", "eval.equivariance.views_per_image"),
    ):
        assert f"{old_key} -> {new_key}" in message
    assert from_old == _quiet_load(new)
    assert from_old.eval.knn.k == 7 and from_old.eval.equivariance.views_per_image == 3


def test_old_key_override_warns_and_sets_the_new_key() -> None:
    with pytest.warns(FutureWarning, match=r"eval\.knn_k -> eval\.knn\.k"):
        cfg = load_config(None, ["eval.knn_k=3"])
    assert cfg == _quiet_load(None, ["eval.knn.k=3"])
    # A bad value under the old name is reported under the new one.
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match=r"^eval\.knn\.k=0: "):
        load_config(None, ["eval.knn_k=0"])


def test_both_spellings_in_one_file_must_agree(tmp_path: Path) -> None:
    path = tmp_path / "both.yaml"
    path.write_text("eval:\n  knn_k: 5\n  knn:\n    k: 5\n")
    with pytest.warns(FutureWarning):
        assert load_config(path).eval.knn.k == 5
    path.write_text("eval:\n  knn_k: 5\n  knn:\n    k: 9\n")
    with pytest.raises(ConfigError, match="eval.knn_k and eval.knn.k"):
        load_config(path)


def test_a_base_file_with_old_keys_is_overridden_by_new_keys(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("eval:\n  knn_k: 5\n  linear_epochs: 4\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\neval:\n  knn:\n    k: 9\n")
    with pytest.warns(FutureWarning, match="base.yaml"):
        cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.eval.knn.k, cfg.eval.linear.epochs) == (9, 4)


def _saved_before_the_move(tmp_path: Path, name: str = "configs/demo_cpu.yaml") -> Path:
    """A RUN_DIR/config.yaml as the code before the move wrote it (flat eval keys)."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(unflatten(BEFORE[name]), sort_keys=False))
    return path


def test_a_saved_run_config_with_flat_keys_loads_and_resumes_unchanged(tmp_path: Path) -> None:
    saved = _saved_before_the_move(tmp_path)
    assert "knn_k" in saved.read_text()
    with pytest.warns(FutureWarning):
        cfg = load_config(saved)
    assert flat_dict(cfg) == _renamed(BEFORE["configs/demo_cpu.yaml"])
    # Resume: the saved config (old names) and the same config today (new names) are equal.
    with pytest.warns(FutureWarning):
        saved_flat = load_saved_config(saved)
    assert config_changes(saved_flat, cfg) == ({}, {})
    # ... also when the saved side is compared as written (old names, e.g. a value today's
    # checks reject), and an eval change is an allowed change under its new name.
    raw = _old_spelling(flat_dict(cfg))
    assert "eval.knn_k" in raw
    assert config_changes(raw, cfg) == ({}, {})
    cfg.eval.knn.k = 3
    assert config_changes(raw, cfg) == ({}, {"eval.knn.k": (20, 3)})
    # Saved again today, it is written with the new names only.
    save_config(cfg, tmp_path / "again.yaml")
    assert flat_dict(_quiet_load(tmp_path / "again.yaml")) == flat_dict(cfg)


def test_rename_moved_keys_is_silent_when_asked() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rename_moved_keys({"eval.knn_k": 1, "train.seed": 2}, None) == {
            "eval.knn.k": 1,
            "train.seed": 2,
        }
