"""The CPU variant of the image: build it (docker/Dockerfile on the local base image), then make
demo shards and run a few pretraining steps inside containers, launched through the entrypoint's
Slurm path (one container per node -> torchrun with a c10d rendezvous -> 2 DDP ranks on gloo).

Needs a Docker engine: $DOCKER_HOST, /var/run/docker.sock, or the private engine of
docker/ci_engine.sh (which `make test` starts when run as root). Without one the test skips,
unless EQUIRECON_REQUIRE_DOCKER=1 (set by `make test` when it started the engine): then it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
CI_SOCKET = REPO / ".cache" / "docker" / "docker.sock"
IMAGE = os.environ.get("EQUIRECON_TEST_IMAGE", "equirecon:cpu-test")
BASE_IMAGE = os.environ.get("EQUIRECON_BASE_IMAGE", "equirecon/bookworm-py:local")

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3600)]


def _docker_env() -> tuple[dict[str, str] | None, str]:
    """(environment for the docker CLI, reason) — None when no engine answers."""
    if shutil.which("docker") is None:
        return None, "no docker CLI on PATH"
    env = dict(os.environ)
    candidates = []
    if env.get("DOCKER_HOST"):
        candidates.append(env["DOCKER_HOST"])
    else:
        if Path("/var/run/docker.sock").exists():
            candidates.append("unix:///var/run/docker.sock")
        if CI_SOCKET.exists():
            candidates.append(f"unix://{CI_SOCKET}")
    for host in candidates:
        env["DOCKER_HOST"] = host
        r = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode == 0:
            return env, ""
    tried = ", ".join(candidates) or "DOCKER_HOST unset, no /var/run/docker.sock"
    return None, (
        f"no Docker engine reachable ({tried}); `make test` as root starts one "
        "(docker/ci_engine.sh start)"
    )


@pytest.fixture(scope="module")
def docker_env() -> dict[str, str]:
    env, reason = _docker_env()
    if env is None:
        if os.environ.get("EQUIRECON_REQUIRE_DOCKER") == "1":
            pytest.fail(f"EQUIRECON_REQUIRE_DOCKER=1 but {reason}")
        pytest.skip(reason)
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"$ {' '.join(cmd[:6])} … ({time.monotonic() - t0:.0f} s, rc {r.returncode})")
    if r.returncode != 0:
        print(r.stdout[-6000:], r.stderr[-6000:], sep="\n")
    return r


@pytest.fixture(scope="module")
def image(docker_env: dict[str, str]) -> str:
    have_base = subprocess.run(
        ["docker", "image", "inspect", BASE_IMAGE], env=docker_env, capture_output=True
    )
    if have_base.returncode != 0:
        pytest.fail(
            f"base image {BASE_IMAGE} is missing: `docker/ci_engine.sh start` makes it, or set "
            "EQUIRECON_BASE_IMAGE to any Debian/Ubuntu image with python3 (>= 3.10)"
        )
    env = {**docker_env, "EQUIRECON_BASE_IMAGE": BASE_IMAGE}
    r = _run(["bash", str(REPO / "docker" / "build_cpu_image.sh"), IMAGE], env, timeout=3000)
    assert r.returncode == 0, "image build failed (output above)"
    return IMAGE


def test_cpu_image_trains_through_the_slurm_entrypoint(image, docker_env, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    user = f"{os.getuid()}:{os.getgid()}"
    base = ["docker", "run", "--rm", "--init", "--user", user]
    base += ["-v", f"{work}:/workspace", "-e", "OMP_NUM_THREADS=1"]

    # The image's own CLI through the entrypoint (a verb -> `equirecon data build-demo`).
    r = _run(
        [
            *base,
            "--network",
            "none",
            image,
            "data",
            "build-demo",
            "--out",
            "/workspace/data",
            "--no-segmentation",
        ],
        docker_env,
        timeout=900,
    )
    assert r.returncode == 0, "data build-demo failed in the container (output above)"
    assert (work / "data" / "manifest.json").exists()

    # One container per node under Slurm: the entrypoint maps the Slurm variables to torchrun
    # (c10d rendezvous on the first host of the node list) with 2 processes on this "node".
    # --network host as on a cluster: torchrun's rendezvous store binds to the node's hostname,
    # which a container without a network cannot resolve (it then hangs for 300 s).
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "0",
        "SLURM_NODEID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NNODES": "1",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NODELIST": "localhost",
        "GPUS_PER_NODE": "2",
        "NCCL_DEBUG": "INFO",  # passes through (unused by gloo)
    }
    env_args = [a for k, v in slurm.items() for a in ("-e", f"{k}={v}")]
    overrides = [
        *TINY_OVERRIDES,
        "data.path=/workspace/data",
        "run.dir=/workspace/run",
        "train.strategy=ddp",
        "train.max_steps=3",
        "checkpoint.every_steps=3",
        "eval.watch=false",
        "tracking.uri=sqlite:////workspace/mlflow.db",
    ]
    cmd = [
        *base,
        "--network",
        "host",
        *env_args,
        image,
        "pretrain",
        "--config",
        "/opt/equirecon/configs/demo_cpu.yaml",
    ]
    r = _run([*cmd, *overrides], docker_env, timeout=900)
    assert r.returncode == 0, "pretraining failed in the container (output above)"
    run = work / "run"
    latest = run / "checkpoints" / "latest"
    assert latest.exists(), f"no checkpoint in {run}: {sorted(p.name for p in run.rglob('*'))}"
    name = latest.read_text().strip() if latest.is_file() else latest.resolve().name
    assert name.endswith("00000003"), name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    assert rows[-1]["step"] == 3
    meta = json.loads((run / "checkpoints" / name / "meta.json").read_text())
    assert (meta["world_size"], meta["strategy"]) == (2, "ddp")  # torchrun started 2 ranks
