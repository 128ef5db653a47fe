"""WebDataset tar shards: writing, finding, counting and reading samples.

A shard is a plain tar file; a sample is the run of consecutive members sharing a key, the key
being the member name up to the first dot of its basename (``dir/000001.jpg`` -> key
``dir/000001``, extension ``jpg``), as in WebDataset. Only ``tarfile`` is used, so readers work
without the ``webdataset`` package (e.g. on GPU hosts).
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from equirecon.errors import MissingPathError

logger = logging.getLogger(__name__)

Sample = dict[str, Any]
"""A raw sample: ``__key__`` (str), ``__shard__`` (str), ``__index__`` (int, position in its
shard) and one ``bytes`` value per member extension (``jpg``, ``cls``, ``json`` ...)."""

_GLOB_CHARS = set("*?[")


def split_member_name(name: str) -> tuple[str, str]:
    """Splits a tar member name into (key, extension) at the first dot of the basename."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


def _encode_value(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        raise TypeError("bool sample values are ambiguous; encode them yourself")
    if isinstance(value, int):
        return str(value).encode("ascii")
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True).encode("utf-8")
    raise TypeError(f"cannot encode sample value of type {type(value).__name__}")


class ShardWriter:
    """Writes samples into numbered tar shards with at most ``max_samples`` samples each.

    Output is byte-for-byte deterministic (fixed mtime, owner and mode), so the same samples
    always give the same shards.

    Args:
        pattern: shard path with a printf field for the shard number, e.g.
            ``out/train-%06d.tar``.
        max_samples: samples per shard (the last shard may hold fewer).
        start_index: number of the first shard.

    Example:
        >>> with ShardWriter("out/train-%06d.tar", max_samples=1000) as sink:
        ...     sink.write({"__key__": "000000", "jpg": jpeg_bytes, "cls": 3})
    """

    def __init__(
        self, pattern: str | os.PathLike[str], max_samples: int = 1000, start_index: int = 0
    ):
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.pattern = str(pattern)
        try:
            self.pattern % 0
        except TypeError as err:
            raise ValueError(
                f"pattern needs a printf field like %06d, got {self.pattern!r}"
            ) from err
        self.max_samples = max_samples
        self.shard_index = start_index
        self.shards: list[str] = []
        self.total = 0
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0

    def _open_next(self) -> None:
        self.close()
        path = self.pattern % self.shard_index
        self.shard_index += 1
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)
        self.shards.append(path)
        self._in_shard = 0

    def write(self, sample: Mapping[str, Any]) -> None:
        """Appends one sample: ``__key__`` plus ``extension -> bytes|str|int|dict`` members."""
        key = str(sample["__key__"])
        if "." in key.rsplit("/", 1)[-1]:
            raise ValueError(f"sample key must not contain a dot in its basename: {key!r}")
        if self._tar is None or self._in_shard >= self.max_samples:
            self._open_next()
        assert self._tar is not None
        for ext, value in sample.items():
            if ext.startswith("__"):
                continue
            data = _encode_value(value)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            self._tar.addfile(info, io.BytesIO(data))
        self._in_shard += 1
        self.total += 1

    def close(self) -> None:
        """Finishes the current shard."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_shards(
    samples: Iterable[Mapping[str, Any]], pattern: str | os.PathLike[str], max_samples: int = 1000
) -> list[str]:
    """Writes ``samples`` into shards named by ``pattern``; returns the shard paths in order."""
    with ShardWriter(pattern, max_samples=max_samples) as sink:
        for sample in samples:
            sink.write(sample)
    return sink.shards


def resolve_shards(path: str, subset: str = "natural", split: str = "train") -> list[str]:
    """Finds the shards a data path refers to.

    Args:
        path: one of
            - a dataset root (holds ``manifest.json`` or a ``<subset>/`` folder):
              ``path/<subset>/<split>-*.tar``;
            - a folder of ``.tar`` files: all of them;
            - a glob (``data/train-*.tar``) or a single ``.tar`` file.
        subset: subset folder of a dataset root (``natural``, ``labelled``).
        split: split prefix inside the subset (``train``, ``val``).

    Returns:
        Sorted shard paths.

    Raises:
        FileNotFoundError: nothing matched; the message names the path and the pattern tried.
    """
    root = Path(path)
    if root.is_dir():
        if (root / "manifest.json").is_file() or (root / subset).is_dir():
            pattern = str(root / subset / f"{split}-*.tar")
            found = sorted(glob.glob(pattern))
            if not found:
                raise MissingPathError(
                    f"no shards for subset {subset!r} split {split!r} in dataset root {path!r}: "
                    f"looked for {pattern}"
                )
            return found
        found = sorted(str(p) for p in root.glob("*.tar") if p.is_file())
        if not found:
            raise MissingPathError(
                f"{path!r} is a folder without .tar shards, manifest.json or a {subset!r}/ "
                f"subfolder: looked for {root / '*.tar'} and {root / subset / (split + '-*.tar')}"
            )
        return found
    if root.is_file():
        return [str(root)]
    if _GLOB_CHARS & set(path):
        found = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        if not found:
            raise MissingPathError(f"glob {path!r} matched no shard files")
        return found
    raise MissingPathError(
        f"data path {path!r} does not exist (expected a dataset root, a folder of .tar shards, "
        f"a .tar file or a glob)"
    )


class BadShardError(OSError):
    """A shard that is not a readable tar file, or is truncated."""


@dataclass(frozen=True)
class ShardScan:
    """What a shard's tar headers say.

    Attributes:
        samples: complete samples before any damage (all of them for an intact shard). The
            sample being read where the damage starts is not counted: it may miss members.
        damage: what is wrong (``shard PATH is truncated: ...``), or None for an intact shard.
        expected: samples the shard was written with, from its DALI index (``.idx`` next to
            it) when there is one, else None.
    """

    samples: int
    damage: str | None = None
    expected: int | None = None

    @property
    def lost(self) -> int:
        """Samples not readable: from the index when known, else at least the one cut."""
        if self.damage is None:
            return 0
        if self.expected is not None:
            return max(self.expected - self.samples, 0)
        return 1 if self.samples > 0 else 0


_SCAN_CACHE: dict[tuple[str, int, int], ShardScan] = {}


def _indexed_samples(path: str) -> int | None:
    """The sample count in the header of the DALI index next to ``path`` (``v1.2 N``)."""
    idx = Path(path).with_suffix(".idx")
    try:
        with idx.open() as handle:
            fields = handle.readline().split()
        return int(fields[1]) if len(fields) == 2 else None
    except (OSError, ValueError):
        return None


def scan_shard(path: str) -> ShardScan:
    """Counts the complete samples of a shard from its tar headers only (no data read); cached.

    A damaged shard (truncated, a broken header) is not an error here: its samples before the
    damage are counted and the damage described. Raises OSError only if the file cannot be opened.
    """
    stat = os.stat(path)
    cache_key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if cache_key in _SCAN_CACHE:
        return _SCAN_CACHE[cache_key]
    count = 0
    last_key: str | None = None
    damage: str | None = None
    with open(path, "rb") as handle:
        try:
            tar = tarfile.open(fileobj=handle, mode="r:")
        except (tarfile.TarError, EOFError) as err:
            tar, damage = None, f"shard {path} is not a readable tar file: {err}"
        while tar is not None:
            try:
                member = tar.next()
            except (tarfile.TarError, EOFError) as err:
                damage = f"shard {path} is damaged: unreadable header at byte {tar.offset}: {err}"
                break
            if member is None:
                # A complete tar ends with zero blocks; a file cut at a header boundary does not.
                handle.seek(tar.offset)
                tail = handle.read(tarfile.BLOCKSIZE)
                if len(tail) < tarfile.BLOCKSIZE or any(tail):
                    damage = (
                        f"shard {path} is truncated: no end-of-archive block at byte {tar.offset}"
                    )
                break
            tar.members.clear()
            if not member.isfile():
                continue
            if member.offset_data + member.size > stat.st_size:
                damage = (
                    f"shard {path} is truncated: member {member.name} needs "
                    f"{member.offset_data + member.size} bytes, the file has {stat.st_size}"
                )
                break
            key, _ = split_member_name(member.name)
            if key != last_key:
                count += 1
                last_key = key
    if damage is not None and count:
        count -= 1  # the sample being read when the damage starts may be incomplete
    scan = ShardScan(count, damage, _indexed_samples(path) if damage else None)
    _SCAN_CACHE[cache_key] = scan
    return scan


def count_samples(path: str) -> int:
    """Counts the samples of an intact shard from its tar headers only (no data is read); cached.

    Raises:
        BadShardError: the file is not a tar, a member's data runs past the end of the file, or
            the end-of-archive block is missing (the file was cut short).
    """
    scan = scan_shard(path)
    if scan.damage is not None:
        raise BadShardError(scan.damage)
    return scan.samples


def iter_shard_samples(path: str, start: int = 0, stop: int | None = None) -> Iterator[Sample]:
    """Yields the raw samples of one shard, in order, from index ``start`` up to ``stop``.

    Members of samples before ``start`` are skipped without reading their data.

    Raises:
        BadShardError: the shard cannot be read (not a tar, truncated data).
    """
    key: str | None = None
    index = -1
    sample: Sample | None = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            while True:
                member = tar.next()
                if member is None:
                    break
                tar.members.clear()
                if not member.isfile():
                    continue
                member_key, ext = split_member_name(member.name)
                if member_key != key:
                    if sample is not None:
                        yield sample
                        sample = None
                    key = member_key
                    index += 1
                    if stop is not None and index >= stop:
                        return
                    if index >= start:
                        sample = {"__key__": key, "__shard__": path, "__index__": index}
                if sample is not None:
                    handle = tar.extractfile(member)
                    assert handle is not None
                    data = handle.read()
                    if len(data) != member.size:
                        raise BadShardError(f"shard {path} is truncated inside {member.name}")
                    sample[ext] = data
    except (tarfile.TarError, EOFError) as err:
        raise BadShardError(f"shard {path} could not be read: {err}") from err
    if sample is not None:
        yield sample
