r"""Towards the Limit of Network Quantization (Choi, El-Khamy & Lee, 2017).

Paper: [arXiv:1612.01543](https://arxiv.org/abs/1612.01543) · notes: `papers/hessianquant_choi2017.md`

Near a trained minimum the loss increase caused by moving the weights $w_i$ to shared values $\hat w_i$ is, to
second order with a diagonal Hessian $h_{ii}$,

$$
\delta \mathcal{L} \approx \tfrac{1}{2} \sum_i h_{ii} (\hat w_i - w_i)^2 ,
$$

so the weights of *all* layers are clustered together by Hessian-weighted k-means,

$$
\min_{C_1, \dots, C_k} \sum_{j=1}^{k} \sum_{w_i \in C_j} h_{ii} (w_i - c_j)^2, \qquad
c_j = \frac{\sum_{w_i \in C_j} h_{ii} w_i}{\sum_{w_i \in C_j} h_{ii}} .
$$

$h_{ii}$ is approximated by the empirical Fisher diagonal $\mathbb{E}[(\partial \ell / \partial w_i)^2]$ (per-example
squared gradients), or by the paper's cheap proxy, the square root of Adam's second-moment estimate
$\sqrt{\hat v_i}$. With $h_{ii} = 1$ this is plain k-means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "fisher_diagonal", "hessian_weighted_kmeans", "index_entropy", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Clustering hyperparameters."""

    clusters: int = 8  # $k$ shared values for the whole network
    iterations: int = 50  # Lloyd iterations (stops earlier when the assignment no longer changes)
    fisher_examples: int = 1000  # training examples for the empirical Fisher diagonal


def _assign(w: Tensor, centers: Tensor) -> Tensor:
    """Index of the nearest center for each value (1-D: thresholds at the midpoints of sorted centers)."""
    sorted_centers, order = centers.sort()
    thresholds = (sorted_centers[1:] + sorted_centers[:-1]) / 2  # (k - 1,)
    return order[torch.bucketize(w, thresholds)]


def hessian_weighted_kmeans(
    w: Tensor, hessian: Tensor | None = None, clusters: int = 8, iterations: int = 50
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Cluster the values of `w` into $k$ shared values minimising $\sum_i h_{ii} (w_i - c_{j(i)})^2$ (Lloyd).

    Centers start evenly spaced on $[\min w, \max w]$ (linear initialisation, the same with or without weights);
    each iteration assigns every value to its nearest center, then moves each center to the $h$-weighted mean of its
    cluster (an empty cluster keeps its center).

    Args:
        w: Weights, any shape (all layers flattened together for the paper's joint quantization).
        hessian: Positive weights $h_{ii}$ of `w`'s shape; None means plain k-means ($h_{ii} = 1$).
        clusters: $k$.
        iterations: Maximum number of Lloyd iterations.

    Returns:
        `(w_hat, centers, assignment)`: the quantized weights (shape of `w`), the centers `(k,)` and the cluster
        index of each weight (shape of `w`).
    """
    values = w.detach().reshape(-1).double()  # (N,)
    weights = torch.ones_like(values) if hessian is None else hessian.detach().reshape(-1).double().clamp_min(0)
    centers = torch.linspace(float(values.min()), float(values.max()), clusters, dtype=values.dtype)  # (k,)
    assignment = _assign(values, centers)
    for _ in range(iterations):
        # centers: c_j = sum h w / sum h over the cluster
        mass = torch.zeros(clusters, dtype=values.dtype).index_add_(0, assignment, weights)
        moment = torch.zeros(clusters, dtype=values.dtype).index_add_(0, assignment, weights * values)
        centers = torch.where(mass > 0, moment / mass.clamp_min(1e-300), centers)
        new = _assign(values, centers)
        if torch.equal(new, assignment):
            break
        assignment = new
    w_hat = centers[assignment].to(w.dtype).view(w.shape)
    return w_hat, centers.to(w.dtype), assignment.view(w.shape)


def index_entropy(assignment: Tensor, clusters: int) -> float:
    r"""Empirical entropy $-\sum_j p_j \log_2 p_j$ of the cluster indices: the bits per weight of an ideal code."""
    p = torch.bincount(assignment.reshape(-1), minlength=clusters).double() / assignment.numel()
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


def fisher_diagonal(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 250) -> dict[str, Tensor]:
    r"""Empirical Fisher diagonal $\frac{1}{N} \sum_n (\partial \ell_n / \partial \theta)^2$ from per-example gradients.

    Args:
        model: The trained network (evaluated in eval mode).
        x: Inputs, shape `(N, ...)`.
        y: Labels, shape `(N,)`.
        chunk: Examples per vectorised batch.

    Returns:
        `{parameter name: tensor of that parameter's shape}`.
    """
    from torch.func import functional_call, grad, vmap

    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, (p, buffers), (xi[None],)), yi[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for start in range(0, len(y), chunk):
        grads = per_example(params, x[start : start + chunk], y[start : start + chunk])
        for k, g in grads.items():
            total[k] += (g * g).sum(0)
    return {k: v / len(y) for k, v in total.items()}


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Train once per seed; quantize all weight matrices jointly with k-means, HW k-means (Fisher, Adam) and uniform.

    The run is in `experiment.py`.
    """
    from implementations.quantization.hessianquant_choi2017.experiment import reproduce as run

    return run(ctx)
