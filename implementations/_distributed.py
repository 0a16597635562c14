r"""Data-parallel training through `torch.distributed` (DDP), for `torchrun --nproc-per-node N`.

Each of the $R$ ranks holds a full copy of the task and a disjoint shard of every epoch's permutation of the
tensor data (the `DistributedSampler` rule: pad the permutation by wrapping around to a multiple of $R$, then rank
$r$ takes positions $r, r + R, r + 2R, \dots$). DDP averages the gradients over ranks, so with equal shard sizes
one step on a global batch $\mathcal{B} = \bigcup_r \mathcal{B}_r$ uses

$$
\bar g = \frac{1}{R} \sum_{r=1}^{R} \frac{1}{|\mathcal{B}_r|} \sum_{i \in \mathcal{B}_r} \nabla \ell_i
       = \frac{1}{|\mathcal{B}|} \sum_{i \in \mathcal{B}} \nabla \ell_i,
$$

the single-process full-batch gradient. Only rank 0 writes checkpoints and results (`is_main_process()`).

Usage: `torchrun --nproc-per-node 2 script.py`, where the script calls `init_distributed()` before `fit()`;
`fit()` picks up the process group by itself. `kb run` does this for a whole reproduction:
`torchrun --nproc-per-node 2 -m kb.cli run kd_hinton2015 --full --data-dir ~/data` (see `_runner.run_paper`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistInfo",
    "TrainStep",
    "barrier",
    "cleanup",
    "get_dist_info",
    "init_distributed",
    "is_main_process",
    "shard_indices",
    "sync_buffers",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the process group."""

    rank: int = 0  # global rank $r$
    world_size: int = 1  # number of processes $R$
    local_rank: int = 0  # rank on this machine (selects the GPU)

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files."""
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """Wrap `module` in `DistributedDataParallel` (on this rank's GPU when the module lives on CUDA)."""
        param = next(module.parameters())
        device_ids = [param.device.index] if param.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


class TrainStep(nn.Module):
    """Expose `task.forward_train` as `forward`, so that DDP (and `torch.compile`) can wrap it."""

    def __init__(self, task: nn.Module) -> None:
        super().__init__()
        self.task = task

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """`task.forward_train(x, y)`."""
        return self.task.forward_train(x, y)


def get_dist_info() -> DistInfo:
    """The current rank and world size; `DistInfo()` (rank 0 of 1) when no process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
    `MASTER_ADDR`, `MASTER_PORT`).

    Without those variables (a plain `python script.py`) nothing is initialised and rank 0 of 1 is returned.

    Args:
        backend: `"nccl"` or `"gloo"`; default NCCL when CUDA is available, else gloo.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend, init_method="env://")
    return get_dist_info()


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    if get_dist_info().world_size > 1:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True unless this is a non-zero rank of an initialised process group."""
    return get_dist_info().is_main


def sync_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BN running statistics) to every rank; a no-op without a process group.

    DDP broadcasts buffers at the start of each forward pass, so after the last step each rank still holds the
    statistics of its own last shard; `fit()` calls this at the end so all ranks hold identical state dicts.
    """
    if get_dist_info().world_size > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src)


def shard_indices(n: int, rank: int, world_size: int, generator: torch.Generator | None = None) -> Tensor:
    """This rank's share of a random permutation of `range(n)`, as `DistributedSampler` builds it.

    Args:
        n: Number of examples $N$.
        rank: Rank $r$.
        world_size: Number of ranks $R$; with $R = 1$ this is just the permutation.
        generator: CPU generator; every rank must seed it identically (e.g. `epoch_generator(seed, epoch)`).

    Returns:
        Indices, shape `(ceil(N / R),)`, on the CPU.
    """
    order = torch.randperm(n, generator=generator)  # (N,), identical on every rank
    if world_size == 1:
        return order
    total = -(-n // world_size) * world_size
    # Pad by wrapping around so every rank gets the same number of batches (DDP needs matching collectives).
    order = order.repeat(-(-total // n))[:total]
    return order[rank:total:world_size]
