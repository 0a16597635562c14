"""Paper properties of Rocket Launching (Zhou et al., 2018), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations.distillation.rocket_zhou2018 import Config, RocketLaunching, hint_loss


def _task(block: bool) -> RocketLaunching:
    torch.manual_seed(0)
    shared = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    light, booster = nn.Linear(8, 3), nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return RocketLaunching(light, booster, Config(hint_weight=0.5, gradient_block=block), shared=shared)


def test_hint_loss_is_squared_logit_distance() -> None:
    light = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    booster = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    assert torch.allclose(hint_loss(light, booster), torch.tensor((5.0 + 4.0) / 2))
    assert hint_loss(light, light.clone()).item() == 0.0


def test_gradient_block_keeps_the_hint_out_of_the_booster() -> None:
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    for block in (True, False):
        task = _task(block).train()
        _, losses = task.forward_train(x, y)
        booster = list(task.teacher.parameters())
        hint_grads = torch.autograd.grad(losses["hint"], booster, retain_graph=True, allow_unused=True)
        if block:  # d(lambda ||l - z||^2)/dW_B = 0: the booster is trained by its own task loss only
            assert all(g is None for g in hint_grads)
        else:
            assert any(g is not None and g.abs().sum() > 0 for g in hint_grads)
        # Whatever the block, the hint moves the light head and the shared layers, and the booster's CE its weights.
        light_and_shared = list(task.student.parameters()) + list(task.shared.parameters())
        assert all(g.abs().sum() > 0 for g in torch.autograd.grad(losses["hint"], light_and_shared, retain_graph=True))
        assert all(g.abs().sum() > 0 for g in torch.autograd.grad(losses["booster"], booster))


def test_booster_is_trained_and_light_net_is_deployed() -> None:
    task = _task(block=True)
    task.train()
    assert task.teacher.training and task.student.training  # unlike a frozen-teacher distiller
    ids = {id(p) for p in task.trainable_parameters()}
    assert all(id(p) in ids for p in task.teacher.parameters())
    x = torch.randn(4, 6)
    assert torch.equal(task(x), task.student(task.shared(x)))
    assert torch.equal(task.forward_booster(x), task.teacher(task.shared(x)))
    logits, losses = task.forward_train(x, torch.zeros(4, dtype=torch.long))
    assert torch.equal(logits, task(x)) and set(losses) == {"light", "booster", "hint"}
    expected = 0.5 * hint_loss(task(x), task.forward_booster(x))
    assert torch.allclose(losses["hint"], expected)


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.distillation.rocket_zhou2018 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run rocket_zhou2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    rocket, alone = result.row("light_rocket").accuracy.mean, result.row("light_alone").accuracy.mean
    assert result.claim.reproduced == (rocket > alone)
    assert result.row("booster_rocket").params > result.row("light_rocket").params
    assert len(result.answers) == 2
