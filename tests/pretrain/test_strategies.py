"""The registry of parallel strategies (pretrain/strategies): the engine, the trainer, the Slurm
launcher, the config check of `train.strategy` and the CLI help read it; a strategy is one file
in that package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from equirecon.config import ConfigError, load_config
from equirecon.errors import CheckpointError, UserError
from pretrain import strategies
from pretrain.strategies import Strategy, base, get_strategy, register_strategy, strategy_for
from pretrain.strategies.engine import Engine
from tests.conftest import REPO, TINY_OVERRIDES

BUILT_IN = ["ddp", "deepspeed", "fsdp2", "single"]
BASE = [*TINY_OVERRIDES, "data.backend=synthetic", "tracking.enabled=false", "train.max_steps=3"]


def _precision_fp32(cfg: Any) -> None:
    if cfg.train.precision != "fp32":
        raise ConfigError(f"train.precision={cfg.train.precision!r}: fake runs fp32 only")


@pytest.fixture
def fake_strategy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Registers `fake` (for this test only), a strategy that runs like `single`; returns the
    names of the methods its factory was called with."""
    monkeypatch.setattr(base, "_STRATEGIES", dict(base._STRATEGIES))
    calls: list[str] = []

    def build(method: Any, cfg: Any, device: Any, rule: Any) -> Engine:
        calls.append(cfg.method.name)
        return Engine(method, method.student, rule)

    register_strategy(
        Strategy(name="fake", build=build, help="a test double", checks=(_precision_fp32,))
    )
    return calls


def test_built_in_strategies_are_registered() -> None:
    assert strategies.strategy_names() == BUILT_IN
    assert all(get_strategy(name).help for name in BUILT_IN)


