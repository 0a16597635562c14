r"""Clustering Convolutional Kernels to Compress Deep Neural Networks (Son, Nah & Lee, 2018).

Paper: [ECCV 2018](http://openaccess.thecvf.com/content_ECCV_2018/papers/Sanghyun_Son_Clustering_Kernels_for_ECCV_2018_paper.pdf)
· notes: `papers/kernelcluster_son2018.md`

A convolution $W \in \mathbb{R}^{N \times C \times k \times k}$ holds $NC$ spatial kernels $w_{nc} \in
\mathbb{R}^{k \times k}$. k-means over them finds a codebook of $K \ll NC$ centroids,

$$
\min_{\{c_j\},\, a} \sum_{n, c} \lVert w_{nc} - c_{a(n, c)} \rVert_2^2, \qquad \hat w_{nc} = c_{a(n, c)},
$$

so the layer stores $K k^2$ floats plus $NC \lceil \log_2 K \rceil$ bits of indices instead of $NC k^2$ floats.
Fine-tuning keeps the assignments fixed and trains the centroids; since $\hat W$ is a gather of the codebook, the
centroid gradient is the sum of the gradients of the kernels that share it,
$\partial \mathcal{L} / \partial c_j = \sum_{a(n, c) = j} \partial \mathcal{L} / \partial \hat w_{nc}$.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.low_rank._base import ceil_log2, conv_layers, replace_module

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "KernelClustering", "cluster_kernels", "kmeans", "recalibrate_bn", "reproduce", "storage_bytes"]


@dataclass(frozen=True)
class Config:
    """Clustering and fine-tuning settings of the small-scale reproduction."""

    num_clusters: int = 16  # $K$ centroids per layer, the method row (the sweep also runs 4 and 64)
    kmeans_iters: int = 30  # Lloyd iterations after k-means++ seeding
    finetune_epochs: int = 3  # fine-tuning of the centroids after clustering
    finetune_lr: float = 1e-3  # peak lr of the fine-tuning, with AdamW (see `reproduce`)


def kmeans(points: Tensor, k: int, iters: int = 30, seed: int = 0) -> tuple[Tensor, Tensor]:
    r"""k-means++ seeding then Lloyd iterations; an emptied cluster is re-seeded with the worst-fitted point.

    Args:
        points: `(P, D)` vectors.
        k: Number of clusters $K \le P$.
        iters: Lloyd iterations.
        seed: Seeds the k-means++ draws.

    Returns:
        `(centroids (K, D), assignment (P,))`.
    """
    gen = torch.Generator().manual_seed(seed)
    points = points.detach().float()
    centroids = points[torch.randint(len(points), (1,), generator=gen)]
    d2 = ((points - centroids[0]) ** 2).sum(dim=1)  # squared distance to the nearest centroid so far, (P,)
    while len(centroids) < k:  # k-means++: draw proportionally to d2
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / len(d2))
        new = points[torch.multinomial(probs, 1, generator=gen)]
        centroids = torch.cat([centroids, new])
        d2 = torch.minimum(d2, ((points - new) ** 2).sum(dim=1))
    for _ in range(iters):
        dist = torch.cdist(points, centroids)  # (P, K)
        assign = dist.argmin(dim=1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        new = sums / counts.clamp_min(1)[:, None]
        for j in torch.nonzero(counts == 0).flatten():
            new[j] = points[dist.min(dim=1).values.argmax()]
        if torch.equal(new, centroids):
            break
        centroids = new
    return centroids, torch.cdist(points, centroids).argmin(dim=1)


class KernelClustering(nn.Module):
    r"""A conv whose $k \times k$ kernels are entries of a learned codebook: $\hat W_{nc} = c_{a(n, c)}$."""

    def __init__(self, conv: nn.Conv2d, centroids: Tensor, assignment: Tensor) -> None:
        super().__init__()
        n, c, kh, kw = conv.weight.shape
        self.codebook = nn.Parameter(centroids.reshape(-1, kh, kw).clone())  # (K, k, k)
        self.register_buffer("assignment", assignment.reshape(n, c).clone())  # a(n, c), (N, C)
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, num_clusters: int, iters: int = 30, seed: int = 0) -> KernelClustering:
        """Cluster the kernels of a trained `conv` into `min(num_clusters, N C)` centroids."""
        kernels = conv.weight.detach().flatten(0, 1).flatten(1)  # (N C, k^2)
        centroids, assignment = kmeans(kernels, min(num_clusters, len(kernels)), iters, seed)
        return cls(conv, centroids, assignment)

    @property
    def weight(self) -> Tensor:
        r"""The shared-kernel weight $\hat W$, `(N, C, k, k)`."""
        return self.codebook[self.assignment]

    def forward(self, x: Tensor) -> Tensor:
        r"""Convolution with $\hat W$; gradients flow into the codebook."""
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def storage_bits(self) -> int:
        r"""$32 K k^2$ bits of codebook + $N C \lceil \log_2 K \rceil$ bits of indices (+ 32 per bias)."""
        n_bias = 0 if self.bias is None else self.bias.numel()
        return 32 * self.codebook.numel() + self.assignment.numel() * ceil_log2(len(self.codebook)) + 32 * n_bias

    @classmethod
    def smoke_task(cls) -> tuple[nn.Module, Tensor, Tensor]:
        """A tiny `cnn2d` with clustered kernels (for the generic smoke test)."""
        from implementations._harness import Supervised
        from implementations.low_rank._base import base_cnn

        torch.manual_seed(0)
        model = cluster_kernels(base_cnn(width=0.25), num_clusters=4, iters=5)
        gen = torch.Generator().manual_seed(0)
        return Supervised(model), torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)


def cluster_kernels(model: nn.Module, num_clusters: int, iters: int = 30, seed: int = 0) -> nn.Module:
    """Copy of `model` with every spatial conv replaced by a `KernelClustering` (one codebook per layer)."""
    model = copy.deepcopy(model)
    for name, conv in conv_layers(model, min_in_channels=1):
        replace_module(model, name, KernelClustering.from_conv(conv, num_clusters, iters, seed))
    return model


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: Tensor, batch_size: int = 256) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance on inputs `x` (cumulative average), in place.

    Clustering changes every conv's output statistics, so the BN statistics of the original network are stale.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the passes below
        m.train()
    for start in range(0, len(x), batch_size):
        model(x[start : start + batch_size])
    for m, (momentum, training) in zip(norms, saved, strict=True):
        m.momentum = momentum
        m.train(training)
    return model


def storage_bytes(model: nn.Module) -> int:
    """Bytes of a (possibly clustered) model: clustered layers by `storage_bits`, other parameters as fp32."""
    clustered = [m for m in model.modules() if isinstance(m, KernelClustering)]
    shared = {id(p) for m in clustered for p in m.parameters()}
    dense = sum(4 * p.numel() for p in model.parameters() if id(p) not in shared)
    return dense + sum((m.storage_bits() + 7) // 8 for m in clustered)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Train `cnn2d` on digits, cluster its 3x3 kernels with K in {4, 16, 64, 256} per layer, fine-tune the
    centroids, and compare with the original network fine-tuned for the same epochs without sharing. The run is in
    `experiment.py`."""
    from implementations.low_rank.kernelcluster_son2018.experiment import reproduce as run

    return run(ctx)
