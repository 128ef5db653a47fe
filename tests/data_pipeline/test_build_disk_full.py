"""`equirecon data build` on a disk that fills up: exit code 3 and one line (which shard, where,
free space, about how much the shards left need), the partial shard removed at once, the
complete ones kept; rerun once there is space, the build ends with the same shards as an
uninterrupted one.

Variants (tests/small_fs.py): `tmpfs` builds onto a real tmpfs too small for the dataset, with
two worker processes (the error comes back from a spawned worker); `inject` raises ENOSPC from
the tar writer in the middle of one shard, in this process.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import equirecon.cli as cli
from data_pipeline.shards import ShardWriter
from tests.small_fs import VARIANTS, disk_full, remount, small_fs

IMAGES = 12
SHARD_MB = "0.1"  # two images per shard: 6 shards of ~100 kB


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("disk_full_src")
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(buffer, "PNG")
        (src / f"im{i:02d}.png").write_bytes(buffer.getvalue())  # ~49 kB of noise each
    return src


def _build(src: Path, out: Path) -> list[str]:
    return ["data", "build", "--src", str(src), "--out", str(out), "--shard-size-mb", SHARD_MB]


def _shards(out: Path) -> dict[str, bytes]:
    """The shards and DALI indexes (and any partial or temporary file) of the build."""
    found = sorted((out / "natural").glob("train-*")) + sorted((out / "natural").glob(".train-*"))
    return {p.name: p.read_bytes() for p in found if not p.name.endswith(".idx.json")}


@pytest.fixture(scope="module")
def uninterrupted(images: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("disk_full_ref") / "out"
    assert cli.main(_build(images, out)) == 0
    shards = _shards(out)
    assert len([n for n in shards if n.endswith(".tar")]) == IMAGES // 2
    return shards


@pytest.mark.parametrize("variant", VARIANTS)
def test_build_on_a_full_disk_then_resume(
    tmp_path: Path,
    variant: str,
    images: Path,
    uninterrupted: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with small_fs(tmp_path / "mnt", variant, size="300k") as mnt:
        out = mnt / "out"
        args = _build(images, out)
        if variant == "tmpfs":
            args += ["--workers", "2"]
        else:
            real_write = ShardWriter.write

            def write(self: ShardWriter, sample: dict) -> None:
                real_write(self, sample)  # one sample of shard 3 is in the file, then ENOSPC
                if self.shards[-1].endswith("train-000003.tar.tmp"):
                    raise disk_full()

            monkeypatch.setattr(ShardWriter, "write", write)
        capsys.readouterr()
        assert cli.main(args) == 3
        err = capsys.readouterr().err
        assert "Traceback" not in err
        lines = [ln for ln in err.splitlines() if ln.startswith(("equirecon: error:", "hint:"))]
        assert len(lines) == 2, err
        match = re.match(
            r"equirecon: error: disk full while writing shard (\d) \((\d) of 6 shards left\) "
            rf"to {out}/natural/train-00000(\d)\.tar: [\d.]+ [kMG]?B free on (\S+), "
            r"~([\d.]+) kB needed$",
            lines[0],
        )
        assert match, lines[0]
        shard, left, named, mount, needed = match.groups()
        assert shard == named and mount == (str(mnt) if variant == "tmpfs" else mount)
        assert float(needed) > 40 * int(left)  # ~50 kB per image left
        assert lines[1].startswith(f"hint: free space on {mount} (or write elsewhere), then ")
        assert "rerun the same command: complete shards are kept" in lines[1]
        # The partial shard is gone; every shard left is complete (tar, index and record).
        written = _shards(out)
        assert not [n for n in written if ".tmp" in n]
        tars = [n for n in written if n.endswith(".tar")]
        assert tars and len(tars) < IMAGES // 2
        for name in tars:
            assert written[name] == uninterrupted[name]
            assert written[name[:-4] + ".idx"] == uninterrupted[name[:-4] + ".idx"]
            assert (out / "natural" / ".build" / (name[:-4] + ".json")).is_file()
        assert f"train-00000{shard}.tar" not in written
        # "Free space", then the same command completes the build: the same shards.
        monkeypatch.undo()
        if variant == "tmpfs":
            remount(mnt, read_only=False, size="4m")
        assert cli.main(args) == 0
        assert f"({len(tars)} complete, " in capsys.readouterr().out
        assert _shards(out) == uninterrupted
