"""Eval results on a full disk: `StorageError` (exit code 3 on the command line) naming the file,
the free space and the size needed; no partial file; an older result file is left as it was; the
metrics are in the log, so the evaluation's numbers are not lost.

Variants (tests/small_fs.py): `tmpfs` fills a real tmpfs up to 8 kB before the write; `inject`
makes the write of the temporary file stop half-way with ENOSPC.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from equirecon.errors import StorageError
from evals.results import write_result
from tests.small_fs import VARIANTS, disk_full, fill, small_fs


@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_results_on_a_full_disk(
    tmp_path: Path, variant: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with small_fs(tmp_path / "mnt", variant, size="1m") as mnt:
        out = mnt / "run" / "evals" / "step_00000004.json"
        write_result({"step": 4, "metrics": {"knn/top1": 0.25}}, out)  # an earlier evaluation
        old = out.read_bytes()
        result = {"step": 4, "metrics": {"knn/top1": 0.5}, "details": {"log": "x" * 20_000}}
        if variant == "tmpfs":
            fill(mnt, leave=8192)
        else:
            real_write_text = Path.write_text

            def write_text(path: Path, text: str, *args, **kwargs) -> int:  # noqa: ANN002, ANN003
                if path.name.startswith(".step_00000004.json.tmp"):
                    real_write_text(path, text[: len(text) // 2])
                    raise disk_full()
                return real_write_text(path, text, *args, **kwargs)

            monkeypatch.setattr(Path, "write_text", write_text)
        with caplog.at_level(logging.ERROR, logger="evals.results"):
            with pytest.raises(StorageError) as info:
                write_result(result, out)
        err = info.value
        print(err, err.hint, sep="\n")
        assert err.exit_code == 3 and isinstance(err, OSError)
        where = mnt if variant == "tmpfs" else err.mount
        assert str(err).startswith(f"disk full while writing eval results to {out}: ")
        assert f" free on {where}, ~20.1 kB needed" in str(err)
        assert "intact checkpoint" not in str(err)
        assert "rerun the eval (or give --out a path on another disk)" in err.hint
        assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no partial file
        assert out.read_bytes() == old
        logged = [r.getMessage() for r in caplog.records if r.name == "evals.results"]
        assert logged == [f"eval results not written; metrics: {json.dumps(result['metrics'])}"]
