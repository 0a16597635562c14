"""Paper properties of FitNets (Romero et al., 2015): regressor shape rule, hint loss, stage-wise training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations._models import CNN1d
from implementations.distillation.fitnets_romero2015 import Config, FitNet, hint_loss, make_regressor


def test_regressor_kernel_follows_the_size_rule() -> None:
    # n_g - k + 1 = n_h: a 20-long guided map and a 10-long hint need k = 11; equal sizes need k = 1.
    reg = make_regressor((16, 20), (64, 10))
    assert reg.kernel_size == (11,) and reg(torch.randn(2, 16, 20)).shape == (2, 64, 10)
    assert make_regressor((8, 5, 5), (32, 5, 5)).kernel_size == (1, 1)
    with pytest.raises(ValueError):
        make_regressor((16, 5), (64, 10))


def test_hint_loss_is_half_squared_l2_per_example() -> None:
    hint = torch.zeros(2, 2, 3)
    regressed = torch.tensor([[[1.0, 0, 0], [0, 2, 0]], [[0, 0, 0], [0, 0, 3]]])
    assert hint_loss(regressed, hint).item() == pytest.approx((0.5 * 5 + 0.5 * 9) / 2)
    assert hint_loss(hint, hint).item() == 0.0


def test_hint_stage_trains_only_layers_up_to_the_guided_layer() -> None:
    torch.manual_seed(0)
    teacher, student = CNN1d(1, 40, 10, (16, 32, 32)), CNN1d(1, 40, 10, (8, 16, 16, 16))
    task = FitNet(student, teacher, Config(hint_layer=1, guided_layer=1), in_shape=(1, 40))
    x, y = torch.randn(4, 1, 40), torch.randint(0, 10, (4,))
    _, losses = task.forward_train(x, y)
    assert set(losses) == {"hint"}
    losses["hint"].backward()
    assert all(p.grad is not None for p in student.stages[:2].parameters())
    assert all(p.grad is None for p in [*student.stages[2:].parameters(), *student.head.parameters()])
    assert all(p.grad is not None for p in task.regressor.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_kd_weight_decays_linearly_in_stage_two() -> None:
    task = FitNet(CNN1d(1, 40, 10, (4, 8)), CNN1d(1, 40, 10, (8, 8)), in_shape=(1, 40))
    task.stage, task.anneal_steps = "kd", 4
    x, y = torch.randn(3, 1, 40), torch.tensor([1, 2, 3])
    weights = []
    for _ in range(5):
        weights.append(task.kd_weight())
        _, losses = task.forward_train(x, y)
        assert set(losses) == {"ce", "kd"}
    assert weights == pytest.approx([4.0, 3.25, 2.5, 1.75, 1.0])


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    # MNIST-1D comes from the user cache (generated once, offline, when missing).
    from implementations._runner import make_context
    from implementations.distillation.fitnets_romero2015 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run fitnets_romero2015 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    m = {row.name: row.accuracy.mean for row in result.rows}
    assert {"teacher", "student", "student_kd", "fitnet", "fitnet_shallow", "fitnet_deep"} == set(m)
    assert result.claim.reproduced == (m["fitnet"] > m["student_kd"] and m["fitnet"] > m["student"])
    assert len(result.answers) == 2
