"""Every value check of the config (VALUE_CHECKS + the cross-field ones): a bad value is one
ConfigError (a UserError) that names the key and the value."""

from __future__ import annotations

import pytest

import data_pipeline.backends  # noqa: F401  (hands data.backend's names to the config checks)
import pretrain.strategies  # noqa: F401  (hands train.strategy's names to the config checks)
from equirecon.checks import FILLS
from equirecon.config import (
    POOLINGS,
    TRANSFORMS,
    ConfigError,
    load_config,
    value_checks,
)
from equirecon.errors import UserError
from equirecon.eval_tasks import task_names, task_specs
from equirecon.eval_tasks.equivariance import (
    EQUIVARIANCE_FEATURES,
    EQUIVARIANCE_SUBSETS,
    EQUIVARIANCE_VIEWS,
)

# One meaningless value per checked key (the override text, parsed as YAML); the keys of the
# eval task sections (`eval.<task>.*`, checked by their specs in equirecon/eval_tasks) too.
BAD_VALUES = {
    "method.name": "byol",
    "data.backend": "pil",
    "data.num_workers": "-1",
    "data.global_size": "0",
    "data.local_size": "0",
    "data.n_local": "-1",
    "data.global_scale": "[0.5,0.2]",
    "data.local_scale": "[0,0.3]",
    "data.augmentations": "crop",
    "model.patch_size": "0",
    "model.embed_dim": "0",
    "model.depth": "0",
    "model.num_heads": "0",
    "model.drop_path": "1.0",
    "model.layerscale": "-0.1",
    "model.num_registers": "-1",
    "model.attention": "flash",
    "model.init_format": "safetensors",
    "method.head_out_dim": "0",
    "method.head_hidden_dim": "0",
    "method.head_bottleneck_dim": "0",
    "method.student_temp": "0",
    "method.teacher_temp": "-0.1",
    "method.warmup_teacher_temp": "0",
    "method.warmup_teacher_temp_steps": "-1",
    "method.dino_weight": "-1",
    "method.ibot_weight": "-1",
    "method.koleo_weight": "-0.1",
    "method.mask_prob": "1.5",
    "method.mask_ratio": "[0.6,0.2]",
    "method.center_momentum": "1.0",
    "method.centering": "none",
    "method.expander_dim": "0",
    "method.vicreg_sim_weight": "-1",
    "method.vicreg_var_weight": "-1",
    "method.vicreg_cov_weight": "-1",
    "method.projector_dim": "0",
    "method.projector_hidden_dim": "0",
    "method.simclr_temperature": "0",
    "recon.lambda": "-1",
    "recon.k": "0",
    "recon.transform": "shear",
    "recon.d_equi": "0",
    "recon.decoder_channels": "0",
    "recon.decoder_resize": "nearest",
    "recon.decoder_kernel": "2",
    "recon.log_images_every": "-1",
    "recon.theta_head_weight": "-0.5",
    "recon.fill": "crop",
    "split.d_patch": "1",
    "train.max_steps": "0",
    "train.batch_size": "0",
    "train.strategy": "horovod",
    "train.zero_stage": "4",
    "train.compile_backend": "' '",
    "train.precision": "fp16",
    "train.base_lr": "0",
    "train.lr_scaling": "sqrt",
    "train.layerwise_decay": "0",
    "train.patch_embed_lr_mult": "-1",
    "train.freeze_last_layer_steps": "-2",
    "train.freeze_backbone_steps": "-1",
    "train.backbone_lr_scale": "0",
    "train.backbone_warmup_steps": "-1",
    "train.min_lr": "-1e-6",
    "train.warmup_steps": "-1",
    "train.weight_decay": "-0.1",
    "train.weight_decay_end": "-0.1",
    "train.momentum_teacher": "1.5",
    "train.momentum_teacher_end": "-0.1",
    "train.clip_grad": "-1",
    "train.log_every": "0",
    "train.max_nonfinite_steps": "0",
    "checkpoint.every_steps": "0",
    "checkpoint.keep": "0",
    "checkpoint.keep_every": "-1",
    "tracking.experiment": "",
    "eval.tasks": "knn,normals",
    "eval.img_size": "0",
    "eval.pooling": "max",
    "eval.batch_size": "0",
    "eval.feature_layers": "0",
    "eval.labelled_train_images": "-1",
    "eval.labelled_test_images": "-1",
    "eval.equivariance.transforms": "rotation,shear",
    "eval.equivariance.features": "patch",
    "eval.equivariance.grid": "-1",
    "eval.equivariance.view": "crop",
    "eval.equivariance.subset": "photos",
    "eval.equivariance.repeats": "0",
    "eval.equivariance.train_images": "0",
    "eval.equivariance.test_images": "0",
    "eval.equivariance.views_per_image": "0",
    "eval.equivariance.epochs": "0",
    "eval.equivariance.hidden": "0",
    "eval.knn.k": "0",
    "eval.linear.lrs": "0.1,fast",
    "eval.linear.epochs": "0",
    "eval.linear.val_fraction": "1.0",
    "eval.homography.train_images": "0",
    "eval.homography.test_images": "0",
    "eval.homography.views": "0",
    "eval.homography.rho": "0.6",
    "eval.homography.epochs": "0",
    "eval.homography.channels": "0",
    "eval.homography.lr": "0",
    "eval.segmentation.train_images": "-1",
    "eval.segmentation.test_images": "-1",
    "eval.segmentation.epochs": "0",
    "eval.segmentation.lr": "0",
    "eval.depth.train_images": "-1",
    "eval.depth.test_images": "-1",
    "eval.depth.epochs": "0",
    "eval.depth.lr": "0",
    "eval.watch_poll_seconds": "0",
    "eval.watch_timeout_min": "0",
}

