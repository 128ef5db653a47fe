"""A DALI index is used only for the tar it was built from (data_pipeline/dali_index.py, the DALI
reader's `prepare_shards`); any other is replaced by a fresh one, with one warning. No DALI
needed: these are the files the reader hands to `fn.readers.webdataset`."""

from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from data_pipeline.dali_index import index_mismatch, index_source_path, write_dali_index
from data_pipeline.dali_reader.shards import prepare_shards
from data_pipeline.shards import write_shards

HOUR_NS = 3600 * 10**9


def _jpeg(i: int, side: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side + i, side), (20 * i % 256, 0, 0)).save(buf, format="JPEG")
    return buf.getvalue()


def _indexed_shards(folder: Path, samples: int = 8, per_shard: int = 4) -> list[Path]:
    """Shards `train-00000N.tar`, each with its index and sidecar as `data build` writes them."""
    items = [{"__key__": f"k{i:03d}", "jpg": _jpeg(i)} for i in range(samples)]
    paths = [Path(p) for p in write_shards(items, folder / "train-%06d.tar", per_shard)]
    for path in paths:
        write_dali_index(path, path.with_suffix(".idx"))
    return paths


def _shift_mtime(path: Path, ns: int) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + ns))


def _prepare(
    tars: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> tuple[list[bool], list[int], list[str]]:
    """(index beside the tar used?, sample counts, warnings) of the DALI reader's preparation."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="data_pipeline.dali_reader.shards"):
        shards = prepare_shards([str(t) for t in tars], tmp_path / "generated")
    beside = [Path(i) == t.with_suffix(".idx") for i, t in zip(shards.index_paths, tars)]
    return beside, shards.counts, [r.getMessage() for r in caplog.records]


def test_the_build_index_is_used_also_after_a_copy_that_changed_mtimes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "generated").mkdir()
    tars = _indexed_shards(tmp_path / "d")
    source = index_source_path(tars[0].with_suffix(".idx"))
    assert source.name == "train-000000.idx.json"
    assert _prepare(tars, tmp_path, caplog) == ([True, True], [4, 4], [])
    # `cp -r` without -p: new mtimes, the index now older than its tar; same content.
    _shift_mtime(tars[0], HOUR_NS)
    _shift_mtime(tars[1], -HOUR_NS)
    assert _prepare(tars, tmp_path, caplog) == ([True, True], [4, 4], [])
    # An index without a sidecar (an older build, NVIDIA's wds2idx): checked against the tar.
    source.unlink()
    _shift_mtime(tars[0], -2 * HOUR_NS)
    assert index_mismatch(tars[0], tars[0].with_suffix(".idx")) is None


def test_a_replaced_tar_or_a_copied_index_is_indexed_anew(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "generated").mkdir()
    tars = _indexed_shards(tmp_path / "d")
    idx0, idx1 = (t.with_suffix(".idx") for t in tars)

    # The tar replaced by another one of the same size (tars come in 10 KiB records) and a
    # newer mtime: the tar headers at the index's offsets give it away.
    other = _indexed_shards(tmp_path / "same", samples=3, per_shard=3)[0]
    assert other.stat().st_size == tars[1].stat().st_size
    shutil.copyfile(other, tars[1])
    beside, counts, warnings = _prepare(tars, tmp_path, caplog)
    assert (beside, counts) == ([True, False], [4, 3])
    assert len(warnings) == 1 and "the tar holds k000.jpg" in warnings[0]
    write_dali_index(tars[1], idx1)  # as a rebuild would

    # Replaced by another one (12 samples) that looks older than the index: the mtime
    # order says nothing, the recorded size does.
    other = _indexed_shards(tmp_path / "other", samples=12, per_shard=12)[0]
    shutil.copyfile(other, tars[1])
    _shift_mtime(tars[1], -HOUR_NS)
    beside, counts, warnings = _prepare(tars, tmp_path, caplog)
    assert (beside, counts) == ([True, False], [4, 12])
    assert len(warnings) == 1
    assert "train-000001.idx does not fit" in warnings[0] and "this one has" in warnings[0]
    write_dali_index(tars[1], idx1)  # as a rebuild would

    # The index (and its sidecar) copied from another shard.
    shutil.copyfile(idx0, idx1)
    assert "it is not the index its train-000001.idx.json describes" in str(
        index_mismatch(tars[1], idx1)
    )
    shutil.copyfile(index_source_path(idx0), index_source_path(idx1))
    assert index_mismatch(tars[1], idx1) == "it was built for train-000000.tar"
    assert _prepare(tars, tmp_path, caplog)[:2] == ([True, False], [4, 12])

    # Without sidecars, the tar headers at the index's offsets give it away.
    for idx in (idx0, idx1):
        index_source_path(idx).unlink()
    _shift_mtime(idx1, 2 * HOUR_NS)  # not older than its tar
    # (tars[1] begins with the 4 samples of tars[0]: it goes on after the index's last one)
    assert "the tar goes on after" in str(index_mismatch(tars[1], idx1))
    beside, counts, warnings = _prepare(tars, tmp_path, caplog)
    assert (beside, counts, len(warnings)) == ([True, False], [4, 12], 1)
