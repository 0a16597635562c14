"""Paper properties of Knowledge Projection (Zhang et al., 2017), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations._models import build_model
from implementations.distillation._base import smoke_task
from implementations.distillation.kpn_zhang2017 import Config, KnowledgeProjection, projection_loss


def _task(stage: int) -> KnowledgeProjection:
    torch.manual_seed(0)
    teacher = build_model("cnn1d", 10, (1, 40), width=0.5)  # stages of 16, 32, 32 channels
    student = build_model("cnn1d", 10, (1, 40), width=0.25)  # stages of 8, 16, 16 channels
    return KnowledgeProjection(student, teacher, Config(teacher_layer=1, injection_layer=1), stage=stage)


def test_split_at_the_injection_layer_reproduces_the_student() -> None:
    # upper(lower(x)) is exactly the student's forward, for a 1-D CNN and a CIFAR ResNet (the smoke models).
    task = _task(stage=2).eval()
    x = torch.randn(5, 1, 40)
    assert task.lower(x).shape == (5, 16, 10)
    assert torch.allclose(task.upper(task.lower(x)), task.student(x), atol=1e-6)
    resnet_task, images, _ = smoke_task(KnowledgeProjection)
    resnet_task.eval()
    assert torch.allclose(resnet_task.upper(resnet_task.lower(images)), resnet_task.student(images), atol=1e-5)
    # The projection maps the teacher's 32 channels to the student's 16 at the injection layer.
    assert task.projection[0].weight.shape == (16, 32, 1)


def test_projection_loss_is_a_stop_gradient_mse() -> None:
    student = torch.tensor([[1.0, 2.0], [3.0, 5.0]], requires_grad=True)
    projected = torch.tensor([[1.0, 0.0], [3.0, 4.0]], requires_grad=True)
    loss = projection_loss(student, projected)
    assert torch.allclose(loss, torch.tensor((4.0 + 1.0) / 4))
    loss.backward()
    assert projected.grad is None  # sg[P(h_t)]: the target does not move towards the student
    assert torch.allclose(student.grad, torch.tensor([[0.0, 1.0], [0.0, 0.5]]))
    assert projection_loss(projected, projected).item() == 0.0


def test_stage_one_routes_the_gradients() -> None:
    # Stage 1: the projection loss trains only the lower layers; the task loss on the projected route trains the
    # projection and the upper layers, never the lower ones.
    task = _task(stage=1).train()
    x, y = torch.randn(8, 1, 40), torch.randint(0, 10, (8,))
    logits, losses = task.forward_train(x, y)
    assert set(losses) == {"projection", "ce_projected"}
    lower = list(task.student.stages[:2].parameters())
    upper = list(task.student.stages[2].parameters()) + list(task.student.head.parameters())
    grads = torch.autograd.grad(
        losses["projection"], lower + upper + list(task.projection.parameters()), allow_unused=True
    )
    assert all(g is not None and g.abs().sum() > 0 for g in grads[: len(lower)])
    assert all(g is None for g in grads[len(lower) :])
    grads = torch.autograd.grad(
        losses["ce_projected"], lower + upper + list(task.projection.parameters()), allow_unused=True
    )
    assert all(g is None for g in grads[: len(lower)])
    assert all(g is not None for g in grads[len(lower) :])
    # Stage 2 trains the student's own path; the one-stage variant has all three terms.
    task.stage = 2
    logits, losses = task.forward_train(x, y)
    assert set(losses) == {"projection", "ce"}
    assert torch.allclose(losses["ce"], torch.nn.functional.cross_entropy(task.student(x), y), atol=1e-6)
    task.stage = 0
    assert set(task.forward_train(x, y)[1]) == {"projection", "ce_projected", "ce"}
    assert not any(p.requires_grad for p in task.teacher.parameters())


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.distillation.kpn_zhang2017 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run kpn_zhang2017 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    few = min(int(row.name.split("_")[-1]) for row in result.rows if row.name.startswith("kpn_"))
    kpn, base = result.row(f"kpn_{few}").accuracy.mean, result.row(f"labels_only_{few}").accuracy.mean
    assert result.claim.reproduced == (kpn > base)
    assert len(result.answers) == 2 and result.answers[0].question.startswith("Does the two-stage schedule")
