"""One rank of the DDP test, launched by `torchrun --nproc-per-node 2 tests/ddp_worker.py OUT` (see test_distributed).

Each rank writes its all-reduced gradient and its final state dicts under OUT; the test compares them with a
single-process run.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, for `implementations`

from implementations._data import TensorData  # noqa: E402
from implementations._distributed import cleanup, init_distributed, shard_indices  # noqa: E402
from implementations._harness import Supervised, fit, seed_everything  # noqa: E402
from implementations._models import build_model  # noqa: E402

WORLD_SIZE = 2
FIT = dict(epochs=2, lr=0.1, batch_size=8, seed=0, progress=False)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Eight 6-dimensional inputs with labels in {0, 1, 2}."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)


def images() -> TensorData:
    """32 random 1x8x8 images in 3 classes (train = test)."""
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 1, 8, 8, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    return TensorData(x, y, x, y, num_classes=3, input_shape=(1, 8, 8))


def mlp_task() -> Supervised:
    """A seeded small MLP classifier."""
    seed_everything(0)
    return Supervised(build_model("mlp", 3, (1, 8, 8), width=0.125))


def main(out: str) -> None:
    torch.set_num_threads(1)
    info = init_distributed("gloo")
    rank = info.rank
    assert info.world_size == WORLD_SIZE and dist.get_backend() == "gloo", (info, dist.get_backend())
    # 1. One DDP step on this rank's half of the batch.
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    x, y = batch()
    idx = shard_indices(len(y), rank, WORLD_SIZE, generator=torch.Generator().manual_seed(0))
    ddp = info.wrap(model)  # keep a reference: the reducer's hooks die with the DDP object
    F.cross_entropy(ddp(x[idx]), y[idx]).backward()
    torch.save({"weight": model.weight.grad, "bias": model.bias.grad, "idx": idx}, f"{out}/grad{rank}.pt")
    del ddp
    # 2. fit() under the process group: an MLP (comparable to one process) and a BN conv net.
    task = mlp_task()
    fit(task, task.parameters(), images(), checkpoint=f"{out}/ckpt{rank}.pt", **FIT)
    seed_everything(0)
    conv = Supervised(build_model("cnn2d", 3, (1, 8, 8), width=0.25))
    fit(conv, conv.parameters(), images(), **FIT)
    torch.save({"mlp": task.state_dict(), "cnn": conv.state_dict()}, f"{out}/state{rank}.pt")
    dist.barrier()  # no rank tears the group down while another still talks to it
    cleanup()
    with open(f"{out}/done{rank}", "w") as f:
        f.write("ok\n")


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalisation: gloo's background threads can still be joinable when C++ static destructors
    # run, which aborts the process ("terminate called without an active exception") after all work is done.
    os._exit(0)
