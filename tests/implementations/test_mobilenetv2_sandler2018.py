"""Paper properties of MobileNetV2 (Sandler et al., 2018): block cost and size, linear bottleneck, shortcut."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations._measure import count_flops, count_params
from implementations.architecture.mobilenetv2_sandler2018 import (
    Config,
    InvertedResidual,
    MobileNetV2,
    bottleneck_cost,
)


def test_block_cost_and_parameters_follow_the_paper() -> None:
    # Sec. 3.3: h w t k (k + 9 + k') multiply-adds for stride 1 (BN and the shortcut add are not counted).
    h = w = 5
    k, k_out, t = 8, 12, 6
    block = InvertedResidual(k, k_out, stride=1, t=t)
    assert count_flops(block, torch.zeros(1, k, h, w)) == 2 * bottleneck_cost(h, w, k, k_out, t)
    assert bottleneck_cost(h, w, k, k_out, t) == 25 * 48 * (8 + 9 + 12)
    # weights k*tk + 9*tk + tk*k', plus the BN scale and shift of each of the three layers
    assert count_params(block) == k * t * k + 9 * t * k + t * k * k_out + 2 * (t * k + t * k + k_out)
    # t = 1 drops the expansion layer (Table 2, first row)
    assert count_params(InvertedResidual(k, k_out, 1, t=1)) == 9 * k + k * k_out + 2 * (k + k_out)


def test_shortcut_joins_the_thin_ends_only_when_shapes_match() -> None:
    x = torch.randn(2, 8, 6, 6)
    same = InvertedResidual(8, 8, stride=1, t=6).eval()
    with torch.no_grad():  # a zero projection makes the residual branch vanish
        same.project[1].weight.zero_()
        same.project[1].bias.zero_()
    assert same.use_residual and torch.equal(same(x), x)
    assert not InvertedResidual(8, 8, stride=2, t=6).use_residual
    assert not InvertedResidual(8, 12, stride=1, t=6).use_residual
    assert InvertedResidual(8, 12, stride=2, t=6)(x).shape == (2, 12, 3, 3)


def test_linear_bottleneck_keeps_negative_outputs_relu6_does_not() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 8, 6, 6)
    linear = InvertedResidual(8, 12, 1, t=6, linear=True).eval()
    relu = InvertedResidual(8, 12, 1, t=6, linear=False).eval()
    relu.load_state_dict(linear.state_dict())  # same weights, only the nonlinearity after P differs
    y_lin, y_relu = linear(x), relu(x)
    assert (y_lin < 0).any() and (y_relu >= 0).all() and (y_relu <= 6).all()
    assert torch.allclose(y_relu, y_lin.clamp(0, 6))
    assert count_params(MobileNetV2(Config(linear_bottleneck=False))) == count_params(MobileNetV2())


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.architecture.mobilenetv2_sandler2018 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    data = reproduce(make_context("quick", results_dir=tmp_path / "results", device="cpu"))
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run mobilenetv2_sandler2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    linear, relu, wide = result.row("mnv2_linear"), result.row("mnv2_relu6"), result.row("mnv2_t2_wide")
    assert linear.params == relu.params and abs(wide.params - linear.params) / linear.params < 0.05
    assert result.claim.reproduced == (linear.accuracy.mean > relu.accuracy.mean)
    assert len(result.answers) == 2 and result.figures == ["results/figures/mobilenetv2_sandler2018_tradeoff.png"]
