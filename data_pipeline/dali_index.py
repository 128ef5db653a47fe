"""DALI webdataset index files: what ``equirecon data build`` writes beside each shard and what
the DALI reader reads (or generates for shards without one).

Format (``v1.2``, what NVIDIA's ``wds2idx`` writes and ``fn.readers.webdataset`` parses): a
first line ``v1.2 <num_samples>``, then one line per sample with four fields per component,
``<ext> <data_offset> <size> <member_name>``; offsets are the byte positions of the member data
(a multiple of 512) in the tar.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from data_pipeline.shards import count_samples, split_member_name
from equirecon.rundir import write_text_atomic

DALI_INDEX_VERSION = "v1.2"


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


__all__ = ["DALI_INDEX_VERSION", "dali_index_entries", "read_dali_index", "write_dali_index"]
