"""Paper properties of Subclass Distillation (Müller et al., 2020), and the quick reproduction."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from implementations._models import build_model
from implementations.distillation._base import smoke_task
from implementations.distillation.subclass_muller2020 import (
    Config,
    SubclassDistillation,
    auxiliary_loss,
    class_logits,
)


def test_class_probability_is_the_sum_of_its_subclass_probabilities() -> None:
    # s = 2: subclass probabilities (1, 3 | 2, 2) / 8 -> class probabilities (4/8, 4/8); logits ln 4, ln 4.
    sub = torch.log(torch.tensor([[1.0, 3.0, 2.0, 2.0]]))
    assert torch.allclose(class_logits(sub, 2), torch.log(torch.tensor([[4.0, 4.0]])))
    z = torch.randn(5, 12)
    summed = z.softmax(-1).view(5, 3, 4).sum(-1)  # C = 3 classes of s = 4 subclasses
    assert torch.allclose(class_logits(z, 4).softmax(-1), summed, atol=1e-6)


def test_auxiliary_loss_values() -> None:
    n = 8
    # Identical subclass logits across the batch normalise to v = 0: every example looks the same, loss = ln N.
    same = torch.randn(1, 6).repeat(n, 1)
    assert math.isclose(auxiliary_loss(same).item(), math.log(n), rel_tol=1e-5)
    # The batch normalisation makes the loss invariant to a per-subclass shift and positive scale of the logits.
    z = torch.randn(n, 6)
    scale, shift = torch.rand(1, 6) + 0.5, torch.randn(1, 6)
    assert torch.allclose(auxiliary_loss(z), auxiliary_loss(z * scale + shift), atol=1e-4)
    # One-hot rows (N = 8) normalise to sqrt(7) on the own entry and -1/sqrt(7) elsewhere: v_n.v_n = 8 and
    # v_n.v_m = -8/7, so the loss is ln(1 + 7 exp(-(64/7) / T_a)).
    for temperature in (1.0, 2.0, 4.0):
        expected = math.log(1 + 7 * math.exp(-64 / 7 / temperature))
        assert math.isclose(auxiliary_loss(torch.eye(n), temperature).item(), expected, rel_tol=1e-3)


def test_heads_are_expanded_and_identical_models_give_zero_kd() -> None:
    torch.manual_seed(0)
    teacher = build_model("cnn1d", 10, (1, 40), width=0.25)  # already 2 x 5 subclass logits
    student = build_model("cnn1d", 2, (1, 40), width=0.25)  # a binary head, expanded to 2 x 5
    task = SubclassDistillation(student, teacher, Config(num_classes=2, subclasses=5))
    assert student.head.out_features == 10 and teacher.head.out_features == 10
    student.load_state_dict(teacher.state_dict())
    x, y = torch.randn(6, 1, 40), torch.randint(0, 2, (6,))
    task.eval()
    logits, losses = task.forward_train(x, y)
    assert logits.shape == (6, 2) and losses["kd"].abs().item() < 1e-6
    assert torch.allclose(task(x), class_logits(teacher(x), 5))
    # The smoke task's 10-class models become 10 x 5 subclass models.
    smoke, images, _ = smoke_task(SubclassDistillation)
    assert smoke.student.head.out_features == 50 and smoke(images).shape == (8, 10)
    with pytest.raises(ValueError, match="teacher's head has 7 outputs"):
        SubclassDistillation(build_model("cnn1d", 3, (1, 40)), build_model("cnn1d", 7, (1, 40)))
    # A class-only teacher has no subclass information: refused, never silently given a fresh head.
    class_teacher = build_model("cnn1d", 2, (1, 40))
    with pytest.raises(ValueError, match="needs a teacher trained with C\\*s = 2\\*5"):
        SubclassDistillation(build_model("cnn1d", 2, (1, 40)), class_teacher, Config(num_classes=2, subclasses=5))
    assert class_teacher.head.out_features == 2
    with pytest.raises(ValueError, match="student's head has 4 outputs"):
        SubclassDistillation(build_model("cnn1d", 4, (1, 40)), teacher, Config(num_classes=2, subclasses=5))


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.distillation.subclass_muller2020 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run subclass_muller2020 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    sub, kd = result.row("student_subclass").accuracy.mean, result.row("student_kd").accuracy.mean
    assert result.claim.reproduced == (sub > kd)
    assert {a.question for a in result.answers} == {
        "How are the subclasses created?",
        "What does the auxiliary loss do?",
    }
    assert -1.0 <= float(result.row("teacher").extra["ari"]) <= 1.0
