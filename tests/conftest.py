"""Shared fixtures: a small demo dataset built once per test session, tiny-model overrides."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A ViT small enough that a training step takes well under a second on 2 CPU cores.
TINY_OVERRIDES = [
    "data.global_size=16",
    "data.local_size=8",
    "data.n_local=2",
    "data.num_workers=0",
    "model.arch=vit_tiny",
    "model.patch_size=4",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "method.head_out_dim=64",
    "method.head_hidden_dim=32",
    "method.head_bottleneck_dim=16",
    "split.d_patch=48",
    "recon.d_equi=16",
    "recon.decoder_channels=16",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "eval.equivariance.train_images=128",
    "eval.equivariance.test_images=64",
    "eval.equivariance.epochs=3",
    # The probe on the natural crops (the default), as the tests' labels and files expect; the
    # demo config's probe reads the segmentation scenes (configs/demo_cpu.yaml).
    "eval.equivariance.subset=natural",
]


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo shards with small counts (same builder as `equirecon data build-demo`)."""
    from data_pipeline.demo import build_demo

    out = tmp_path_factory.mktemp("demo") / "data"
    build_demo(
        out,
        seed=0,
        n_train_crops=240,
        n_val_crops=80,
        crop_px=32,
        labelled_train=300,
        labelled_val=100,
        progress=False,
    )
    return out


@pytest.fixture()
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _no_repo_mlflow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never write to the repository's mlflow.db."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow-default.db'}")
    os.environ.setdefault("OMP_NUM_THREADS", "2")


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


@pytest.fixture(autouse=True)
def _stop_handlers_put_back() -> Iterator[None]:
    """Code run in-process must put back the SIGTERM/SIGINT/SIGUSR2 handlers it installs: a
    record-only SIGTERM handler left behind is inherited by every process forked later, and
    `multiprocessing.Pool.terminate()` then waits forever for its workers (issue #24)."""
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    yield
    left = {signal.Signals(s).name: h for s, h in before.items() if signal.getsignal(s) != h}
    for s, handler in before.items():
        signal.signal(s, handler)
    assert not left, f"the test left signal handlers installed: {sorted(left)}"
