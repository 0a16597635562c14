"""Paper properties of KD with a conditional adversarial network (Xu et al., 2018), and the quick reproduction."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from implementations.distillation.kdgan_xu2018 import (
    AdversarialKD,
    Config,
    Discriminator,
    discriminator_loss,
    generator_loss,
)


def test_gan_losses_at_chance_and_their_gradients() -> None:
    zero = torch.zeros(4)
    assert discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert generator_loss(zero).item() == pytest.approx(math.log(2))
    fake = torch.tensor([-3.0, 0.0, 3.0], requires_grad=True)
    generator_loss(fake).backward()
    # d/ds softplus(-s) / B = -sigmoid(-s) / B: always pushes the fake score up, hardest where D is sure it's fake.
    assert torch.allclose(fake.grad, -torch.sigmoid(-fake.detach()) / 3)
    real = torch.tensor([5.0, 5.0])
    assert discriminator_loss(real, -real) < 0.02 < 9.0 < discriminator_loss(-real, real)


def test_discriminator_is_conditioned_on_the_label() -> None:
    torch.manual_seed(0)
    disc = Discriminator(num_classes=3, hidden=8)
    assert disc.net[0].in_features == 6  # [logits (K), one-hot label (K)]
    logits = torch.randn(2, 3)
    a = disc(logits, torch.tensor([0, 0]))
    b = disc(logits, torch.tensor([2, 2]))
    assert a.shape == (2,) and not torch.allclose(a, b)


def test_each_player_only_receives_its_own_gradient() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(5, 3), nn.Linear(5, 3)
    task = AdversarialKD(student, teacher, Config(adversarial_weight=0.5, ce_weight=0.0, l1_weight=0.2))
    assert {id(p) for p in task.trainable_parameters()} == {
        id(p) for p in [*student.parameters(), *task.discriminator.parameters()]
    }
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    _, losses = task.forward_train(x, y)
    assert set(losses) == {"disc", "adv", "ce", "l1"} and losses["ce"] == 0
    losses["adv"].backward(retain_graph=True)
    assert all(p.grad is None for p in task.discriminator.parameters())
    assert student.weight.grad.abs().sum() > 0
    student.zero_grad(set_to_none=True)
    losses["disc"].backward()
    assert all(p.grad is None for p in student.parameters())
    assert all(p.grad is not None for p in task.discriminator.parameters())
    logits_s, logits_t = student(x), teacher(x)
    assert torch.allclose(losses["l1"], 0.2 * (logits_s - logits_t).abs().sum(1).mean())


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.distillation.kdgan_xu2018 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run kdgan_xu2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    m = {row.name: row.accuracy.mean for row in result.rows}
    assert {"labels_w8", "kd_w8", "l2_w8", "adv_w8", "adv_w32"} <= set(m)
    assert result.claim.reproduced == (m["adv_w8"] > max(m["labels_w8"], m["kd_w8"]))
    assert result.answers[0].question.startswith("Does a learned adversarial loss")
