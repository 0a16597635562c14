"""One rank of the DDP test, launched by `torchrun --nproc-per-node 2 tests/ddp_worker.py OUT` (see test_distributed).

Each rank writes its all-reduced gradient and its final state dicts under OUT; the test compares them with a
single-process run. Then each rank runs `kb run kd_hinton2015 --full` on tiny CIFAR-100 files in OUT/data (what
`torchrun -m kb.cli run ...` does, without starting the processes a second time) and records its exit code and
output. `write_tiny_cifar100` also serves the single-process full-profile tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
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
#: `kb run` arguments of a paper-scale run shrunk to seconds: one seed, one epoch, 8 training images.
TINY_FULL = ["--full", "--seeds", "0", "--epoch-scale", "0.004", "--n-train", "8", "--device", "cpu"]


def write_tiny_cifar100(root: Path, n_train: int = 16, n_test: int = 8) -> Path:
    """CIFAR-100's on-disk "python version" (pickled `train`/`test` dicts of uint8 rows) with random images."""
    base = Path(root) / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)  # (n, 3072), CHW rows
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": [i % 100 for i in range(n)], "batch_label": b"x"}, f)
    return Path(root)


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
    dist.barrier()
    # 3. `kb run` under torchrun: it reuses the process group, and tears it down at the end.
    from kb.cli import main as kb_main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = kb_main(["run", "kd_hinton2015", *TINY_FULL, "--data-dir", f"{out}/data", "--results-dir",
                        f"{out}/results", "--checkpoint-dir", f"{out}/checkpoints"])
    with open(f"{out}/kb{rank}.json", "w") as f:
        json.dump({"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}, f)
    cleanup()  # a no-op: `kb run` already left the group
    with open(f"{out}/done{rank}", "w") as f:
        f.write("ok\n")


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalisation: gloo's background threads can still be joinable when C++ static destructors
    # run, which aborts the process ("terminate called without an active exception") after all work is done.
    os._exit(0)
