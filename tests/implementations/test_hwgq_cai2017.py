"""Paper properties of the half-wave Gaussian quantizer (Cai et al., 2017), and the quick reproduction."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from implementations.quantization.hwgq_cai2017 import (
    HWGQ,
    Config,
    binary_weight,
    half_gaussian_levels,
    half_gaussian_mse,
)


def test_levels_fitted_to_the_half_gaussian() -> None:
    assert abs(float(half_gaussian_levels(1)[0]) - math.sqrt(2 / math.pi)) < 1e-9  # E[x | x > 0]
    uniform = half_gaussian_levels(2, uniform=True)
    assert torch.allclose(uniform, 0.538 * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), atol=3e-3)  # Sec. 4
    step = float(uniform[0])
    for delta in (-0.02, 0.02):  # the fitted step minimises the expected squared error
        assert half_gaussian_mse(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) * (step + delta)) > (
            half_gaussian_mse(uniform)
        )
    nonuniform = half_gaussian_levels(2, uniform=False)
    assert half_gaussian_mse(nonuniform) < half_gaussian_mse(uniform)
    # Monte-Carlo check of the closed-form error
    x = torch.randn(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x[x > 0]
    q = HWGQ(Config(bits=2, uniform=True)).double().quantize(x)
    assert abs(float(((q - x) ** 2).mean()) - float(half_gaussian_mse(uniform))) < 2e-3


def test_forward_is_half_wave_and_backward_follows_the_surrogate() -> None:
    quantizer = HWGQ(Config(bits=2, uniform=True, backward="clipped"))
    q1, q2, q3 = quantizer.levels.tolist()
    x = torch.tensor([-2.0, 0.0, 0.1, 1.5 * q1 - 1e-4, 1.5 * q1 + 1e-4, 2.5 * q1 + 1e-4, 4.0], requires_grad=True)
    out = quantizer(x)
    assert torch.allclose(out, torch.tensor([0.0, 0.0, q1, q1, q2, q3, q3]))
    out.sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # clipped ReLU: 0 above q_m
    for backward, top_grad in (("relu", 1.0), ("log", 1.0 / (4.0 - (q3 - 1.0)))):
        x.grad = None
        HWGQ(Config(backward=backward))(x).sum().backward()
        assert x.grad[:2].tolist() == [0.0, 0.0] and abs(float(x.grad[-1]) - top_grad) < 1e-6


def test_binary_weights_use_the_mean_magnitude_per_channel() -> None:
    w = torch.tensor([[0.2, -0.4, 0.6], [-1.0, 1.0, 0.0]], requires_grad=True)
    out = binary_weight(w)
    assert torch.allclose(out, torch.tensor([[0.4, -0.4, 0.4], [-2 / 3, 2 / 3, 2 / 3]]))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.quantization.hwgq_cai2017 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run hwgq_cai2017 --quick",
            "environment": {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"},
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"fp", "bw_relu", "bw_hwgq_clipped", "bw_hwgq_relu", "bw_hwgq_log"} <= {r.name for r in result.rows}
    clipped, relu = result.row("bw_hwgq_clipped").accuracy.mean, result.row("bw_hwgq_relu").accuracy.mean
    assert result.claim.reproduced == (clipped > relu)
    assert result.row("bw_hwgq_clipped").extra["activation_bits"] == 2.0
    assert "Gaussian" in result.answers[0].question
