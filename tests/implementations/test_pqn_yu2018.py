"""Paper properties of the Product Quantization Network (Yu et al., 2018): soft PQ, asymmetric search and loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations.quantization._base import kmeans
from implementations.quantization.pqn_yu2018 import (
    ProductQuantizer,
    asymmetric_similarity,
    asymmetric_triplet_loss,
    retrieval_metrics,
    soft_product_quantize,
)


def test_soft_assignment_tends_to_hard_pq_and_to_the_codeword_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    pq = ProductQuantizer(dim=6, subspaces=3, codewords=4, alpha=1.0)
    x = torch.randn(5, 6, generator=gen)
    hard = pq.decode(pq.encode(x))  # (5, 6)
    # each hard sub-vector is the nearest codeword of its subspace
    for j in range(3):
        dist = torch.cdist(x[:, 2 * j : 2 * j + 2], pq.codebooks[j].detach())  # (5, 4)
        assert torch.allclose(hard[:, 2 * j : 2 * j + 2], pq.codebooks[j, dist.argmin(1)])
    with torch.no_grad():
        assert torch.allclose(soft_product_quantize(x, pq.codebooks, alpha=1e6), hard, atol=1e-5)  # alpha -> inf
        mean = pq.codebooks.mean(1).flatten()  # (6,): alpha -> 0 averages the codewords uniformly
        assert torch.allclose(soft_product_quantize(x, pq.codebooks, alpha=0.0), mean.expand(5, 6), atol=1e-6)
    # finite alpha: differentiable in the features and the codewords
    x.requires_grad_(True)
    pq(x).sum().backward()
    assert x.grad.abs().sum() > 0 and pq.codebooks.grad.abs().sum() > 0


def test_asymmetric_similarity_is_the_inner_product_with_the_decoded_database() -> None:
    codebooks = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[2.0, 2.0], [-1.0, 0.0]]])  # (M=2, K=2, d=2)
    codes = torch.tensor([[0, 1], [1, 0]])  # database: [1, 0, -1, 0] and [0, 1, 2, 2]
    query = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    sim = asymmetric_similarity(query, codes, codebooks)
    assert sim.tolist() == [[1.0 - 3.0, 2.0 + 6.0 + 8.0]]
    pq = ProductQuantizer(4, 2, 2, 1.0)
    pq.codebooks.data = codebooks
    assert torch.allclose(sim, query @ pq.decode(codes).t())


def test_asymmetric_triplet_loss_by_hand() -> None:
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert asymmetric_triplet_loss(e1, e1, e2, margin=0.2).item() == 0.0  # 0.2 + 0 - 1 < 0
    assert asymmetric_triplet_loss(e1, e2, e1, margin=0.2).item() == pytest.approx(1.2)  # 0.2 + 1 - 0
    half = torch.tensor([[0.6, 0.8]])
    assert asymmetric_triplet_loss(e1, half, e2, margin=0.8).item() == pytest.approx(0.8 + 0.0 - 0.6)


def test_retrieval_metrics_and_kmeans_by_hand() -> None:
    # one query of label 1; ranking by similarity: labels [1, 0, 1, 0] -> AP = (1/1 + 2/3) / 2
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    out = retrieval_metrics(sim, torch.tensor([1]), torch.tensor([1, 0, 1, 0]), k=2)
    assert out["map"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert out["p1"] == 100.0 and out["p2"] == 50.0
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = (centres[:, None] + 0.1 * torch.randn(3, 20, 2, generator=torch.Generator().manual_seed(0))).flatten(0, 1)
    found = kmeans(points, 3, generator=torch.Generator().manual_seed(1))
    assert torch.cdist(found, centres).min(1).values.max() < 0.2


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.quantization.pqn_yu2018 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run pqn_yu2018 --quick",
            "environment": {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"},
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    pqn, posthoc, weights = result.row("pqn"), result.row("pq_posthoc"), result.row("weight_soft")
    # database of 500 items: 16-bit codes + 4 codebooks x 16 codewords x 8 fp32 values
    assert pqn.bytes == posthoc.bytes == 16 * 500 // 8 + 4 * 16 * 8 * 4 and pqn.extra["code_bits"] == 16
    assert result.row("float").bytes == 32 * 4 * 500 and pqn.bits == 0.5
    # embedding net (cnn1d width 0.5 -> 32-d): 13072 parameters; its 160 x 32 last-layer weight becomes 160 columns
    # of 16-bit codes + the fp32 codebooks; the other 13072 - 5120 parameters stay fp32
    assert weights.params == 13072 and weights.bits == 0.5
    assert weights.bytes == 4 * (13072 - 5120) + 160 * 16 // 8 + 4 * 16 * 8 * 4
    assert pqn.latency_ms > 0 and result.row("float").latency_ms > 0 and weights.latency_ms is None
    assert result.answers and "weight codebooks" in result.answers[0].question
