"""Every shipped config loads strictly and the paper configs match DESIGN §1.9."""

from __future__ import annotations

from pathlib import Path

import pytest

from equirecon.config import load_config

REPO = Path(__file__).resolve().parents[2]
IMAGENET = 1_281_167

# (method, arch, epochs, global batch, base lr, d_patch, d_equi)
PAPER = {
    "dinov2_vitl16_100ep": ("dinov2", "vit_large_patch16", 100, 2048, 4e-3, 2048, 512),
    "ibot_vitl16_250ep": ("ibot", "vit_large_patch16", 250, 1024, 5e-4, 8192, 2048),
    "ibot_vits16_800ep": ("ibot", "vit_small_patch16", 800, 1024, 5e-4, 8192, 2048),
    "vicreg_vits16_800ep": ("vicreg", "vit_small_patch16", 800, 2048, 1e-4, 512, 256),
}


@pytest.mark.parametrize("path", sorted(REPO.glob("configs/**/*.yaml")), ids=lambda p: p.name)
def test_config_files_load(path: Path) -> None:
    load_config(path)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_settings(name: str) -> None:
    cfg = load_config(REPO / "configs" / "paper" / f"{name}.yaml")
    method, arch, epochs, batch, lr, d_patch, d_equi = PAPER[name]
    assert (cfg.method.name, cfg.model.arch, cfg.train.base_lr) == (method, arch, lr)
    assert (cfg.d_patch, cfg.d_equi) == (d_patch, d_equi)
    assert cfg.recon.enabled and cfg.recon.transform == "se2" and cfg.recon.k == 2
    # The comment's world size: per-rank batch × ranks = the paper's global batch.
    text = (REPO / "configs" / "paper" / f"{name}.yaml").read_text()
    assert f"{cfg.train.batch_size} × " in text and f"= {batch}" in text
    steps_per_epoch = round(IMAGENET / batch)
    assert abs(cfg.train.max_steps - epochs * steps_per_epoch) <= epochs
