"""Properties of Tucker-2 / SVD low-rank decomposition (KTH degree project, 2018): exactness at full rank, the
HOSVD error bound, the cost C R1 + R1 R2 k^2 + R2 N, which layers are replaced, and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations._measure import count_flops, count_params
from implementations.low_rank._base import base_cnn, svd_linear, tucker2_conv
from implementations.low_rank.lowrank_kth2018 import Config, low_rank_decompose


def _tucker_weight(seq: nn.Sequential) -> torch.Tensor:
    """W_hat[n, c] = sum_{r1, r2} V[n, r2] G[r2, r1] U[c, r1] from the three conv layers."""
    u, g, v = seq[0].weight[:, :, 0, 0], seq[1].weight, seq[2].weight[:, :, 0, 0]  # (R1, C), (R2, R1, k, k), (N, R2)
    return torch.einsum("nr,rsij,sc->ncij", v, g, u)


def test_tucker2_is_exact_at_full_rank_and_within_the_hosvd_bound() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=True)
    x = torch.randn(2, 6, 7, 7)
    assert torch.allclose(tucker2_conv(conv, (6, 8))(x), conv(x), atol=1e-5)
    w = conv.weight.detach()
    seq = tucker2_conv(conv, (3, 4))
    error = ((_tucker_weight(seq) - w) ** 2).sum()
    discarded_in = (torch.linalg.svdvals(w.transpose(0, 1).reshape(6, -1))[3:] ** 2).sum()
    discarded_out = (torch.linalg.svdvals(w.reshape(8, -1))[4:] ** 2).sum()
    assert max(discarded_in, discarded_out) - 1e-5 <= error <= discarded_in + discarded_out + 1e-5
    assert seq[1].stride == (2, 2) and seq[0].kernel_size == seq[2].kernel_size == (1, 1)


def test_tucker2_cost_and_svd_linear_optimality() -> None:
    c, n, r1, r2, side = 16, 32, 4, 8, 5
    seq = tucker2_conv(nn.Conv2d(c, n, 3, padding=1, bias=False), (r1, r2))
    assert count_flops(seq, torch.zeros(1, c, side, side)) == 2 * side * side * (c * r1 + r1 * r2 * 9 + r2 * n)
    assert count_params(seq) == c * r1 + r1 * r2 * 9 + r2 * n
    torch.manual_seed(0)
    layer = nn.Linear(10, 7)
    low = svd_linear(layer, 3)
    singular = torch.linalg.svdvals(layer.weight.detach())
    error = ((low[1].weight @ low[0].weight - layer.weight) ** 2).sum()
    assert torch.allclose(error, (singular[3:] ** 2).sum(), rtol=1e-4)  # Eckart-Young
    x = torch.randn(4, 10)
    assert torch.allclose(svd_linear(layer, 7)(x), layer(x), atol=1e-5)


def test_decompose_replaces_the_multichannel_convs_only() -> None:
    torch.manual_seed(0)
    model = base_cnn()
    small = low_rank_decompose(model, Config(rank_ratio=0.25))
    assert isinstance(small.stages[0][0], nn.Conv2d)  # one input channel: nothing to compress
    for stage, (c, n) in zip(small.stages[1:], [(32, 64), (64, 128)], strict=True):
        seq = stage[1]
        assert [m.weight.shape for m in seq] == [(c // 4, c, 1, 1), (n // 4, c // 4, 3, 3), (n, n // 4, 1, 1)]
    assert isinstance(model.stages[1][1], nn.Conv2d)  # the original is left untouched
    with_linear = low_rank_decompose(model, Config(decompose_linear=True, linear_rank_ratio=0.5))
    assert [m.weight.shape for m in with_linear.head] == [(5, 128), (10, 5)]
    assert small(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.low_rank.lowrank_kth2018 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    data = reproduce(make_context("quick", results_dir=tmp_path / "results", device="cpu"))
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run lowrank_kth2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {row.name for row in result.rows} == {
        "original",
        "decomposed",
        "retrain_n50",
        "retrain_n200",
        "retrain_n500",
    }
    assert result.row("retrain_n500").flops < result.row("original").flops / 4
    assert result.answers and result.figures == ["results/figures/lowrank_kth2018_tradeoff.png"]
