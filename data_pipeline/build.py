"""`equirecon data build`: image folders -> WebDataset shards, DALI index files and a manifest.

Layout of ``OUT`` (the same as the demo dataset's, so ``data.path=OUT`` works with both readers)::

    OUT/manifest.json                          counts, classes, bytes, bad files (all builds)
    OUT/<subset>/<split>-%06d.tar              samples: <key>.{jpg|png|webp}, <key>.json, <key>.cls,
                                               and the annotations of dense subsets
                                               (<key>.seg.png class ids, <key>.depth.png 16-bit)
    OUT/<subset>/<split>-%06d.idx              DALI ``fn.readers.webdataset`` index of that tar
    OUT/<subset>/.build/<split>-%06d.json      per-shard completion record (resume)

Sources are ImageFolder trees (``--labels folder``: the class is the first-level folder, classes
sorted by name, label = position, as torchvision's ImageFolder) or any folder/glob of images
(``--labels none``). JPEG, PNG and WebP bytes are stored as they are; other formats PIL reads
(BMP, GIF, TIFF) are re-encoded losslessly as PNG. Every image is fully decoded once, so files
that are unreadable, truncated or not images despite their extension are left out and listed,
with the reason, in the manifest. A source may carry annotation files (a segmentation mask, a
depth map: ``SourceFile.annotations``); each is decoded and re-encoded by its codec
(`data_pipeline.annotations`) and must have the image's size, else the sample is left out and
listed the same way. Standard dataset layouts (ImageNet, ADE20K, VOC, NYU Depth v2, COCO
images) are turned into such sources by `data_pipeline.formats`, which calls `write_split`.

Resume. Files are sorted, shuffled with ``seed`` (so shards are not sorted by class) and cut
into shards of about ``shard_size_mb`` of source bytes; this plan depends only on the file list
(paths, sizes, mtimes), the labels and the parameters. A shard is complete when its record holds
the plan's digest and its tar and index have the recorded sizes; complete shards are never
rewritten, so re-running a build (interrupted or not) only writes the missing shards.

DALI index format (``v1.2``, what NVIDIA's ``wds2idx`` writes and ``fn.readers.webdataset``
parses): a first line ``v1.2 <num_samples>``, then one line per sample with four fields per
component, ``<ext> <data_offset> <size> <member_name>``; offsets are the byte positions of the
member data (a multiple of 512) in the tar.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import multiprocessing
import os
import queue
import tarfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from data_pipeline.annotations import ANNOTATION_CODECS, mask_classes
from data_pipeline.shards import ShardWriter, count_samples, split_member_name
from equirecon.errors import ConfigError, DataError, MissingPathError
from equirecon.rundir import write_text_atomic

logger = logging.getLogger(__name__)

BUILD_FORMAT = "equirecon-shards"
BUILD_VERSION = 1  # the digest of a shard without annotations is unchanged by them
DALI_INDEX_VERSION = "v1.2"
DEFAULT_SHARD_SIZE_MB = 256.0
LABEL_MODES = ("folder", "none")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
STORED_AS_IS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
MAX_LISTED_IGNORED = 1000
_GLOB_CHARS = set("*?[")


class BadImage(Exception):
    """A source file that cannot be used; ``args[0]`` is the reason written to the manifest."""


@dataclass(frozen=True)
class Annotation:
    """A file stored with an image as member ``ext`` after conversion by codec ``codec``."""

    ext: str
    path: str
    rel: str
    codec: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class SourceFile:
    """One candidate image: absolute ``path``, ``rel`` (posix, relative to the source root)."""

    path: str
    rel: str
    size: int
    mtime_ns: int
    label: int | None
    annotations: tuple[Annotation, ...] = ()


@dataclass(frozen=True)
class ShardTask:
    """One shard of the plan: its files (with sample keys) and where its outputs go."""

    index: int
    tar: str
    idx: str
    record: str
    digest: str
    files: tuple[tuple[str, SourceFile], ...]


# ---- DALI index files ----------------------------------------------------------------------------


def dali_index_entries(
    tar_path: str | os.PathLike[str], salvage: bool = False
) -> list[list[tuple[str, int, int, str]]]:
    """Samples of a tar as DALI groups them: per sample, ``(ext, data_offset, size, name)``.

    Regular files only; a sample is a run of consecutive members with the same key (the name up
    to the first dot of the basename); members whose basename starts with a dot or has no dot
    are left out, as DALI does.

    With ``salvage``, a damaged tar is read up to its damage instead (its entries up to the
    first unreadable header; the caller keeps the complete ones, `shards.scan_shard`).

    Raises:
        BadShardError: the tar is unreadable or truncated (without ``salvage``).
    """
    path = str(tar_path)
    if not salvage:
        count_samples(path)  # validates (truncation, end-of-archive), cached
    samples: list[list[tuple[str, int, int, str]]] = []
    last_key: str | None = None
    with open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
        while True:
            try:
                member = tar.next()
            except (tarfile.TarError, EOFError):
                if not salvage:
                    raise
                break
            if member is None:
                break
            tar.members.clear()
            if not member.isfile():
                continue
            key, ext = split_member_name(member.name)
            if not ext or not key or key.endswith("/"):
                continue
            component = (ext, member.offset_data, member.size, member.name)
            if key != last_key:
                samples.append([component])
                last_key = key
            else:
                samples[-1].append(component)
    return samples


def write_dali_index(
    tar_path: str | os.PathLike[str],
    idx_path: str | os.PathLike[str],
    samples: list[list[tuple[str, int, int, str]]] | None = None,
) -> int:
    """Writes the DALI index of ``tar_path`` to ``idx_path`` (atomically); returns the samples.

    Names with whitespace cannot be written in ``v1.2``; such a tar gets a ``v1.1`` index
    (``<ext> <offset> <size>`` per component), which DALI also reads.

    ``samples`` (from `dali_index_entries`) indexes only those, e.g. the readable part of a
    damaged shard.

    Raises:
        ValueError: the tar holds no sample (DALI rejects empty indexes).
    """
    if samples is None:
        samples = dali_index_entries(tar_path)
    if not samples:
        raise ValueError(f"{tar_path} holds no sample; DALI cannot index an empty tar")
    with_names = not any(any(c.isspace() for c in comp[3]) for s in samples for comp in s)
    version = DALI_INDEX_VERSION if with_names else "v1.1"
    lines = [f"{version} {len(samples)}"]
    for sample in samples:
        fields = []
        for ext, offset, size, name in sample:
            fields.append(
                f"{ext} {offset} {size} {name}" if with_names else f"{ext} {offset} {size}"
            )
        lines.append(" ".join(fields))
    write_text_atomic(idx_path, "\n".join(lines) + "\n")
    return len(samples)


def read_dali_index(idx_path: str | os.PathLike[str]) -> list[list[str]]:
    """The component extensions of every sample of a DALI index file (``v1.1`` or ``v1.2``).

    Raises:
        ValueError: the file is not a DALI webdataset index; the message names it.
    """
    lines = Path(idx_path).read_text().splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] not in ("v1.1", "v1.2") or not head[1].isdigit():
        raise ValueError(f"{idx_path}: not a DALI webdataset index (first line {head})")
    width = 4 if head[0] == "v1.2" else 3
    count = int(head[1])
    if len(lines) - 1 < count:
        raise ValueError(f"{idx_path}: header says {count} samples, found {len(lines) - 1} lines")
    samples = []
    for number, line in enumerate(lines[1 : count + 1], start=2):
        fields = line.split()
        if not fields or len(fields) % width:
            raise ValueError(f"{idx_path} line {number}: expected {width} fields per component")
        samples.append(fields[::width])
    return samples


# ---- sources -------------------------------------------------------------------------------------


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in Path(rel).parts)


def _walk(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return found


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard (``.`` if none)."""
    parts = Path(pattern).parts
    first_wild = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
    return Path(*parts[:first_wild]) if first_wild else Path(".")


