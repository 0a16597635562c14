"""Paper properties of attention transfer (Zagoruyko & Komodakis, 2017), and the quick reproduction."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from implementations.distillation.at_zagoruyko2017 import AT, Config, at_loss, attention_map


def test_attention_map_is_normalised_channel_sum_of_powers() -> None:
    feature = torch.tensor([[[1.0, -2.0, 0.0], [1.0, 0.0, 2.0]]])  # (B=1, C=2, L=3)
    # F^2_sum = (1 + 1, 4 + 0, 0 + 4) = (2, 4, 4), norm 6
    assert torch.allclose(attention_map(feature, p=2.0), torch.tensor([[2 / 6, 4 / 6, 4 / 6]]))
    # p = 1: (2, 2, 2) / sqrt(12)
    assert torch.allclose(attention_map(feature, p=1.0), torch.full((1, 3), 2 / math.sqrt(12)))
    images = torch.randn(2, 5, 4, 4)
    assert attention_map(images).shape == (2, 16)
    assert torch.allclose(attention_map(images).norm(dim=1), torch.ones(2))


def test_loss_ignores_scale_and_channel_count_but_not_spatial_layout() -> None:
    torch.manual_seed(0)
    student = torch.randn(3, 4, 10)
    wider = torch.cat([student, student], dim=1) * 7.0  # 2x channels, same attention map
    assert at_loss(student, wider).item() < 1e-12
    other = torch.randn(3, 8, 10)
    diff = attention_map(student) - attention_map(other)
    assert at_loss(student, other).item() == pytest.approx(diff.pow(2).mean().item(), rel=1e-6)
    assert at_loss(student, other, reduction="norm").item() == pytest.approx(diff.norm(dim=1).mean().item(), rel=1e-6)
    assert at_loss(student, other).item() > 1e-4


class _TwoStage(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv1d(1, width, 3, padding=1), nn.Conv1d(width, width, 3, padding=1)
        self.head = nn.Linear(width * 6, 4)

    def forward(self, x, return_features=False):
        f1 = torch.relu(self.a(x))
        f2 = torch.relu(self.b(f1))
        logits = self.head(f2.flatten(1))
        return (logits, [f1, f2]) if return_features else logits


def test_transfer_term_is_beta_half_sum_over_stages_and_ce_weight_follows_kd_alpha() -> None:
    torch.manual_seed(0)
    student, teacher = _TwoStage(2), _TwoStage(5)
    x, y = torch.randn(4, 1, 6), torch.tensor([0, 1, 2, 3])
    _, losses = AT(student, teacher, Config(beta=10.0)).forward_train(x, y)
    (_, fs), (_, ft) = student(x, True), teacher(x, True)
    expected = 5.0 * (at_loss(fs[0], ft[0]) + at_loss(fs[1], ft[1]))
    assert torch.allclose(losses["at"], expected) and set(losses) == {"ce", "at"}
    _, with_kd = AT(student, teacher, Config(kd_alpha=0.9)).forward_train(x, y)
    assert set(with_kd) == {"ce", "at", "kd"}
    assert torch.allclose(with_kd["ce"], 0.1 * nn.functional.cross_entropy(student(x), y))


def test_reference_positions_rescale_each_stage_to_the_papers_map_size() -> None:
    # Both stages have 6 positions; with N_ref = (24, 3) the terms are scaled by 6/24 and 6/3.
    torch.manual_seed(0)
    student, teacher = _TwoStage(2), _TwoStage(5)
    x, y = torch.randn(4, 1, 6), torch.tensor([0, 1, 2, 3])
    _, losses = AT(student, teacher, Config(beta=10.0, reference_positions=(24, 3))).forward_train(x, y)
    (_, fs), (_, ft) = student(x, True), teacher(x, True)
    expected = 5.0 * (0.25 * at_loss(fs[0], ft[0]) + 2.0 * at_loss(fs[1], ft[1]))
    assert torch.allclose(losses["at"], expected)
    # beta * mean-square at the reference size = beta / N_ref * squared distance of the unit-norm maps
    diff = attention_map(fs[1]) - attention_map(ft[1])
    assert torch.allclose((6 / 3) * at_loss(fs[1], ft[1]), diff.pow(2).sum(1).mean() / 3)
    with pytest.raises(ValueError):
        AT(student, teacher, Config(reference_positions=(3,))).forward_train(x, y)


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    # MNIST-1D comes from the user cache (generated once, offline, when missing).
    from implementations._runner import make_context
    from implementations.distillation.at_zagoruyko2017 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run at_zagoruyko2017 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    m = {row.name: row.accuracy.mean for row in result.rows}
    assert {"teacher", "student", "student_kd", "student_at", "student_at_kd", "student_fitnet"} <= set(m)
    assert result.claim.reproduced == (m["student_at"] > m["student"])
    assert len(result.answers) == 2
