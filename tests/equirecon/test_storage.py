"""Storage faults (`equirecon.storage`, `StorageError`): how a failed write is recognized (an
errno anywhere in the error, a message naming it, torch's errno-less error on a full disk), the
one-line message, atomic files and metrics.jsonl on a full disk (no partial file or line), the
MLflow store on a full disk (a warning, training goes on, nothing lost), and the command line's
exit code 3 for a fault no writer wrapped.

Variants (tests/small_fs.py): `tmpfs` fills a real tmpfs; `inject` raises the error at the write.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import time
from pathlib import Path

import pytest

import equirecon.cli as cli
import equirecon.storage as storage
from equirecon.errors import StorageError
from equirecon.rundir import write_text_atomic
from equirecon.storage import fault_errno, guard_write
from equirecon.tracking import MetricsFile, Tracker
from tests.small_fs import VARIANTS, disk_full, fill, small_fs

TORCH_ZIP_ERROR = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


class _CheckpointException(BaseException):
    """What DCP raises: not an Exception, the per-rank errors in `failures`."""

    def __init__(self, failures: dict) -> None:
        super().__init__("CheckpointException ranks:dict_keys([0])")
        self.failures = failures


def _chained(inner: BaseException) -> RuntimeError:
    try:
        raise inner
    except BaseException as err:  # noqa: BLE001
        try:
            raise RuntimeError("the writer failed") from err
        except RuntimeError as outer:
            return outer


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (disk_full(), errno.ENOSPC),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT),
        (OSError(errno.EROFS, "Read-only file system"), errno.EROFS),
        (PermissionError(errno.EACCES, "Permission denied"), errno.EACCES),
        (_chained(disk_full()), errno.ENOSPC),
        (_CheckpointException({0: (disk_full(), [])}), errno.ENOSPC),
        (_CheckpointException({1: (RuntimeError("x"), []), 0: (OSError(30, "r"), [])}), 30),
        (RuntimeError("(sqlite3.OperationalError) database or disk is full"), errno.ENOSPC),
        (RuntimeError('IoError(Os { code: 28, message: "No space left on device" })'), 28),
        (ValueError("not a storage fault"), None),
        (FileNotFoundError(errno.ENOENT, "No such file or directory"), None),
        (RuntimeError(TORCH_ZIP_ERROR), None),  # without a path: cannot tell
    ],
)
def test_fault_errno(err: BaseException, code: int | None) -> None:
    assert fault_errno(err) == code


@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_zip_error_on_a_full_disk_is_disk_full(
    tmp_path: Path, variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's zip writer turns ENOSPC into an errno-less RuntimeError: a disk left (nearly) full
    by the failed write tells it apart from other errors."""
    with small_fs(tmp_path / "mnt", variant, size="1m") as mnt:
        target = mnt / "ckpt" / "__0_0.distcp"
        assert fault_errno(RuntimeError(TORCH_ZIP_ERROR), target) is None  # space left: not ours
        if variant == "tmpfs":
            fill(mnt)
        else:
            monkeypatch.setattr(storage, "free_bytes", lambda path: 4096)
        assert fault_errno(RuntimeError(TORCH_ZIP_ERROR), target) == errno.ENOSPC
        assert fault_errno(_CheckpointException({0: (RuntimeError(TORCH_ZIP_ERROR), [])}), target)
        assert fault_errno(ValueError("bad value"), target) is None  # not a write error


def test_storage_error_line_hint_and_pickling() -> None:
    err = StorageError(
        "checkpoint step 4",
        "/mnt/run/checkpoints/.tmp_step_00000004",
        free=120_000,
        needed=1_300_000,
        mount="/mnt",
        checkpoint="step_00000002 (checkpoints/latest)",
        then="rerun the same command: it resumes from step_00000002",
    )
    assert str(err) == (
        "disk full while writing checkpoint step 4 to /mnt/run/checkpoints/.tmp_step_00000004: "
        "120.0 kB free on /mnt, ~1.3 MB needed; intact checkpoint: step_00000002 "
        "(checkpoints/latest)"
    )
    assert err.hint == (
        "free space on /mnt (or write elsewhere), then rerun the same command: it resumes from "
        "step_00000002"
    )
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC and err.exit_code == 3
    back = pickle.loads(pickle.dumps(err))  # from a `data build` worker process
    assert (str(back), back.hint, back.errno) == (str(err), err.hint, err.errno)
    ro = StorageError("config.yaml", "/mnt/r/config.yaml", code=errno.EROFS, mount="/mnt")
    assert str(ro) == "read-only filesystem while writing config.yaml to /mnt/r/config.yaml: " + (
        "/mnt is mounted read-only"
    )
    assert ro.hint == "remount /mnt read-write (or write elsewhere), then rerun the same command"


