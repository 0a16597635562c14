"""Paper properties of dataset distillation (Wang et al., 2018): the unrolled update, its gradients, and the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from implementations.other.datasetdistill_wang2018 import Config, DatasetDistillation, unroll


def test_one_unrolled_step_is_a_gradient_step() -> None:
    model = nn.Linear(3, 2)
    theta0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    images, labels = torch.randn(1, 4, 3), torch.tensor([0, 1, 0, 1])
    out = unroll(model, theta0, images, labels, torch.tensor([0.5]), epochs=1, create_graph=False)
    w, b = theta0["weight"].clone().requires_grad_(), theta0["bias"].clone().requires_grad_()
    F.cross_entropy(images[0] @ w.T + b, labels).backward()
    assert torch.allclose(out["weight"], theta0["weight"] - 0.5 * w.grad, atol=1e-6)
    assert torch.allclose(out["bias"], theta0["bias"] - 0.5 * b.grad, atol=1e-6)
    two = unroll(model, theta0, images, labels, torch.tensor([0.5, 0.0]), epochs=2, create_graph=False)
    assert torch.allclose(two["weight"], out["weight"], atol=1e-6)  # a zero rate leaves theta unchanged


def test_outer_gradient_through_the_step_matches_the_chain_rule() -> None:
    # d/d eta l(x, theta_0 - eta g) = -<grad l(x, theta_1), g>, with g = grad l(x~, theta_0)
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    task = DatasetDistillation(model, 2, (3,), Config(images_per_class=2, steps=1, epochs=1, init_lr=0.3)).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1, 0])
    _, losses = task.forward_train(x, y)
    losses["outer_ce"].backward()
    theta0 = task.theta0()
    w0 = theta0["weight"].clone().requires_grad_()
    g = torch.autograd.grad(F.cross_entropy(task.images[0].detach() @ w0.T + theta0["bias"], task.labels), w0)[0]
    gb = torch.autograd.grad(
        F.cross_entropy(task.images[0].detach() @ theta0["weight"].T + theta0["bias"].requires_grad_(), task.labels),
        theta0["bias"],
    )[0]
    w1 = (theta0["weight"] - 0.3 * g).requires_grad_()
    b1 = (theta0["bias"].detach() - 0.3 * gb).requires_grad_()
    outer_w, outer_b = torch.autograd.grad(F.cross_entropy(x @ w1.T + b1, y), (w1, b1))
    d_eta = -((outer_w * g).sum() + (outer_b * gb).sum())
    assert torch.allclose(task.log_lrs.grad[0], d_eta * 0.3, atol=1e-8)  # chain rule through eta = exp(lambda)
    assert task.images.grad is not None and task.images.grad.abs().sum() > 0
    assert all(p.grad is None for p in task.model.parameters())  # theta_0 is never trained


def test_distilling_lowers_the_outer_loss_from_a_fixed_init() -> None:
    torch.manual_seed(0)
    x = torch.cat([torch.randn(100, 2) + 2, torch.randn(100, 2) - 2])
    y = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))  # starts with every label wrong
    task = DatasetDistillation(model, 2, (2,), Config(epochs=2, outer_iterations=40, outer_lr=0.1, real_batch=64))
    theta0 = {k: v.clone() for k, v in task.theta0().items()}
    losses = task.distill(x, y)
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(theta0[k], v) for k, v in task.theta0().items())
    assert (task(x).argmax(-1) == y).float().mean() > 0.9  # two steps on 2 learned points fix the classifier


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.other.datasetdistill_wang2018 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    extra = {"profile": "quick", "command": "kb run datasetdistill_wang2018 --quick", "environment": env}
    result = Result.model_validate({**data, **extra, "wall_time_s": 1.0, "created": "2025-01-01T00:00:00"})
    names = {row.name for row in result.rows}
    assert {"distilled_fixed", "real10_fixed", "full_data", "distilled_random"} <= names
    from implementations._measure import beats

    values = {name: result.row(name).accuracy.values for name in names}
    assert result.claim.reproduced == beats(values["distilled_fixed"], values["real10_fixed"])
    questions = {answer.question for answer in result.answers}
    assert questions == {
        "Is it distillation that helps, or simply more (or better) training data?",
        "Does knowledge distillation need a good teacher at all, or does a good soft target do the work?",
    }
    # the teacher question is answered by this module's own KD experiment, one row per arm
    assert {"kd_teacher", "kd_weak_teacher", "kd_alone", "kd_strong", "kd_weak", "kd_smoothed"} <= names
    teacher_answer = next(a for a in result.answers if a.question.startswith("Does knowledge"))
    assert "own experiment" in teacher_answer.answer.lower()
