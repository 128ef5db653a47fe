"""Storage faults: a write that fails because the disk (or quota) is full, the filesystem is
read-only or permission is missing becomes one `StorageError` line (torch-free: every layer
imports this).

`guard_write(what, path, needed=…, partial=[…])` wraps a write. When it fails, the partial
files are removed at once (so the space comes back), whatever the error; a storage fault is then
raised as `StorageError` (what was being written, where, the free space of that filesystem after
the clean-up and about how much the write needs), any other error as it was.

A storage fault is recognized by
- an `OSError` with errno ENOSPC, EDQUOT, EROFS, EACCES or EPERM anywhere in the error: its
  `__cause__`/`__context__` chain, and the per-rank failures of DCP's `CheckpointException`;
- that cause named in a message (MLflow's sqlite "database or disk is full", safetensors'
  "No space left on device (os error 28)");
- a disk left with less than `FULL_BELOW` bytes free after a failed write: torch's zip writer
  turns ENOSPC into `RuntimeError: [enforce fail at inline_container.cc] … unexpected pos …`
  with no errno at all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from equirecon.errors import StorageError

FULL_BELOW = 1 << 20  # bytes free: a write that failed on a disk this full failed for space
_MESSAGES = (
    ("no space left on device", errno.ENOSPC),
    ("database or disk is full", errno.ENOSPC),  # sqlite (the MLflow store)
    ("disk quota exceeded", errno.EDQUOT),
    ("read-only file system", errno.EROFS),
    ("readonly database", errno.EROFS),  # sqlite: "attempt to write a readonly database"
    ("permission denied", errno.EACCES),
)


def _errors(err: BaseException) -> list[BaseException]:
    """`err`, its causes and contexts, and the per-rank errors of a DCP CheckpointException."""
    found: list[BaseException] = []
    todo = [err]
    while todo:
        current = todo.pop()
        if current is None or any(current is seen for seen in found) or len(found) > 50:
            continue
        found.append(current)
        todo += [current.__cause__, current.__context__]
        failures = getattr(current, "failures", None)  # CheckpointException: rank -> (err, tb)
        if isinstance(failures, dict):
            for value in failures.values():
                inner = value[0] if isinstance(value, tuple) and value else value
                if isinstance(inner, BaseException):
                    todo.append(inner)
    return found


def existing_parent(path: str | os.PathLike[str]) -> Path:
    """`path` itself if it exists, else its nearest existing parent."""
    current = Path(os.path.abspath(path))
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes available to this user on the filesystem of `path` (None: cannot tell)."""
    try:
        return shutil.disk_usage(existing_parent(path)).free
    except OSError:
        return None


def mount_point(path: str | os.PathLike[str]) -> str:
    """The mount point of the filesystem holding `path`."""
    current = existing_parent(path)
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return str(current)


def fault_errno(err: BaseException, path: str | os.PathLike[str] | None = None) -> int | None:
    """The errno of the storage fault behind `err`, or None when it is not one. `path`: what
    was being written (for the free-space test of errors without an errno)."""
    chain = _errors(err)
    for e in chain:
        if isinstance(e, OSError) and e.errno in StorageError.KINDS:
            return e.errno
    for e in chain:
        text = str(e).lower()
        for pattern, code in _MESSAGES:
            if pattern in text:
                return code
    if path is not None and any(isinstance(e, RuntimeError | OSError) for e in chain):
        free = free_bytes(path)
        if free is not None and free < FULL_BELOW:
            return errno.ENOSPC
    return None


def remove_partial(items: Iterable[str | os.PathLike[str] | Callable[[], object]]) -> None:
    """Delete files and folders (a callable: run it, e.g. a truncation); errors are ignored (a
    read-only filesystem keeps them)."""
    for item in items:
        try:
            if callable(item):
                item()
            elif Path(item).is_dir() and not Path(item).is_symlink():
                shutil.rmtree(item, ignore_errors=True)
            else:
                Path(item).unlink(missing_ok=True)
        except OSError:
            pass


def storage_error(
    code: int,
    what: str,
    path: str | os.PathLike[str],
    needed: int | None = None,
    **fields: object,
) -> StorageError:
    """The `StorageError` of a fault `code` while writing `what` to `path` (free space now)."""
    blocked = ""
    if code in (errno.EACCES, errno.EPERM):
        blocked = str(existing_parent(path))
    return StorageError(
        what,
        path,
        code=code,
        free=free_bytes(path),
        needed=needed,
        mount=mount_point(path),
        blocked=blocked,
        **fields,  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def guard_write(
    what: str,
    path: str | os.PathLike[str],
    *,
    needed: int | Callable[[], int | None] | None = None,
    partial: Iterable[str | os.PathLike[str] | Callable[[], object]] = (),
) -> Iterator[None]:
    """Run a write of `what` to `path`: on any error remove `partial` (paths, or callables that
    undo the write); a storage fault is raised as `StorageError`, anything else unchanged.

    A `StorageError` from a nested write (an atomic file written inside a checkpoint) is
    described again as this write (same cause)."""
    partial = list(partial)
    try:
        yield
    except BaseException as err:
        code = err.code if isinstance(err, StorageError) else fault_errno(err, path)
        remove_partial(partial)
        if code is None:
            raise
        size = needed() if callable(needed) else needed
        raise storage_error(code, what, path, size) from err


def as_storage_error(err: BaseException) -> StorageError | None:
    """`err` as a `StorageError` when it is a storage fault (a write no `guard_write` wrapped:
    the file it names, if any), else None."""
    if isinstance(err, StorageError):
        return err
    code = fault_errno(err)
    if code is None:
        return None
    filename = getattr(err, "filename", None)
    if filename:
        return storage_error(code, "a file", filename)
    return StorageError("a file", "a path it does not name (--debug shows it)", code=code)


def is_storage_fault(err: BaseException) -> bool:
    """True for an error that `guard_write` would report as a `StorageError`."""
    return isinstance(err, StorageError) or fault_errno(err) is not None


__all__ = [
    "FULL_BELOW",
    "as_storage_error",
    "existing_parent",
    "fault_errno",
    "free_bytes",
    "guard_write",
    "is_storage_fault",
    "mount_point",
    "remove_partial",
    "storage_error",
]
