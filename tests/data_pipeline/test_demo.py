"""The offline demo dataset: counts, held-out photos, labels, determinism, idempotent rebuild."""

from __future__ import annotations

import collections
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from data_pipeline import demo
from data_pipeline.demo import build_demo
from data_pipeline.shards import count_samples, iter_shard_samples

SMALL = {
    "n_train_crops": 200,
    "n_val_crops": 50,
    "crop_px": 32,
    "labelled_train": 300,
    "labelled_val": 100,
    "progress": False,
}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("demo") / "data"
    return out, build_demo(out, seed=0, **SMALL)


def _samples(out: Path, shards: list[str]) -> list[dict[str, Any]]:
    return [s for shard in shards for s in iter_shard_samples(str(out / shard))]


def test_manifest_counts_match_shards(demo_dir: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = demo_dir
    assert json.loads((out / "manifest.json").read_text()) == manifest
    expected = {
        "natural": {"train": 200, "val": 50},
        "labelled": {"train": 300, "val": 100},
    }
    assert manifest["counts"] == expected
    for subset, splits in expected.items():
        for split, count in splits.items():
            shards = manifest["shards"][subset][split]
            assert shards == sorted(
                str(p.relative_to(out)) for p in (out / subset).glob(f"{split}-*.tar")
            )
            assert sum(count_samples(str(out / s)) for s in shards) == count
            keys = [s["__key__"] for s in _samples(out, shards)]
            assert len(set(keys)) == count


def test_natural_crops_and_val_photos_disjoint(demo_dir: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = demo_dir
    photos_of = {}
    for split in ("train", "val"):
        samples = _samples(out, manifest["shards"]["natural"][split])
        assert all(set(s) >= {"jpg", "json"} for s in samples)
        photos_of[split] = {json.loads(s["json"])["photo"] for s in samples}
    assert photos_of["val"] == set(manifest["val_photos"])
    assert len(manifest["val_photos"]) == demo.N_VAL_PHOTOS
    assert not photos_of["train"] & photos_of["val"]
    assert len(photos_of["train"]) >= 15  # skimage + sklearn photos all used
    sources = {p["name"]: p for p in manifest["sources"]["photos"]}
    assert {"china", "flower", "astronaut", "camera"} <= set(sources)
    assert all(p["license"] and p["origin"] for p in sources.values())

    sample = _samples(out, manifest["shards"]["natural"]["train"][:1])[0]
    image = Image.open(io.BytesIO(sample["jpg"]))
    assert image.size == (32, 32) and image.mode == "RGB"
    left, top, right, bottom = json.loads(sample["json"])["box"]
    assert right - left == bottom - top > 0


def test_labelled_subset_is_stratified(demo_dir: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = demo_dir
    assert len(manifest["classes"]) == 10
    for split, count in (("train", 300), ("val", 100)):
        samples = _samples(out, manifest["shards"]["labelled"][split])
        labels = [int(s["cls"]) for s in samples]
        assert all("png" in s for s in samples)
        assert collections.Counter(labels) == {c: count // 10 for c in range(10)}
        meta = json.loads(samples[0]["json"])
        assert meta["class_name"] == manifest["classes"][meta["label"]]


def test_rerun_is_a_noop(
    demo_dir: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    out, manifest = demo_dir
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = build_demo(out, seed=0, **SMALL)
    assert again == manifest
    assert "nothing to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert not list(out.parent.glob(".data.tmp-*"))


def test_deterministic_and_rebuilds_on_new_params(
    demo_dir: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, manifest = demo_dir
    other = tmp_path / "again"
    build_demo(other, seed=0, **SMALL)
    for shard in manifest["shards"]["natural"]["train"] + manifest["shards"]["labelled"]["val"]:
        assert (other / shard).read_bytes() == (out / shard).read_bytes()
    changed = build_demo(other, seed=1, **{**SMALL, "n_val_crops": 20})
    assert changed["counts"]["natural"]["val"] == 20
    assert json.loads((other / "manifest.json").read_text())["params"]["seed"] == 1
    assert not list(tmp_path.glob(".again.*"))


def test_refuses_to_replace_a_foreign_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    # Keep it fast: no photos, a tiny labelled set.
    monkeypatch.setattr(demo, "load_photos", lambda: _fake_photos())
    with pytest.raises(FileExistsError, match="precious"):
        build_demo(
            out, n_train_crops=4, n_val_crops=4, labelled_train=10, labelled_val=10, progress=False
        )
    assert (out / "thesis.tex").read_text() == "do not delete"
    assert not list(tmp_path.glob(".precious.tmp-*"))


def _fake_photos() -> list[demo.Photo]:
    rng = np.random.default_rng(0)
    return [
        demo.Photo(
            name, "test", "none", Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
        )
        for name in ["astronaut", "camera", "chelsea", "coffee", "coins", "brick"]
    ]


def test_mnist_fallback_when_fashion_mnist_absent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "_fashion_mnist_files", lambda: None)
    labelled = demo._load_labelled(200, 100, np.random.default_rng(0))
    assert labelled.name == "mnist-5k"
    assert "dataset-fashion-mnist" in capsys.readouterr().out
    train_images, train_labels, train_idx, _ = labelled.splits["train"]
    val_images, val_labels, val_idx, _ = labelled.splits["val"]
    assert train_images.shape == (200, 28, 28) and train_images.dtype == np.uint8
    assert collections.Counter(train_labels.tolist()) == {c: 20 for c in range(10)}
    assert collections.Counter(val_labels.tolist()) == {c: 10 for c in range(10)}
    assert not set(train_idx.tolist()) & set(val_idx.tolist())


def test_idx_parser_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad-idx1-ubyte"):
        demo._read_idx(bad)
    good = tmp_path / "labels-idx1-ubyte"
    good.write_bytes(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([1, 2, 3]))
    assert demo._read_idx(good).tolist() == [1, 2, 3]


def test_shards_are_plain_tars(demo_dir: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = demo_dir
    with tarfile.open(out / manifest["shards"]["labelled"]["val"][0]) as tar:
        names = tar.getnames()[:3]
    assert [n.rsplit(".", 1)[1] for n in names] == ["png", "cls", "json"]
