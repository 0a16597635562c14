"""Paper properties of Feature Fusion Learning (Kim et al., 2020), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations._models import build_model
from implementations.mutual_learning.ffl_kim2020 import FFL, ffl_loss


def test_kl_terms_vanish_when_everyone_agrees() -> None:
    z = torch.randn(4, 10)
    losses = ffl_loss([z.clone(), z.clone()], z.clone(), torch.tensor([0, 1, 2, 3]), temperature=3.0)
    assert all(losses[k].abs().item() < 1e-6 for k in ("kl0", "kl1", "kl_fused"))
    losses = ffl_loss([z, z + torch.randn(4, 10)], z, torch.tensor([0, 1, 2, 3]), temperature=3.0)
    assert losses["kl1"].item() > 1e-3 and losses["kl_fused"].item() > 1e-4


def test_knowledge_flows_ensemble_to_fused_and_fused_to_subnetworks() -> None:
    subs = [torch.randn(4, 10, requires_grad=True) for _ in range(2)]
    fused = torch.randn(4, 10, requires_grad=True)
    losses = ffl_loss(subs, fused, torch.tensor([0, 1, 2, 3]), temperature=3.0)
    losses["kl_fused"].backward(retain_graph=True)  # the ensemble teaches: only the fused logits move
    assert fused.grad.abs().sum() > 0 and all(s.grad is None for s in subs)
    fused.grad = None
    (losses["kl0"] + losses["kl1"]).backward()  # the fused classifier teaches: only the sub-networks move
    assert fused.grad is None and all(s.grad.abs().sum() > 0 for s in subs)


def test_fusion_accepts_subnetworks_of_different_widths() -> None:
    torch.manual_seed(0)
    subs = [build_model("cnn1d", 10, (1, 40), width=0.5), build_model("cnn1d", 10, (1, 40), width=0.25)]
    task = FFL(subs)
    first = task.fusion.fuse[0]
    assert first.in_channels == 32 + 16 and first.groups == 48  # depthwise over the concatenated maps
    assert task.fusion.classifier.in_features == 32 * 5  # widest sub-network's channels x 5 positions
    x, y = torch.randn(3, 1, 40), torch.tensor([1, 2, 3])
    fused, losses = task.forward_train(x, y)
    assert fused.shape == (3, 10)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in task.parameters())


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.mutual_learning.ffl_kim2020 import QUESTION, reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run ffl_kim2020 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"alone0", "alone1", "ensemble_alone", "ffl0", "ffl1", "ffl_fused"} <= {row.name for row in result.rows}
    assert result.row("ffl_fused").params > result.row("ensemble_alone").params
    assert result.answers[0].question == QUESTION
