"""`benchmarks/gpu_study.sh`: the GPU study's decisive comparison, end to end on the CPU with
`--tiny` (the libraries the GPU machines lack made unimportable), its config at ViT-S/16 and
224 px, its one-line errors, the data build, and study_data.py's --max-images."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import study_data
from equirecon.config import load_config
from tests.benchmarks.study_arms import arm_overrides

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_study.sh"
CONFIG = REPO / "configs" / "study" / "gpu_vicreg_rot_recon.yaml"
ARMS = ("baseline", "lambda0", "lambda4")
VIEWS = ("full", "context")
# Not installed on the lent GPU machines: the study must not need them.
BLOCKED = ("mlflow", "webdataset", "braceexpand", "nvidia", "deepspeed", "submitit", "xformers")
BLOCKER = f"""
import sys

BLOCKED = {BLOCKED!r}


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: the GPU study must not import it")
        return None


sys.meta_path.insert(0, _Blocker())
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "RESULTS", "ARMS", "DATA")}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def _script(*args: str, env: dict[str, str], timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _png(path: Path, seed: int, size: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def tiny_data(request: pytest.FixtureRequest) -> Path:
    """The CPU study's clip-art shards when built here, else the demo shards (built by the
    session fixture from the photos and labelled images on disk)."""
    clipart = REPO / "data" / "clipart"
    if (clipart / "manifest.json").is_file():
        return clipart
    return request.getfixturevalue("demo_data")


@pytest.fixture(scope="module")
def tiny_study(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    site = tmp_path_factory.mktemp("blocker")
    (site / "sitecustomize.py").write_text(BLOCKER)  # runs at interpreter start-up
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    probe = subprocess.run(
        [sys.executable, "-c", "import mlflow"], env=env, capture_output=True, text=True
    )
    assert probe.returncode != 0 and "blocked" in probe.stderr, "the import blocker is not active"
    runs = tmp_path_factory.mktemp("gpu_study") / "runs"
    proc = _script("--tiny", "--data", str(tiny_data), "--runs", str(runs), env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return runs, proc.stdout


def _rows(stdout: str, title: str) -> dict[str, list[str]]:
    """{first cell: cells} of the markdown table under the heading `title`."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip("|").split("|")])
        elif table:
            break
    return {row[0]: row[1:] for row in [table[0], *table[2:]]}


def test_tiny_study_prints_the_table_with_every_arm_view_and_floor(
    tiny_study: tuple[Path, str],
) -> None:
    _, stdout = tiny_study
    rows = _rows(stdout, "## Every arm")
    header = rows["arm"]
    for view in VIEWS:
        assert f"{view}: rotation R²" in header and f"{view}: SE(2) R²" in header
    assert "kNN top-1 %" in header and "linear top-1 %" in header
    assert set(ARMS) | {"floor: random", "floor: pixels"} <= set(rows)
    for name in (*ARMS, "floor: random", "floor: pixels"):
        for label, cell in zip(header[1:], rows[name][1:], strict=True):
            assert math.isfinite(float(cell)), (name, label, cell)
    timings = _rows(stdout, "## GPU study timings: CPU")
    assert set(ARMS) <= set(timings)
    for arm in ARMS:
        status, train_s, probe_s, _, img_per_s = timings[arm][:5]
        assert status == "ok" and float(train_s) >= 0 and float(probe_s) >= 0
        assert float(img_per_s) > 0


def test_tiny_study_writes_every_result_file_with_finite_r2(tiny_study: tuple[Path, str]) -> None:
    runs, _ = tiny_study
    for arm in ARMS:
        evals = runs / f"{arm}_s0" / "evals"
        assert (runs / f"{arm}_s0" / "done").is_file()
        files = [evals / f"model_{v}.json" for v in VIEWS]
        if arm == ARMS[0]:  # the floors, once, in the first arm's run
            files += [evals / f"floor_{f}_{v}.json" for f in ("random", "pixels") for v in VIEWS]
        for path in files:
            details = json.loads(path.read_text())["details"]["equivariance"]
            assert {"rotation", "se2"} <= set(details), path
            assert all(math.isfinite(float(details[t]["r2"])) for t in ("rotation", "se2")), path
        metrics = json.loads((evals / "model_cls.json").read_text())["metrics"]
        assert 0 <= metrics["eval/knn/top1"] <= 100 and 0 <= metrics["eval/linear/top1"] <= 100
    results = json.loads((runs / "results.json").read_text())
    assert results["failed"] == [] and results["skipped"] == [] and results["tiny"] is True
    assert set(results["arms"]) == {*ARMS, "floors"}
    for arm in ARMS:
        info = results["arms"][arm]
        assert info["status"] == "ok" and info["train"]["last_step"] == 4
        assert {"model_full", "model_context", "model_cls"} <= set(info["evals"])
    assert len(results["arms"]["floors"]["evals"]) == 6
    assert "## Every arm" in (runs / "table.md").read_text()
    assert (runs / "gpu_study.log").is_file()


def test_gpu_config_is_vit_s16_at_224_and_every_arm_resolves() -> None:
    cfg = load_config(CONFIG)
    assert cfg.model.arch == "vit_small_patch16" and cfg.model.patch_size is None
    assert (cfg.model.embed_dim, cfg.model.depth, cfg.model.num_heads) == (None, None, None)
    assert cfg.data.global_size == 224 and cfg.data.path == "data/gpu_study"
    assert (cfg.method.name, cfg.recon.transform, cfg.recon.enabled) == ("vicreg", "rotation", True)
    assert (cfg.d_patch, cfg.d_equi) == (512, 256)
    assert cfg.train.precision == "bf16" and cfg.train.base_lr == 8e-3
    assert cfg.train.lr_scaling == "linear" and not cfg.tracking.enabled
    assert cfg.checkpoint.every_steps == cfg.train.max_steps
    from pretrain.models.backbone import backbone_kwargs, build_backbone

    backbone = build_backbone(**backbone_kwargs(cfg.model, cfg.data.global_size))
    assert (backbone.patch_size, backbone.embed_dim, len(backbone.vit.blocks)) == (16, 384, 12)
    assert backbone.num_tokens(torch.zeros(1, 3, 224, 224)) == 197
    for arm in (*ARMS, "lambda4-disk", "lambda1-dequi128"):
        flags = arm_overrides(arm).stdout.split()
        arm_cfg = load_config(CONFIG, flags)
        assert arm_cfg.recon.enabled == (arm != "baseline"), arm
        if arm.startswith("lambda"):
            assert arm_cfg.recon.lam == float(arm.split("-")[0].removeprefix("lambda"))
    assert load_config(CONFIG, ["recon.fill=disk", "recon.d_equi=128"]).d_equi == 128


def test_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    env = _env()
    proc = _script("--data", str(tmp_path / "none"), env=env)
    assert proc.returncode == 2 and "--build-data" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = _script("--tiny", "--arms", "baseline lambda2-bogus", "--data", str(tmp_path), env=env)
    assert proc.returncode == 2
    (tmp_path / "manifest.json").write_text("{}")
    proc = _script("--tiny", "--arms", "baseline lambda2-bogus", "--data", str(tmp_path), env=env)
    assert proc.returncode == 2 and "unknown arm suffix 'bogus'" in proc.stderr
    proc = _script("--bogus", env=env)
    assert proc.returncode == 2 and "unknown argument" in proc.stderr
    # No CUDA outside --tiny: one line, exit 2, before any training.
    runs = tmp_path / "runs"
    proc = _script("--data", str(tmp_path), "--runs", str(runs), env=_env(CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr, proc.stderr[-2000:]
    assert not list(runs.glob("*_s0"))


def test_build_data_makes_224_px_shards_without_the_resize_cache(tmp_path: Path) -> None:
    src = tmp_path / "png"
    for i in range(30):
        _png(src / "animals" / f"a{i}.png", i, size=300)
    out = tmp_path / "gpu_data"
    env = _env(SRC=str(src), WORKERS="1")
    proc = _script("--build-data", "--data", str(out), env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]["natural"]
    assert counts["train"] + counts["val"] == 30
    assert not (out / ".resized").exists() and not (out / "_staging").exists()
    sides = set()
    for shard in (out / "natural").glob("*.tar"):
        with tarfile.open(shard) as tar:
            for member in (m for m in tar.getmembers() if m.name.endswith(".png")):
                with Image.open(tar.extractfile(member)) as image:
                    sides.add(max(image.size))
    assert sides == {224}  # 300 px sources shrunk to the crop side
    again = _script("--build-data", "--data", str(out), env=env)
    assert again.returncode == 0 and "is built" in again.stdout


def test_max_images_keeps_a_stable_sample_of_distinct_images(tmp_path: Path) -> None:
    src = tmp_path / "png"
    for i in range(40):
        _png(src / "animals" / f"a{i}.png", i, size=24)
        _png(src / "food" / f"f{i}.png", 100 + i, size=24)
    full = study_data.plan(src, 25, 5, 100)
    capped = study_data.plan(src, 25, 5, 100, max_images=30)
    natural = {s: set(capped[("natural", s)][""]) for s in ("train", "val")}
    assert sum(map(len, natural.values())) == 30
    for split in ("train", "val"):  # the split of a kept image is the full set's
        assert natural[split] <= set(full[("natural", split)][""])
    labelled = {f for s in ("train", "val") for fs in capped[("labelled", s)].values() for f in fs}
    assert labelled <= natural["train"] | natural["val"]
    again = study_data.plan(src, 25, 5, 100, max_images=30)
    assert {s: set(again[("natural", s)][""]) for s in ("train", "val")} == natural
    assert study_data.plan(src, 25, 5, 100, max_images=0) == full
