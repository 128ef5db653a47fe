"""Damaged shards: the samples before the damage are used and the rest counted (exactly, from
the shard's DALI index), `data/skipped_samples` and `data/skipped_shards` are logged; a build
where no file is readable fails and leaves nothing marked complete."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import equirecon.cli as cli
from data_pipeline.builder.dataset import build_shards
from data_pipeline.shards import resolve_shards, scan_shard
from data_pipeline.torch_reader.stream import ShardSampleStream
from equirecon.config import load_config
from equirecon.errors import DataError
from pretrain.train import Trainer
from tests.conftest import REPO, TINY_OVERRIDES


def _images(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
        (root / f"img{i:03d}.jpg").write_bytes(buf.getvalue())


@pytest.fixture()
def damaged(tmp_path: Path) -> tuple[Path, str, int]:
    """A built dataset of 3 shards of 16 images; the first shard cut at 60 %."""
    _images(tmp_path / "src", 48)
    out = tmp_path / "data"
    build_shards(str(tmp_path / "src"), out, shard_size_mb=16 * 1.2e-3, progress=False)
    shards = resolve_shards(str(out))
    counts = [scan_shard(s).samples for s in shards]
    assert len(shards) >= 2 and sum(counts) == 48
    cut = shards[0]
    data = Path(cut).read_bytes()
    Path(cut).write_bytes(data[: int(len(data) * 0.6)])
    return out, cut, counts[0]


def test_samples_before_the_damage_are_read_and_the_rest_counted(
    damaged: tuple[Path, str, int],
) -> None:
    out, cut, written = damaged
    scan = scan_shard(cut)
    assert scan.damage is not None and cut in scan.damage
    assert 0 < scan.samples < written and scan.expected == written
    stream = ShardSampleStream(resolve_shards(str(out)), shuffle=False)
    assert cut in stream.shards and stream.bad_shards == [cut]
    assert stream.counts[stream.shards.index(cut)] == scan.samples
    read = [s for s in stream.iter_raw(0) if s["__shard__"] == cut]
    assert [s["__index__"] for s in read] == list(range(scan.samples))
    assert all("jpg" in s and "json" in s for s in read)  # complete samples only
    assert stream.skipped_by_reason == {"bad_shard": 1, "damaged_shard_samples": scan.lost}
    assert scan.lost == written - scan.samples


def test_pretraining_logs_skipped_samples_and_shards(
    damaged: tuple[Path, str, int], tmp_path: Path
) -> None:
    out, cut, written = damaged
    lost = written - scan_shard(cut).samples
    cfg = load_config(
        REPO / "configs" / "demo_cpu.yaml",
        [*TINY_OVERRIDES, "train.max_steps=2", f"data.path={out}", f"run.dir={tmp_path / 'run'}",
         "tracking.enabled=false", "train.batch_size=4"],
    )  # fmt: skip
    Trainer(cfg).fit()
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "train/loss_total" in r][-1]
    assert last["data/skipped_shards"] == 1.0
    assert last["data/skipped_samples"] == float(lost)


def test_build_with_no_readable_file_fails_and_is_not_reused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"broken{i}.jpg").write_bytes(b"not a jpeg" * (i + 1))
    out = tmp_path / "data"
    with pytest.raises(DataError, match="no readable image among the 3 image files"):
        build_shards(str(src), out, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["builds"]["natural/train"]
    assert entry["complete"] is False and manifest["complete"] is False
    assert sorted(b["path"] for b in entry["bad_files"]) == [f"broken{i}.jpg" for i in range(3)]
    assert not list((out / "natural" / ".build").glob("*.json"))  # nothing to reuse
    # The rerun reads the files again: fixed files are now picked up.
    assert cli.main(["data", "build", "--src", str(src), "--out", str(out)]) == 2
    assert "no readable image" in capsys.readouterr().err
    _images(tmp_path / "good", 1)
    (tmp_path / "good" / "img000.jpg").replace(src / "broken0.jpg")
    assert build_shards(str(src), out, progress=False)["num_samples"] == 1
