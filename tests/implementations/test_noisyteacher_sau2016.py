"""Paper properties of the noisy teacher (Sau & Balasubramanian, 2016), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations.distillation.mimic_ba2014 import mimic_loss
from implementations.distillation.noisyteacher_sau2016 import Config, NoisyTeacher, perturb_logits


def test_noise_is_multiplicative_and_only_on_the_selected_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 10, generator=gen) + 3.0
    noisy, rows = perturb_logits(logits, sigma=0.3, alpha=0.5, generator=gen)
    assert torch.equal(noisy[~rows], logits[~rows])
    assert 0.45 < rows.float().mean().item() < 0.55
    xi = noisy[rows] / logits[rows] - 1  # the relative perturbation is the noise itself
    assert abs(xi.mean().item()) < 0.01 and xi.std().item() == pytest.approx(0.3, rel=0.03)
    assert torch.equal(perturb_logits(logits, sigma=0.0, alpha=1.0)[0], logits)
    assert torch.equal(perturb_logits(logits, sigma=1.0, alpha=0.0)[0], logits)


def test_expected_loss_adds_a_sigma_squared_penalty() -> None:
    # E_xi 1/2 |s - (1 + xi) z|^2 = 1/2 |s - z|^2 + sigma^2/2 |z|^2 (alpha = 1): the regulariser reading.
    gen = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(1, 5, generator=gen), torch.randn(1, 5, generator=gen)
    sigma = 0.5
    draws = perturb_logits(teacher.expand(200000, 5), sigma, 1.0, generator=gen)[0]  # (200000, 5)
    monte_carlo = mimic_loss(student.expand(200000, 5), draws)  # the batch mean is the Monte Carlo average
    expected = mimic_loss(student, teacher) + 0.5 * sigma**2 * teacher.pow(2).sum()
    assert monte_carlo.item() == pytest.approx(expected.item(), rel=0.02)
    assert monte_carlo.item() > mimic_loss(student, teacher).item() * 1.05


def test_zero_noise_is_plain_mimic_and_kd_mode_uses_labels() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    _, losses = NoisyTeacher(student, teacher, Config(sigma=0.0)).forward_train(x, y)
    assert torch.allclose(losses["mimic"], mimic_loss(student(x), teacher(x)))
    _, noisy = NoisyTeacher(student, teacher, Config(sigma=0.5, alpha=1.0)).forward_train(x, y)
    assert not torch.allclose(noisy["mimic"], losses["mimic"])
    _, kd = NoisyTeacher(student, teacher, Config(loss="kd")).forward_train(x, y)
    assert set(kd) == {"ce", "kd"}
    with pytest.raises(ValueError):
        NoisyTeacher(student, teacher, Config(loss="kd")).forward_train(x, teacher(x).detach())


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    # MNIST-1D comes from the user cache (generated once, offline, when missing).
    from implementations._runner import make_context
    from implementations.distillation.noisyteacher_sau2016 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run noisyteacher_sau2016 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    m = {row.name: row.accuracy.mean for row in result.rows}
    assert {"teacher", "mimic", "noisy_sigma0p3", "kd", "kd_noisy"} <= set(m)
    assert result.claim.reproduced == (m["noisy_sigma0p3"] > m["mimic"])
    assert len(result.answers) == 2
