"""What a dataset-layout converter produces: the sources of one ``<subset>/<split>`` build.

A converter (one module per layout in this package) reads a dataset root as the dataset ships
it and returns one `SplitSources` per split it finds, keeping the dataset's own train/val split;
`data_pipeline.formats.convert` then shards each with `data_pipeline.builder.write_split`
(parallel, resumable, bad files reported).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipeline.builder.sources import IMAGE_SUFFIXES, Annotation, SourceFile


@dataclass
class SplitSources:
    """The sources of one build: images (with labels or annotations) and what was left out."""

    subset: str
    split: str
    root: Path
    files: list[SourceFile]
    labels: str = "none"
    classes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    unpaired: list[dict[str, str]] = field(default_factory=list)
    subset_info: dict[str, Any] | None = None


class LayoutError(ValueError):
    """The source folder does not have the layout its ``--format`` expects."""


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _stat(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return 0, 0  # reported as unreadable when the shard is written
    return stat.st_size, stat.st_mtime_ns


def source_file(
    path: Path,
    root: Path,
    label: int | None = None,
    annotations: tuple[tuple[str, Path, str], ...] = (),
) -> SourceFile:
    """A `SourceFile` of ``path`` under ``root`` with ``(member ext, file, codec)`` annotations."""
    size, mtime = _stat(path)
    extra = []
    for ext, ann_path, codec in annotations:
        ann_size, ann_mtime = _stat(ann_path)
        extra.append(
            Annotation(
                ext, str(ann_path.absolute()), _rel(ann_path, root), codec, ann_size, ann_mtime
            )
        )
    return SourceFile(str(path.absolute()), _rel(path, root), size, mtime, label, tuple(extra))


def image_files(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder`` with an image extension, sorted."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).parts
        if any(part.startswith(".") for part in rel) or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            found.append(path)
    return sorted(found)


def require_dir(path: Path, layout: str) -> Path:
    """``path`` if it is a folder, else a `LayoutError` naming it and the expected layout."""
    if not path.is_dir():
        raise LayoutError(f"{path} is not a folder; expected the layout {layout}")
    return path
