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


_COUNT_CACHE: dict[tuple[str, int, int], int] = {}


class BadShardError(OSError):
    """A shard that is not a readable tar file, or is truncated."""


def count_samples(path: str) -> int:
    """Counts the samples of a shard from its tar headers only (no data is read); cached.

    Raises:
        BadShardError: the file is not a tar, a member's data runs past the end of the file, or
            the end-of-archive block is missing (the file was cut short).
    """
    stat = os.stat(path)
    cache_key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if cache_key in _COUNT_CACHE:
        return _COUNT_CACHE[cache_key]
    count = 0
    last_key: str | None = None
    try:
        with open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            while True:
                member = tar.next()
                if member is None:
                    break
                tar.members.clear()
                if not member.isfile():
                    continue
                if member.offset_data + member.size > stat.st_size:
                    raise BadShardError(
                        f"shard {path} is truncated: member {member.name} needs "
                        f"{member.offset_data + member.size} bytes, the file has {stat.st_size}"
                    )
                key, _ = split_member_name(member.name)
                if key != last_key:
                    count += 1
                    last_key = key
            # A complete tar ends with zero blocks; a file cut at a header boundary does not.
            handle.seek(tar.offset)
            tail = handle.read(tarfile.BLOCKSIZE)
            if len(tail) < tarfile.BLOCKSIZE or any(tail):
                raise BadShardError(
                    f"shard {path} is truncated: no end-of-archive block at byte {tar.offset}"
                )
    except (tarfile.TarError, EOFError) as err:
        raise BadShardError(f"shard {path} is not a readable tar file: {err}") from err
    _COUNT_CACHE[cache_key] = count
    return count


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