def find_sources(
    src: str, labels: str = "none"
) -> tuple[Path, list[SourceFile], list[str], list[str]]:
    """Candidate images of ``src`` (a folder or a glob of files/folders).

    Args:
        src: folder (walked recursively) or glob; the root of a glob is its fixed prefix.
        labels: ``folder``: the class is the first folder below the root (files directly in
            the root are ignored); ``none``: no labels.

    Returns:
        (root, files sorted by relative path, class names, ignored relative paths: files
        without an image extension or outside class folders).

    Raises:
        FileNotFoundError: ``src`` matches nothing.
        ValueError: unknown ``labels`` mode, or ``folder`` mode found no class folder.
    """
    if labels not in LABEL_MODES:
        raise ConfigError(f"labels={labels!r}; choose one of {LABEL_MODES}")
    if _GLOB_CHARS & set(src):
        root = _glob_root(src)
        matches = sorted(glob.glob(src, recursive=True))
        if not matches:
            raise MissingPathError(f"--src glob {src!r} matched nothing")
        paths: list[Path] = []
        for match in map(Path, matches):
            paths += _walk(match) if match.is_dir() else [match] if match.is_file() else []
    else:
        root = Path(src)
        if not root.is_dir():
            raise MissingPathError(f"--src {src!r} is neither a folder nor a glob that matches")
        paths = _walk(root)
    rels = sorted({p.relative_to(root).as_posix(): p for p in paths}.items())
    if labels == "folder":
        if _GLOB_CHARS & set(src):  # the first folders of the matched files
            classes = sorted({Path(rel).parts[0] for rel, _ in rels if len(Path(rel).parts) > 1})
        else:  # every visible sub-folder, as torchvision's ImageFolder
            classes = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name[0] != ".")
        if not classes:
            raise DataError(f"--labels folder: no class folders under {root}")
        class_index = {name: i for i, name in enumerate(classes)}
    else:
        classes, class_index = [], {}
    files, ignored = [], []
    for rel, path in rels:
        if _is_hidden(rel):
            continue
        parts = Path(rel).parts
        if path.suffix.lower() not in IMAGE_SUFFIXES or (labels == "folder" and len(parts) < 2):
            ignored.append(rel)
            continue
        label = class_index.get(parts[0]) if labels == "folder" else None
        if labels == "folder" and label is None:
            ignored.append(rel)
            continue
        try:
            stat = path.stat()
        except OSError:
            stat = None
        files.append(
            SourceFile(
                str(path.absolute()),
                rel,
                stat.st_size if stat else 0,
                stat.st_mtime_ns if stat else 0,
                label,
            )
        )
    return root, files, classes, ignored


