"""The registry of evaluation tasks: the torch-free specs (equirecon/eval_tasks) and the torch
implementations (evals/tasks) hold the same names, the harness dispatches through them, and a
new task is two new files and nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from equirecon.config import EvalConfig, load_config
from equirecon.eval_tasks import EvalTaskSpec, get_task_spec, register_task_spec, task_names
from evals.tasks import get_task, register_task, registered_tasks

REPO = Path(__file__).resolve().parents[2]


def test_both_registries_hold_the_same_names() -> None:
    assert sorted(task_names()) == registered_tasks()
    assert task_names() == ["equivariance", "knn", "linear", "homography", "segmentation", "depth"]


def test_every_task_has_its_settings_section_and_a_default_run() -> None:
    e = EvalConfig()
    assert e.tasks == ",".join(task_names())
    for name in task_names():
        assert isinstance(getattr(e, name), get_task_spec(name).settings)
        assert callable(get_task(name))


def test_the_harness_names_no_task() -> None:
    """Dispatch and setup look tasks up by name, and the core config takes the task sections
    and their checks from the specs: none of them names a task (but the rename table)."""
    for path in ("evals/run.py", "evals/dispatch.py"):
        text = (REPO / path).read_text()
        for name in task_names():
            assert f'"{name}"' not in text and f"'{name}'" not in text, (path, name)
    for path in ("config.py", "config_schema.py", "config_files.py", "config_checks.py"):
        config = (REPO / "equirecon" / path).read_text()
        before, _, after = config.partition("MOVED_KEYS: dict[str, str] = {")
        outside = before + after.partition("\n}\n")[2]
        for name in task_names():
            assert f"eval.{name}" not in outside, (path, name)


def test_registering_twice_or_a_bad_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_task("knn")(lambda provider, ctx: ({}, {}))
    with pytest.raises(ValueError, match="registered twice"):
        register_task_spec(EvalTaskSpec("knn", get_task_spec("linear").settings))
    with pytest.raises(ValueError, match="dataclass"):
        register_task_spec(EvalTaskSpec("toy", dict))
    with pytest.raises(ValueError, match="unknown settings"):
        register_task_spec(EvalTaskSpec("toy", get_task_spec("knn").settings, {"kk": ("x", "")}))


def test_unknown_task_names_the_registered_ones() -> None:
    with pytest.raises(ValueError, match="eval.tasks='knn,kitti': must be a comma-separated list"):
        load_config(None, ["eval.tasks=knn,kitti"])


SPEC = '''
"""A toy task's settings, `eval.toy.*`."""

from __future__ import annotations

from dataclasses import dataclass

from equirecon.checks import POSITIVE
from equirecon.eval_tasks import EvalTaskSpec, register_task_spec


@dataclass
class ToySettings:
    scale: int = 2


SPEC = register_task_spec(
    EvalTaskSpec(name="toy", settings=ToySettings, checks={"scale": POSITIVE}, order=70)
)
'''

IMPL = '''
"""A toy task: the mean pixel of a few natural images, times eval.toy.scale."""

from __future__ import annotations

from evals.tasks.base import register_task


@register_task("toy")
def run(provider, ctx):
    images, _ = ctx.images("natural", "val", ctx.img_size, 4)
    value = float(images.mean()) * ctx.cfg.toy.scale
    return {"eval/toy/value": value}, {"scale": ctx.cfg.toy.scale}
'''

SCRIPT = """
import sys, warnings
from equirecon.config import ConfigError, load_config
from evals.dispatch import parse_tasks, run_tasks
from evals.providers import PixelFeatures

cfg = load_config(None, ["eval.tasks=knn,toy", "eval.toy.scale=3"])
assert cfg.eval.toy.scale == 3 and parse_tasks("all", "")[-1] == "toy"
try:
    load_config(None, ["eval.toy.scale=0"])
    raise SystemExit("eval.toy.scale=0 passed its check")
except ConfigError as e:
    assert str(e).startswith("eval.toy.scale=0: must be >= 1"), e
out = run_tasks(PixelFeatures(patch_size=4), cfg.eval, ["toy"], sys.argv[1], 16)
assert set(out["metrics"]) == {"eval/toy/value"} and out["details"]["toy"] == {"scale": 3}
print("ok")
"""


def test_a_new_task_is_two_new_files(tmp_path: Path, demo_data: Path) -> None:
    """A copy of the packages plus equirecon/eval_tasks/toy.py and evals/tasks/toy.py: the toy
    task is configured, checked, listed by `all` and run, with no other file edited."""
    for package in ("equirecon", "evals", "pretrain", "data_pipeline"):
        shutil.copytree(
            REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    (tmp_path / "equirecon" / "eval_tasks" / "toy.py").write_text(textwrap.dedent(SPEC))
    (tmp_path / "evals" / "tasks" / "toy.py").write_text(textwrap.dedent(IMPL))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(demo_data)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
