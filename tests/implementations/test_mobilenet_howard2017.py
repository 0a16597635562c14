"""Paper properties of MobileNets (Howard et al., 2017): separable-conv cost, alpha / rho, pruning, quick run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from implementations._measure import count_flops, count_params
from implementations.architecture.mobilenet_howard2017 import (
    TINY,
    Config,
    DepthwiseSeparableConv,
    MobileNet,
    cost_ratio,
    depthwise_separable_cost,
    prune_to_width,
    standard_conv_cost,
)


def test_separable_over_standard_cost_is_one_over_n_plus_one_over_dk_squared() -> None:
    # Eq. 5, counted by torch's FLOP counter (BatchNorm and ReLU are not counted): M=8, N=16, D_F=6, D_K=3.
    m, n, d_f = 8, 16, 6
    x = torch.randn(1, m, d_f, d_f)
    separable = count_flops(DepthwiseSeparableConv(m, n), x)
    standard = count_flops(nn.Conv2d(m, n, 3, padding=1, bias=False), x)
    assert separable == 2 * depthwise_separable_cost(3, m, n, d_f) == 2 * (9 * 8 * 36 + 8 * 16 * 36)
    assert standard == 2 * standard_conv_cost(3, m, n, d_f)
    assert separable / standard == pytest.approx(cost_ratio(3, n), rel=1e-12)
    assert separable / standard == pytest.approx(1 / 16 + 1 / 9, rel=1e-12)
    # parameters: D_K^2 M depthwise + M N pointwise weights, plus 2 BN affine parameters per channel
    assert count_params(DepthwiseSeparableConv(m, n)) == 9 * m + m * n + 2 * m + 2 * n


@pytest.mark.parametrize(("alpha", "rho"), [(1.0, 1.0), (0.5, 1.0), (1.0, 0.5), (0.5, 0.5)])
def test_network_flops_follow_eq7_for_width_and_resolution_multipliers(alpha: float, rho: float) -> None:
    cfg = Config(width_multiplier=alpha, resolution_multiplier=rho)
    side = cfg.image_size  # D_F at rho = 1
    expected = standard_conv_cost(3, 1, round(cfg.stem_channels * alpha), round(rho * side))  # full 3x3 stem
    m = cfg.stem_channels
    for n, stride in cfg.blocks:
        side = (side - 1) // stride + 1
        # Eq. 7: D_K^2 aM (rho D_F)^2 + aM aN (rho D_F)^2
        expected += depthwise_separable_cost(3, m, n, side, alpha=alpha, rho=rho)
        m = n
    expected += round(m * alpha) * cfg.num_classes  # linear classifier on the pooled features
    assert count_flops(MobileNet(cfg), torch.zeros(1, 1, 8, 8)) == 2 * expected
    # the full-convolution baseline has the same layout with D_K^2 M N D_F^2 per block
    full = count_flops(MobileNet(replace(cfg, full_conv=True)), torch.zeros(1, 1, 8, 8))
    assert full > 4 * count_flops(MobileNet(cfg), torch.zeros(1, 1, 8, 8))


def test_pruning_to_width_keeps_the_largest_bn_scales() -> None:
    torch.manual_seed(0)
    big = MobileNet(TINY).eval()
    # Zero the BN scale and shift of every other channel of each non-depthwise layer: those channels output
    # ReLU(0) = 0, so removing exactly them must leave the logits unchanged.
    for seq in [big.stem] + [block.pointwise for block in big.blocks]:
        bn = seq[1]
        with torch.no_grad():
            bn.weight.copy_(torch.rand(bn.num_features) + 0.5)
            bn.weight[1::2] = 0.0
            bn.bias[1::2] = 0.0
    small = prune_to_width(big, 0.5).eval()
    assert count_params(small) == count_params(MobileNet(replace(TINY, width_multiplier=0.5)))
    assert torch.equal(small.stem[0].weight, big.stem[0].weight[0::2])
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(small(x), big(x), atol=1e-5)


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.architecture.mobilenet_howard2017 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    data = reproduce(make_context("quick", results_dir=tmp_path / "results", device="cpu"))
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run mobilenet_howard2017 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    conv, sep = result.row("conv_mobilenet"), result.row("mobilenet")
    assert sep.flops < conv.flops / 4 and sep.params < conv.params / 4
    assert result.row("pruned_a050").params == result.row("mobilenet_a050").params
    assert len(result.answers) == 2 and result.figures == ["results/figures/mobilenet_howard2017_tradeoff.png"]
    assert (tmp_path / "results" / "figures" / "mobilenet_howard2017_tradeoff.png").stat().st_size > 1000