def plan_shards(
    files: Sequence[SourceFile], shard_bytes: int, seed: int
) -> list[list[tuple[str, SourceFile]]]:
    """Deterministic assignment of files to shards: a seeded shuffle, then cut by source bytes.

    Sample keys are the 8-digit positions in the shuffled order. A shard holds at least one
    file and closes before the file that would take it past ``shard_bytes``.
    """
    order = np.random.default_rng(seed).permutation(len(files))
    shards: list[list[tuple[str, SourceFile]]] = []
    current: list[tuple[str, SourceFile]] = []
    filled = 0
    for position, i in enumerate(order.tolist()):
        source = files[i]
        if current and filled + source.size > shard_bytes:
            shards.append(current)
            current, filled = [], 0
        current.append((f"{position:08d}", source))
        filled += source.size
    if current:
        shards.append(current)
    return shards


def _digest(files: Sequence[tuple[str, SourceFile]], labels: str) -> str:
    payload = [BUILD_VERSION, labels] + [
        [key, f.rel, f.size, f.mtime_ns, f.label]
        + [[a.ext, a.rel, a.codec, a.size, a.mtime_ns] for a in f.annotations]
        for key, f in files
    ]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:32]


# ---- one shard -----------------------------------------------------------------------------------


def inspect_image(data: bytes) -> tuple[str, bytes, tuple[int, int], str]:
    """Decodes ``data`` fully; returns (stored extension, stored bytes, (width, height), format).

    JPEG, PNG and WebP keep their bytes; other formats are re-encoded as PNG.

    Raises:
        BadImage: not an image, truncated/corrupt data, or too many pixels (PIL's bomb limit).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not an image (unknown format)") from None
    except Image.DecompressionBombError as err:
        raise BadImage(f"too many pixels: {err}") from None
    except Exception as err:  # PIL raises many types on bad headers
        raise BadImage(f"bad image header: {type(err).__name__}: {err}") from None
    with image:
        fmt = image.format or "?"
        try:
            image.load()
        except Exception as err:  # truncated, corrupt, unsupported variant
            raise BadImage(f"truncated or corrupt {fmt}: {err}") from None
        if fmt in STORED_AS_IS:
            return STORED_AS_IS[fmt], data, image.size, fmt
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
            image = image.convert("RGBA" if "A" in image.mode else "RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "png", buffer.getvalue(), image.size, fmt


def _convert_annotation(annotation: Annotation, image_size: tuple[int, int]) -> bytes:
    """The stored bytes of an annotation file.

    Raises:
        BadImage: unreadable, not what its codec expects, or not of the image's size.
    """
    try:
        data = Path(annotation.path).read_bytes()
    except OSError as err:
        raise BadImage(f"{annotation.rel}: unreadable: {err.strerror or err}") from None
    try:
        payload, size = ANNOTATION_CODECS[annotation.codec](data)
    except ValueError as err:
        raise BadImage(f"{annotation.rel}: {err}") from None
    if size != image_size:
        raise BadImage(f"{annotation.rel}: size {size} differs from the image's {image_size}")
    return payload


_PROGRESS: Any = None  # a multiprocessing queue in pool workers


def _init_worker(progress: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress


def build_shard(task: ShardTask, progress: Any = None) -> dict[str, Any]:
    """Writes one shard (tar, index, then its record, each atomically); returns the record."""
    progress = progress if progress is not None else _PROGRESS
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
                extra = {a.ext: _convert_annotation(a, (width, height)) for a in source.annotations}
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


# ---- the whole build -----------------------------------------------------------------------------


def _run_tasks(
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


def _load_manifest(out: Path) -> dict[str, Any]:
    path = out / "manifest.json"
    if not path.is_file():
        return {
            "format": BUILD_FORMAT,
            "version": BUILD_VERSION,
            "counts": {},
            "shards": {},
            "builds": {},
        }
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); move it away or choose another --out"
        ) from None
    if manifest.get("format") != BUILD_FORMAT:
        raise FileExistsError(
            f"{path} belongs to another kind of dataset (format {manifest.get('format')!r}, "
            f"expected {BUILD_FORMAT!r}); choose another --out"
        )
    return manifest


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
    manifest = _load_manifest(out)
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
            digest=_digest(shard, labels),
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
    for record in _run_tasks(todo, workers, sum(len(t.files) for t in todo), progress):
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
    manifest.setdefault("builds", {})[f"{subset}/{split}"] = entry
    manifest.setdefault("counts", {}).setdefault(subset, {})[split] = entry["num_samples"]
    manifest.setdefault("shards", {}).setdefault(subset, {})[split] = [
        s["tar"] for s in entry["shards"]
    ]
    if labels == "folder":
        manifest["classes"] = classes
    if subset_info is not None:
        manifest[subset] = subset_info
    manifest["complete"] = all(b.get("complete") for b in manifest["builds"].values())
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    if progress:
        print(
            f"data build: {entry['num_samples']} samples in {len(written)} shards "
            f"({entry['bytes'] / 1e6:.1f} MB), {len(bad_files)} bad files, {len(ignored)} ignored, "
            f"{entry['build_seconds']} s -> {out / 'manifest.json'}"
        )
    return entry


__all__ = [
    "BadImage",
    "SourceFile",
    "ShardTask",
    "build_shard",
    "build_shards",
    "dali_index_entries",
    "find_sources",
    "inspect_image",
    "plan_shards",
    "read_dali_index",
    "write_dali_index",
]
