"""User errors: mistakes a user can fix (a config key or value, a path, a damaged file).

The CLI prints a `UserError` as one line plus a hint, exits with its `exit_code` and shows no
traceback (`--debug` or `EQUIRECON_DEBUG=1` shows it). Every other exception is a bug or an
environment failure and keeps its traceback.

Exit codes: 2 for user errors (as argparse's usage errors); 3 for a `StorageError`: a write failed
because the disk (or quota) is full, the filesystem is read-only or permission is missing
(`equirecon.storage`): free space or fix the mount, then rerun the same command (a pretraining
run resumes from the intact checkpoint the line names); 4 for a `PeerLostError`: another rank of
a multi-process run died (or its node), and this rank's collective failed: the line names the
intact checkpoint a rerun resumes from; 5 for a `DivergedError`: `train.max_nonfinite_steps`
non-finite steps in a row, the last good state saved. 1 is left to the verbs' own failures
(`checkpoints verify` finding damage, failed eval jobs).

Each concrete error also subclasses the builtin type that was raised before it existed
(`ValueError`, `FileNotFoundError`, `RuntimeError`), so callers that catch those still work.
"""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """An error the user can act on. `hint` says what to do (one line, optional)."""

    default_hint = ""
    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint or self.default_hint


class ConfigError(UserError, ValueError):
    """A config key or value that does not fit the schema (see `equirecon.config`)."""

    default_hint = "fix the key in the YAML file or the key=value override named above"


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder named by the user (config file, data path, checkpoint) is not there."""

    default_hint = "check the path (relative paths are taken from the current directory)"


class DataError(UserError, RuntimeError):
    """Input data that cannot be used (no readable shard, no readable image)."""

    default_hint = "check the data path; damaged files are named in the log above"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used: damaged, or written by an incompatible run."""

    default_hint = "run `equirecon checkpoints verify RUN_DIR` to see the state of every checkpoint"


class ResumeConfigError(UserError, ValueError):
    """Resuming a run directory with a config that changes what its checkpoints hold."""


class StorageError(UserError, OSError):
    """A write that failed for lack of space or quota, on a read-only filesystem or without
    permission: what was written, where, the free space and about how much was needed, and for a
    training run the intact checkpoint a rerun resumes from. Made by `equirecon.storage`, which
    removes the partial files first. Exit code 3. `errno` is the cause (ENOSPC, EDQUOT, EROFS,
    EACCES or EPERM); `update(...)` changes the fields and rewrites the message."""

    exit_code = 3
    KINDS = {
        errno.ENOSPC: "disk full",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only filesystem",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }

    def __init__(
        self,
        what: str = "a file",
        path: str | os.PathLike[str] = "",
        *,
        code: int = errno.ENOSPC,
        free: int | None = None,
        needed: int | None = None,
        mount: str = "",
        blocked: str = "",
        checkpoint: str | None = None,
        then: str = "rerun the same command",
    ) -> None:
        self.what, self.path, self.code = what, str(path), code
        self.free, self.needed, self.mount, self.blocked = free, needed, mount, blocked
        self.checkpoint, self.then = checkpoint, then  # checkpoint None: not a training write
        super().__init__(self._message(), self._hint())
        self.errno = code

    @property
    def kind(self) -> str:
        return self.KINDS.get(self.code, os.strerror(self.code))

    @property
    def disk_full(self) -> bool:
        return self.code in (errno.ENOSPC, errno.EDQUOT)

    def update(self, **fields: object) -> StorageError:
        """Set fields (`what`, `needed`, `checkpoint`, `then` …) and rewrite message and hint."""
        for name, value in fields.items():
            if not hasattr(self, name):
                raise AttributeError(name)
            setattr(self, name, value)
        self.args = (self._message(),)
        self.hint = self._hint()
        return self

    def _message(self) -> str:
        where = self.mount or "its filesystem"
        if self.disk_full:
            cause = "no space left" if self.free is None else f"{format_bytes(self.free)} free"
            cause += f" on {self.mount}" if self.mount else ""
            if self.needed is not None:
                cause += f", ~{format_bytes(self.needed)} needed"
        elif self.code == errno.EROFS:
            cause = f"{where} is mounted read-only"
        else:
            cause = f"no write permission on {self.blocked or self.path}"
        text = f"{self.kind} while writing {self.what} to {self.path}: {cause}"
        if self.checkpoint is not None:
            text += f"; intact checkpoint: {self.checkpoint}"
        return text

    def _hint(self) -> str:
        where = self.mount or "the filesystem"
        if self.disk_full:
            fix = f"free space on {where} (or write elsewhere)"
        elif self.code == errno.EROFS:
            fix = f"remount {where} read-write (or write elsewhere)"
        else:
            fix = f"give this user write access to {self.blocked or self.path} (or write elsewhere)"
        return f"{fix}, then {self.then}"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):  # noqa: ANN204 - pickled back from a worker process (`data build`)
        return (type(self), (self.what, self.path), dict(self.__dict__))

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.update()
        self.errno = self.code


def format_bytes(n: int) -> str:
    """1234 -> "1.2 kB", 1.3e6 -> "1.3 MB" (decimal units, as `du --si`)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


class PeerLostError(UserError, RuntimeError):
    """A collective of a multi-process run failed because another rank is gone (killed, out of
    memory, its node lost): the step, the backend's reason and the intact checkpoint a rerun of
    the same command resumes from. The first failure is in the log of the rank that died. Exit
    code 4."""

    exit_code = 4
    default_hint = (
        "the rank that died logged the first failure (torchrun prints it as the root cause; on "
        "Slurm: RUN_DIR/slurm/<job id>/); fix it, then rerun the same command to resume"
    )


class DivergedError(UserError, FloatingPointError):
    """`train.max_nonfinite_steps` non-finite steps in a row: the last good state is saved as a
    checkpoint and a diagnostic file written (both named in the message). Exit code 5."""

    exit_code = 5
    default_hint = (
        "lower the lr or recon.lambda, clip harder (train.clip_grad) or train in fp32, then "
        "rerun the same command: it resumes from the last good state"
    )
