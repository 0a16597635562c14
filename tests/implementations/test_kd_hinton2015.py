"""Paper properties of Hinton et al. (2015) knowledge distillation, and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations.distillation._base import smoke_task
from implementations.distillation.kd_hinton2015 import KD, Config, kd_loss


def test_loss_is_zero_when_student_equals_teacher() -> None:
    logits = torch.randn(6, 10)
    assert kd_loss(logits, logits.clone(), temperature=4.0).abs().item() < 1e-6
    assert kd_loss(logits, torch.randn(6, 10), temperature=4.0).item() > 1e-3


def test_high_temperature_gradient_matches_logit_matching() -> None:
    # Sec. 2: for T >> |z| and zero-mean logits, d(T^2 KL)/dz_s,i -> (z_s,i - z_t,i) / K, per example; the
    # batch mean divides by B.
    batch, classes, temperature = 4, 5, 1e4  # relative error of the limit is O(|z| / T)
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(batch, classes, generator=gen, dtype=torch.float64)
    teacher = torch.randn(batch, classes, generator=gen, dtype=torch.float64)
    student, teacher = student - student.mean(1, keepdim=True), teacher - teacher.mean(1, keepdim=True)
    student.requires_grad_(True)
    kd_loss(student, teacher, temperature).backward()
    expected = (student.detach() - teacher) / (classes * batch)
    assert torch.allclose(student.grad, expected, rtol=1e-3, atol=1e-9)
    assert not torch.allclose(student.grad, 2 * expected, rtol=1e-3)


def test_teacher_is_frozen_and_stays_in_eval_mode() -> None:
    task, x, y = smoke_task(KD)
    teacher_state = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    task.train()
    assert task.student.training and not task.teacher.training
    assert not any(m.training for m in task.teacher.modules())
    assert not any(p.requires_grad for p in task.teacher.parameters())
    assert {id(p) for p in task.trainable_parameters()} == {id(p) for p in task.student.parameters()}
    logits, losses = task.forward_train(x, y)
    sum(losses.values()).backward()
    assert logits.shape == (8, 10) and set(losses) == {"ce", "kd"}
    assert all(p.grad is None for p in task.teacher.parameters())
    assert all(p.grad is not None for p in task.student.parameters())
    # BN running statistics of the teacher did not move during the training-mode forward pass.
    assert all(torch.equal(teacher_state[k], v) for k, v in task.teacher.state_dict().items())


def test_loss_weights_follow_config() -> None:
    student, teacher = nn.Linear(3, 4), nn.Linear(3, 4)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    _, losses = KD(student, teacher, Config(temperature=2.0, alpha=0.25)).forward_train(x, y)
    logits_s, logits_t = student(x), teacher(x)
    assert torch.allclose(losses["ce"], 0.75 * torch.nn.functional.cross_entropy(logits_s, y))
    assert torch.allclose(losses["kd"], 0.25 * kd_loss(logits_s, logits_t, 2.0))


def test_ablations_drop_t_squared_and_swap_in_entropy_matched_smoothing() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(3, 4), nn.Linear(3, 4)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    logits_s, logits_t = student(x), teacher(x)
    _, no_t2 = KD(student, teacher, Config(temperature=3.0, t_squared=False)).forward_train(x, y)
    assert torch.allclose(no_t2["kd"], 0.9 * kd_loss(logits_s, logits_t, 3.0) / 9.0)
    _, smoothed = KD(student, teacher, Config(temperature=3.0, soft_target="smoothed")).forward_train(x, y)
    # the target is (1 - eps) e_y + eps / K with the entropy of the teacher's p^(T), per example
    log_p_t = torch.log_softmax(logits_t / 3.0, -1)
    h_t = -(log_p_t.exp() * log_p_t).sum(-1)
    from implementations.mutual_learning.dml_zhang2018 import entropy_matched_target

    q = entropy_matched_target(y, logits_t / 3.0)
    assert torch.allclose(-(q * q.log()).sum(-1), h_t, atol=1e-5)
    assert (q.argmax(-1) == y).all()
    log_p_s = torch.log_softmax(logits_s / 3.0, -1)
    expected = 0.9 * 9.0 * (q * (q.log() - log_p_s)).sum(-1).mean()
    assert torch.allclose(smoothed["kd"], expected, atol=1e-5)
    with pytest.raises(ValueError):
        KD(student, teacher, Config(soft_target="other")).forward_train(x, y)


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.distillation.kd_hinton2015 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run kd_hinton2015 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    names = {row.name for row in result.rows}
    assert {"teacher", "student", "student_kd"} <= names and result.protocol.n_train == 500
    from implementations._measure import beats

    kd, alone = result.row("student_kd").accuracy.values, result.row("student").accuracy.values
    assert result.claim.reproduced == beats(kd, alone)
    assert len(result.answers) == 6 and len({a.question for a in result.answers}) == 6
    assert result.answers and "teacher" in result.answers[0].question.lower()
    assert (tmp_path / "results" / "figures" / "kd_hinton2015_accuracy.png").stat().st_size > 1000
    assert result.figures == ["results/figures/kd_hinton2015_accuracy.png"]


def test_cached_teacher_returns_the_teachers_outputs_and_falls_back_off_cache() -> None:
    from implementations.distillation._base import CachedTeacher

    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    train_x, other_x = torch.randn(50, 6), torch.randn(4, 6)
    cached = CachedTeacher(teacher, train_x, batch_size=16)
    with torch.no_grad():
        batch = train_x[torch.tensor([7, 3, 49, 3])]
        assert torch.allclose(cached(batch), teacher(batch), atol=1e-6)
        assert torch.equal(cached(batch), cached.outputs[torch.tensor([7, 3, 49, 3])])  # a lookup, not a pass
        mixed = torch.cat([train_x[:2], other_x[:1]])
        assert torch.allclose(cached(mixed), teacher(mixed), atol=1e-6)  # one unknown row: the teacher runs
    assert "outputs" not in cached.state_dict() and not any(p.requires_grad for p in cached.parameters())
