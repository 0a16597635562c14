"""Paper properties of teacher-student domain adaptation (Li et al., 2017), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from implementations.distillation.tsda_li2017 import Config, SimulatedChannel, TSDomainAdaptation, ts_loss


def test_soft_cross_entropy_gradient_is_posterior_difference() -> None:
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    ts_loss(student, teacher).backward()
    expected = (torch.softmax(student.detach(), -1) - torch.softmax(teacher, -1)) / 3
    assert torch.allclose(student.grad, expected)
    at_teacher = teacher.clone().requires_grad_(True)
    ts_loss(at_teacher, teacher).backward()
    assert at_teacher.grad.abs().max().item() < 1e-12  # the KL minimum: student posteriors = teacher posteriors


def test_channel_is_a_causal_fir_filter_plus_noise() -> None:
    x = torch.tensor([[[1.0, 2.0, 0.0, -1.0, 3.0]]])  # (B, C, L)
    clean = SimulatedChannel(Config(kernel=(0.5, 0.25), noise_std=0.0))
    # y[n] = 0.5 x[n] + 0.25 x[n - 1], with x[-1] = 0
    assert torch.allclose(clean(x), torch.tensor([[[0.5, 1.25, 0.5, -0.5, 1.25]]]))
    noisy = SimulatedChannel(Config(kernel=(1.0,), noise_std=2.0))
    diff = noisy(torch.zeros(4000, 1, 5), torch.Generator().manual_seed(0))
    assert abs(diff.std().item() - 2.0) < 0.05 and abs(diff.mean().item()) < 0.05


class _Recorder(nn.Module):
    """A fixed linear map that remembers its last input."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.seen: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.seen = x.detach().clone()
        return self.linear(x.flatten(1))


def test_teacher_hears_the_source_and_student_the_target_half() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 1, 4)
    channel = SimulatedChannel(Config(kernel=(0.5, 0.5), noise_std=0.0))
    for cfg, teacher_input in [
        (Config(), x),
        (Config(unpaired=True), x.roll(1, dims=0)),
        (Config(parallel=False), channel(x)),
    ]:
        student, teacher = _Recorder(), _Recorder()
        task = TSDomainAdaptation(student, teacher, cfg, channel=channel)
        _, losses = task.forward_train(x, torch.zeros(5, dtype=torch.long))
        assert torch.equal(student.seen, channel(x)) and torch.equal(teacher.seen, teacher_input)
        _, other = task.forward_train(x, torch.full((5,), 2))
        assert torch.allclose(losses["ts"], other["ts"])  # no label is ever used


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.distillation.tsda_li2017 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run tsda_li2017 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    m = {row.name: row.accuracy.mean for row in result.rows}
    assert {"teacher_clean", "teacher_noisy", "ts", "labelled_noisy", "ts_unpaired"} <= set(m)
    relative_error_reduction = 100 * (m["ts"] - m["teacher_noisy"]) / (100 - m["teacher_noisy"])
    assert result.claim.reproduced == (m["ts"] > m["teacher_noisy"] and relative_error_reduction > 10.0)
    assert result.protocol.n_train == 500 and len(result.answers) == 1
