"""The torch-free method registry (equirecon/methods): what the config reads of each method."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from equirecon import methods
from equirecon.cli import build_parser
from equirecon.config import ARCH_LAYERSCALE, ConfigError, load_config
from equirecon.methods import ARCH_OWN, LEGACY_DEFAULTS, MethodSpec, get_spec, method_names
from tests.conftest import REPO

# The per-method tables of equirecon/config.py before the specs replaced them (issue #15).
FORMER_SPLIT_DEFAULTS = {
    "dinov2": (2048, 512),
    "ibot": (8192, 2048),
    "vicreg": (512, 256),
    "simclr": (512, 256),
}
FORMER_RECIPE_DEFAULTS = {
    "dinov2": {
        "train.lr_scaling": "sqrt_1024",
        "train.layerwise_decay": 0.9,
        "train.patch_embed_lr_mult": 0.2,
        "train.freeze_last_layer_steps": 1250,
        "train.weight_decay_tokens": True,
        "model.layerscale": 1e-5,
        "model.drop_path_uniform": True,
        "method.norm_last_layer": False,
    },
    "ibot": {
        "train.lr_scaling": "linear",
        "train.layerwise_decay": 1.0,
        "train.patch_embed_lr_mult": 1.0,
        "train.freeze_last_layer_steps": 1251,
        "train.weight_decay_tokens": True,
        "model.layerscale": ARCH_OWN,
        "model.drop_path_uniform": False,
        "method.norm_last_layer": False,
    },
    **{n: {**LEGACY_DEFAULTS, "model.drop_path_uniform": False} for n in ("vicreg", "simclr")},
}


@pytest.fixture
def fake_spec():  # noqa: ANN201 - a spec registered for one test, removed afterwards
    spec = MethodSpec(
        name="fakespec",
        d_patch=40,
        d_equi=8,
        recipe={"train.layerwise_decay": 0.8, "model.layerscale": ARCH_OWN},
        min_batch_size=3,
        summary="a method of this test",
    )
    methods.register_spec(spec)
    yield spec
    methods._SPECS.pop(spec.name)


def test_specs_reproduce_the_former_tables() -> None:
    assert method_names() == sorted(FORMER_SPLIT_DEFAULTS)
    for name, (d_patch, d_equi) in FORMER_SPLIT_DEFAULTS.items():
        spec = get_spec(name)
        assert (spec.d_patch, spec.d_equi) == (d_patch, d_equi)
        assert spec.resolved_recipe() == FORMER_RECIPE_DEFAULTS[name]
        assert spec.min_batch_size == (2 if name in ("vicreg", "simclr") else 1)


@pytest.mark.parametrize("name", sorted(FORMER_SPLIT_DEFAULTS))
def test_config_resolves_each_methods_defaults(name: str) -> None:
    cfg = load_config(None, [f"method.name={name}"])
    assert (cfg.d_patch, cfg.d_equi) == FORMER_SPLIT_DEFAULTS[name]
    for dotted, value in FORMER_RECIPE_DEFAULTS[name].items():
        section, key = dotted.split(".")
        if value == ARCH_OWN:
            value = ARCH_LAYERSCALE.get(cfg.model.arch, 0.0)
        assert getattr(getattr(cfg, section), key) == value, dotted


def test_a_registered_spec_is_a_valid_method_name(
    fake_spec: MethodSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(None, ["method.name=fakespec", "train.batch_size=4"])
    assert (cfg.d_patch, cfg.d_equi) == (40, 8)
    assert cfg.train.layerwise_decay == 0.8  # its recipe
    assert cfg.model.layerscale == 0.0  # ARCH_OWN: vit_small has none
    assert cfg.train.lr_scaling == "linear"  # a key its recipe leaves: NO_RECIPE
    with pytest.raises(ConfigError, match=r"^train[.]batch_size=2: .*>= 3"):
        load_config(None, ["method.name=fakespec", "train.batch_size=2"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--help"])
    assert re.search(r"\n  fakespec +a method of this test\n", capsys.readouterr().out)


def test_unknown_method_names_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["method.name=byol"])
    assert str(info.value) == (
        "method.name='byol': must be one of ['dinov2', 'ibot', 'simclr', 'vicreg']"
    )
    with pytest.raises(KeyError, match="available"):
        get_spec("byol")


def test_spec_checks_run_in_validate() -> None:
    def no_local_crops(cfg) -> None:  # noqa: ANN001
        if cfg.data.n_local:
            raise ConfigError(f"data.n_local={cfg.data.n_local}: must be 0 for checkspec")

    spec = methods.register_spec(MethodSpec("checkspec", 16, 4, checks=(no_local_crops,)))
    try:
        load_config(None, ["method.name=checkspec", "data.n_local=0"])
        with pytest.raises(ConfigError, match="^data[.]n_local=8"):
            load_config(None, ["method.name=checkspec"])
    finally:
        methods._SPECS.pop(spec.name)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (MethodSpec("dinov2", 16, 4), "registered twice"),
        (MethodSpec("bad name", 16, 4), "identifier"),
        (MethodSpec("badrecipe", 16, 4, recipe={"train.base_lr": 1.0}), "not recipe keys"),
        (MethodSpec("badsplit", 16, 16), "d_equi < d_patch"),
    ],
)
def test_bad_specs_are_refused(spec: MethodSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        methods.register_spec(spec)
    assert spec.name == "dinov2" or spec.name not in method_names()


def test_config_and_specs_import_neither_torch_nor_pretrain() -> None:
    # The core (config, method specs) imports no layer above it; the CLI's parser (its help
    # lists the method specs, the data backends' and the parallel strategies' names) imports no
    # torch and no layer beyond the torch-free backend and strategy registries.
    code = (
        "import sys, equirecon.config; equirecon.config.load_config(None, ['method.name=vicreg']); "
        "core = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'pretrain', 'data_pipeline', 'evals', 'launch')); "
        "import equirecon.cli; equirecon.cli.build_parser(); "
        "cli = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'deepspeed', 'evals', 'launch') or (m.startswith('data_pipeline.') and "
        "not m.startswith('data_pipeline.backends')) or (m.startswith('pretrain.') and "
        "not m.startswith('pretrain.strategies'))); "
        "print(core, cli); sys.exit(1 if core or cli else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
