"""Checkpoints: one DCP directory per step, published atomically, with a retention policy.

Layout: `RUN_DIR/checkpoints/step_00000100/` (DCP files + `config.yaml` + `meta.json`) and
`RUN_DIR/checkpoints/latest` (a text file naming the newest complete checkpoint). A directory is
written under a temporary name and renamed only when every rank has finished, so a crash during a
save never leaves a half-written checkpoint under a `step_*` name, and `latest` is replaced with
an atomic rename only after that. Each checkpoint holds `manifest.json` (size and SHA-256 of
every file, `pretrain/checkpoint_integrity.py`), written before publication; `select_checkpoint`
returns the newest checkpoint that still matches it and names the damaged ones it passed over.

A save that fails for lack of space (or on a read-only or unwritable disk) removes its temporary
directory at once and raises `StorageError` naming the checkpoint `latest` still points to;
rerunning the same command once there is space resumes from it exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner

from equirecon.errors import CheckpointError, StorageError
from equirecon.rundir import (
    CHECKPOINTS_DIR,
    LATEST_FILE,
    list_checkpoints,
    step_dir_name,
    write_text_atomic,
)
from equirecon.storage import guard_write
from pretrain.checkpoint_integrity import CheckpointState, verify_checkpoint, write_manifest
from pretrain.distributed import barrier, is_initialized, rank


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The checkpoint named by `latest`, else the newest complete one, else None."""
    root = Path(ckpt_root)
    pointer = root / LATEST_FILE
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / ".metadata").is_file():
            return candidate
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def resume_candidates(ckpt_root: str | Path) -> list[Path]:
    """Complete checkpoints in the order to try them: the one `latest` names, then the others
    newest first."""
    root = Path(ckpt_root)
    found = [path for _, path in reversed(list_checkpoints(root))]
    named = latest_checkpoint(root)
    if named is not None and named in found:
        found.remove(named)
        found.insert(0, named)
    return found


def select_checkpoint(ckpt_root: str | Path) -> tuple[Path | None, list[CheckpointState]]:
    """The first intact (or unverified, i.e. legacy) checkpoint of `resume_candidates`, and the
    damaged ones tried before it. (None, []) when there is no checkpoint.

    Raises:
        CheckpointError: there are checkpoints but every one is damaged.
    """
    damaged: list[CheckpointState] = []
    for path in resume_candidates(ckpt_root):
        state = verify_checkpoint(path)
        if state.usable:
            return path, damaged
        damaged.append(state)
    if damaged:
        listing = "; ".join(f"{d.path.name}: {d.describe()}" for d in damaged)
        raise CheckpointError(
            f"every checkpoint under {ckpt_root} is damaged ({listing})",
            hint="restore the files from a copy, or move the checkpoints folder away to start over",
        )
    return None, damaged


def select_checkpoint_all_ranks(ckpt_root: str | Path) -> tuple[Path | None, list[CheckpointState]]:
    """`select_checkpoint` run by rank 0 only (it reads every file) and shared with all ranks."""
    result: list = [None]
    if rank() == 0:
        try:
            result[0] = select_checkpoint(ckpt_root)
        except CheckpointError as err:
            result[0] = err
    if is_initialized():
        dist.broadcast_object_list(result, src=0)
    if isinstance(result[0], CheckpointError):
        raise result[0]
    return result[0]


def note_resume_point(err: StorageError, ckpt_root: str | Path) -> StorageError:
    """Add to `err` the checkpoint a rerun resumes from (the one `latest` names, else the
    newest complete one) and that rerunning resumes from it; returns `err`."""
    if err.checkpoint is not None:
        return err
    found = latest_checkpoint(ckpt_root)
    if found is None:
        return err.update(
            checkpoint="none yet", then="rerun the same command: it starts from step 0"
        )
    return err.update(
        checkpoint=describe_resume_point(ckpt_root),
        then=f"rerun the same command: it resumes from {found.name}",
    )


def describe_resume_point(ckpt_root: str | Path) -> str:
    """The checkpoint a rerun resumes from, as error lines name it: `step_N (checkpoints/latest)`
    (or `(checkpoints/step_N)` when `latest` does not name it), `none yet` without one."""
    found = latest_checkpoint(ckpt_root)
    if found is None:
        return "none yet"
    named = (Path(ckpt_root) / LATEST_FILE).is_file() and (
        (Path(ckpt_root) / LATEST_FILE).read_text().strip() == found.name
    )
    where = f"{CHECKPOINTS_DIR}/{LATEST_FILE}" if named else f"{CHECKPOINTS_DIR}/{found.name}"
    return f"{found.name} ({where})"


