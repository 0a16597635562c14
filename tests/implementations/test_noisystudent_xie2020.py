"""Paper properties of Noisy Student self-training (Xie et al., 2020), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from implementations.distillation.noisystudent_xie2020 import (
    UNLABELLED,
    Config,
    NoisyStudent,
    noise_input,
    pseudo_label_loss,
)


class _Net(nn.Module):
    """Linear body + `head`, the layout NoisyStudent hooks its dropout into."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))


def test_pseudo_label_loss_soft_hard_and_confidence_filter() -> None:
    student = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2]]))
    teacher = torch.log(torch.tensor([[0.6, 0.4, 1e-30], [0.25, 0.25, 0.5]]))
    ln = torch.log
    # Soft CE by hand: row 0: -(0.6 ln 0.5 + 0.4 ln 0.25); row 1: -(0.25 ln 0.2 + 0.25 ln 0.6 + 0.5 ln 0.2).
    row0 = -(0.6 * ln(torch.tensor(0.5)) + 0.4 * ln(torch.tensor(0.25)))
    row1 = -(0.25 * ln(torch.tensor(0.2)) + 0.25 * ln(torch.tensor(0.6)) + 0.5 * ln(torch.tensor(0.2)))
    assert torch.allclose(pseudo_label_loss(student, teacher), (row0 + row1) / 2, atol=1e-6)
    # Hard labels: the teacher's argmax (0 and 2) as one-hot targets, i.e. ordinary cross-entropy.
    hard = F.cross_entropy(student, torch.tensor([0, 2]))
    assert torch.allclose(pseudo_label_loss(student, teacher, soft=False), hard, atol=1e-6)
    # Confidence filter: row 1 (max prob 0.5) falls below 0.55 and is dropped; the mean is over kept rows only.
    assert torch.allclose(pseudo_label_loss(student, teacher, threshold=0.55), row0, atol=1e-6)
    assert pseudo_label_loss(student, teacher, threshold=0.7).item() == 0.0


def test_labelled_and_pseudo_terms_and_clean_teacher_input() -> None:
    torch.manual_seed(0)
    student, teacher = _Net(), _Net()
    seen: list[torch.Tensor] = []
    teacher.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    x, y = torch.randn(4, 1, 6), torch.tensor([UNLABELLED, 2, UNLABELLED, 0])
    # Without noise the terms are exact: CE on the labelled rows, soft CE to the teacher on the others.
    quiet = NoisyStudent(student, teacher, Config(noise_std=0.0, max_shift=0, dropout=0.0, confidence_threshold=0.0))
    logits, losses = quiet.forward_train(x, y)
    assert torch.allclose(losses["labelled"], F.cross_entropy(logits[[1, 3]], y[[1, 3]]))
    assert torch.allclose(losses["pseudo"], pseudo_label_loss(logits[[0, 2]], teacher(x[[0, 2]])))
    # With input noise the student sees a noised batch but the teacher still labels the clean unlabelled inputs.
    seen.clear()
    noisy = NoisyStudent(_Net(), teacher, Config(noise_std=1.0, max_shift=2, dropout=0.0))
    noisy.forward_train(x, y)
    assert len(seen) == 1 and torch.equal(seen[0], x[[0, 2]])


def test_dropout_noise_only_in_training_mode() -> None:
    torch.manual_seed(0)
    student = _Net()
    task = NoisyStudent(student, _Net(), Config(dropout=0.5))
    x = torch.randn(16, 1, 6)
    task.eval()
    assert torch.equal(student(x), student(x))  # eval: dropout off, deterministic
    task.train()
    assert not torch.equal(student(x), student(x))  # train: dropout on the head's input
    assert not task.teacher.training  # the teacher is never noised


def test_noise_input_is_a_zero_filled_shift_plus_jitter() -> None:
    torch.manual_seed(0)
    x = torch.arange(1, 9, dtype=torch.float32).repeat(32, 1, 1)  # (32, 1, 8)
    shifted = noise_input(x, std=0.0, max_shift=3)
    for row in shifted[:, 0]:
        kept = row[row != 0]
        assert torch.equal(kept, torch.arange(kept[0], kept[0] + len(kept)))  # a contiguous run, in order
        assert 5 <= len(kept) <= 8  # at most 3 samples shifted out
    jitter = noise_input(torch.zeros(2000, 1, 8), std=0.5, max_shift=0)
    assert abs(jitter.std().item() - 0.5) < 0.02


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.distillation.noisystudent_xie2020 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run noisystudent_xie2020 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"teacher", "student", "student_input_noise", "student_no_noise", "student_iter2"} == {
        row.name for row in result.rows
    }
    gain = result.row("student").accuracy.mean - result.row("teacher").accuracy.mean
    assert result.claim.reproduced == (
        gain > 0 and result.row("student_no_noise").accuracy.mean - result.row("teacher").accuracy.mean < 0.5 * gain
    )
    assert result.answers[0].question == "How does Noisy Student differ from knowledge distillation?"
