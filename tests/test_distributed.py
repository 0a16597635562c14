"""DDP on CPU: two gloo processes launched by torchrun average to the full-batch gradient and end with identical
weights, and `kb run <id> --full` runs under them with one results file written by rank 0 (the ranks run
`tests/ddp_worker.py`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ddp_worker import FIT, WORLD_SIZE, batch, images, mlp_task, write_tiny_cifar100
from torch import nn

from implementations._distributed import shard_indices
from implementations._harness import fit
from kb.results import load_result

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    write_tiny_cifar100(out / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISTRIBUTED_DEBUG": "OFF", "KB_ROOT": str(ROOT)}
    if "lo" in {name for _, name in socket.if_nameindex()}:
        env["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo on the loopback device, whatever the host name resolves to
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={WORLD_SIZE}", "--nnodes=1",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", str(WORKER), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    log = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"torchrun exited {proc.returncode}:\n{log}"
    for r in range(WORLD_SIZE):
        assert (out / f"done{r}").is_file(), f"rank {r} did not finish:\n{log}"
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


def test_kb_run_under_torchrun_writes_once_from_rank_0(ranks: Path) -> None:
    logs = [json.loads((ranks / f"kb{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert [log["code"] for log in logs] == [0] * WORLD_SIZE, logs
    assert "kb run: wrote" in logs[0]["stdout"] and "kb run [1/1]" in logs[0]["stderr"]
    assert logs[1]["stdout"] == "" and "kb " not in logs[1]["stderr"]  # rank 1 neither writes nor talks
    result = load_result(ranks / "results" / "kd_hinton2015.json")
    assert result.profile == "full" and result.protocol.dataset == "cifar100" and result.protocol.n_train == 8
    assert result.command.startswith(f"torchrun --nproc-per-node {WORLD_SIZE} -m kb.cli run kd_hinton2015 --full")
    assert f"{WORLD_SIZE} processes" in result.environment.device
    assert sorted(p.name for p in (ranks / "results").rglob("*")) == [
        "figures", "kd_hinton2015.json", "kd_hinton2015_accuracy.png"]  # no temporary files from a second writer
    assert not (ranks / "checkpoints" / "kd_hinton2015").exists()  # a finished run removes its checkpoints
