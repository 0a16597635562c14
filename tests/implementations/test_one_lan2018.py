"""Paper properties of ONE (Lan et al., 2018), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations._models import build_model
from implementations.mutual_learning.one_lan2018 import ONE, Config, gated_ensemble, one_loss


def test_gated_ensemble_is_the_gate_weighted_sum_of_branches() -> None:
    branches = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]], [[4.0, 4.0]]])  # (m=3, B=1, K=2)
    assert torch.allclose(gated_ensemble(branches, torch.tensor([[0.0, 1.0, 0.0]])), torch.tensor([[0.0, 2.0]]))
    assert torch.allclose(gated_ensemble(branches, torch.tensor([[0.5, 0.25, 0.25]])), torch.tensor([[1.5, 1.5]]))


def test_branches_share_the_trunk_and_each_is_the_target_architecture() -> None:
    torch.manual_seed(0)
    peers = [build_model("cnn1d", 10, (1, 40), width=0.25) for _ in range(3)]
    sizes = [sum(p.numel() for p in stage.parameters()) for stage in peers[0].stages]
    head = sum(p.numel() for p in peers[0].head.parameters())
    single = sum(sizes) + head
    task = ONE(peers, Config(shared_stages=2))
    gate = sum(p.numel() for p in task.gate.parameters())
    # one trunk (stages 1-2), three copies of stage 3 + head, and the gate: Linear(C, m) + BN(m)
    assert sum(p.numel() for p in task.parameters()) == sizes[0] + sizes[1] + 3 * (sizes[2] + head) + gate
    assert gate == (16 * 3 + 3) + 2 * 3
    assert all(sum(p.numel() for p in b.parameters()) == single for b in task.peers)
    assert all(b.trunk is task.trunk for b in task.peers)


def test_the_ensemble_teacher_is_not_moved_by_the_kl_term() -> None:
    torch.manual_seed(0)
    task = ONE([build_model("cnn1d", 10, (1, 40), width=0.25) for _ in range(3)])
    x, y = torch.randn(6, 1, 40), torch.randint(0, 10, (6,))
    logits, gate = task.branch_outputs(x)
    losses = one_loss(logits, gated_ensemble(logits, gate), y, Config())
    sum(v for k, v in losses.items() if k.startswith("kl")).backward()
    assert all(p.grad is None for p in task.gate.parameters())  # the gate is trained only by the ensemble's CE
    assert task.peers[1].head.weight.grad.abs().sum() > 0
    assert set(one_loss(logits.detach(), logits[0].detach(), y, Config(kl_weight=0.0))) == {
        "ce0",
        "ce1",
        "ce2",
        "ce_ens",
    }


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.mutual_learning.one_lan2018 import QUESTION, reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run one_lan2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"alone", "one", "one_ensemble", "one_no_kl", "one_uniform"} <= {row.name for row in result.rows}
    assert result.row("one").params == result.row("alone").params < result.row("one_ensemble").params
    from implementations._measure import beats

    assert result.claim.reproduced == beats(result.row("one").accuracy.values, result.row("alone").accuracy.values)
    assert result.answers[0].question == QUESTION
