"""torch.distributed setup from the environment (torchrun, Slurm via submitit, or single process),
and the collectives the training loop and the checkpointer use (identities without a process group).

Here, not in `launch`, because pretraining itself needs it; `launch` only sets up the environment
(e.g. `launch.slurm.export_slurm_dist_env`) that `init_distributed` reads."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str | None = None) -> DistInfo:
    """Initialize the default process group when launched by torchrun/Slurm (WORLD_SIZE > 1).

    NCCL when CUDA is available, gloo otherwise. Without a launcher this is a no-op returning
    rank 0 of 1. Calling it twice returns the existing setup.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    # One GPU per task where the cluster binds GPUs to tasks (only cuda:0 visible), else
    # cuda:LOCAL_RANK among the node's GPUs.
    index = local_rank % max(torch.cuda.device_count(), 1) if cuda else 0
    device = torch.device("cuda", index) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if cuda else "gloo"))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


# What gloo and NCCL say when the other end of a collective is gone (its process died).
_PEER_LOST = (
    "connection reset by peer",
    "connection closed by peer",
    "broken pipe",
    "connection refused",
    "communicator was aborted",
    "remote process exited",
)


def peer_lost_reason(err: BaseException) -> str | None:
    """The backend's one-line reason when `err` says another rank of the collective is gone
    (gloo's "Connection reset/closed by peer", NCCL's aborted communicator), else None. Only
    meaningful inside a multi-process world."""
    if not is_initialized() or dist.get_world_size() < 2:
        return None
    text = str(err)
    lowered = text.lower()
    if isinstance(err, dist.DistNetworkError) or any(m in lowered for m in _PEER_LOST):
        line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(err).__name__)
        # gloo prefixes its source position ("[.../pair.cc:545] Read error ..."): drop it
        if line.startswith("[") and "] " in line:
            line = line.split("] ", 1)[1]
        return line.split(". ")[0][:200]
    return None


def is_initialized() -> bool:
    """True when a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    return dist.get_rank() if is_initialized() else 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (identity without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def all_reduce_min(values: torch.Tensor) -> torch.Tensor:
    """Element-wise minimum over ranks (identity without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return values


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
