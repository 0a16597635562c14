"""Paper properties of Deep Compression (Han, Mao & Dally, 2016), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations.pruning.deepcompression_han2016 import (
    DeepCompression,
    huffman_code_lengths,
    huffman_decode,
    huffman_encode,
    kmeans_1d,
    relative_indices,
)


def test_huffman_lengths_are_optimal_and_the_stream_round_trips() -> None:
    # CLRS 16.3 example: frequencies a..f = 45, 13, 12, 16, 9, 5 -> lengths 1, 3, 3, 3, 4, 4 and 224 bits.
    counts = {0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5}
    lengths = huffman_code_lengths(counts)
    assert lengths == {0: 1, 1: 3, 2: 3, 3: 3, 4: 4, 5: 4}
    symbols = [s for s, c in counts.items() for _ in range(c)]
    payload, n_bits, table = huffman_encode(symbols)
    assert n_bits == 224 and len(payload) == 28  # the real byte count is ceil(bits / 8)
    assert huffman_decode(payload, n_bits, table) == symbols


def test_relative_indices_insert_filler_zeros_when_a_gap_overflows() -> None:
    # Fig. 2 of the paper uses 3-bit gaps (span 8): non-zeros at 1, 4 and 20 need fillers at 12 and then a gap of 8.
    mask = torch.zeros(24, dtype=torch.bool)
    mask[[1, 4, 20]] = True
    positions, gaps = relative_indices(mask, index_bits=3)
    assert positions.tolist() == [1, 4, 12, 20] and gaps.tolist() == [2, 3, 8, 8]
    assert not mask[12]  # the filler is a stored zero


def test_kmeans_linear_init_and_centroid_gradient_is_the_sum_over_the_cluster() -> None:
    values = torch.tensor([-1.0, -0.9, 0.1, 0.2, 0.9, 1.1])
    centroids, assignment = kmeans_1d(values, 3)
    assert torch.allclose(centroids, torch.tensor([-0.95, 0.15, 1.0])) and assignment.tolist() == [0, 0, 1, 1, 2, 2]
    # Eq. 3: dL/dC_k = sum_{ij} dL/dW_ij 1(I_ij = k); recompute dL/dW with the shared weights as leaves.
    task, x, y = DeepCompression.smoke_task()
    _, losses = task.forward_train(x, y)
    losses["ce"].backward()
    shared = {}
    for key in ("layers_0", "head"):
        codebook = torch.cat([task.centroids[key].new_zeros(1), task.centroids[key]]).detach()
        shared[key] = codebook[getattr(task, f"codes_{key}")].requires_grad_(True)
    hidden = torch.relu(x @ shared["layers_0"].T + task.model.layers[0].bias)
    torch.nn.functional.cross_entropy(hidden @ shared["head"].T + task.model.head.bias, y).backward()
    for key in ("layers_0", "head"):
        codes = getattr(task, f"codes_{key}").flatten()
        summed = torch.zeros(task.centroids[key].numel() + 1).index_add_(0, codes, shared[key].grad.flatten())
        assert torch.allclose(task.centroids[key].grad, summed[1:], atol=1e-6)
        assert (codes == 0).float().mean() == 0.5  # the 50% pruned weights use the reserved zero code


def test_encoded_sizes_shrink_stage_by_stage_and_count_real_bytes() -> None:
    task, _, _ = DeepCompression.smoke_task()
    sizes = task.encode()
    params = sum(p.numel() for p in task.model.parameters())
    assert sizes["dense"] == 4 * params
    assert sizes["dense"] > sizes["pruned"] > sizes["quantized"]
    nnz = sum(int((getattr(task, f"codes_{k}") > 0).sum()) for k in ("layers_0", "head"))
    biases = 4 * (16 + 10)
    assert sizes["pruned"] >= biases + nnz * (32 + task.cfg.index_bits) / 8


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.pruning.deepcompression_han2016 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run deepcompression_han2016 --quick",
            "environment": env,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    dense, final = result.row("wide_dense"), result.row("wide_final")
    assert final.bytes < result.row("wide_pruned").bytes < dense.bytes == 4 * dense.params
    assert final.nonzero_params < 0.15 * dense.params and final.bits == 6
    assert result.claim.reproduced == (
        final.extra["compression_ratio"] >= 10 and final.accuracy.mean >= dense.accuracy.mean - 1
    )


def test_stream_size_counts_the_table_and_falls_back_to_fixed_width() -> None:
    from implementations.pruning.deepcompression_han2016 import STREAM_HEADER_BYTES, stream_bytes

    skewed = [0] * 900 + [1] * 50 + [2] * 30 + [3] * 20  # Huffman: 900 x 1 bit + 50 x 2 + 50 x 3 bits = 1150 bits
    payload, n_bits, table = huffman_encode(skewed)
    assert n_bits == 1150 and len(table) == 4
    # 144 payload bytes + 4 symbols x (1-byte id + 1-byte length) < 1000 x 5 bits fixed
    assert stream_bytes(skewed, 5) == STREAM_HEADER_BYTES + 144 + 4 * 2
    uniform = list(range(32)) * 4  # every 5-bit symbol equally often: Huffman cannot beat 5 bits, plus its table
    assert stream_bytes(uniform, 5) == STREAM_HEADER_BYTES + 128 * 5 // 8  # the fixed-width form is stored
