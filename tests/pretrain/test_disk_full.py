"""Storage faults during pretraining and export: disk full at a checkpoint or at a metrics.jsonl
append, a read-only run directory, no write permission.

Each ends the run with exit code 3 and one line (what, where, free space and about how much is
needed, the intact checkpoint) plus a hint, no traceback; the partial files are gone at once;
`latest` still names an intact checkpoint, and rerunning the same command once the space is back
ends exactly where an uninterrupted run does (the same losses, bitwise: one CPU process).

Variants (tests/small_fs.py): `tmpfs` fills (or remounts read-only) a real tmpfs that holds the
run directory at the moment the writer runs; `inject` raises the error at the write call.
Permission: `real` runs the command as root without CAP_DAC_OVERRIDE (`setpriv`) on a
checkpoints folder of mode 0555, `inject` raises EACCES where the checkpoint folder is made.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from torch.distributed.checkpoint.api import CheckpointException

import equirecon.cli as cli
import pretrain.checkpoint as checkpoint_module
from equirecon.config import load_config
from pretrain.checkpoint import list_checkpoints
from pretrain.train import Trainer
from tests.conftest import REPO, TINY_OVERRIDES
from tests.small_fs import VARIANTS, disk_full, files_under, fill, remount, small_fs

STEPS = ["train.max_steps=6", "checkpoint.every_steps=2", "checkpoint.keep=3"]
SETTINGS = [*TINY_OVERRIDES, *STEPS, "data.backend=synthetic", "tracking.enabled=false"]


def _args(run_dir: Path) -> list[str]:
    config = str(REPO / "configs" / "demo_cpu.yaml")
    return ["pretrain", "--config", config, *SETTINGS, f"run.dir={run_dir}"]


DEBUG_NOTE = " (--debug or EQUIRECON_DEBUG=1 shows the traceback)"


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln]
    return [(r["step"], r["train/loss_total"]) for r in rows if "train/loss_total" in r]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, float]]:
    run_dir = tmp_path_factory.mktemp("disk_full_ref") / "run"
    Trainer(
        load_config(REPO / "configs" / "demo_cpu.yaml", [*SETTINGS, f"run.dir={run_dir}"])
    ).fit()
    losses = _losses(run_dir)
    assert [s for s, _ in losses] == list(range(1, 7))
    return losses


def _fail_checkpoint_mkdir(
    monkeypatch: pytest.MonkeyPatch, error: type[OSError], code: int
) -> None:
    """Inject `error(code)` where the step-4 checkpoint's temporary folder is made."""
    real_mkdir = Path.mkdir

    def mkdir(path: Path, *a, **k) -> None:  # noqa: ANN002, ANN003
        if path.name == ".tmp_step_00000004":
            raise error(code, os.strerror(code), str(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def _fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """Run the command (expecting exit code 3); its error line and hint line."""
    capsys.readouterr()
    assert cli.main(args) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(("equirecon: error:", "hint:"))]
    assert len(lines) == 2 and lines[0].startswith("equirecon: error: "), err
    print("\n".join(lines))  # shown by pytest -rP
    return lines[0][len("equirecon: error: ") :], lines[1]


def _resumes_exactly(run_dir: Path, uninterrupted: list, step: int = 2) -> None:
    """Rerun the same command: it resumes from the checkpoint of `step` and ends where the
    uninterrupted run does (the same losses, bitwise)."""
    handler, logger = _Records(), logging.getLogger("equirecon.pretrain")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert cli.main(_args(run_dir)) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    resumed = [m for m in handler.messages if m.startswith("resumed from")]
    expected = f"resumed from {run_dir}/checkpoints/step_{step:08d} at step {step}"
    assert resumed == ([expected] if step else [])
    assert _losses(run_dir) == uninterrupted
    assert [s for s, _ in list_checkpoints(run_dir / "checkpoints")] == [2, 4, 6]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _hook_save(monkeypatch: pytest.MonkeyPatch, step: int, before=None, after=None) -> None:  # noqa: ANN001
    """Around DCP's save of checkpoint `step`: `before()` runs first, `after()` once its files
    are written."""
    real = checkpoint_module.dcp.save

    def save(state, checkpoint_id):  # noqa: ANN001, ANN202
        target = Path(checkpoint_id).name == f".tmp_step_{step:08d}"
        if target and before is not None:
            before()
        result = real(state, checkpoint_id=checkpoint_id)
        if target and after is not None:
            after()
        return result

    monkeypatch.setattr(checkpoint_module.dcp, "save", save)


@pytest.mark.parametrize("variant", VARIANTS)
def test_disk_full_during_a_checkpoint(
    tmp_path: Path,
    variant: str,
    uninterrupted: list,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with small_fs(tmp_path / "mnt", variant) as mnt:
        run_dir = mnt / "run"
        filler: list[Path] = []
        if variant == "tmpfs":  # the disk fills up as step 4 is saved: torch's own error
            # (600 kB are left: the save fills them before it fails)
            _hook_save(monkeypatch, 4, before=lambda: filler.append(fill(mnt, 600_000)))
        else:  # what DCP raises when its writer gets ENOSPC, after writing part of the files

            def fail() -> None:
                raise CheckpointException("write", {0: (disk_full(), [])})

            _hook_save(monkeypatch, 4, after=fail)
        line, hint = _fails(_args(run_dir), capsys)
        ckpts = run_dir / "checkpoints"
        assert line.startswith(f"disk full while writing checkpoint step 4 to {ckpts}/.tmp_step_")
        assert f" free on {mnt if variant == 'tmpfs' else ''}" in line
        assert "~1.3 MB needed" in line  # the size of the tiny model's checkpoint
        assert line.endswith("intact checkpoint: step_00000002 (checkpoints/latest)")
        assert "then rerun the same command: it resumes from step_00000002" in hint
        # The partial checkpoint is gone at once (its space is back); `latest` is untouched.
        assert not (ckpts / ".tmp_step_00000004").exists()
        assert (ckpts / "latest").read_text().strip() == "step_00000002"
        assert [s for s, _ in list_checkpoints(ckpts)] == [2]
        if filler:  # the space of the partial files is back, and the line says so
            free = shutil.disk_usage(mnt).free
            assert free > 500_000 and f": {free / 1e3:.1f} kB free on {mnt}, ~1.3 MB" in line
            filler[0].unlink()  # "free space"
        monkeypatch.undo()
        _resumes_exactly(run_dir, uninterrupted)


class _Watched:
    """An open file whose `write` goes through `on_write(handle, text)`."""

    def __init__(self, handle, on_write) -> None:  # noqa: ANN001
        self.handle, self.on_write = handle, on_write

    def __enter__(self) -> _Watched:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()  # a buffered write that does not fit fails here (ENOSPC)

    def write(self, text: str) -> int:
        return self.on_write(self.handle, text)


@pytest.mark.parametrize("variant", VARIANTS)
def test_disk_full_at_a_metrics_line(
    tmp_path: Path,
    variant: str,
    uninterrupted: list,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """metrics.jsonl: the run stops at once and the partial line is cut off again."""
    before: dict[int, int] = {}  # step -> size of metrics.jsonl before its line
    filler: list[Path] = []

    def on_write(handle, text: str) -> int:  # noqa: ANN001
        step, size = json.loads(text)["step"], handle.tell()
        before[step] = size
        if variant == "inject" and step == 3:  # half the line reaches the file, then ENOSPC
            handle.write(text[: len(text) // 2])
            handle.flush()
            raise disk_full()
        if variant == "tmpfs" and step == 1:
            # The disk fills up before the first line. (Later lines would not fail: an append
            # within the file's last page needs no space. A real disk behaves the same: the run
            # goes on until a write needs a new block.)
            filler.append(fill(Path(handle.name).parent))
        return handle.write(text)

    real_open = Path.open

    def open_(path: Path, mode: str = "r", *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        handle = real_open(path, mode, *args, **kwargs)
        return (
            _Watched(handle, on_write) if path.name == "metrics.jsonl" and "a" in mode else handle
        )

    with small_fs(tmp_path / "mnt", variant) as mnt:
        run_dir = mnt / "run"
        monkeypatch.setattr(Path, "open", open_)
        line, hint = _fails(_args(run_dir), capsys)
        monkeypatch.undo()
        failed = max(before)
        assert line.startswith(
            f"disk full while writing metrics of step {failed} to {run_dir}/metrics.jsonl: "
        )
        intact = 2 * ((failed - 1) // 2)
        if intact:
            assert line.endswith(f"intact checkpoint: step_{intact:08d} (checkpoints/latest)")
            assert f"it resumes from step_{intact:08d}" in hint
        else:
            assert line.endswith("intact checkpoint: none yet")
            assert hint.endswith("rerun the same command: it starts from step 0" + DEBUG_NOTE)
        # No partial line: the file is as it was before the failing append (a new one is gone).
        path = run_dir / "metrics.jsonl"
        if before[failed]:
            assert len(path.read_bytes()) == before[failed] and path.read_bytes().endswith(b"\n")
            assert [s for s, _ in _losses(run_dir)] == list(range(1, failed))
        else:
            assert not path.exists()
        if filler:
            filler[0].unlink()
        _resumes_exactly(run_dir, uninterrupted, intact)


@pytest.mark.parametrize("variant", VARIANTS)
def test_read_only_run_directory(
    tmp_path: Path,
    variant: str,
    uninterrupted: list,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The run directory's filesystem turns read-only during the run (a remount after an I/O
    error, a quota policy): the next checkpoint fails with one line."""
    with small_fs(tmp_path / "mnt", variant) as mnt:
        run_dir = mnt / "run"
        real_save = checkpoint_module.Checkpointer.save

        def save(self, step, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if step == 4:
                if variant == "tmpfs":
                    remount(mnt, read_only=True)
                else:
                    _fail_checkpoint_mkdir(monkeypatch, OSError, errno.EROFS)
            return real_save(self, step, *args, **kwargs)

        monkeypatch.setattr(checkpoint_module.Checkpointer, "save", save)
        line, hint = _fails(_args(run_dir), capsys)
        ckpts = run_dir / "checkpoints"
        where = str(mnt) if variant == "tmpfs" else "/"
        assert line.startswith(
            f"read-only filesystem while writing checkpoint step 4 to {ckpts}/.tmp_step_00000004:"
        )
        assert "is mounted read-only" in line and (variant == "inject" or where in line)
        assert line.endswith("intact checkpoint: step_00000002 (checkpoints/latest)")
        assert hint.startswith("hint: remount ") and "it resumes from step_00000002" in hint
        assert "checkpoints/.tmp_step_00000004/__0_0.distcp" not in files_under(run_dir)
        monkeypatch.undo()
        if variant == "tmpfs":
            remount(mnt, read_only=False)
        _resumes_exactly(run_dir, uninterrupted)


def _setpriv() -> str | None:
    """Why commands cannot run without CAP_DAC_OVERRIDE here (None: they can)."""
    if os.geteuid() != 0:
        return "not root: the inject variant covers it"
    if shutil.which("setpriv") is None:
        return "no setpriv command"
    probe = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", "true"],
        capture_output=True,
        text=True,
    )
    return None if probe.returncode == 0 else f"setpriv failed: {probe.stderr.strip()}"


@pytest.mark.parametrize("variant", ["real", "inject"])
def test_no_write_permission_on_the_checkpoints(
    tmp_path: Path,
    variant: str,
    uninterrupted: list,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    if variant == "real":
        reason = _setpriv()
        if reason is not None:
            print(f"no real permission error possible ({reason}); the inject variant runs")
            pytest.skip(f"no real permission error possible ({reason})")
        trainer = Trainer(
            load_config(REPO / "configs" / "demo_cpu.yaml", [*SETTINGS, f"run.dir={run_dir}"])
        )
        trainer.fit(stop_after=2)  # checkpoint of step 2
        ckpts.chmod(0o555)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
            + [sys.executable, "-m", "equirecon", *_args(run_dir)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=300,
        )
        ckpts.chmod(0o755)
        assert proc.returncode == 3, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("equirecon:", "hint:"))]
        assert len(lines) == 2, proc.stderr[-3000:]
        line, hint = lines[0][len("equirecon: error: ") :], lines[1]
    else:
        _fail_checkpoint_mkdir(monkeypatch, PermissionError, errno.EACCES)
        line, hint = _fails(_args(run_dir), capsys)
        monkeypatch.undo()
    assert line == (
        f"permission denied while writing checkpoint step 4 to {ckpts}/.tmp_step_00000004: "
        f"no write permission on {ckpts}; intact checkpoint: step_00000002 (checkpoints/latest)"
    )
    assert hint.startswith(f"hint: give this user write access to {ckpts}")
    assert not (ckpts / ".tmp_step_00000004").exists()
    _resumes_exactly(run_dir, uninterrupted)


# ---- export ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def a_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("export_src") / "run"
    cfg = load_config(REPO / "configs" / "demo_cpu.yaml", [*SETTINGS, f"run.dir={run_dir}"])
    Trainer(cfg).fit(stop_after=2)
    return run_dir / "checkpoints" / "step_00000002"


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_on_a_full_disk(
    tmp_path: Path,
    variant: str,
    a_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import pretrain.export as export

    with small_fs(tmp_path / "mnt", variant, size="4m") as mnt:
        out = mnt / "export"
        assert cli.main(["export", "--checkpoint", str(a_checkpoint), "--out", str(out)]) == 0
        before = {p: p.read_bytes() for p in out.iterdir()}
        filler: list[Path] = []
        real_save = export.save_file

        def save_file(state, path, metadata=None):  # noqa: ANN001, ANN202
            if variant == "tmpfs":
                filler.append(fill(mnt, 100_000))  # the write fills them, then fails
                return real_save(state, path, metadata=metadata)  # safetensors' own IoError
            Path(path).write_bytes(b"\0" * 1000)  # part of the file, then the error it raises
            raise RuntimeError(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                '"No space left on device" })'
            )

        monkeypatch.setattr(export, "save_file", save_file)
        line, hint = _fails(
            ["export", "--checkpoint", str(a_checkpoint), "--out", str(out)], capsys
        )
        tmp = mnt / ".export.tmp"
        assert line.startswith(f"disk full while writing the export of step_00000002 to {tmp}: ")
        assert " needed" in line and "intact checkpoint" not in line
        assert not tmp.exists()  # the partial export is gone ...
        assert {p: p.read_bytes() for p in out.iterdir()} == before  # ... the old one untouched
        if filler:  # the partial file's space is back
            assert shutil.disk_usage(mnt).free > 90_000
