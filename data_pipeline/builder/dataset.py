"""A whole split: ``build_shards`` (``equirecon data build``: a folder or glob of images) and
``write_split`` (any list of sources, e.g. from `data_pipeline.formats`) shard the sources
into ``OUT/<subset>/<split>-*.tar`` (resumable) and record the build in the manifest."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_pipeline.builder.manifest import BUILD_VERSION, load_manifest, record_build
from data_pipeline.builder.shard import (
    ShardTask,
    read_complete_record,
    run_tasks,
    shard_bytes,
    shard_digest,
)
from data_pipeline.builder.sources import SourceFile, find_sources, plan_shards
from equirecon.errors import ConfigError, DataError, StorageError

DEFAULT_SHARD_SIZE_MB = 256.0
MAX_LISTED_IGNORED = 1000


def _remove_stale(subset_dir: Path, split: str, keep: set[int]) -> None:
    """Deletes shards, indexes and records of ``split`` not in the plan, and leftover temp files."""
    for folder in (subset_dir, subset_dir / ".build"):  # write_text_atomic's, left by a crash
        for path in folder.glob(f".{split}-*.tmp*"):
            path.unlink(missing_ok=True)
    names = [*subset_dir.glob(f"{split}-*"), *(subset_dir / ".build").glob(f"{split}-*")]
    for path in names:
        stem = path.name.split(".", 1)[0]
        number = stem[len(split) + 1 :]
        if not number.isdigit():
            continue
        if int(number) not in keep or path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)


def build_shards(
    src: str,
    out: str | os.PathLike[str],
    *,
    labels: str = "none",
    shard_size_mb: float = DEFAULT_SHARD_SIZE_MB,
    workers: int = 1,
    subset: str = "natural",
    split: str = "train",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Builds (or completes) the WebDataset shards of ``src`` in ``out/<subset>/<split>-*.tar``.

    Args:
        src: folder or glob of images (see :func:`find_sources`).
        out: dataset root; ``manifest.json`` there gains or replaces the ``<subset>/<split>``
            build and keeps the others.
        labels: ``folder`` (ImageFolder classes, ``cls`` members) or ``none``.
        shard_size_mb: target shard size in MB (1e6 bytes) of source image bytes.
        workers: processes writing shards in parallel (<= 1: in this process).
        subset: subset folder (``natural`` is what pretraining reads; ``labelled`` evals).
        split: split name, the shard file prefix (``train``, ``val``).
        seed: seed of the file order (the plan).
        progress: show a tqdm bar over files.

    Returns:
        This build's manifest entry: counts, classes, bytes, shards, bad and ignored files.

    Raises:
        DataError: no file of ``src`` is a readable image; the manifest lists them all and the
            build is not marked complete (a rerun reads every file again).
    """
    start = time.perf_counter()
    _check_names(subset, split, shard_size_mb)
    root, files, classes, ignored = find_sources(src, labels)
    entry = write_split(
        out,
        root,
        files,
        subset=subset,
        split=split,
        src=str(src),
        labels=labels,
        classes=classes,
        ignored=ignored,
        shard_size_mb=shard_size_mb,
        workers=workers,
        seed=seed,
        progress=progress,
        start=start,
    )
    if entry["num_samples"] == 0:
        bad = entry["bad_files"]
        first = "; ".join(f"{b['path']}: {b['reason']}" for b in bad[:3])
        raise DataError(
            f"data build: no readable image among the {len(files)} image files of {src!r}"
            + (f" ({len(bad)} bad, e.g. {first})" if bad else "")
            + f"; every bad file is listed in {Path(out) / 'manifest.json'}",
            hint="check --src (and that the files are readable images); nothing was marked "
            "complete, so the next run reads them again",
        )
    return entry


def _check_names(subset: str, split: str, shard_size_mb: float) -> None:
    if shard_size_mb <= 0:
        raise ConfigError(f"shard_size_mb must be > 0, got {shard_size_mb}")
    for name, value in (("subset", subset), ("split", split)):
        if not value or "/" in value or "-" in value or value.startswith("."):
            raise ValueError(
                f"{name}={value!r}: use a plain name without '/', '-' or a leading dot"
            )


