"""Paper properties of value-aware quantization (Park et al., 2018) and of the family's absmax quantizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations.quantization._base import dequantize, fake_quantize, quantize, round_ste
from implementations.quantization.vaq_park2018 import clip_quantize, quantize_model, value_aware_quantize


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_absmax_quantizer_levels_error_and_requantization(bits: int) -> None:
    w = torch.randn(4, 32, generator=torch.Generator().manual_seed(bits))
    w[2] = 0.0  # an all-zero group
    q, scale = quantize(w, bits, group_size=32)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and int(q.abs().max()) == qmax and scale.shape == (4,)
    assert torch.equal(q[2], torch.zeros(32, dtype=torch.int8))  # all-zero group -> codes 0, no NaN
    assert torch.allclose(scale[[0, 1, 3]], w[[0, 1, 3]].abs().amax(1) / qmax)
    w_hat = dequantize(q, scale, group_size=32)
    assert torch.all((w_hat - w).abs().view(4, 32) <= scale[:, None] / 2 + 1e-7)  # |deq(q(w)) - w| <= s / 2
    q2, scale2 = quantize(w_hat, bits, group_size=32)
    assert torch.equal(q2, q) and torch.allclose(dequantize(q2, scale2, 32), w_hat)  # idempotent
    assert len(torch.unique(q)) <= 2 * qmax + 1


def test_straight_through_estimator() -> None:
    x = torch.tensor([0.2, 1.7, -2.5], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == [0.0, 2.0, -2.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]
    w = torch.randn(10, requires_grad=True)
    fake_quantize(w, 4).pow(2).sum().backward()
    assert torch.allclose(w.grad, 2 * fake_quantize(w.detach(), 4))  # d(w_hat^2)/dw with d w_hat / dw = 1


def test_large_values_are_kept_and_bulk_uses_the_threshold_range() -> None:
    x = torch.tensor([0.1, -0.2, 0.05, 9.0, -0.3, 0.25, -7.0, 0.15, 0.0, -0.12])
    x_hat, large, step = value_aware_quantize(x, bits=3, ratio=0.2)  # ceil(0.2 * 10) = 2 kept
    assert large.tolist() == [False] * 3 + [True] + [False] * 2 + [True] + [False] * 3
    assert x_hat[3] == 9.0 and x_hat[6] == -7.0
    assert torch.isclose(step, torch.tensor(0.3 / 3))  # tau = 0.3 (third largest |x|), q_max = 2^(3-1) - 1
    bulk = ~large
    assert torch.all((x_hat[bulk] - x[bulk]).abs() <= step / 2 + 1e-7)
    clipped = clip_quantize(x, bits=3, ratio=0.2)
    assert clipped[3] == pytest.approx(0.3) and clipped[6] == pytest.approx(-0.3)
    # r = 0 is the absmax uniform quantizer of the family base
    w = torch.randn(64)
    q, scale = quantize(w, 4)
    assert torch.allclose(value_aware_quantize(w, 4, 0.0)[0], dequantize(q, scale))
    # non-negative input (after ReLU): 2^b levels on [0, tau]
    relu = torch.relu(torch.randn(1000, generator=torch.Generator().manual_seed(0)))
    out, kept, step = value_aware_quantize(relu, 2, 0.01)
    assert int(kept.sum()) == 10 and len(torch.unique(out[~kept])) == 4 and out.min() == 0


def test_quantized_model_hooks_inputs_but_not_the_first_layer() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)).eval()
    quantized, kept = quantize_model(model, bits=2, ratio=0.1)
    assert kept == 3 + 2  # ceil(0.1 * 30) + ceil(0.1 * 12)
    assert len(quantized[0]._forward_pre_hooks) == 0 and len(quantized[2]._forward_pre_hooks) == 1
    assert len(torch.unique(model[0].weight)) == 30 and len(torch.unique(quantized[0].weight)) <= 3 + 3


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.quantization.vaq_park2018 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run vaq_park2018 --quick",
            "environment": {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"},
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"fp", "uniform_w4a4", "vaq_w4a4_r1", "clip_w4a4_r1", "vaq_w3a3_r0p5"} <= {r.name for r in result.rows}
    vaq, uniform = result.row("vaq_w4a4_r1"), result.row("uniform_w4a4")
    fp_gap = result.row("fp").accuracy.mean - vaq.accuracy.mean
    # both halves: beats uniform (one seed in quick: direction only) and within 1 point of full precision
    assert result.claim.reproduced == (vaq.accuracy.mean > uniform.accuracy.mean and fp_gap <= 1.0)
    assert vaq.bytes > uniform.bytes and vaq.extra["kept_weights"] > 0  # the kept values cost storage
