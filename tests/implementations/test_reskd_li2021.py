"""Paper properties of ResKD (Li et al., 2021), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations.distillation.reskd_li2021 import (
    Config,
    ResKD,
    adaptive_exit,
    gap_energy,
    residual_loss,
    stop_index,
)


def test_residual_loss_is_zero_iff_the_res_student_predicts_the_gap() -> None:
    teacher, prev = torch.tensor([[3.0, 1.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]])
    assert residual_loss(torch.tensor([[2.0, 0.0, -1.0]]), teacher, prev).item() == 0.0
    # (1/K) * ||(2, 0, 0) - (2, 0, -1)||^2 = 1/3
    assert residual_loss(torch.tensor([[2.0, 0.0, 0.0]]), teacher, prev).item() == pytest.approx(1 / 3)
    assert gap_energy(teacher, prev) == pytest.approx((4 + 0 + 1) / 3)


def test_stop_rule_keeps_res_students_while_the_gap_shrinks_enough() -> None:
    assert stop_index([1.0, 0.8, 0.78, 0.5], min_decrease=0.05) == 1  # 0.78 >= 0.95 * 0.8: stop after R_1
    assert stop_index([1.0, 0.8, 0.7, 0.6], min_decrease=0.05) == 3  # always shrinking: keep all
    assert stop_index([1.0, 1.2], min_decrease=0.05) == 0  # the first res-student made the gap worse


def test_adaptive_exit_answers_confident_inputs_at_the_first_stage() -> None:
    stages = torch.tensor([[[5.0, 0.0], [0.0, 0.1]], [[0.0, 5.0], [0.0, 5.0]]])  # (S=2, B=2, K=2)
    pred, flops = adaptive_exit(stages, [10.0, 30.0], confidence=0.9)
    assert pred.tolist() == [0, 1] and flops.tolist() == [10.0, 30.0]  # input 0 exits at S0 (p=0.993), 1 does not
    assert (pred != stages[-1].argmax(-1)).sum() == 1  # the early exit can change a prediction of the full chain
    pred, flops = adaptive_exit(stages, [10.0, 30.0], confidence=0.999)
    assert pred.tolist() == [1, 1] and flops.tolist() == [30.0, 30.0]


def test_only_the_newest_res_student_learns_and_the_chain_adds_logits() -> None:
    torch.manual_seed(0)
    student, teacher, r1, r2 = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)
    task = ResKD(student, teacher, [r1], Config(alpha=0.5))
    task.add_res_student(r2)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    stages = task.stage_logits(x)
    assert stages.shape == (3, 5, 3)
    assert torch.allclose(stages[2], student(x) + r1(x) + r2(x)) and torch.allclose(task(x), stages[2])
    logits, losses = task.forward_train(x, y)
    assert set(losses) == {"residual", "ce"}
    expected = 0.5 * residual_loss(r2(x), teacher(x), student(x) + r1(x))
    assert torch.allclose(losses["residual"], expected)
    sum(losses.values()).backward()
    assert {id(p) for p in task.trainable_parameters()} == {id(p) for p in r2.parameters()}
    assert all(p.grad is None for m in (student, teacher, r1) for p in m.parameters())
    assert r2.weight.grad.abs().sum() > 0


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.distillation.reskd_li2021 import reproduce
    from implementations.distillation.reskd_li2021.experiment import QUESTIONS
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run reskd_li2021 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    names = {row.name for row in result.rows}
    assert {"teacher", "student_kd", "chain_1", "reskd", "reskd_adaptive", "boost_1", "matched_kd"} <= names
    assert result.row("reskd_adaptive").flops <= result.row("reskd").flops <= result.row("chain_3").flops
    assert [a.question for a in result.answers] == list(QUESTIONS)
    assert result.figures == ["results/figures/reskd_li2021_accuracy.png"]
