"""User errors: mistakes a user can fix (a config key or value, a path, a damaged file).

The CLI prints a `UserError` as one line plus a hint, exits with code 2 and shows no traceback
(`--debug` or `EQUIRECON_DEBUG=1` shows it). Every other exception is a bug or an environment
failure and keeps its traceback.

Each concrete error also subclasses the builtin type that was raised before it existed
(`ValueError`, `FileNotFoundError`, `RuntimeError`), so callers that catch those still work.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can act on. `hint` says what to do (one line, optional)."""

    default_hint = ""

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
