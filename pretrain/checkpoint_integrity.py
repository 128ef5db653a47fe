"""Checkpoint integrity: the size and SHA-256 of every file of a checkpoint, and their check.

`RUN_DIR/checkpoints/step_X/manifest.json` is written by `Checkpointer.save` after every file of
the checkpoint is complete and before the directory is published (renamed to `step_X`), so a
published checkpoint with a manifest that no longer matches its files was damaged afterwards
(disk, copy, a tool writing into it). Resume and `equirecon eval` verify before loading;
`equirecon checkpoints verify RUN_DIR` lists the state of every checkpoint.

Why SHA-256: a standard digest a user can recheck with `sha256sum`, hashed at disk speed by
OpenSSL (about 1-2 GB/s per core; files are hashed in parallel threads); the size is compared
first, so a truncated or missing file is found without reading anything.

States: "ok" (every file matches), "damaged" (the problems name each file), "unverified" (no
manifest: a checkpoint written before manifests existed; it is loaded as before).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from equirecon.rundir import write_text_atomic

MANIFEST = "manifest.json"
ALGORITHM = "sha256"
_CHUNK = 1 << 22


@dataclass
class CheckpointState:
    """The result of verifying one checkpoint directory."""

    path: Path
    state: str  # ok | damaged | unverified
    problems: list[str] = field(default_factory=list)  # "<file>: <what is wrong>"
    files: int = 0
    total_bytes: int = 0

    @property
    def usable(self) -> bool:
        return self.state != "damaged"

    def describe(self) -> str:
        """One line: `step_X  ok (12 files, 3.4 MB)` / `step_X  damaged: a (why); b (why)`."""
        if self.state == "ok":
            return f"ok ({self.files} files, {self.total_bytes / 1e6:.1f} MB)"
        if self.state == "unverified":
            return "unverified (no manifest.json: written before checksums existed)"
        return "damaged: " + "; ".join(self.problems)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(ckpt_dir: Path) -> list[str]:
    """Every file under `ckpt_dir` except the manifest, as sorted relative POSIX paths."""
    found = []
    for root, _, names in os.walk(ckpt_dir):
        for name in names:
            rel = (Path(root) / name).relative_to(ckpt_dir).as_posix()
            if rel != MANIFEST:
                found.append(rel)
    return sorted(found)


def _hash_all(ckpt_dir: Path, rels: list[str], missing_ok: bool = False) -> list[str | None]:
    """SHA-256 of each file, in parallel threads (hashlib releases the GIL); with `missing_ok`
    an unreadable file gives None instead of raising."""

    def digest(rel: str) -> str | None:
        try:
            return _sha256(ckpt_dir / rel)
        except OSError:
            if not missing_ok:
                raise
            return None

    workers = max(1, min(8, len(rels), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(digest, rels))


def write_manifest(ckpt_dir: str | Path) -> dict:
    """Record size and SHA-256 of every file of `ckpt_dir` in `ckpt_dir/manifest.json`."""
    ckpt_dir = Path(ckpt_dir)
    rels = _files(ckpt_dir)
    digests = _hash_all(ckpt_dir, rels)
    manifest = {
        "algorithm": ALGORITHM,
        "files": {
            rel: {"size": (ckpt_dir / rel).stat().st_size, ALGORITHM: digest}
            for rel, digest in zip(rels, digests)
        },
    }
    write_text_atomic(ckpt_dir / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def verify_checkpoint(ckpt_dir: str | Path) -> CheckpointState:
    """Compare the files of `ckpt_dir` with its manifest (sizes first, then checksums)."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / MANIFEST
    if not path.is_file():
        return CheckpointState(ckpt_dir, "unverified")
    try:
        entries = json.loads(path.read_text())["files"]
        expected = {rel: (int(e["size"]), str(e[ALGORITHM])) for rel, e in entries.items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        return CheckpointState(ckpt_dir, "damaged", [f"{MANIFEST}: unreadable ({err})"])
    problems: list[str] = []
    to_hash: list[str] = []
    for rel, (size, _) in expected.items():
        file = ckpt_dir / rel
        if not file.is_file():
            problems.append(f"{rel}: missing")
        elif file.stat().st_size != size:
            problems.append(f"{rel}: {file.stat().st_size} bytes, expected {size}")
        else:
            to_hash.append(rel)
    for rel, digest in zip(to_hash, _hash_all(ckpt_dir, to_hash, missing_ok=True)):
        if digest is None:  # gone or unreadable while we read it (e.g. retention)
            problems.append(f"{rel}: unreadable")
        elif digest != expected[rel][1]:
            problems.append(f"{rel}: {ALGORITHM} mismatch (content changed)")
    total = sum(size for size, _ in expected.values())
    state = "damaged" if problems else "ok"
    return CheckpointState(ckpt_dir, state, sorted(problems), len(expected), total)
