"""The registry of data backends (data_pipeline/backends): the trainer, the config check of
`data.backend` and the CLI help read it; a backend is one file in that package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from data_pipeline import backends
from data_pipeline.backends import base
from equirecon.config import ConfigError, load_config
from equirecon.errors import UserError
from tests.conftest import REPO

BUILT_IN = ["dali", "synthetic", "torch"]


@pytest.fixture
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any, int]]:
    """Registers `fake` (for this test only); returns the calls its factory received."""
    monkeypatch.setattr(base, "_BACKENDS", dict(base._BACKENDS))
    calls: list[tuple[Any, Any, int]] = []

    def build(cfg: Any, dist_info: Any, patch_size: int) -> str:
        calls.append((cfg, dist_info, patch_size))
        return "fake loader"

    backends.register_backend("fake", build, "a test double")
    return calls


def test_built_in_backends_are_registered() -> None:
    assert backends.backend_names() == BUILT_IN
    assert all(backends.get_backend(name).help for name in BUILT_IN)


def test_reading_the_names_imports_no_reader() -> None:
    """Config validation and `equirecon --help` read the names: that must stay cheap."""
    code = (
        "import sys; from data_pipeline.backends import backend_names; backend_names(); "
        "print(sorted(m for m in ('torch', 'nvidia.dali', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_registered_backend_is_accepted_and_looked_up_by_the_trainer(
    fake_backend: list[tuple[Any, Any, int]],
) -> None:
    from pretrain.train import build_loader

    cfg = load_config(None, ["data.backend=fake"])
    assert cfg.data.backend == "fake"
    dist_info = SimpleNamespace(rank=0, world_size=1, device=torch.device("cpu"))
    assert build_loader(cfg, dist_info, 16) == "fake loader"
    assert fake_backend == [(cfg, dist_info, 16)]


def test_cli_help_lists_the_registered_backends(fake_backend: list) -> None:
    from equirecon.cli import build_parser

    parser = build_parser()
    pretrain = parser._subparsers._group_actions[0].choices["pretrain"]  # noqa: SLF001
    help_text = pretrain.format_help()
    for name in [*BUILT_IN, "fake"]:
        assert name in help_text
    assert "a test double" in help_text


def test_an_unknown_backend_names_the_key_and_the_choices(fake_backend: list) -> None:
    expected = "data.backend='nope': must be one of ['dali', 'fake', 'synthetic', 'torch']"
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.backend=nope"])
    assert str(info.value) == expected
    with pytest.raises(ConfigError) as info:
        backends.get_backend("nope")
    assert str(info.value) == expected and isinstance(info.value, UserError)


def test_a_name_registers_once(fake_backend: list) -> None:
    with pytest.raises(ValueError, match="'fake' registered twice"):
        backends.register_backend("fake", lambda cfg, dist_info, patch_size: None)


def test_a_new_backend_is_one_new_file(tmp_path: Path) -> None:
    """A copy of the package plus one module in backends/: the registry, the config check and
    the CLI help know the new name, with no other file edited."""
    shutil.copytree(
        REPO / "data_pipeline",
        tmp_path / "data_pipeline",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (tmp_path / "data_pipeline" / "backends" / "extra.py").write_text(
        "from data_pipeline.backends.base import register_backend\n\n"
        "register_backend('extra', lambda cfg, dist_info, patch_size: iter(()), 'one new file')\n"
    )
    code = (
        "import data_pipeline; assert data_pipeline.__file__.startswith(sys.argv[1])\n"
        "from data_pipeline.backends import backend_names\n"
        "from equirecon.cli import build_parser\n"
        "from equirecon.config import load_config\n"
        "print(backend_names(), load_config(None, ['data.backend=extra']).data.backend)\n"
        "sub = build_parser()._subparsers._group_actions[0].choices['pretrain']\n"
        "print(any(line.split() == ['extra', 'one', 'new', 'file'] "
        "for line in sub.format_help().splitlines()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code, str(tmp_path)],
        cwd=tmp_path,
        env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == [
        f"{['dali', 'extra', 'synthetic', 'torch']} extra",
        "True",
    ]
