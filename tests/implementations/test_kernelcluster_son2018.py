"""Paper properties of kernel clustering (Son et al., 2018): k-means, shared kernels, summed centroid gradients,
storage, and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from implementations.low_rank.kernelcluster_son2018 import KernelClustering, cluster_kernels, kmeans, storage_bytes


def test_kmeans_recovers_separated_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(20)
    points = centers[labels] + 0.1 * torch.randn(60, 2, generator=gen)
    centroids, assign = kmeans(points, 3, iters=20, seed=1)
    for j in range(3):  # one centroid per true cluster, equal to its mean, and the partition is recovered
        members = assign == assign[labels == j][0]
        assert torch.equal(members, labels == j)
        assert torch.allclose(centroids[assign[labels == j][0]], points[members].mean(0), atol=1e-5)


def test_shared_kernels_nearest_centroid_and_exact_when_k_covers_all() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = KernelClustering.from_conv(conv, num_clusters=5)
    kernels = conv.weight.detach().flatten(0, 1).flatten(1)  # (12, 9)
    nearest = torch.cdist(kernels, layer.codebook.detach().flatten(1)).argmin(dim=1)
    assert torch.equal(layer.assignment.flatten(), nearest) and layer.codebook.shape == (5, 3, 3)
    assert torch.equal(layer.weight, layer.codebook[layer.assignment])
    assert torch.unique(layer.weight.detach().flatten(0, 1), dim=0).shape[0] <= 5
    exact = KernelClustering.from_conv(conv, num_clusters=12)  # K = N C: every kernel is its own centroid
    x = torch.randn(2, 3, 6, 6)
    assert torch.allclose(exact(x), conv(x), atol=1e-5)


def test_centroid_gradient_is_the_sum_over_its_kernels() -> None:
    torch.manual_seed(0)
    layer = KernelClustering.from_conv(nn.Conv2d(4, 6, 3, bias=False), num_clusters=3)
    x = torch.randn(2, 4, 5, 5)
    layer(x).square().sum().backward()
    weight = layer.weight.detach().requires_grad_(True)  # the same kernels as free weights
    F.conv2d(x, weight).square().sum().backward()
    for j in range(3):
        expected = weight.grad[layer.assignment == j].sum(dim=0)  # sum over the kernels sharing centroid j
        assert torch.allclose(layer.codebook.grad[j], expected, atol=1e-4)


def test_storage_is_codebook_plus_index_bits() -> None:
    layer = KernelClustering.from_conv(nn.Conv2d(8, 16, 3, bias=False), num_clusters=16)
    assert layer.storage_bits() == 32 * 16 * 9 + 8 * 16 * 4  # K k^2 floats + NC ceil(log2 K) bits
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16))
    clustered = cluster_kernels(model, 16, iters=5)
    # codebook + indices + the conv bias (fp32), plus the BN affine parameters as fp32
    assert storage_bytes(clustered) == (32 * 16 * 9 + 8 * 16 * 4 + 32 * 16) // 8 + 4 * 32
    assert storage_bytes(model) == 4 * (16 * 8 * 9 + 16 + 32)


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.low_rank.kernelcluster_son2018 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    data = reproduce(make_context("quick", results_dir=tmp_path / "results", device="cpu"))
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run kernelcluster_son2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    sizes = [result.row(f"k{k}").bytes for k in (4, 16, 64, 256)]
    assert sizes == sorted(sizes) and sizes[-1] < result.row("original").bytes / 5
    assert result.answers and result.figures == ["results/figures/kernelcluster_son2018_tradeoff.png"]
