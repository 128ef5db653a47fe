"""Tests of the dataset-layout converters (`equirecon data build --format ...`), each on a tiny
generated instance of its exact layout (tests/data_pipeline/layouts.py)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipeline.formats import FORMATS, LayoutError, convert
from data_pipeline.shards import iter_shard_samples, resolve_shards
from equirecon.cli import build_parser, main
from tests.data_pipeline.layouts import (
    WNIDS,
    make_ade20k,
    make_coco,
    make_imagenet,
    make_nyu,
    make_voc,
)


def samples(out: Path, subset: str, split: str) -> list[dict]:
    return [
        s for shard in resolve_shards(str(out), subset, split) for s in iter_shard_samples(shard)
    ]


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_cli_accepts_exactly_the_registered_formats() -> None:
    base = ["data", "build", "--src", "x", "--out", "y", "--format"]
    for name in FORMATS:
        assert build_parser().parse_args([*base, name]).format == name
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "kitti"])


def test_imagefolder_keeps_the_split_and_the_class_index(tmp_path: Path) -> None:
    expected = make_imagenet(tmp_path / "imagenet")
    out = tmp_path / "shards"
    argv = ["data", "build", "--format", "imagefolder", "--src", str(tmp_path / "imagenet")]
    assert main([*argv, "--out", str(out), "--workers", "2", "--shard-size-mb", "0.002"]) == 0
    m = manifest(out)
    assert m["classes"] == list(WNIDS)
    assert m["counts"]["labelled"] == {"train": expected["train"], "val": expected["val"]}
    train = m["builds"]["labelled/train"]
    assert train["format"] == "imagefolder" and len(train["shards"]) > 1  # cut by size, 2 workers
    assert train["class_counts"] == {WNIDS[0]: 4, WNIDS[1]: 4, WNIDS[2]: 4}
    assert [b["path"] for b in train["bad_files"]] == [f"{WNIDS[0]}/{WNIDS[0]}_9999.JPEG"]
    assert m["labelled"]["class_names"][0] == "tench, Tinca tinca"
    # Labels follow the class folder, in val too (folders sorted as in train).
    for split in ("train", "val"):
        for sample in samples(out, "labelled", split):
            folder = json.loads(sample["json"])["path"].split("/")[0]
            assert int(sample["cls"]) == WNIDS.index(folder)
    # Resumable: a second run rewrites nothing.
    again = convert("imagefolder", tmp_path / "imagenet", out, shard_size_mb=0.002, progress=False)
    assert again["labelled/train"]["shards_written"] == 0
    assert again["labelled/train"]["shards_reused"] == len(train["shards"])


def test_imagefolder_flat_val_names_the_fix(tmp_path: Path) -> None:
    make_imagenet(tmp_path)
    for path in (tmp_path / "val").rglob("*.JPEG"):
        path.rename(tmp_path / "val" / path.name)
    for folder in (tmp_path / "val").iterdir():
        if folder.is_dir():
            folder.rmdir()
    with pytest.raises(LayoutError, match="valprep"):
        convert("imagefolder", tmp_path, tmp_path / "out", progress=False)


def test_ade20k_masks_shift_classes_and_ignore_other(tmp_path: Path) -> None:
    make_ade20k(tmp_path / "ade")
    out = tmp_path / "shards"
    entries = convert("ade20k", tmp_path / "ade", out, progress=False)
    assert set(entries) == {"segmentation/train", "segmentation/val"}
    m = manifest(out)
    assert m["counts"]["segmentation"] == {"train": 4, "val": 4}
    assert m["segmentation"]["classes"][0] == "wall" and len(m["segmentation"]["classes"]) == 150
    assert m["segmentation"]["classes"][1] == "name2"  # the first name of each row
    bad = entries["segmentation/train"]["bad_files"]
    assert [b["path"] for b in bad] == ["images/training/ADE_train_00000099.jpg"]
    assert "no mask" in bad[0]["reason"]
    counts = entries["segmentation/val"]["class_counts"]
    assert sum(counts.values()) > 0 and set(counts) == set(m["segmentation"]["classes"])
    for sample in samples(out, "segmentation", "train"):
        meta = json.loads(sample["json"])
        source = np.asarray(
            Image.open(tmp_path / "ade" / "ADEChallengeData2016" / meta["annotations"]["seg.png"])
        )
        stored = np.asarray(Image.open(io.BytesIO(sample["seg.png"])))
        assert "jpg" in sample and stored.shape == source.shape
        assert np.array_equal(stored, np.where(source == 0, 255, source - 1))


def test_voc_keeps_palette_ids_and_border(tmp_path: Path) -> None:
    make_voc(tmp_path)
    out = tmp_path / "shards"
    entries = convert("voc", tmp_path / "VOCdevkit", out, progress=False)
    m = manifest(out)
    assert m["counts"]["segmentation"] == {"train": 4, "val": 4}
    assert m["segmentation"]["classes"][:2] == ["background", "aeroplane"]
    assert len(m["segmentation"]["classes"]) == 21 and m["segmentation"]["ignore_index"] == 255
    bad = entries["segmentation/train"]["bad_files"]
    assert bad == [
        {"path": "JPEGImages/2007_999999.jpg", "reason": "no SegmentationClass/2007_999999.png"}
    ]
    for sample in samples(out, "segmentation", "val"):
        stored = np.asarray(Image.open(io.BytesIO(sample["seg.png"])))
        image_id = Path(json.loads(sample["json"])["path"]).stem
        palette = np.asarray(
            Image.open(tmp_path / "VOCdevkit/VOC2012/SegmentationClass" / f"{image_id}.png")
        )
        assert np.array_equal(stored, palette) and (stored == 255).any()


def test_nyu_depth_pairs_rgb_and_sync_depth(tmp_path: Path) -> None:
    make_nyu(tmp_path / "nyu")
    out = tmp_path / "shards"
    entries = convert("nyu-depth", tmp_path / "nyu", out, progress=False)
    m = manifest(out)
    assert m["counts"]["depth"] == {"train": 6, "val": 6}
    assert m["depth"]["scale"] == 1000 and m["depth"]["max_depth_m"] == 10.0
    assert [b["path"] for b in entries["depth/train"]["bad_files"]] == [
        "sync/basement_0001a/rgb_00500.jpg"
    ]
    for sample in samples(out, "depth", "val"):
        rel = json.loads(sample["json"])["path"]
        assert rel.startswith("official_splits/test/")
        original = np.asarray(
            Image.open(
                tmp_path / "nyu" / rel.replace("rgb_", "sync_depth_").replace(".jpg", ".png")
            )
        )
        stored = np.asarray(Image.open(io.BytesIO(sample["depth.png"])))
        assert np.array_equal(stored, original) and stored[0, 0] == 0


def test_nyu_rejects_8_bit_depth_as_a_bad_file(tmp_path: Path) -> None:
    make_nyu(tmp_path / "nyu")
    depth = tmp_path / "nyu" / "sync" / "bedroom_0004" / "sync_depth_00000.png"
    Image.open(depth).convert("L").save(depth)
    entries = convert("nyu-depth", tmp_path / "nyu", tmp_path / "out", progress=False)
    reasons = {b["path"]: b["reason"] for b in entries["depth/train"]["bad_files"]}
    assert "16-bit" in reasons["sync/bedroom_0004/rgb_00000.jpg"]
    assert "sync/bedroom_0004/sync_depth_00000.png" in reasons["sync/bedroom_0004/rgb_00000.jpg"]


def test_images_reads_coco_folders_into_natural(tmp_path: Path) -> None:
    make_coco(tmp_path / "coco")
    out = tmp_path / "shards"
    entries = convert("images", tmp_path / "coco", out, progress=False)
    assert manifest(out)["counts"]["natural"] == {"train": 4, "val": 4}
    assert entries["natural/train"]["ignored_files"] == ["README.txt"]
    assert all("cls" not in s for s in samples(out, "natural", "val"))


def test_wrong_layout_and_stray_options_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """User errors of `data build --format`: exit code 2, one error line and a hint."""
    monkeypatch.delenv("EQUIRECON_DEBUG", raising=False)
    (tmp_path / "empty").mkdir()
    build = ["data", "build", "--out", str(tmp_path / "o"), "--format"]
    cases = {
        r"ade20k: .*empty.*ADEChallengeData2016": [
            "ade20k",
            "--src",
            str(tmp_path / "empty"),
        ],
        "voc: .*drop --split": ["voc", "--src", str(tmp_path), "--split", "val"],
        r"voc: .*nowhere.* is not a folder": ["voc", "--src", str(tmp_path / "nowhere")],
    }
    for says, argv in cases.items():
        assert main([*build, *argv]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and err[1].startswith("hint: "), err
        assert re.match(rf"equirecon: error: data build --format {says}", err[0]), err
    with pytest.raises(ValueError, match="unknown --format 'kitti'"):
        convert("kitti", tmp_path, tmp_path / "o")
