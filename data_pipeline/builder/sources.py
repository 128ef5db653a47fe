"""Candidate images of a source folder or glob (with labels and annotation files), and their
deterministic plan into shards."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from equirecon.errors import ConfigError, DataError, MissingPathError

LABEL_MODES = ("folder", "none")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_GLOB_CHARS = set("*?[")


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


__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_MODES",
    "Annotation",
    "SourceFile",
    "find_sources",
    "plan_shards",
]
