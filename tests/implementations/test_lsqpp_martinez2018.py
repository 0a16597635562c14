"""Paper properties of LSQ / LSQ++ multi-codebook quantization (Martinez et al., 2018)."""

from __future__ import annotations

from pathlib import Path

import torch

from implementations.quantization.lsqpp_martinez2018 import (
    adc_distances,
    decode,
    icm_encode,
    pq_train,
    quantization_error,
    sr_d_perturb,
    update_codebooks,
)


def test_least_squares_codebook_update_is_exact_and_fast_equals_dense() -> None:
    gen = torch.Generator().manual_seed(0)
    codebooks = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)  # (M, K, D)
    codes = torch.randint(0, 4, (200, 3), generator=gen)
    x = decode(codes, codebooks)  # data that an additive quantizer represents exactly
    # B^T B is singular (a constant can move between codebooks); the tiny ridge picks one solution
    fast = update_codebooks(x, codes, 4, ridge=1e-7, fast=True)
    dense = update_codebooks(x, codes, 4, ridge=1e-7, fast=False)
    assert torch.allclose(decode(codes, fast), decode(codes, dense), atol=1e-6)  # same reconstruction
    assert quantization_error(x, codes, fast).max() < 1e-6  # codebooks are only defined up to shifts between books
    noisy = x + 0.1 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    best = update_codebooks(noisy, codes, 4, ridge=1e-7)
    worse = best + 0.05 * torch.randn(best.shape, generator=gen, dtype=torch.float64)
    assert quantization_error(noisy, codes, best).sum() < quantization_error(noisy, codes, worse).sum()


def test_icm_reaches_a_local_minimum_and_ils_never_increases_the_error() -> None:
    gen = torch.Generator().manual_seed(1)
    codebooks = torch.randn(3, 5, 6, generator=gen)
    x = torch.randn(40, 6, generator=gen)
    start = torch.randint(0, 5, (40, 3), generator=gen)
    codes = icm_encode(x, start, codebooks, ils=1, icm=10, npert=0, generator=gen)  # plain ICM to convergence
    err = quantization_error(x, codes, codebooks)
    assert torch.all(err <= quantization_error(x, start, codebooks) + 1e-5)
    for m in range(3):  # no single code change lowers the error: conditional modes
        for k in range(5):
            moved = codes.clone()
            moved[:, m] = k
            assert torch.all(quantization_error(x, moved, codebooks) >= err - 1e-4)
    perturbed = icm_encode(x, codes, codebooks, ils=5, icm=2, npert=2, generator=gen)
    assert torch.all(quantization_error(x, perturbed, codebooks) <= err + 1e-6)  # ILS keeps only improvements


def test_asymmetric_distance_ranks_like_the_distance_to_the_reconstruction() -> None:
    gen = torch.Generator().manual_seed(2)
    codebooks = torch.randn(2, 3, 4, generator=gen)
    codes = torch.tensor([[0, 1], [2, 2], [1, 0]])
    queries = torch.randn(5, 4, generator=gen)
    exact = torch.cdist(queries, decode(codes, codebooks)) ** 2  # (5, 3)
    assert torch.allclose(
        adc_distances(queries, codes, codebooks) + (queries**2).sum(1, keepdim=True), exact, atol=1e-4
    )


def test_sr_d_noise_follows_the_decaying_schedule_and_pq_is_block_structured() -> None:
    gen = torch.Generator().manual_seed(3)
    codebooks = torch.randn(4, 64, 3, generator=gen) * torch.tensor([1.0, 2.0, 4.0])
    assert torch.equal(sr_d_perturb(codebooks, 10, 10, 0.5, gen), codebooks)  # (1 - T/T)^p = 0
    noise = torch.stack([sr_d_perturb(codebooks, 0, 10, 0.5, gen) - codebooks for _ in range(200)])
    expected = codebooks.reshape(-1, 3).std(0) / 4  # std_j(C) / M at t = 0
    assert torch.allclose(noise.reshape(-1, 3).std(0), expected, rtol=0.05)
    later = torch.stack([sr_d_perturb(codebooks, 3, 4, 0.5, gen) - codebooks for _ in range(200)])
    assert torch.allclose(later.reshape(-1, 3).std(0), expected * 0.25**0.5, rtol=0.05)
    x = torch.randn(100, 6, generator=gen)
    codes, books = pq_train(x, 3, 4, gen)
    assert torch.all(books[0, :, 2:] == 0) and torch.all(books[1][:, [0, 1, 4, 5]] == 0)
    for j in range(3):  # each sub-vector is quantized to its nearest centroid
        part = x[:, 2 * j : 2 * j + 2]
        assert torch.equal(codes[:, j], torch.cdist(part, books[j, :, 2 * j : 2 * j + 2]).argmin(1))


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.quantization.lsqpp_martinez2018 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run lsqpp_martinez2018 --quick",
            "environment": {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"},
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    pq, lsqpp, exact = result.row("pq"), result.row("lsqpp"), result.row("exact")
    assert pq.extra["code_bytes"] == lsqpp.extra["code_bytes"] == 32 * 500 // 8  # equal code length
    # + fp32 codebooks of 160-d features: PQ's K x D entries, the additive quantizers' M x K x D
    assert pq.bytes == 2000 + 4 * 16 * 160 and lsqpp.bytes == 2000 + 4 * 8 * 16 * 160
    assert exact.bytes == 4 * 160 * 500 and exact.accuracy.mean == 100.0
    assert pq.latency_ms > 0 and lsqpp.latency_ms > 0 and exact.latency_ms > 0
    assert lsqpp.extra["error"] < pq.extra["error"]  # local search starts from PQ and only improves
    assert result.answers and "weights" in result.answers[0].question
