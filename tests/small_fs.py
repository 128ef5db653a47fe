"""Small filesystems for the storage-fault tests (disk full, read-only, no permission).

Each writer is tested twice:
- `tmpfs`: a real tmpfs mounted by the test (needs root and `mount`, e.g. this Firecracker VM or a
  privileged container), filled to the last byte or remounted read-only at the moment the writer
  runs, so the error is the kernel's own (ENOSPC, EROFS) as it reaches our code through Python,
  torch, sqlite or safetensors. Where mounting is not possible the variant is skipped with the
  reason (pytest -ra prints it); the `inject` variant still covers the writer.
- `inject`: the error raised at the write call itself (the same type and errno the real one has),
  so it runs everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

VARIANTS = ("tmpfs", "inject")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30)


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` at `path`; None when it worked, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("mount") is None:
        return "no mount command"
    path.mkdir(parents=True, exist_ok=True)
    proc = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if proc.returncode != 0:
        return f"mount -t tmpfs failed: {proc.stderr.strip() or proc.returncode}"
    return None


def unmount(path: Path) -> None:
    if _run("umount", str(path)).returncode != 0:
        _run("umount", "-l", str(path))


def remount(path: Path, read_only: bool, size: str = "") -> None:
    """Remount the tmpfs at `path` read-only or read-write (and with a new `size`)."""
    options = f"remount,{'ro' if read_only else 'rw'}" + (f",size={size}" if size else "")
    proc = _run("mount", "-o", options, str(path))
    assert proc.returncode == 0, proc.stderr


@contextlib.contextmanager
def small_fs(path: Path, variant: str, size: str = "16m") -> Iterator[Path]:
    """`path` as a tmpfs of `size` (variant `tmpfs`; skipped with the reason where it cannot be
    mounted) or a plain folder (variant `inject`)."""
    if variant == "inject":
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    reason = mount_tmpfs(path, size)
    if reason is not None:
        print(f"real tmpfs not available ({reason}): the inject variant covers this writer")
        pytest.skip(f"real tmpfs not available ({reason}); the inject variant covers this writer")
    try:
        yield path
    finally:
        unmount(path)


FILLER = ".filler"


def fill(path: Path, leave: int = 0) -> Path:
    """Fill the filesystem of `path` up to `leave` free bytes with one filler file (a real disk
    full); delete the file it returns to free the space again."""
    filler = path / FILLER
    chunk = b"\0" * (1 << 20)
    with open(filler, "ab", buffering=0) as handle:
        while (free := shutil.disk_usage(path).free - leave) > 0:
            try:
                handle.write(chunk[: min(len(chunk), free)])
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
                break
    return filler


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def files_under(path: Path) -> list[str]:
    """Relative paths of the files under `path` (the filler left out)."""
    return sorted(
        p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != FILLER
    )
