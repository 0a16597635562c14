"""Paper properties of Quantization Mimic (Wei et al., 2018), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations._models import CNN1d
from implementations.quantization._base import smoke_task
from implementations.quantization.qmimic_wei2018 import (
    Config,
    QuantizationMimic,
    QuantReLU,
    mimic_loss,
    quantize_activations,
    uniform_q,
)


def test_uniform_quantizer_levels_error_and_straight_through_gradient() -> None:
    step, bits = 0.5, 2  # levels 0, 0.5, 1.0, 1.5
    a = torch.tensor([-1.0, 0.2, 0.26, 0.74, 1.1, 1.4, 3.0], requires_grad=True)
    q = uniform_q(a, step, bits)
    assert q.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0, 1.5, 1.5]
    inside = (a >= 0) & (a <= 1.5)
    assert ((q - a).abs()[inside] <= step / 2 + 1e-6).all()
    q.sum().backward()
    assert a.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # STE inside the range, 0 where clipped


def test_mimic_loss_ignores_differences_inside_one_bin() -> None:
    teacher = torch.tensor([[[0.5, 1.0]], [[0.0, 1.5]]])  # (N=2, C=1, L=2), on the levels of step 0.5
    student = teacher + torch.tensor([[[0.2, -0.2]], [[0.1, 0.24]]])  # every entry stays in its teacher's bin
    assert mimic_loss(student, teacher, 0.5, 2, quantize=True).item() == 0.0
    # without Q: (1 / 2N) * sum ||diff||^2 = (0.04 + 0.04 + 0.01 + 0.0576) / 4
    expected = (0.04 + 0.04 + 0.01 + 0.0576) / 4
    assert mimic_loss(student, teacher, 0.5, 2, quantize=False).item() == pytest.approx(expected, rel=1e-5)
    shifted = teacher.clone()
    shifted[0, 0, 0] = 1.0  # one entry one level off: (1/2N) * step^2
    assert mimic_loss(shifted, teacher, 0.5, 2, quantize=True).item() == pytest.approx(0.25 / 4)


def test_quantized_network_features_lie_on_the_levels() -> None:
    torch.manual_seed(0)
    net = quantize_activations(CNN1d(1, 40, 10, (4, 8, 8)), step=0.538, bits=2)
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    assert sum(isinstance(m, QuantReLU) for m in net.modules()) == 3
    _, features = net(torch.randn(5, 1, 40), return_features=True)
    for f in features:
        codes = f / 0.538
        assert torch.allclose(codes, codes.round(), atol=1e-5) and codes.min() >= 0 and codes.max() <= 3


def test_teacher_is_frozen_and_the_mimic_term_is_a_per_entry_mean() -> None:
    task, x, y = smoke_task(QuantizationMimic)
    logits, losses = task.forward_train(x, y)
    assert logits.shape == (8, 10) and set(losses) == {"ce", "mimic"}
    _, fs = task.student(x, return_features=True)
    _, ft = task.teacher(x, return_features=True)
    raw = mimic_loss(task.adapter(fs[-1]), ft[-1], Config().step, Config().bits, quantize=True)
    assert torch.allclose(losses["mimic"], raw / (16 * 5))  # C_t = 16 channels, L = 5 positions
    sum(losses.values()).backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    assert task.adapter.weight.grad is not None and task.student.head.weight.grad.abs().sum() > 0


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.quantization.qmimic_wei2018 import reproduce
    from implementations.quantization.qmimic_wei2018.experiment import QUESTION
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run qmimic_wei2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {row.name for row in result.rows} == {"teacher_fp", "teacher_q", "q_student", "q_mimic_fp", "qmimic"}
    assert result.row("qmimic").flops == result.row("q_student").flops < result.row("teacher_fp").flops
    assert result.answers[0].question == QUESTION
    assert result.figures == ["results/figures/qmimic_wei2018_accuracy.png"]
