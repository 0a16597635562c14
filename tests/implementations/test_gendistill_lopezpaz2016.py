"""Paper properties of generalized distillation (Lopez-Paz et al., 2016), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation.gendistill_lopezpaz2016 import (
    Config,
    GeneralizedDistillation,
    generalized_distillation_loss,
    make_synthetic,
    pack,
    unpack,
)


def test_loss_is_cross_entropy_to_the_lambda_mixture_of_label_and_soft_label() -> None:
    # (1 - lambda) l(y, q) + lambda l(s, q) = l((1 - lambda) e_y + lambda s, q): the gradient on the student logits
    # is (q - target) / B, with q the *untempered* student softmax and s the tempered teacher softmax.
    student = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -2.0]], requires_grad=True)
    teacher = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 6.0]])
    labels = torch.tensor([1, 2])
    temperature, imitation = 3.0, 0.25
    losses = generalized_distillation_loss(student, labels, teacher, temperature, imitation)
    sum(losses.values()).backward()
    target = (1 - imitation) * F.one_hot(labels, 3) + imitation * F.softmax(teacher / temperature, dim=-1)
    expected = (F.softmax(student.detach(), dim=-1) - target) / 2
    assert torch.allclose(student.grad, expected, atol=1e-6)
    # lambda = 0 is plain cross-entropy on labels; lambda = 1 ignores the labels.
    only_labels = generalized_distillation_loss(student, labels, teacher, temperature, 0.0)
    assert torch.allclose(only_labels["hard"], F.cross_entropy(student, labels)) and only_labels["soft"] == 0
    other_labels = generalized_distillation_loss(student, torch.tensor([0, 0]), teacher, temperature, 1.0)
    same_labels = generalized_distillation_loss(student, labels, teacher, temperature, 1.0)
    assert torch.allclose(sum(other_labels.values()), sum(same_labels.values()))


class _Recorder(nn.Module):
    def __init__(self, d_in: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, 2)
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        return self.linear(x)


def test_teacher_sees_only_privileged_and_student_only_regular_features() -> None:
    x, x_star = torch.randn(5, 4), torch.randn(5, 3)
    batch = pack(x, x_star)
    assert batch.shape == (5, 7)
    assert all(torch.equal(a, b) for a, b in zip(unpack(4)(batch), (x, x_star), strict=True))
    student, teacher = _Recorder(4), _Recorder(3)
    task = GeneralizedDistillation(student, teacher, Config(temperature=2.0, imitation=0.5), split=unpack(4))
    logits, losses = task.forward_train(batch, torch.tensor([0, 1, 0, 1, 1]))
    assert torch.equal(student.seen[0], x) and torch.equal(teacher.seen[0], x_star)
    assert logits.shape == (5, 2) and set(losses) == {"hard", "soft"}
    # Without a split the teacher sees the student's input: Hinton's distillation (x* = x).
    same = GeneralizedDistillation(_Recorder(4), _Recorder(4))
    same.forward_train(x, torch.zeros(5, dtype=torch.long))
    assert torch.equal(same.student.seen[0], same.teacher.seen[0])


def test_synthetic_problems_follow_their_definitions() -> None:
    gen = torch.Generator().manual_seed(0)
    alpha = torch.randn(6, generator=gen)
    x, x_star, y = make_synthetic("clean_labels", 500, 6, gen, alpha)
    assert torch.allclose(x_star[:, 0], x @ alpha)
    agree = ((x_star[:, 0] > 0).long() == y).float().mean()
    assert 0.6 < agree < 1.0  # labels are noisy versions of sign(x*)
    x, x_star, y = make_synthetic("clean_features", 500, 6, gen, alpha)
    assert torch.equal(y, (x_star @ alpha > 0).long()) and not torch.equal(y, (x @ alpha > 0).long())
    x, x_star, y = make_synthetic("relevant_features", 500, 6, gen, alpha)
    assert torch.equal(x_star, x[:, :3]) and torch.equal(y, (x[:, :3] @ alpha[:3] > 0).long())


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.distillation.gendistill_lopezpaz2016 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run gendistill_lopezpaz2016 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    problems = ("clean_labels", "clean_features", "relevant_features", "digits")
    wins = [result.row(f"{p}_distilled").accuracy.mean > result.row(f"{p}_student").accuracy.mean for p in problems]
    assert result.claim.reproduced == all(wins)
    assert result.answers[0].question.startswith("Is the VC-theory argument")
    assert (tmp_path / "results" / "figures" / "gendistill_lopezpaz2016_accuracy.png").stat().st_size > 1000


@pytest.mark.parametrize("imitation", [0.0, 1.0])
def test_config_weights_reach_the_losses(imitation: float) -> None:
    student, teacher = nn.Linear(3, 2), nn.Linear(3, 2)
    task = GeneralizedDistillation(student, teacher, Config(temperature=1.0, imitation=imitation))
    _, losses = task.forward_train(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))
    assert (losses["soft"].item() == 0.0) == (imitation == 0.0)
    assert (losses["hard"].item() == 0.0) == (imitation == 1.0)
