"""DALI webdataset index files: what ``equirecon data build`` writes beside each shard and what
the DALI reader reads (or generates for shards without one).

Format (``v1.2``, what NVIDIA's ``wds2idx`` writes and ``fn.readers.webdataset`` parses): a
first line ``v1.2 <num_samples>``, then one line per sample with four fields per component,
``<ext> <data_offset> <size> <member_name>``; offsets are the byte positions of the member data
(a multiple of 512) in the tar.

Provenance. DALI's format has no room for what an index was built from, so a sidecar
``<name>.idx.json`` beside each index records it: the tar's name, size and ``st_mtime_ns`` and
the SHA-256 of the index file itself. `index_mismatch` checks an index against a tar with it
(and, where the tar's mtime differs, as after a copy that did not keep times, or where there is
no sidecar, as for indexes of older builds or NVIDIA's ``wds2idx``, by reading the tar headers
of the first, middle and last sample at the offsets the index gives).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path
from typing import Any

from data_pipeline.shards import count_samples, split_member_name
from equirecon.rundir import write_text_atomic

DALI_INDEX_VERSION = "v1.2"
SOURCE_SUFFIX = ".json"  # the provenance sidecar: <name>.idx.json


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
    stat = os.stat(tar_path)
    source = {
        "tar": Path(tar_path).name,
        "tar_bytes": stat.st_size,
        "tar_mtime_ns": stat.st_mtime_ns,
        "index_sha256": hashlib.sha256(Path(idx_path).read_bytes()).hexdigest(),
        "samples": len(samples),
    }
    write_text_atomic(index_source_path(idx_path), json.dumps(source, indent=1) + "\n")
    return len(samples)


def index_source_path(idx_path: str | os.PathLike[str]) -> Path:
    """The provenance sidecar of an index file: ``<name>.idx.json``."""
    return Path(str(idx_path) + SOURCE_SUFFIX)


def read_index_source(idx_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What the index at ``idx_path`` was built from (its sidecar), or None without a readable
    one."""
    try:
        source = json.loads(index_source_path(idx_path).read_text())
    except (OSError, ValueError):
        return None
    return source if isinstance(source, dict) else None


def index_mismatch(
    tar_path: str | os.PathLike[str], idx_path: str | os.PathLike[str]
) -> str | None:
    """None if ``idx_path`` is the DALI index of ``tar_path``; else why not (a phrase).

    With a sidecar: the tar's name and size and the index's SHA-256 must be those recorded; the
    same mtime then proves it. Otherwise (another mtime, or no sidecar and the index not older
    than the tar) the tar headers at the offsets the index gives for its first, middle and last
    sample must name those members with those sizes, and the tar must end after the last.
    """
    tar, idx = Path(tar_path), Path(idx_path)
    stat = tar.stat()
    source = read_index_source(idx)
    if source is not None:
        if source.get("tar") != tar.name:
            return f"it was built for {source.get('tar')}"
        if source.get("tar_bytes") != stat.st_size:
            return (
                f"it was built for a tar of {source.get('tar_bytes')} bytes, "
                f"this one has {stat.st_size}"
            )
        if source.get("index_sha256") != hashlib.sha256(idx.read_bytes()).hexdigest():
            return f"it is not the index its {index_source_path(idx).name} describes"
        if source.get("tar_mtime_ns") == stat.st_mtime_ns:
            return None
    elif idx.stat().st_mtime_ns < stat.st_mtime_ns:
        return "it is older than the tar"
    return _header_mismatch(tar, idx, stat.st_size)


def _header_mismatch(tar: Path, idx: Path, tar_bytes: int) -> str | None:
    """Why the tar headers at the index's offsets (first, middle, last sample) do not match."""
    try:
        lines = idx.read_text().splitlines()
        version, count = lines[0].split()
        width = 4 if version == "v1.2" else 3
        rows = [lines[1 + i].split() for i in sorted({0, int(count) // 2, int(count) - 1})]
    except (OSError, ValueError, IndexError):
        return "it is not a readable DALI index"
    end = 0  # where the data of the index's last member ends
    with tar.open("rb") as handle:
        for row in rows:
            for start in range(0, len(row) - width + 1, width):
                fields = row[start : start + width]
                try:
                    offset, size = int(fields[1]), int(fields[2])
                except ValueError:
                    return "it is not a readable DALI index"
                if offset < tarfile.BLOCKSIZE or offset + size > tar_bytes:
                    return (
                        f"it places a member at bytes {offset}-{offset + size}, "
                        f"past the tar's end ({tar_bytes} bytes)"
                    )
                end = offset + size
                handle.seek(offset - tarfile.BLOCKSIZE)
                try:
                    header = tarfile.TarInfo.frombuf(
                        handle.read(tarfile.BLOCKSIZE), tarfile.ENCODING, "surrogateescape"
                    )
                except tarfile.TarError:
                    return f"the tar has no member header before byte {offset}"
                name = fields[3] if width == 4 else None
                # A name over 100 characters (GNU/pax) is not all in this header.
                long_name = name is not None and len(name) > 100
                if header.size != size or (name and not long_name and header.name != name):
                    return (
                        f"the tar holds {header.name} ({header.size} bytes) at byte {offset}, "
                        f"the index {name or 'a member'} ({size} bytes)"
                    )
        # After the index's last member, the tar must end (zero blocks), not go on.
        handle.seek(-(-end // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)
        block = handle.read(tarfile.BLOCKSIZE)
        if len(block) < tarfile.BLOCKSIZE or any(block):
            return f"the tar goes on after byte {end}, the end of the last member the index lists"
    return None


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


__all__ = [
    "DALI_INDEX_VERSION",
    "dali_index_entries",
    "index_mismatch",
    "index_source_path",
    "read_dali_index",
    "read_index_source",
    "write_dali_index",
]
