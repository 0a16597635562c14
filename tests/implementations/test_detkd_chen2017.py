"""Paper properties of detection distillation (Chen et al., 2017) on the toy 1-D detector, and the quick run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation.detkd_chen2017 import (
    Config,
    DetectionKD,
    Detector1d,
    bounded_regression_loss,
    detection_accuracy,
    make_signals,
    weighted_soft_cross_entropy,
)


def test_bounded_regression_is_active_only_while_the_student_is_worse_than_the_teacher() -> None:
    target = torch.zeros(3, 2)
    teacher = torch.tensor([[0.5, 0.0], [0.5, 0.0], [3.0, 0.0]])  # squared errors 0.25, 0.25, 9
    student = torch.tensor([[1.0, 0.0], [0.2, 0.0], [1.0, 1.0]])  # squared errors 1, 0.04, 2
    # Only anchor 0 is worse than its teacher: (1 + 0 + 0) / M with M = 3.
    assert bounded_regression_loss(student, teacher, target).item() == pytest.approx(1 / 3)
    # A margin m = 0.3 switches anchor 1 on as well (0.04 + 0.3 > 0.25).
    assert bounded_regression_loss(student, teacher, target, margin=0.3).item() == pytest.approx(1.04 / 3)
    student.requires_grad_(True)
    bounded_regression_loss(student, teacher, target).backward()
    assert torch.allclose(student.grad[1:], torch.zeros(2, 2)) and student.grad[0, 0] == pytest.approx(2 / 3)


def test_background_weight_scales_only_the_background_term() -> None:
    student = torch.tensor([[0.2, 1.0, -0.5], [1.5, 0.0, 0.3]])
    teacher = torch.tensor([[4.0, 0.0, 1.0], [-1.0, 2.0, 0.5]])
    log_p_s = F.log_softmax(student, dim=-1)
    p_t = F.softmax(teacher, dim=-1)
    background = -(p_t[:, 0] * log_p_s[:, 0]).mean()
    plain = weighted_soft_cross_entropy(student, teacher, background_weight=1.0)
    assert torch.allclose(plain, -(p_t * log_p_s).sum(-1).mean())
    assert torch.allclose(weighted_soft_cross_entropy(student, teacher, 1.5), plain + 0.5 * background)


class _Oracle(nn.Module):
    """Outputs the ground-truth anchors as logits and boxes, whatever the input."""

    def __init__(self, targets: Tensor) -> None:
        super().__init__()
        self.targets = targets

    def forward(self, x: Tensor) -> Tensor:
        logits = 20.0 * F.one_hot(self.targets[..., 0].long(), 11).float()  # (B, A, 11)
        return torch.cat([logits, self.targets[..., 1:]], dim=-1)


def test_signals_have_one_positive_anchor_whose_targets_decode_to_the_true_box() -> None:
    gen = torch.Generator().manual_seed(0)
    digits, labels = torch.randn(20, 1, 40, generator=gen), torch.arange(20) % 10
    x, y, boxes, digit = make_signals(digits, labels, 50, gen)
    assert x.shape == (50, 1, 64) and y.shape == (50, 8, 3)
    assert torch.equal((y[..., 0] > 0).sum(1), torch.ones(50, dtype=torch.long))
    assert torch.equal(y[..., 0].max(1).values.long(), digit + 1)
    assert y[..., 1].abs().max() <= 0.5 + 1e-6  # the centre lies in its own cell
    assert detection_accuracy(_Oracle(y), x, boxes, digit) == 100.0
    wrong = y.clone()
    wrong[..., 1] = torch.where(y[..., 0] > 0, y[..., 1] + 4.0, y[..., 1])  # centres shifted by 32 samples
    assert detection_accuracy(_Oracle(wrong), x, boxes, digit) == 0.0


def test_terms_follow_the_config_and_the_detector_layout() -> None:
    torch.manual_seed(0)
    teacher, student = Detector1d(10, (8, 16, 16)).eval(), Detector1d(10, (4, 8, 8))
    x = torch.randn(3, 1, 64)
    y = torch.zeros(3, 8, 3)
    y[:, 2, 0], y[:, 2, 1:] = 4.0, 0.1
    assert student(x).shape == (3, 8, 13)
    off = Config(use_soft=False, use_bounded=False, use_hint=False)
    _, losses = DetectionKD(student, teacher, off).forward_train(x, y)
    assert set(losses) == {"cls_hard", "reg"}
    out = student(x)
    assert torch.allclose(
        losses["cls_hard"], F.cross_entropy(out[..., :11].reshape(-1, 11), y[..., 0].long().flatten())
    )
    task = DetectionKD(student, teacher, Config(), in_shape=(1, 64))
    assert task.adapt.in_channels == 8 and task.adapt.out_channels == 16
    _, losses = task.forward_train(x, y)
    assert set(losses) == {"cls_hard", "cls_soft", "reg", "bounded", "hint"}
    # Classification-only batches (one region per input, integer labels): no regression terms.
    _, cls_only = DetectionKD(nn.Linear(4, 5), nn.Linear(4, 5), Config(use_hint=False)).forward_train(
        torch.randn(6, 4), torch.arange(6) % 5
    )
    assert set(cls_only) == {"cls_hard", "cls_soft"}


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.distillation.detkd_chen2017 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run detkd_chen2017 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    m = {row.name: row.accuracy.mean for row in result.rows}
    assert {"student", "hint", "soft", "bounded", "full", "poor_bounded", "poor_imitation"} <= set(m)
    assert result.claim.reproduced == (m["full"] > m["student"])
    assert result.row("teacher").flops > result.row("student").flops
