"""`equirecon data build`: ImageFolder and flat sources, bad files, labels, DALI index files,
resume of complete shards and of an interrupted build, parallel workers, the CLI."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipeline.builder.dataset import build_shards
from data_pipeline.builder.sources import find_sources
from data_pipeline.dali_index import read_dali_index
from data_pipeline.shards import iter_shard_samples, resolve_shards
from equirecon.cli import main

SHARD_MB = 0.004  # ~4 KB: two or three tiny images per shard


def _image_bytes(fmt: str, seed: int, size: tuple[int, int] = (24, 20)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _make_tree(root: Path) -> dict[str, bytes]:
    """An ImageFolder tree (classes cat, dog, zebra) with 2 bad and 2 non-image files."""
    good = {
        "cat/c0.jpg": _image_bytes("JPEG", 0),
        "cat/c1.png": _image_bytes("PNG", 1),
        "cat/nested/c2.webp": _image_bytes("WEBP", 2),
        "dog/d0.JPG": _image_bytes("JPEG", 3),
        "dog/d1.png": _image_bytes("PNG", 4),
        "dog/d2.webp": _image_bytes("WEBP", 5),
        "dog/d3.bmp": _image_bytes("BMP", 6),
        "zebra/z0.jpg": _image_bytes("JPEG", 7),
    }
    for rel, data in good.items():
        _write(root / rel, data)
    _write(root / "dog/truncated.jpg", _image_bytes("JPEG", 8, (64, 64))[:300])
    _write(root / "zebra/fake.png", b"this is a text file, not a PNG\n" * 4)
    _write(root / "zebra/notes.txt", b"not an image extension")
    _write(root / "README.md", b"outside any class folder")
    _write(root / ".hidden/x.jpg", _image_bytes("JPEG", 9))
    return good


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("src") / "imagefolder"
    return root, _make_tree(root)


def _samples(out: Path, subset: str = "natural") -> list[dict]:
    return [
        s for shard in resolve_shards(str(out), subset=subset) for s in iter_shard_samples(shard)
    ]


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "natural").glob("train-*.*"))}


def test_imagefolder_build_manifest_labels_and_bad_files(
    tree: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    root, good = tree
    out = tmp_path / "out"
    entry = build_shards(str(root), out, labels="folder", shard_size_mb=SHARD_MB, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["builds"]["natural/train"] == entry
    assert manifest["counts"] == {"natural": {"train": len(good)}}
    assert manifest["classes"] == entry["classes"] == ["cat", "dog", "zebra"]
    assert entry["class_counts"] == {"cat": 3, "dog": 4, "zebra": 1}
    assert entry["num_samples"] == len(good) and entry["num_files"] == len(good) + 2
    reasons = {b["path"]: b["reason"] for b in entry["bad_files"]}
    assert set(reasons) == {"dog/truncated.jpg", "zebra/fake.png"}
    assert (
        "truncated" in reasons["dog/truncated.jpg"] or "Truncated" in reasons["dog/truncated.jpg"]
    )
    assert "not an image" in reasons["zebra/fake.png"]
    assert sorted(entry["ignored_files"]) == ["README.md", "zebra/notes.txt"]
    assert len(entry["shards"]) >= 3  # the size limit split the data
    assert entry["bytes"] == sum(
        (out / s["tar"]).stat().st_size + (out / s["index"]).stat().st_size for s in entry["shards"]
    )

    samples = _samples(out)
    assert len(samples) == len(good) and len({s["__key__"] for s in samples}) == len(good)
    for sample in samples:
        meta = json.loads(sample["json"])
        label = entry["classes"].index(meta["path"].split("/")[0])
        assert int(sample["cls"]) == label, meta
        assert (meta["width"], meta["height"]) == (24, 20)
        ext = next(e for e in ("jpg", "png", "webp") if e in sample)
        if meta["format"] == "BMP":  # re-encoded losslessly
            assert ext == "png"
            assert (
                Image.open(io.BytesIO(sample["png"])).tobytes()
                == Image.open(io.BytesIO(good[meta["path"]])).tobytes()
            )
        else:  # stored as-is
            assert sample[ext] == good[meta["path"]]
    # Shards are shuffled, not sorted by class.
    order = [json.loads(s["json"])["path"] for s in samples]
    assert order != sorted(order)


def test_dali_index_files_point_at_the_member_data(
    tree: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    entry = build_shards(str(tree[0]), out, labels="folder", shard_size_mb=SHARD_MB, progress=False)
    for shard in entry["shards"]:
        lines = (out / shard["index"]).read_text().splitlines()
        assert lines[0] == f"v1.2 {shard['samples']}"
        raw = (out / shard["tar"]).read_bytes()
        members = {}
        for sample in iter_shard_samples(str(out / shard["tar"])):
            for ext in ("jpg", "png", "webp", "cls", "json"):
                if ext in sample:
                    members[f"{sample['__key__']}.{ext}"] = sample[ext]
        seen = 0
        for line in lines[1:]:
            fields = line.split()
            assert len(fields) % 4 == 0
            for ext, offset, size, name in zip(*[iter(fields)] * 4):
                assert int(offset) % 512 == 0 and name.endswith("." + ext)
                assert raw[int(offset) : int(offset) + int(size)] == members[name]
                seen += 1
        assert seen == len(members)
        assert len(read_dali_index(out / shard["index"])) == shard["samples"]


def test_rerun_resumes_and_completes_an_interrupted_build(
    tree: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    kwargs = {"labels": "folder", "shard_size_mb": SHARD_MB, "progress": False}
    first = build_shards(str(tree[0]), out, **kwargs)
    for path in (out / "natural").glob("train-*.*"):  # an hour ago: any rewrite shows
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns - 3600 * 10**9))
    before = _mtimes(out)
    content = {p.name: p.read_bytes() for p in (out / "natural").glob("train-*.*")}

    again = build_shards(str(tree[0]), out, **kwargs)
    assert again["shards_written"] == 0 and again["shards_reused"] == len(first["shards"])
    assert _mtimes(out) == before
    assert again["shards"] == first["shards"] and again["bad_files"] == first["bad_files"]

    # An interrupted build: one shard's tar is gone, another left a temp file behind.
    victim = Path(first["shards"][1]["tar"]).name
    (out / "natural" / victim).unlink()
    (out / "natural" / "train-000000.tar.tmp").write_bytes(b"partial")
    resumed = build_shards(str(tree[0]), out, **kwargs)
    assert resumed["shards_written"] == 1
    after = _mtimes(out)
    changed = {name for name in after if after[name] != before.get(name)}
    idx = victim.replace(".tar", ".idx")
    assert changed == {victim, idx, idx + ".json"}  # tar, DALI index and what it was built from
    assert (out / "natural" / victim).read_bytes() == content[victim]  # deterministic
    assert not list((out / "natural").glob("*.tmp"))
    assert resumed["num_samples"] == first["num_samples"]


def test_parallel_workers_write_identical_shards(
    tree: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    kwargs = {"labels": "folder", "shard_size_mb": SHARD_MB, "progress": False}
    serial = build_shards(str(tree[0]), tmp_path / "serial", **kwargs)
    parallel = build_shards(str(tree[0]), tmp_path / "parallel", workers=2, **kwargs)
    assert parallel["shards"] == serial["shards"]
    for shard in serial["shards"]:
        for key in ("tar", "index"):
            assert (tmp_path / "parallel" / shard[key]).read_bytes() == (
                tmp_path / "serial" / shard[key]
            ).read_bytes()


def test_cli_flat_folder_without_labels(tmp_path: Path) -> None:
    src = tmp_path / "flat"
    good = {
        "a.jpg": _image_bytes("JPEG", 10),
        "b.png": _image_bytes("PNG", 11),
        "c.webp": _image_bytes("WEBP", 12),
        "d.jpeg": _image_bytes("JPEG", 13),
    }
    for name, data in good.items():
        _write(src / name, data)
    _write(src / "broken.webp", _image_bytes("WEBP", 14, (64, 64))[:60])
    _write(src / "text.jpg", b"hello")
    out = tmp_path / "out"
    code = main(["data", "build", "--src", str(src), "--out", str(out), "--shard-size-mb", "1"])
    assert code == 0
    entry = json.loads((out / "manifest.json").read_text())["builds"]["natural/train"]
    assert entry["labels"] == "none" and entry["classes"] == [] and entry["num_samples"] == 4
    assert {b["path"] for b in entry["bad_files"]} == {"broken.webp", "text.jpg"}
    samples = _samples(out)
    assert all("cls" not in s for s in samples)
    stored = {json.loads(s["json"])["path"]: s for s in samples}
    for name, data in good.items():
        ext = {"jpeg": "jpg"}.get(name.split(".")[1], name.split(".")[1])
        assert stored[name][ext] == data

    # A second split into the same root keeps the first one's manifest entry.
    main(["data", "build", "--src", str(src / "*.png"), "--out", str(out), "--split", "val"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"natural": {"train": 4, "val": 1}}
    assert len(resolve_shards(str(out), split="val")) == 1


def test_glob_sources_and_errors(tree: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, _ = tree
    _, files, classes, _ = find_sources(str(root / "*" / "*.jpg"), labels="folder")
    assert classes == ["cat", "dog", "zebra"]  # classes: first folders of the matches
    assert [f.rel for f in files] == ["cat/c0.jpg", "dog/truncated.jpg", "zebra/z0.jpg"]
    assert [f.label for f in files] == [0, 1, 2]
    with pytest.raises(FileNotFoundError, match="matched nothing"):
        find_sources(str(tmp_path / "*.jpg"))
    with pytest.raises(ValueError, match="labels"):
        find_sources(str(root), labels="csv")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text('{"format": "equirecon-demo"}')
    with pytest.raises(FileExistsError, match="another kind"):
        build_shards(str(root), tmp_path / "m", progress=False)