def write_split(
    out: str | os.PathLike[str],
    root: Path,
    files: Sequence[SourceFile],
    *,
    subset: str,
    split: str,
    src: str,
    labels: str = "none",
    classes: Sequence[str] = (),
    ignored: Sequence[str] = (),
    unpaired: Sequence[dict[str, str]] = (),
    subset_info: dict[str, Any] | None = None,
    source_format: str | None = None,
    shard_size_mb: float = DEFAULT_SHARD_SIZE_MB,
    workers: int = 1,
    seed: int = 0,
    progress: bool = True,
    start: float | None = None,
) -> dict[str, Any]:
    """Shards ``files`` into ``out/<subset>/<split>-*.tar`` (resumable) and records the build.

    Args:
        out: dataset root; ``manifest.json`` there gains or replaces the ``<subset>/<split>``
            build and keeps the others.
        root: the source root (``SourceFile.rel`` is relative to it).
        files: the sources, with labels and annotations.
        subset, split: where the shards go.
        src: what the user gave as source (recorded).
        labels: ``folder`` when the files carry class labels, else ``none``.
        classes: class names (index = label, or = mask value for segmentation).
        ignored: relative paths left out on purpose (recorded, counted).
        unpaired: ``{"path", "reason"}`` of sources left out before reading them (an image
            without its mask); listed with the bad files.
        subset_info: recorded as ``manifest[subset]`` (e.g. segmentation classes, depth scale).
        source_format: the ``--format`` the sources were read with (recorded).
        shard_size_mb, workers, seed, progress: as :func:`build_shards`.
        start: ``time.perf_counter()`` at the start of the build (for its duration).

    Returns:
        This build's manifest entry.
    """
    start = time.perf_counter() if start is None else start
    _check_names(subset, split, shard_size_mb)
    out = Path(out)
    manifest = load_manifest(out)
    classes, ignored = list(classes), list(ignored)
    plan = plan_shards(files, int(shard_size_mb * 1e6), seed)
    subset_dir = out / subset
    subset_dir.mkdir(parents=True, exist_ok=True)
    tasks = [
        ShardTask(
            index=i,
            tar=str(subset_dir / f"{split}-{i:06d}.tar"),
            idx=str(subset_dir / f"{split}-{i:06d}.idx"),
            record=str(subset_dir / ".build" / f"{split}-{i:06d}.json"),
            digest=shard_digest(shard, labels),
            files=tuple(shard),
        )
        for i, shard in enumerate(plan)
    ]
    _remove_stale(subset_dir, split, keep={t.index for t in tasks})
    records: dict[int, dict[str, Any]] = {}
    todo = []
    for task in tasks:
        record = read_complete_record(task)
        if record is None:
            todo.append(task)
        else:
            records[task.index] = record
    if progress:
        print(
            f"data build: {len(files)} images in {len(tasks)} shards under {subset_dir} "
            f"({len(records)} complete, {len(todo)} to write, {len(ignored)} ignored files)"
        )
    try:
        done = run_tasks(todo, workers, sum(len(t.files) for t in todo), progress)
    except StorageError as err:  # a shard's partial files are removed; the complete ones stay
        left = [t for t in todo if read_complete_record(t) is None]
        err.update(
            needed=sum(shard_bytes(t) for t in left),
            what=f"{err.what} ({len(left)} of {len(tasks)} shards left)",
            then="rerun the same command: complete shards are kept, the others are written",
        )
        raise
    for record in done:
        records[record["index"]] = record
    ordered = [records[t.index] for t in tasks]
    class_counts: Counter[int] = Counter()
    for record in ordered:
        class_counts.update({int(k): v for k, v in record["class_counts"].items()})
    written = [r for r in ordered if r["samples"] > 0]
    bad_files = [b for r in ordered for b in r["bad_files"]] + [dict(u) for u in unpaired]
    bad_files.sort(key=lambda b: b["path"])
    entry = {
        "complete": True,
        "src": str(src),
        "format": source_format,
        "root": str(root.absolute()),
        "labels": labels,
        "classes": classes,
        "class_counts": {name: class_counts.get(i, 0) for i, name in enumerate(classes)},
        "num_samples": sum(r["samples"] for r in ordered),
        "num_files": len(files),
        "num_bad": len(bad_files),
        "num_ignored": len(ignored),
        "bytes": sum(r["bytes"] + r["idx_bytes"] for r in ordered),
        "source_bytes": sum(r["source_bytes"] for r in ordered),
        "bad_files": bad_files,
        "ignored_files": ignored[:MAX_LISTED_IGNORED],
        "params": {
            "version": BUILD_VERSION,
            "shard_size_mb": shard_size_mb,
            "seed": seed,
            "labels": labels,
        },
        "shards": [
            {
                "tar": f"{subset}/{r['tar']}",
                "index": f"{subset}/{r['idx']}",
                "samples": r["samples"],
                "bytes": r["bytes"],
            }
            for r in written
        ],
        "shards_reused": len(tasks) - len(todo),
        "shards_written": len(todo),
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    if entry["num_samples"] == 0:
        # Nothing usable: no record may claim this build complete, so a rerun reads every file
        # again (an unreadable file may be a transient failure: a mount, permissions).
        entry["complete"] = False
        for task in tasks:
            Path(task.record).unlink(missing_ok=True)
    record_build(
        out,
        manifest,
        entry,
        subset=subset,
        split=split,
        labels=labels,
        classes=classes,
        subset_info=subset_info,
    )
    if progress:
        print(
            f"data build: {entry['num_samples']} samples in {len(written)} shards "
            f"({entry['bytes'] / 1e6:.1f} MB), {len(bad_files)} bad files, {len(ignored)} ignored, "
            f"{entry['build_seconds']} s -> {out / 'manifest.json'}"
        )
    return entry


__all__ = ["DEFAULT_SHARD_SIZE_MB", "build_shards", "write_split"]