def state_bytes(state: Any) -> int:
    """About the bytes a DCP save of `state` writes (tensors at their global size, strings;
    `Stateful` values through their `state_dict()` in one process only: in a process group it
    may be a collective)."""
    if hasattr(state, "state_dict") and not is_initialized():
        return state_bytes(state.state_dict())
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(state_bytes(v) for v in state)
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, str | bytes):
        return len(state)
    return 0


def read_meta(path: str | Path) -> dict[str, Any]:
    """`meta.json` of a checkpoint directory ({} when absent)."""
    meta = Path(path) / "meta.json"
    return json.loads(meta.read_text()) if meta.is_file() else {}


class Checkpointer:
    """Save/load DCP state dicts under `RUN_DIR/checkpoints` (all ranks call every method).

    Retention: the newest `keep` checkpoints, plus every one whose step is a multiple of
    `keep_every` (0: none), e.g. keep=3, keep_every=10000 keeps a long-term trail, plus the
    starting model of a `model.init` run (step 0, `init` in its meta.json: what the run is
    compared with).
    """

    def __init__(self, run_dir: str | Path, keep: int = 3, keep_every: int = 0) -> None:
        self.root = Path(run_dir) / CHECKPOINTS_DIR
        self.keep = keep
        self.keep_every = keep_every

    def save(
        self,
        step: int,
        state: dict[str, Any],
        config_yaml: str,
        meta: dict[str, Any],
        extra_writer: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write `state` (DCP) + config + meta under a temporary name, then publish it as
        `step_XXXXXXXX` and point `latest` at it. `extra_writer(tmp_dir)` runs on all ranks
        after the DCP write (e.g. DeepSpeed's own files).

        Raises:
            StorageError: the disk is full (or read-only, or not writable) on the rank that
                hit it; the temporary directory is already removed and `latest` still names the
                previous checkpoint (named in the message).
        """
        final = self.root / step_dir_name(step)
        tmp = self.root / f".tmp_{step_dir_name(step)}"
        try:
            with guard_write(
                f"checkpoint step {step}",
                tmp,
                needed=lambda: self._needed(state, config_yaml),
                partial=[tmp],
            ):
                self._write(step, state, config_yaml, meta, extra_writer, tmp, final)
        except StorageError as err:
            note_resume_point(err, self.root)
            raise
        return final

    def _needed(self, state: dict[str, Any], config_yaml: str) -> int:
        """About the bytes of a new checkpoint: the newest one's, else an estimate from `state`."""
        found = list_checkpoints(self.root)
        if found:
            return sum(f.stat().st_size for f in found[-1][1].rglob("*") if f.is_file())
        return state_bytes(state) + len(config_yaml)

    def _write(
        self,
        step: int,
        state: dict[str, Any],
        config_yaml: str,
        meta: dict[str, Any],
        extra_writer: Callable[[Path], None] | None,
        tmp: Path,
        final: Path,
    ) -> None:
        if rank() == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        barrier()
        dcp.save(state, checkpoint_id=str(tmp))
        if extra_writer is not None:
            extra_writer(tmp)
        barrier()
        if rank() == 0:
            (tmp / "config.yaml").write_text(config_yaml)
            (tmp / "meta.json").write_text(
                json.dumps({**meta, "step": step, "time": time.time()}, indent=1)
            )
            write_manifest(tmp)  # every file is complete now; publish only after this
            if final.exists():  # re-saving the same step (e.g. after a resume): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            write_text_atomic(self.root / LATEST_FILE, final.name + "\n")
            self._apply_retention()
        barrier()

    def _apply_retention(self) -> None:
        ckpts = list_checkpoints(self.root)
        for step, path in ckpts[: max(len(ckpts) - self.keep, 0)]:
            if self.keep_every and step % self.keep_every == 0:
                continue
            if step == 0 and "init" in read_meta(path):  # a model.init run's starting model
                continue
            shutil.rmtree(path, ignore_errors=True)

    def load(self, path: str | Path, state: dict[str, Any], partial: bool = False) -> None:
        """Load in place into `state` (tensors are overwritten, other values replaced)."""
        planner = DefaultLoadPlanner(allow_partial_load=partial)
        dcp.load(state, checkpoint_id=str(path), planner=planner)
