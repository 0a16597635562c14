"""Paper properties of Hessian-weighted k-means (Choi et al., 2017), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from implementations.quantization.hessianquant_choi2017 import fisher_diagonal, hessian_weighted_kmeans, index_entropy


def test_centers_are_hessian_weighted_means() -> None:
    w = torch.tensor([0.0, 1.0, 10.0, 11.0])
    h = torch.tensor([1.0, 3.0, 1.0, 1.0])
    w_hat, centers, assignment = hessian_weighted_kmeans(w, h, clusters=2)
    assert torch.allclose(centers.sort().values, torch.tensor([0.75, 10.5]))  # (0*1 + 1*3) / 4, (10 + 11) / 2
    assert torch.allclose(w_hat, torch.tensor([0.75, 0.75, 10.5, 10.5]))
    assert assignment[0] == assignment[1] != assignment[2] == assignment[3]
    _, plain, _ = hessian_weighted_kmeans(w, None, clusters=2)  # h = 1: plain k-means
    assert torch.allclose(plain.sort().values, torch.tensor([0.5, 10.5]))


def test_lloyd_iterations_never_increase_weighted_distortion() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(400, generator=gen) ** 3  # heavy tails
    h = torch.rand(400, generator=gen) ** 4
    distortions = []
    for iterations in range(6):
        w_hat, centers, _ = hessian_weighted_kmeans(w, h, clusters=4, iterations=iterations)
        assert len(set(w_hat.tolist())) <= 4 and set(w_hat.tolist()) <= set(centers.tolist())
        distortions.append(float((h * (w_hat - w) ** 2).sum()))
    assert all(b <= a + 1e-6 for a, b in zip(distortions, distortions[1:], strict=False))
    assert distortions[-1] < distortions[0]
    # weighting by h lowers the h-weighted distortion compared with plain k-means on the same data
    plain, _, _ = hessian_weighted_kmeans(w, None, clusters=4)
    assert distortions[-1] < float((h * (plain - w) ** 2).sum())


def test_fisher_diagonal_is_mean_squared_per_example_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    fisher = fisher_diagonal(model, x, y, chunk=2)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(5):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad**2 / 5
    assert all(torch.allclose(fisher[n], expected[n], atol=1e-6) for n in expected)
    squared_mean_gradient = {n: p.grad for n, p in model.named_parameters()}  # not the same thing
    assert not torch.allclose(fisher["0.weight"], squared_mean_gradient["0.weight"] ** 2)


def test_index_entropy_in_bits() -> None:
    assert abs(index_entropy(torch.tensor([0, 1, 2, 3] * 5), 4) - 2.0) < 1e-9
    assert abs(index_entropy(torch.tensor([0] * 8), 4)) < 1e-9
    assert abs(index_entropy(torch.tensor([0, 0, 0, 1]), 2) - 0.8112781) < 1e-6


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.quantization.hessianquant_choi2017 import reproduce
    from implementations.quantization.hessianquant_choi2017.experiment import SETTING
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run hessianquant_choi2017 --quick",
            "environment": {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"},
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    ks = SETTING["clusters"]
    assert {f"hw_fisher_k{k}" for k in ks} | {f"kmeans_k{k}" for k in ks} | {"fp"} <= {r.name for r in result.rows}
    assert result.claim.reproduced == all(
        result.row(f"hw_fisher_k{k}").accuracy.mean > result.row(f"kmeans_k{k}").accuracy.mean for k in ks
    )
    assert [result.row(f"kmeans_k{k}").bits for k in ks] == [2.0, 3.0, 4.0, 5.0]
    assert len(result.answers) == 2 and result.figures == ["results/figures/hessianquant_choi2017_clusters.png"]
