"""docker/entrypoint.sh in dry-run mode: the launch command it would exec for each environment."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
BASH = shutil.which("bash") or "/bin/bash"
PRETRAIN = ["pretrain", "--config", "configs/paper/dinov2_vitl16.yaml", "train.strategy=fsdp2"]


@pytest.fixture()
def bin_dir(tmp_path: Path) -> Path:
    """A PATH with only the tools the entrypoint needs (no scontrol, no nvidia-smi)."""
    d = tmp_path / "bin"
    d.mkdir()
    for tool in ("head", "grep"):
        (d / tool).symlink_to(shutil.which(tool))
    return d


def entry(args: list[str], env: dict[str, str], path: Path, dry: bool = True):
    full_env = {"PATH": str(path), **env}
    if dry:
        full_env["EQUIRECON_DRY_RUN"] = "1"
    return subprocess.run(
        [BASH, str(ENTRYPOINT), *args], env=full_env, capture_output=True, text=True, timeout=30
    )


def parse(out: str) -> tuple[dict[str, str], list[str]]:
    """(printed environment, command) of a dry run."""
    env: dict[str, str] = {}
    cmd: list[str] = []
    for line in out.splitlines():
        if line.startswith("exec "):
            cmd = shlex.split(line[len("exec ") :])
        elif "=" in line:
            k, v = line.split("=", 1)
            env[k] = v
    return env, cmd


def run_ok(args, env, path):
    r = entry(args, env, path)
    assert r.returncode == 0, r.stderr
    return parse(r.stdout)


SLURM_TWO_NODES = {
    "SLURM_JOB_ID": "4242",
    "SLURM_PROCID": "1",
    "SLURM_NODEID": "1",
    "SLURM_LOCALID": "0",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS": "2",
    "SLURM_JOB_NODELIST": "gpu[003-004]",
    "SLURM_GPUS_ON_NODE": "8",
    "NCCL_SOCKET_IFNAME": "ib0",
    "NCCL_DEBUG": "WARN",
}


def test_slurm_one_container_per_node_runs_torchrun(bin_dir):
    env, cmd = run_ok(PRETRAIN, SLURM_TWO_NODES, bin_dir)
    assert env["mode"] == "node"
    assert cmd == [
        "torchrun",
        "--nnodes=2",
        "--nproc_per_node=8",
        "--node_rank=1",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=gpu003:29742",  # first host; 29500 + job id % 1000
        "--rdzv_id=4242",
        "-m",
        "equirecon",
        *PRETRAIN,
    ]
    assert env["MASTER_ADDR"] == "gpu003" and env["MASTER_PORT"] == "29742"
    # NCCL settings reach the launcher; torchrun forwards the preemption signals to the workers.
    assert env["NCCL_SOCKET_IFNAME"] == "ib0" and env["NCCL_DEBUG"] == "WARN"
    assert "SIGUSR2" in env["PET_SIGNALS_TO_HANDLE"].split(",")


def test_slurm_step_variables_win_and_explicit_settings_are_kept(bin_dir):
    env = {
        **SLURM_TWO_NODES,
        "SLURM_NNODES": "4",  # the job has 4 nodes, the step uses 2
        "SLURM_NTASKS": "4",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_NODELIST": "a100-n[12,15]",
        "MASTER_PORT": "12345",
        "GPUS_PER_NODE": "4",
    }
    out, cmd = run_ok(["equirecon", *PRETRAIN], env, bin_dir)
    assert "--nnodes=2" in cmd and "--nproc_per_node=4" in cmd
    assert "--rdzv_endpoint=a100-n12:12345" in cmd
    assert cmd[-len(PRETRAIN) :] == PRETRAIN


def test_static_rendezvous(bin_dir):
    env, cmd = run_ok(PRETRAIN, {**SLURM_TWO_NODES, "EQUIRECON_RDZV_BACKEND": "static"}, bin_dir)
    assert "--node_rank=1" in cmd and "--master_addr=gpu003" in cmd
    assert not any(a.startswith("--rdzv") for a in cmd)


def test_slurm_one_task_per_gpu_sets_ranks_without_torchrun(bin_dir):
    env = {
        **SLURM_TWO_NODES,
        "SLURM_NTASKS": "16",
        "SLURM_NTASKS_PER_NODE": "8",
        "SLURM_PROCID": "9",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "node7,node9",
    }
    out, cmd = run_ok(PRETRAIN, env, bin_dir)
    assert out["mode"] == "task"
    assert cmd == ["equirecon", *PRETRAIN]
    assert (out["RANK"], out["WORLD_SIZE"], out["LOCAL_RANK"], out["LOCAL_WORLD_SIZE"]) == (
        "9",
        "16",
        "1",
        "8",
    )
    assert out["MASTER_ADDR"] == "node7"


def test_inside_torchrun_the_environment_is_used_as_is(bin_dir):
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.1.2.3"}
    env.update({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0"})  # even inside a Slurm job
    out, cmd = run_ok(PRETRAIN, env, bin_dir)
    assert out["mode"] == "env" and cmd == ["equirecon", *PRETRAIN]
    assert out["RANK"] == "3" and out["MASTER_ADDR"] == "10.1.2.3"


def test_plain_docker_run_on_each_node(bin_dir):
    env = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "GPUS_PER_NODE": "4"}
    out, cmd = run_ok(PRETRAIN, env, bin_dir)
    assert out["mode"] == "torchrun"
    assert cmd[:7] == [
        "torchrun",
        "--nnodes=2",
        "--nproc_per_node=4",
        "--node_rank=1",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=10.0.0.1:29500",
        "--rdzv_id=equirecon",
    ]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"NNODES": "2", "NODE_RANK": "0"}, "needs MASTER_ADDR"),
        ({"NNODES": "2", "MASTER_ADDR": "h"}, "needs NODE_RANK"),
        ({"NNODES": "1", "GPUS_PER_NODE": "zero"}, "GPUS_PER_NODE must be a positive integer"),
        ({"EQUIRECON_LAUNCHER": "mpi"}, "EQUIRECON_LAUNCHER must be"),
        ({"SLURM_JOB_ID": "5", "SLURM_PROCID": "0", "SLURM_NNODES": "1"}, "set MASTER_ADDR"),
    ],
)
def test_clear_errors(bin_dir, env, message):
    r = entry(PRETRAIN, env, bin_dir)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_single_process_and_other_commands(bin_dir):
    out, cmd = run_ok(PRETRAIN, {}, bin_dir)
    assert out["mode"] == "single" and cmd == ["equirecon", *PRETRAIN]
    out, cmd = run_ok(["data", "build-demo", "--out", "/d"], SLURM_TWO_NODES, bin_dir)
    assert out["mode"] == "direct" and cmd == ["equirecon", "data", "build-demo", "--out", "/d"]
    _, cmd = run_ok(["torchrun", "--standalone", "-m", "equirecon", "pretrain"], {}, bin_dir)
    assert cmd == ["torchrun", "--standalone", "-m", "equirecon", "pretrain"]
    _, cmd = run_ok([], {}, bin_dir)
    assert cmd == ["equirecon", "--help"]


@pytest.mark.parametrize(
    "nodelist, first",
    [
        ("node1", "node1"),
        ("node1,node2", "node1"),
        ("gpu[010,012-014]", "gpu010"),
        ("gpu[7-8],cpu1", "gpu7"),
        ("rack1-n[07-08]", "rack1-n07"),
        ("a[1-2]b,c", "a1"),  # Slurm allows a suffix only in rare setups; prefix+first is used
    ],
)
def test_first_host_of_a_node_list(bin_dir, nodelist, first):
    env = {"SLURM_JOB_ID": "1", "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": nodelist}
    out, _ = run_ok(PRETRAIN, env, bin_dir)
    assert out["MASTER_ADDR"] == first


def test_scontrol_is_used_when_present(bin_dir):
    fake = bin_dir / "scontrol"
    fake.write_text('#!/bin/bash\n[[ "$1 $2" == "show hostnames" ]] && printf "x9\\nx10\\n"\n')
    fake.chmod(0o755)
    env = {"SLURM_JOB_ID": "1", "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "x[9-10]"}
    out, _ = run_ok(PRETRAIN, env, bin_dir)
    assert out["MASTER_ADDR"] == "x9"


def test_exec_passes_the_environment_and_arguments_through(tmp_path):
    """Not a dry run: the command is exec'd with the caller's environment (NCCL_* included)."""
    env = {**os.environ, "NCCL_IB_HCA": "mlx5_0", "SLURM_JOB_ID": "3"}
    env.pop("EQUIRECON_DRY_RUN", None)
    r = subprocess.run(
        [BASH, str(ENTRYPOINT), "bash", "-c", 'echo "$NCCL_IB_HCA $SLURM_JOB_ID $0"', "a b"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "mlx5_0 3 a b"
