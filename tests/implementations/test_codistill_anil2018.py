"""Paper properties of codistillation (Anil et al., 2018), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations.mutual_learning.codistill_anil2018 import (
    Codistillation,
    Config,
    churn,
    codistillation_loss,
    shard_ids,
)


def test_shards_are_fixed_per_example_and_balanced() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 1, 40, generator=gen)
    ids = shard_ids(x, 2)
    assert set(ids.tolist()) == {0, 1} and 900 < int((ids == 0).sum()) < 1100
    perm = torch.randperm(2000, generator=gen)
    assert torch.equal(shard_ids(x[perm[:37]], 2), ids[perm[:37]])  # same example, same shard, in any batch
    assert int((shard_ids(x, 3) == 2).sum()) > 500


def test_distillation_term_is_zero_at_the_stale_average_and_pulls_towards_it() -> None:
    a, b = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 0.0, 3.0]])
    assert codistillation_loss(a, [a.clone()]).abs().item() < 1e-7
    student = torch.zeros(1, 3, requires_grad=True)
    codistillation_loss(student, [a, b]).backward()  # gradient = p_student - mean(p_a, p_b)
    expected = torch.softmax(student.detach(), -1) - (torch.softmax(a, -1) + torch.softmax(b, -1)) / 2
    assert torch.allclose(student.grad, expected, atol=1e-6)
    assert churn(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == 50.0


def test_teachers_are_stale_checkpoints_exchanged_every_k_steps_after_burn_in() -> None:
    torch.manual_seed(0)
    peers = [nn.Sequential(nn.Flatten(), nn.Linear(40, 10)) for _ in range(2)]
    task = Codistillation(peers, Config(burn_in=2, refresh_every=3, disjoint_shards=False))
    opt = torch.optim.SGD(task.parameters(), lr=0.5)
    x, y = torch.randn(16, 1, 40), torch.randint(0, 10, (16,))
    snapshots = []
    for step in range(7):
        _, losses = task.forward_train(x, y)
        assert ("distill0" in losses) == (step + 1 > 2)  # off during the burn-in
        snapshots.append(task.stale[1][1].weight.detach().clone())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        if step in (2, 5):  # the next step refreshes: the stale copy is a checkpoint from here on
            live = task.peers[1][1].weight.detach().clone()
    assert torch.equal(snapshots[0], snapshots[1]) and torch.equal(snapshots[1], snapshots[2])
    assert not torch.equal(snapshots[2], snapshots[3]) and torch.equal(snapshots[5], snapshots[4])
    assert torch.equal(snapshots[6], live)
    assert not any(p.requires_grad for p in task.stale[0].parameters())


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.mutual_learning.codistill_anil2018 import QUESTION, reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run codistill_anil2018",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"alone_shard", "codistill", "codistill_same", "alone_all"} == {row.name for row in result.rows}
    assert result.answers[0].question == QUESTION
