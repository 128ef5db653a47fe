"""The config system: defaults + YAML delta + key=value overrides, strict keys, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from equirecon.config import ConfigError, flat_dict, load_config, save_config, to_dict

REPO = Path(__file__).resolve().parents[2]


def test_overrides_types_and_aliases() -> None:
    cfg = load_config(
        None,
        [
            "recon.lambda=0.5",
            "data.global_scale=[0.4,1]",
            "model.patch_size=4",
            "recon.enabled=false",
        ],
    )
    assert cfg.recon.lam == 0.5 and cfg.data.global_scale == (0.4, 1.0)
    assert cfg.model.patch_size == 4 and cfg.recon.enabled is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("recon.lamda=1", "unknown config key 'recon.lamda'"),
        ("nope.x=1", "unknown config section 'nope'"),
        ("train.max_steps=ten", "train.max_steps: expected int"),
        ("recon.enabled=1", "recon.enabled: expected true/false"),
        ("method.name=byol", "method.name='byol'"),
        ("train", "not of the form key=value"),
    ],
)
def test_bad_keys_and_values_are_clear_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(None, [override])


def test_yaml_delta_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_config(bad)


def test_method_defaults_for_split() -> None:
    assert (load_config(None).d_patch, load_config(None).d_equi) == (2048, 512)
    cfg = load_config(None, ["split.d_patch=256", "recon.d_equi=64"])
    assert (cfg.d_patch, cfg.d_equi) == (256, 64)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "demo_cpu.yaml", ["train.max_steps=7", "recon.lambda=2.0"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert yaml.safe_load(path.read_text())["recon"]["lambda"] == 2.0
    again = load_config(path)
    assert to_dict(again) == to_dict(cfg)


# ---- `base:` inheritance -------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_file_is_merged_under_the_file_section_by_section(tmp_path: Path) -> None:
    _write(
        tmp_path / "common" / "root.yaml",
        "train:\n  batch_size: 8\n  base_lr: 1.0e-3\nrecon:\n  k: 3\n",
    )
    _write(tmp_path / "common" / "mid.yaml", "base: root.yaml\ntrain:\n  batch_size: 16\n")
    child = _write(
        tmp_path / "exp" / "child.yaml",
        "base: ../common/mid.yaml\ntrain:\n  max_steps: 7\nrecon:\n  enabled: true\n",
    )
    cfg = load_config(child)
    # the child's keys win over mid's, mid's over root's; untouched keys of a section survive
    assert (cfg.train.max_steps, cfg.train.batch_size, cfg.train.base_lr) == (7, 16, 1e-3)
    assert (cfg.recon.enabled, cfg.recon.k) == (True, 3)
    # an override still wins over every file
    assert load_config(child, ["train.batch_size=4"]).train.batch_size == 4


def test_a_list_of_bases_applies_in_order(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "train:\n  batch_size: 8\n  max_steps: 5\n")
    _write(tmp_path / "b.yaml", "train:\n  batch_size: 12\n")
    cfg = load_config(_write(tmp_path / "c.yaml", "base: [a.yaml, b.yaml]\n"))
    assert (cfg.train.batch_size, cfg.train.max_steps) == (12, 5)


def test_base_cycle_missing_and_malformed_are_one_line_errors(tmp_path: Path) -> None:
    from equirecon.errors import MissingPathError

    _write(tmp_path / "x.yaml", "base: y.yaml\n")
    _write(tmp_path / "y.yaml", "base: x.yaml\n")
    with pytest.raises(
        ConfigError, match=r"include each other .*x\.yaml -> .*y\.yaml -> .*x\.yaml"
    ):
        load_config(tmp_path / "x.yaml")
    with pytest.raises(MissingPathError, match=r"z\.yaml: base: nowhere\.yaml not found"):
        load_config(_write(tmp_path / "z.yaml", "base: nowhere.yaml\n"))
    with pytest.raises(ConfigError, match=r"w\.yaml: `base:` must be a file name"):
        load_config(_write(tmp_path / "w.yaml", "base: {a: 1}\n"))
    with pytest.raises(ConfigError, match=r"v\.yaml: not valid YAML"):
        load_config(_write(tmp_path / "v.yaml", "train: [unclosed\n"))


def test_saved_config_of_an_inheriting_file_is_flat_and_reloads_equal(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "train:\n  batch_size: 8\n")
    cfg = load_config(_write(tmp_path / "b.yaml", "base: a.yaml\ntrain:\n  max_steps: 3\n"))
    save_config(cfg, tmp_path / "saved.yaml")
    assert "base" not in yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert flat_dict(load_config(tmp_path / "saved.yaml")) == flat_dict(cfg)