# Checks across keys: (overrides, the key the error must name).
CROSS_FIELD = [
    (["split.d_patch=48", "recon.d_equi=48"], "recon.d_equi"),
    (["model.patch_size=4", "data.global_size=30"], "data.global_size"),
    (["model.arch=vit_large_patch14", "data.global_size=200"], "data.global_size"),
    (["model.patch_size=4", "eval.img_size=30"], "eval.img_size"),
    (["model.embed_dim=30", "model.num_heads=4"], "model.embed_dim"),
    (["method.name=vicreg", "train.batch_size=1"], "train.batch_size"),
    (["train.max_steps=10", "train.freeze_backbone_steps=10"], "train.freeze_backbone_steps"),
    (
        ["train.max_steps=10", "train.freeze_backbone_steps=8", "train.backbone_warmup_steps=3"],
        "train.backbone_warmup_steps",
    ),
]


def test_every_checked_key_has_a_bad_value_here() -> None:
    assert set(BAD_VALUES) == {key for key, _ in value_checks()}


@pytest.mark.parametrize(("key", "bad"), sorted(BAD_VALUES.items()))
def test_bad_value_names_the_key(key: str, bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}={bad}"])
    message = str(info.value)
    assert message.startswith(f"{key}="), message
    assert "\n" not in message and "must be" in message
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(("overrides", "key"), CROSS_FIELD)
def test_cross_field_checks_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key.replace('.', r'[.]')}="):
        load_config(None, overrides)


def test_limits_themselves_are_valid() -> None:
    """The edges of each range are accepted (λ = 0 is the method without decoders)."""
    cfg = load_config(
        None,
        ["recon.lambda=0", "method.mask_prob=1", "train.momentum_teacher=1", "model.drop_path=0"],
    )
    assert cfg.recon.lam == 0.0 and cfg.method.mask_prob == 1.0


def test_choice_lists_match_their_registries() -> None:
    from data_pipeline.transforms import fill, list_transforms
    from evals import equivariance, features
    from evals.tasks import registered_tasks

    assert sorted(TRANSFORMS) == list_transforms()
    assert FILLS == fill.FILLS
    assert POOLINGS == features.POOLINGS
    assert EQUIVARIANCE_FEATURES == features.EQUIVARIANCE_FEATURES
    assert EQUIVARIANCE_VIEWS == equivariance.EQUIVARIANCE_VIEWS
    # The probe's images may come from any subset a dataset root has (and some task reads).
    from data_pipeline.formats import MAKE_SUBSET

    read = {subset for spec in task_specs() for subset in spec.data}
    assert set(EQUIVARIANCE_SUBSETS) == read == set(MAKE_SUBSET)
    assert sorted(task_names()) == registered_tasks()
    from equirecon.config_schema import INIT_FORMATS
    from pretrain.init_weights import format_names

    assert list(INIT_FORMATS) == ["auto", *format_names()]
