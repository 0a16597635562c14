"""DDP on CPU: two gloo processes average to the full-batch gradient and end with identical weights."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from implementations._data import TensorData
from implementations._distributed import cleanup, init_distributed, shard_indices
from implementations._harness import Supervised, fit, seed_everything
from implementations._models import build_model

WORLD_SIZE = 2


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)


def images() -> TensorData:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 1, 8, 8, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    return TensorData(x, y, x, y, num_classes=3, input_shape=(1, 8, 8))


def mlp_task() -> Supervised:
    seed_everything(0)
    return Supervised(build_model("mlp", 3, (1, 8, 8), width=0.125))


FIT = dict(epochs=2, lr=0.1, batch_size=8, seed=0, progress=False)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    info = init_distributed("gloo")
    assert (info.rank, info.world_size) == (rank, WORLD_SIZE) and dist.get_backend() == "gloo"
    # 1. One DDP step on this rank's half of the batch.
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    x, y = batch()
    idx = shard_indices(len(y), rank, WORLD_SIZE, generator=torch.Generator().manual_seed(0))
    ddp = info.wrap(model)  # keep a reference: the reducer's hooks die with the DDP object
    F.cross_entropy(ddp(x[idx]), y[idx]).backward()
    torch.save({"weight": model.weight.grad, "bias": model.bias.grad, "idx": idx}, f"{out}/grad{rank}.pt")
    # 2. fit() under the process group: an MLP (comparable to one process) and a BN conv net.
    task = mlp_task()
    fit(task, task.parameters(), images(), checkpoint=f"{out}/ckpt{rank}.pt", **FIT)
    seed_everything(0)
    conv = Supervised(build_model("cnn2d", 3, (1, 8, 8), width=0.25))
    fit(conv, conv.parameters(), images(), **FIT)
    torch.save({"mlp": task.state_dict(), "cnn": conv.state_dict()}, f"{out}/state{rank}.pt")
    cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD_SIZE, join=True)
    return out


def test_shards_partition_the_permutation() -> None:
    shards = [shard_indices(10, r, 3, generator=torch.Generator().manual_seed(4)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded from 10 to 12 by wrapping around
    assert set(torch.cat(shards).tolist()) == set(range(10))
    assert torch.equal(
        shard_indices(10, 0, 1, generator=torch.Generator().manual_seed(4)),
        torch.randperm(10, generator=torch.Generator().manual_seed(4)),
    )


def test_averaged_gradient_equals_full_batch_gradient(ranks: Path) -> None:
    grads = [torch.load(ranks / f"grad{r}.pt") for r in range(WORLD_SIZE)]
    assert sorted(torch.cat([g["idx"] for g in grads]).tolist()) == list(range(8))  # disjoint halves
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    for g in grads:  # every rank holds the all-reduced average, which is the full-batch mean gradient
        assert torch.allclose(g["weight"], model.weight.grad, atol=1e-6)
        assert torch.allclose(g["bias"], model.bias.grad, atol=1e-6)


def test_ranks_end_identical_and_match_one_process(ranks: Path) -> None:
    states = [torch.load(ranks / f"state{r}.pt") for r in range(WORLD_SIZE)]
    for key in ("mlp", "cnn"):  # parameters and BN buffers
        assert all(torch.equal(states[0][key][k], states[1][key][k]) for k in states[0][key])
    # Rank r takes positions r, r+2, ... of the epoch permutation, so the two local batches of 4 together are
    # exactly the single-process batch of 8: the whole run matches one process (up to float summation order).
    single = mlp_task()
    fit(single, single.parameters(), images(), **FIT)
    assert all(torch.allclose(v, states[0]["mlp"][k], atol=1e-5) for k, v in single.state_dict().items())
    assert (ranks / "ckpt0.pt").is_file() and not (ranks / "ckpt1.pt").exists()  # only rank 0 writes