def test_guard_write_removes_partial_files_on_any_error(tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    with pytest.raises(ValueError):  # not a storage fault: raised as it was, files removed
        with guard_write("x", partial, partial=[partial]):
            partial.write_text("half")
            raise ValueError("boom")
    assert not partial.exists()
    with pytest.raises(StorageError) as info:
        with guard_write("the thing", partial, needed=10, partial=[partial]):
            partial.mkdir()
            (partial / "a").write_text("half")
            raise disk_full()
    assert not partial.exists()
    assert str(info.value).startswith(f"disk full while writing the thing to {partial}: ")
    assert str(info.value).endswith(" free on " + storage.mount_point(tmp_path) + ", ~10 B needed")


@pytest.mark.parametrize("variant", VARIANTS)
def test_atomic_file_on_a_full_disk_keeps_the_old_one(
    tmp_path: Path, variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with small_fs(tmp_path / "mnt", variant, size="1m") as mnt:
        path = write_text_atomic(mnt / "latest", "step_00000002\n")
        if variant == "tmpfs":
            fill(mnt, leave=4096)
        else:
            real = Path.write_text

            def write_text(self: Path, text: str, *args, **kwargs) -> int:  # noqa: ANN002, ANN003
                real(self, text[:100])
                raise disk_full()

            monkeypatch.setattr(Path, "write_text", write_text)
        with pytest.raises(StorageError) as info:
            write_text_atomic(path, "x" * 20_000)
        assert str(info.value).startswith(f"disk full while writing latest to {path}: ")
        assert str(info.value).endswith("~20.0 kB needed")
        assert sorted(p.name for p in mnt.iterdir() if p.name != ".filler") == ["latest"]
        assert path.read_text() == "step_00000002\n"


@pytest.mark.parametrize("variant", VARIANTS)
def test_metrics_line_on_a_full_disk_is_removed_again(
    tmp_path: Path, variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with small_fs(tmp_path / "mnt", variant, size="1m") as mnt:
        metrics = MetricsFile(mnt / "metrics.jsonl")
        metrics.append(1, {"loss": 1.0})
        size = metrics.path.stat().st_size
        big = {f"m{i}": float(i) for i in range(400)}  # ~4.4 kB: needs a new page
        if variant == "tmpfs":
            fill(mnt)
        else:
            real_open = Path.open

            class Half:
                def __init__(self, handle) -> None:  # noqa: ANN001
                    self.handle = handle

                def __enter__(self) -> Half:
                    return self

                def __exit__(self, *exc: object) -> None:
                    self.handle.close()

                def write(self, text: str) -> int:
                    self.handle.write(text[: len(text) // 2])
                    self.handle.flush()
                    raise disk_full()

            monkeypatch.setattr(Path, "open", lambda p, *a, **k: Half(real_open(p, *a, **k)))
        with pytest.raises(StorageError, match="disk full while writing metrics of step 2 to "):
            metrics.append(2, big)
        monkeypatch.undo()
        assert metrics.path.stat().st_size == size
        assert metrics.read() == [{"step": 1, "loss": 1.0}]


@pytest.mark.parametrize("variant", VARIANTS)
def test_mlflow_store_on_a_full_disk_warns_and_loses_nothing(
    tmp_path: Path,
    variant: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The MLflow store never stops training: one warning that says the disk is full, the
    records are kept and delivered once there is space again."""
    with small_fs(tmp_path / "mnt", variant, size="8m") as mnt:
        uri = f"sqlite:///{mnt / 'mlflow.db'}"
        (tmp_path / "run").mkdir()
        tracker = Tracker(tmp_path / "run", uri, run_name="r", max_backoff_s=0.2)
        try:
            _full_store(tracker, mnt, uri, variant, monkeypatch, caplog)
        finally:
            tracker.finish(timeout=5)


def _full_store(
    tracker: Tracker,
    mnt: Path,
    uri: str,
    variant: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import mlflow

    tracker.log_metrics({"a": 1.0}, step=1)
    assert tracker.flush(120)
    filler = None
    if variant == "tmpfs":
        filler = fill(mnt)
    else:
        real = tracker.client.log_batch

        def log_batch(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
            raise mlflow.exceptions.MlflowException(
                "(sqlite3.OperationalError) database or disk is full"
            )

        monkeypatch.setattr(tracker.client, "log_batch", log_batch)
    with caplog.at_level(logging.WARNING, logger="equirecon.tracking"):
        for step in range(2, 6):
            tracker.log_metrics({"a": float(step)}, step=step)  # never raises, never waits
        deadline = time.monotonic() + 60
        warnings: list[str] = []
        while time.monotonic() < deadline and not warnings:
            time.sleep(0.05)
            warnings = [r.getMessage() for r in caplog.records if r.name == "equirecon.tracking"]
        time.sleep(0.5)  # a few retries: still one warning
    warnings = [r.getMessage() for r in caplog.records if r.name == "equirecon.tracking"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(
        f"disk full while writing the MLflow store to {mnt / 'mlflow.db'}: "
    )
    assert "training goes on: every metric is in metrics.jsonl" in warnings[0]
    if filler is not None:
        filler.unlink()
    else:
        monkeypatch.setattr(tracker.client, "log_batch", real)
    assert tracker.flush(60)
    history = mlflow.MlflowClient(uri).get_metric_history(tracker.run_id, "a")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]


def test_cli_reports_an_unwrapped_fault_as_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A write no writer wrapped still ends with one line and exit code 3 (`--debug`: the
    traceback)."""
    import pretrain.export
    import pretrain.restore

    target = tmp_path / "out" / "model.safetensors"

    def export(checkpoint, out):  # noqa: ANN001, ANN202
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))

    monkeypatch.setattr(pretrain.restore, "resolve_checkpoint", lambda path: path)
    monkeypatch.setattr(pretrain.export, "export_checkpoint", export)
    args = ["export", "--checkpoint", "ckpt", "--out", str(tmp_path / "out")]
    assert cli.main(args) == 3
    err = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.startswith(("equirecon:", "hint:"))
    ]
    mount = storage.mount_point(tmp_path)
    assert err == [
        f"equirecon: error: read-only filesystem while writing a file to {target}: {mount} is "
        "mounted read-only",
        f"hint: remount {mount} read-write (or write elsewhere), then rerun the same command "
        "(--debug or EQUIRECON_DEBUG=1 shows the traceback)",
    ]
    with pytest.raises(OSError, match="Read-only file system"):
        cli.main([*args, "--debug"])
