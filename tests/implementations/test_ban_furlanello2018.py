"""Paper properties of born-again networks (Furlanello et al., 2018), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from implementations.distillation.ban_furlanello2018 import BAN, Config, ban_loss, cwtm_loss, dkpp_targets


def test_true_class_gradient_splits_into_confidence_weighted_label_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    batch = 5
    logits = torch.randn(batch, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    p = F.softmax(torch.randn(batch, 4, generator=gen, dtype=torch.float64), dim=-1)
    labels = torch.tensor([0, 1, 2, 3, 1])
    ban_loss(logits, p).backward()
    q = F.softmax(logits.detach(), dim=-1)
    assert torch.allclose(logits.grad, (q - p) / batch)  # dL/dz_i = (q_i - p_i) / b
    idx = torch.arange(batch)
    q_star, p_star = q[idx, labels], p[idx, labels]
    split = p_star * (q_star - 1) + (1 - p_star) * q_star  # Sec. 3.1
    assert torch.allclose(logits.grad[idx, labels] * batch, split)


def test_cwtm_rescales_the_label_gradient_by_normalised_teacher_confidence() -> None:
    logits = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)  # q = 1/4 everywhere
    p = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.4, 0.2, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])
    cwtm_loss(logits, labels, p).backward()
    weights = torch.tensor([0.7, 0.4, 0.25], dtype=torch.float64) / 1.35
    assert torch.allclose(logits.grad[torch.arange(3), labels], weights * (0.25 - 1))
    uniform = torch.full((3, 4), 0.25, dtype=torch.float64)
    assert torch.allclose(cwtm_loss(logits, labels, uniform), F.cross_entropy(logits, labels))


def test_dkpp_keeps_the_maximum_and_permutes_the_rest() -> None:
    gen = torch.Generator().manual_seed(0)
    p = F.softmax(3 * torch.randn(64, 10, generator=gen), dim=-1)
    permuted = dkpp_targets(p, generator=gen)
    assert torch.equal(permuted.argmax(-1), p.argmax(-1))
    assert torch.equal(permuted.sort(-1).values, p.sort(-1).values)
    assert not torch.equal(permuted, p)


def test_modes_return_their_term() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    for mode in ("ban", "cwtm", "dkpp"):
        _, losses = BAN(student, teacher, Config(mode=mode)).forward_train(x, y)
        assert set(losses) == {mode}
    _, losses = BAN(student, student, Config()).forward_train(x, y)
    entropy = -(F.softmax(student(x), -1) * F.log_softmax(student(x), -1)).sum(-1).mean()
    assert torch.allclose(losses["ban"], entropy)  # teacher == student: the loss is the entropy, its minimum


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    # MNIST-1D comes from the user cache (generated once, offline, when missing).
    from implementations._runner import make_context
    from implementations.distillation.ban_furlanello2018 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run ban_furlanello2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    m = {row.name: row.accuracy.mean for row in result.rows}
    assert {"gen0", "gen1", "gen2", "bane", "cwtm", "big_kd", "big_teacher"} == set(m)
    assert result.claim.reproduced == (m["gen1"] > m["gen0"])
    assert len(result.answers) == 2
