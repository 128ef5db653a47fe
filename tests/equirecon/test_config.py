"""The config system: defaults + YAML delta + key=value overrides, strict keys, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from equirecon.config import ConfigError, load_config, save_config, to_dict

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