def test_reading_the_names_imports_neither_torch_nor_deepspeed() -> None:
    """Config validation and `equirecon --help` read the names: that must stay cheap."""
    code = (
        "import sys; from pretrain.strategies import strategy_names; strategy_names(); "
        "print(sorted(m for m in ('torch', 'deepspeed') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_launchers_ask_the_strategy_what_runs() -> None:
    """`single` with several processes runs `ddp`; `ddp` without a process group runs `single`;
    the others run as themselves."""
    assert strategy_for("single", 2, True).name == "ddp"
    assert strategy_for("single", 1, False).name == "single"
    assert strategy_for("ddp", 1, False).name == "single"
    assert strategy_for("ddp", 1, True).name == "ddp"
    assert strategy_for("fsdp2", 4, True).name == "fsdp2"
    assert strategy_for("deepspeed", 1, False).name == "deepspeed"


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss_total"] for r in rows if "train/loss_total" in r]


def test_a_registered_strategy_is_validated_built_and_trained(
    tmp_path: Path, fake_strategy: list[str]
) -> None:
    """The config accepts `fake` and runs its checks; the trainer builds its engine and trains
    the losses of `single`; its checkpoints carry its name."""
    from pretrain.methods import build_method
    from pretrain.parallel import build_engine
    from pretrain.train import Trainer

    demo = REPO / "configs" / "demo_cpu.yaml"
    cfg = load_config(demo, [*BASE, "train.strategy=fake"])
    assert cfg.train.strategy == "fake"
    with pytest.raises(ConfigError, match=r"^train\.precision='bf16': fake runs fp32 only"):
        load_config(demo, [*BASE, "train.strategy=fake", "train.precision=bf16"])
    load_config(demo, [*BASE, "train.precision=bf16"])  # the check is fake's only

    engine = build_engine(build_method(cfg), cfg, torch.device("cpu"))
    assert type(engine) is Engine and engine.name == "fake" and fake_strategy == ["dinov2"]

    losses = {}
    for name in ("single", "fake"):
        run = load_config(demo, [*BASE, f"train.strategy={name}", f"run.dir={tmp_path / name}"])
        Trainer(run).fit()
        losses[name] = _losses(tmp_path / name)
    assert len(losses["fake"]) == 3 and losses["fake"] == losses["single"]
    meta = json.loads(
        (tmp_path / "fake" / "checkpoints" / "step_00000003" / "meta.json").read_text()
    )
    assert meta["strategy"] == "fake"


def test_cli_help_lists_the_registered_strategies(fake_strategy: list[str]) -> None:
    from equirecon.cli import build_parser

    parser = build_parser()
    pretrain = parser._subparsers._group_actions[0].choices["pretrain"]  # noqa: SLF001
    help_text = pretrain.format_help()
    assert "train.strategy" in help_text
    lines = [line.split() for line in help_text.splitlines()]
    assert ["fake", "a", "test", "double"] in lines
    for name in BUILT_IN:
        assert any(line[:1] == [name] for line in lines), name


def test_an_unknown_strategy_names_the_key_and_the_choices(fake_strategy: list[str]) -> None:
    expected = (
        "train.strategy='nope': must be one of ['ddp', 'deepspeed', 'fake', 'fsdp2', 'single']"
    )
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.strategy=nope"])
    assert str(info.value) == expected
    with pytest.raises(ConfigError) as info:
        get_strategy("nope")
    assert str(info.value) == expected and isinstance(info.value, UserError)
    # A config that skipped validation: the engine's lookup says the same.
    from pretrain.methods import build_method
    from pretrain.parallel import build_engine

    cfg = load_config(None, TINY_OVERRIDES)
    cfg.train.strategy = "nope"
    with pytest.raises(ConfigError) as info:
        build_engine(build_method(cfg), cfg, torch.device("cpu"))
    assert str(info.value) == expected


def test_a_name_registers_once(fake_strategy: list[str]) -> None:
    with pytest.raises(ValueError, match="'fake' registered twice"):
        register_strategy(Strategy(name="fake", build=lambda *args: None))


def test_slurm_submits_what_runs_with_several_ranks(fake_strategy: list[str]) -> None:
    from launch.slurm import prepare_config

    register_strategy(Strategy(name="fake_solo", build=lambda *a: None, several_ranks="fake"))
    demo = REPO / "configs" / "demo_cpu.yaml"
    assert prepare_config(demo, ["train.strategy=fake_solo"], 2).train.strategy == "fake"
    assert prepare_config(demo, ["train.strategy=fake_solo"], 1).train.strategy == "fake_solo"


def _resume_check(engine_name: str, saved: str, saved_ws: int, world_size: int) -> None:
    from pretrain.train_checkpoint import CheckpointMixin

    trainer = SimpleNamespace(
        engine=SimpleNamespace(name=engine_name), dist=SimpleNamespace(world_size=world_size)
    )
    meta = {"strategy": saved, "world_size": saved_ws}
    CheckpointMixin._check_strategy_can_resume(trainer, Path("ckpt"), meta, saved_ws)


def test_checkpoint_limits_of_a_strategy_refuse_the_resume(fake_strategy: list[str]) -> None:
    """DeepSpeed checkpoints resume only under deepspeed, at their world size; DCP ones
    reshard; a registered strategy declares the same limits."""
    _resume_check("ddp", "fsdp2", 2, 1)  # DCP: any strategy, any world size
    _resume_check("deepspeed", "deepspeed", 2, 2)
    _resume_check("deepspeed", "ddp", 2, 2)  # (DeepSpeed's own load then finds no state)
    with pytest.raises(CheckpointError) as info:
        _resume_check("deepspeed", "deepspeed", 2, 1)
    assert str(info.value) == (
        "ckpt was written by 2 ranks with train.strategy=deepspeed; DeepSpeed ZeRO optimizer "
        "states resume only at the same world size (now 1). Resume with 2 ranks, or use "
        "ddp/fake/fsdp2 (DCP checkpoints reshard to any world size)."
    )
    with pytest.raises(CheckpointError) as info:
        _resume_check("fsdp2", "deepspeed", 1, 1)
    assert str(info.value) == (
        "ckpt holds DeepSpeed optimizer state; resume it with train.strategy=deepspeed"
    )
    _resume_check("fsdp2", "horovod", 1, 1)  # a name no longer registered: no limits known
    register_strategy(
        Strategy(name="own", build=lambda *a: None, own_checkpoint="own state", same_world_size="x")
    )
    with pytest.raises(CheckpointError, match="holds own state; resume it with train.strategy=own"):
        _resume_check("single", "own", 1, 1)


def test_a_new_strategy_is_one_new_file(tmp_path: Path) -> None:
    """A copy of the package plus one module in strategies/: the registry, the config check,
    the engine and the CLI help know the new name, with no other file edited."""
    shutil.copytree(
        REPO / "pretrain", tmp_path / "pretrain", ignore=shutil.ignore_patterns("__pycache__")
    )
    (tmp_path / "pretrain" / "strategies" / "extra.py").write_text(
        "from pretrain.strategies.base import Strategy, register_strategy\n"
        "from pretrain.strategies.engine import Engine\n\n"
        "register_strategy(Strategy('extra', lambda method, cfg, device, rule: "
        "Engine(method, method.student, rule), 'one new file'))\n"
    )
    code = (
        "import pretrain; assert pretrain.__file__.startswith(sys.argv[1])\n"
        "import torch\n"
        "from pretrain.strategies import strategy_names\n"
        "from equirecon.cli import build_parser\n"
        "from equirecon.config import load_config\n"
        f"cfg = load_config(None, {TINY_OVERRIDES!r} + ['train.strategy=extra'])\n"
        "from pretrain.methods import build_method\n"
        "from pretrain.parallel import build_engine\n"
        "engine = build_engine(build_method(cfg), cfg, torch.device('cpu'))\n"
        "print(strategy_names(), cfg.train.strategy, engine.name)\n"
        "sub = build_parser()._subparsers._group_actions[0].choices['pretrain']\n"
        "print(any(line.split() == ['extra', 'one', 'new', 'file'] "
        "for line in sub.format_help().splitlines()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code, str(tmp_path)],
        cwd=tmp_path,
        env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == [
        f"{['ddp', 'deepspeed', 'extra', 'fsdp2', 'single']} extra extra",
        "True",
    ]
