"""Paper properties of SaaS (Cicek et al., 2018): simplex projection, posterior gradient, and the quick run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from implementations.other.saas_cicek2018 import Config, SaaS, project_simplex, soft_cross_entropy


def test_project_simplex_known_values_and_optimality() -> None:
    v = torch.tensor([[0.5, 0.5, 0.5], [2.0, 0.0, 0.0], [0.6, 0.5, -1.0], [0.2, 0.3, 0.5]])
    expected = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.55, 0.45, 0.0], [0.2, 0.3, 0.5]])
    assert torch.allclose(project_simplex(v), expected, atol=1e-6)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(50, 5, generator=gen) * 2
    p = project_simplex(w)
    assert (p >= 0).all() and torch.allclose(p.sum(-1), torch.ones(50), atol=1e-6)
    # no random point of the simplex is closer to w than its projection
    others = torch.distributions.Dirichlet(torch.ones(5)).sample((200,))  # (200, 5)
    assert ((w[:, None] - others[None]).norm(dim=-1) >= (w - p).norm(dim=-1, keepdim=True) - 1e-6).all()


def test_soft_cross_entropy_with_one_hot_targets_is_cross_entropy() -> None:
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.allclose(soft_cross_entropy(logits, F.one_hot(y, 4).float()), F.cross_entropy(logits, y))
    uniform = torch.full((6, 4), 0.25)
    assert torch.allclose(soft_cross_entropy(logits, uniform), -F.log_softmax(logits, -1).mean(-1).mean())


def test_posterior_gradient_is_the_per_visit_negative_log_likelihood() -> None:
    model = nn.Linear(3, 4)
    task = SaaS(model, num_unlabelled=3, num_classes=4, cfg=Config(posterior_lr=0.0))
    x = torch.randn(5, 3)
    y = torch.tensor([1, -1, -2, 2, -3])  # labelled 1 and 2; unlabelled rows 0, 1, 2
    for _ in range(2):  # two identical steps (no weight update): the gradient accumulates twice
        _, losses = task.forward_train(x, y)
        sum(losses.values()).backward()
    nll = -F.log_softmax(model(x), -1).detach()  # (5, 4)
    assert torch.allclose(task.posterior.grad, 2 * nll[[1, 2, 4]] / 5, atol=1e-6)
    assert torch.allclose(task.posterior.grad / task.visits[:, None], nll[[1, 2, 4]], atol=1e-6)


def test_update_moves_posterior_toward_the_class_learned_fastest() -> None:
    model = nn.Linear(3, 4)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 0.0, 3.0, 0.0]))  # the network predicts class 2 for everything
    task = SaaS(model, num_unlabelled=2, num_classes=4, cfg=Config(posterior_lr=0.1))
    _, losses = task.forward_train(torch.randn(2, 3), torch.tensor([-1, -2]))
    sum(losses.values()).backward()
    task.update_posterior()
    p = task.posterior.detach()
    assert torch.allclose(p.sum(-1), torch.ones(2)) and (p[:, 2] > 0.25).all() and (p[:, [0, 1, 3]] < 0.25).all()
    assert task.posterior.grad is None and task.visits.sum() == 0


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.other.saas_cicek2018 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    extra = {"profile": "quick", "command": "kb run saas_cicek2018 --quick", "environment": env}
    result = Result.model_validate({**data, **extra, "wall_time_s": 1.0, "created": "2025-01-01T00:00:00"})
    assert [row.name for row in result.rows] == ["supervised", "pseudo_label", "saas", "all_labels"]
    saas, sup, pl = (result.row(n).accuracy.mean for n in ("saas", "supervised", "pseudo_label"))
    assert result.claim.reproduced == (saas > sup and saas > pl)
    assert 0.0 <= result.row("saas").extra["unlabelled_label_accuracy"] <= 100.0
