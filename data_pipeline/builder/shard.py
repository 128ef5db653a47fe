"""One shard of a build: writing its tar, DALI index and completion record (resume), and
writing a list of them, in this process or a pool of spawned ones."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import queue
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from data_pipeline.annotations import mask_classes
from data_pipeline.builder.images import BadImage, convert_annotation, inspect_image
from data_pipeline.builder.manifest import BUILD_VERSION
from data_pipeline.builder.sources import SourceFile
from data_pipeline.dali_index import write_dali_index
from data_pipeline.shards import ShardWriter
from equirecon.rundir import temp_path, write_text_atomic
from equirecon.storage import guard_write


@dataclass(frozen=True)
class ShardTask:
    """One shard of the plan: its files (with sample keys) and where its outputs go."""

    index: int
    tar: str
    idx: str
    record: str
    digest: str
    files: tuple[tuple[str, SourceFile], ...]


def shard_digest(files: Sequence[tuple[str, SourceFile]], labels: str) -> str:
    payload = [BUILD_VERSION, labels] + [
        [key, f.rel, f.size, f.mtime_ns, f.label]
        + [[a.ext, a.rel, a.codec, a.size, a.mtime_ns] for a in f.annotations]
        for key, f in files
    ]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:32]


_PROGRESS: Any = None  # a multiprocessing queue in pool workers


def _init_worker(progress: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress


def shard_bytes(task: ShardTask) -> int:
    """About the bytes of a shard's tar: its files plus tar headers and the json member."""
    return sum(f.size + sum(a.size for a in f.annotations) + 2048 for _, f in task.files)


def build_shard(task: ShardTask, progress: Any = None) -> dict[str, Any]:
    """Writes one shard (tar, index, then its record, each atomically); returns the record.

    Raises:
        StorageError: the disk is full, read-only or not writable; the shard's partial files
            (tar, index, temporary files) are removed first.
    """
    tar_path, idx_path, record_path = Path(task.tar), Path(task.idx), Path(task.record)
    partial = [Path(str(tar_path) + ".tmp"), tar_path, idx_path, temp_path(idx_path)]
    with guard_write(
        f"shard {task.index}",
        tar_path,
        needed=lambda: shard_bytes(task),
        partial=[*partial, temp_path(record_path)],
    ):
        return _build_shard(task, progress if progress is not None else _PROGRESS)


def _build_shard(task: ShardTask, progress: Any) -> dict[str, Any]:
    tar_path, idx_path, record_path = Path(task.tar), Path(task.idx), Path(task.record)
    tmp_tar = Path(str(tar_path) + ".tmp")
    # ShardWriter numbers its files: a pattern whose only printf field yields this tmp name.
    prefix = str(tmp_tar)[: -len(f"{task.index:06d}.tar.tmp")].replace("%", "%%")
    pattern = prefix + "%06d.tar.tmp"
    bad: list[dict[str, str]] = []
    class_counts: Counter[int] = Counter()
    source_bytes = 0
    pending = 0
    with ShardWriter(pattern, max_samples=1 << 40, start_index=task.index) as sink:
        for key, source in task.files:
            pending += 1
            if progress is not None and pending >= 16:
                progress.put(pending)
                pending = 0
            try:
                try:
                    data = Path(source.path).read_bytes()
                except OSError as err:
                    raise BadImage(f"unreadable: {err.strerror or err}") from None
                ext, payload, (width, height), fmt = inspect_image(data)
                extra = {a.ext: convert_annotation(a, (width, height)) for a in source.annotations}
            except BadImage as err:
                bad.append({"path": source.rel, "reason": str(err)})
                continue
            meta: dict[str, Any] = {
                "path": source.rel,
                "width": width,
                "height": height,
                "format": fmt,
                "bytes": len(data),
            }
            if source.annotations:
                meta["annotations"] = {a.ext: a.rel for a in source.annotations}
            sample: dict[str, Any] = {"__key__": key, ext: payload, **extra, "json": meta}
            if source.label is not None:
                sample["cls"] = source.label
                class_counts[source.label] += 1
            if "seg.png" in extra:  # segmentation: images in which each class occurs
                class_counts.update(mask_classes(extra["seg.png"]))
            sink.write(sample)
            source_bytes += len(data)
        samples = sink.total
    if progress is not None and pending:
        progress.put(pending)
    for stale in (tar_path, idx_path):
        stale.unlink(missing_ok=True)
    tar_bytes = idx_bytes = 0
    if samples:
        os.replace(tmp_tar, tar_path)
        write_dali_index(tar_path, idx_path)
        tar_bytes, idx_bytes = tar_path.stat().st_size, idx_path.stat().st_size
    record = {
        "index": task.index,
        "digest": task.digest,
        "tar": tar_path.name,
        "idx": idx_path.name,
        "samples": samples,
        "files": len(task.files),
        "bytes": tar_bytes,
        "idx_bytes": idx_bytes,
        "source_bytes": source_bytes,
        "class_counts": {str(k): v for k, v in sorted(class_counts.items())},
        "bad_files": bad,
    }
    record_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(record_path, json.dumps(record, indent=1) + "\n")
    return record


def read_complete_record(task: ShardTask) -> dict[str, Any] | None:
    """The record of ``task`` if that shard is complete (same digest, outputs of recorded size)."""
    try:
        record = json.loads(Path(task.record).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("digest") != task.digest:
        return None
    tar_path, idx_path = Path(task.tar), Path(task.idx)
    if record.get("samples", 0) == 0:
        return record if not tar_path.exists() else None
    try:
        if (
            tar_path.stat().st_size != record["bytes"]
            or idx_path.stat().st_size != record["idx_bytes"]
        ):
            return None
    except (OSError, KeyError):
        return None
    return record


def run_tasks(
    tasks: list[ShardTask], workers: int, total_files: int, progress_bar: bool
) -> list[dict[str, Any]]:
    from tqdm import tqdm

    with tqdm(total=total_files, desc="data build", unit="img", disable=not progress_bar) as bar:
        if workers <= 1 or len(tasks) <= 1:
            sink = SimpleNamespace(put=bar.update)
            return [build_shard(task, sink) for task in tasks]
        context = multiprocessing.get_context("spawn")
        progress = context.Queue()
        with context.Pool(min(workers, len(tasks)), _init_worker, (progress,)) as pool:
            result = pool.map_async(build_shard, tasks, chunksize=1)
            while True:
                try:
                    bar.update(progress.get(timeout=0.2))
                except queue.Empty:
                    if result.ready():
                        break
            records = result.get()
        while True:
            try:
                bar.update(progress.get(timeout=0.05))
            except queue.Empty:
                break
        return records


__all__ = [
    "ShardTask",
    "build_shard",
    "read_complete_record",
    "run_tasks",
    "shard_bytes",
    "shard_digest",
]
