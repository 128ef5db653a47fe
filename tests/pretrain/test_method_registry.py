"""The two method registries (torch-free specs, torch implementations) agree, and a new base
method is one spec + one class: registered here, the config accepts it and the engine's
`build_method` builds and steps it, with the reconstruction branch composed as for any method."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equirecon import methods as specs
from equirecon.config import ConfigError, load_config
from pretrain import methods
from pretrain.methods import base as methods_base
from pretrain.methods import build_method, get_method, list_methods, register_method
from pretrain.methods.base import build_mlp
from pretrain.methods.joint import JointEmbeddingMethod
from pretrain.train import transform_generator
from tests.conftest import TINY_OVERRIDES
from tests.pretrain.test_methods_all import random_batch


def test_both_registries_list_the_same_methods() -> None:
    assert list_methods() == specs.method_names() == ["dinov2", "ibot", "simclr", "vicreg"]
    for name in list_methods():
        assert get_method(name).name == name
        # the config side's teacher_free (checks such as recon.theta_head_weight) is the class's
        assert specs.get_spec(name).teacher_free == (not get_method(name).has_teacher)


@pytest.fixture
def fake_method():  # noqa: ANN201 - (spec, class) of a method "fake", removed afterwards
    spec = specs.register_spec(
        specs.MethodSpec(
            name="fake",
            d_patch=40,
            d_equi=8,
            recipe={"train.layerwise_decay": 0.7},
            min_batch_size=2,
            summary="cosine distance of the two views' projections (a test)",
        )
    )

    @register_method("fake")
    class Fake(JointEmbeddingMethod):
        def build_projector(self, in_dim: int) -> nn.Module:
            return build_mlp(in_dim, 16, 8, 2)

        def embedding_loss(self, z1: torch.Tensor, z2: torch.Tensor):  # noqa: ANN201
            loss = 1 - torch.nn.functional.cosine_similarity(z1.float(), z2.float()).mean()
            return loss, {"cosine": loss.detach()}

    yield spec, Fake
    methods_base._METHODS.pop("fake")
    specs._SPECS.pop("fake")


def test_a_new_method_is_one_spec_and_one_class(fake_method) -> None:  # noqa: ANN001
    spec, cls = fake_method
    assert "fake" in list_methods() and "fake" in specs.method_names()
    overrides = [o for o in TINY_OVERRIDES if not o.startswith(("split.", "recon.d_equi"))]
    cfg = load_config(None, [*overrides, "method.name=fake"])
    assert (cfg.d_patch, cfg.d_equi) == (40, 8)  # the spec's split defaults
    assert cfg.train.layerwise_decay == 0.7 and cfg.train.lr_scaling == "linear"
    assert get_method("fake") is cls
    torch.manual_seed(0)
    method = build_method(cfg)
    assert isinstance(method, cls) and method.name == "fake" and method.teacher is None
    assert method.student.encoder.split_head.proj.out_features == 40
    assert len(method.student.decoders) == cfg.recon.k
    out = method.compute_losses(method.student, random_batch(), 0.04, transform_generator(0, 0))
    out.loss_total.backward()
    assert set(out.terms) == {"cosine"} and out.loss_recon is not None
    torch.testing.assert_close(out.loss_total, out.loss_ssl + cfg.recon.lam * out.loss_recon)
    assert method.student.decoders[0].embed.weight.grad is not None
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(None, [*overrides, "method.name=fake", "train.batch_size=1"])


def test_a_class_without_a_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="equirecon/methods/nospec.py"):
        register_method("nospec")
    assert "nospec" not in list_methods()


def test_unknown_names_give_the_valid_choices() -> None:
    with pytest.raises(ConfigError, match=r"method.name='byol': must be one of \['dinov2'"):
        load_config(None, ["method.name=byol"])
    with pytest.raises(KeyError, match=r"unknown method.name 'byol'; available: \['dinov2'"):
        get_method("byol")


def test_every_module_of_the_package_is_imported() -> None:
    import pkgutil
    import sys

    for info in pkgutil.iter_modules(methods.__path__):
        assert f"pretrain.methods.{info.name}" in sys.modules
