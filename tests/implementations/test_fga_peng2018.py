"""Paper properties of filter group approximation (Peng et al., 2018): exact at full rank, Eckart-Young error,
FLOPs R C k^2 + N g R, and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from implementations._measure import count_flops
from implementations.low_rank._base import svd_conv
from implementations.low_rank.fga_peng2018 import FilterGroupApproximation, fga_cost, rank_for_budget


def _effective_weight(layer: FilterGroupApproximation) -> torch.Tensor:
    """The (N, C, k, k) kernel the group conv + 1x1 conv computes: column block j is P_j F_j."""
    f = layer.group_conv.weight  # (gR, C/g, k, k)
    p = layer.pointwise.weight[:, :, 0, 0]  # (N, gR)
    g, r = layer.groups, layer.rank
    blocks = [torch.einsum("nr,rcij->ncij", p[:, j * r : (j + 1) * r], f[j * r : (j + 1) * r]) for j in range(g)]
    return torch.cat(blocks, dim=1)


def test_full_rank_approximation_is_exact() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, stride=2, padding=1, bias=True)
    x = torch.randn(2, 8, 7, 7)
    for groups in (1, 2, 4):
        layer = FilterGroupApproximation.from_conv(conv, groups, rank=6)  # rank of W_j <= min(N, (C/g) k^2) = 6
        assert torch.allclose(layer(x), conv(x), atol=1e-5)
        assert layer.group_conv.groups == groups and layer.group_conv.out_channels == 6 * groups


def test_truncation_error_is_the_discarded_singular_values() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1, bias=False)
    groups, rank = 2, 3
    layer = FilterGroupApproximation.from_conv(conv, groups, rank)
    # Eckart-Young per group: ||W_j - P_j F_j||_F^2 = sum_{i > R} sigma_{j,i}^2, summed over the groups
    expected = sum(
        (torch.linalg.svdvals(w_j.reshape(12, -1))[rank:] ** 2).sum() for w_j in conv.weight.detach().chunk(groups, 1)
    )
    error = ((_effective_weight(layer) - conv.weight) ** 2).sum()
    assert torch.allclose(error, expected, rtol=1e-4)
    x = torch.randn(2, 8, 5, 5)
    assert torch.allclose(layer(x), F.conv2d(x, _effective_weight(layer), padding=1), atol=1e-5)
    # g = 1 is the channel-wise SVD
    assert torch.allclose(FilterGroupApproximation.from_conv(conv, 1, rank)(x), svd_conv(conv, rank)(x), atol=1e-5)


def test_flops_follow_r_c_k2_plus_n_g_r() -> None:
    c, n, k, side = 32, 64, 3, 4
    for groups in (1, 2, 4, 8):
        rank = rank_for_budget(c, n, k, groups, 0.2)
        assert fga_cost(c, n, k, groups, rank) <= 0.2 * n * c * k * k < fga_cost(c, n, k, groups, rank + 1)
        layer = FilterGroupApproximation(c, n, k, groups, rank, padding=1)
        assert count_flops(layer, torch.zeros(1, c, side, side)) == 2 * side * side * (rank * c * 9 + n * groups * rank)
    assert [rank_for_budget(c, n, k, g, 0.2) for g in (1, 2, 4, 8)] == [10, 8, 6, 4]


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.low_rank.fga_peng2018 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    data = reproduce(make_context("quick", results_dir=tmp_path / "results", device="cpu"))
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run fga_peng2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert all(result.row(f"g{g}").extra["conv_flops_share"] <= 0.2 for g in (1, 2, 4, 8))
    assert result.row("g4").flops < result.row("original").flops / 3
    assert result.answers and result.figures == ["results/figures/fga_peng2018_tradeoff.png"]
