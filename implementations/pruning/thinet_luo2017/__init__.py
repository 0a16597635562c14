r"""ThiNet: A Filter Level Pruning Method for Deep Neural Network Compression (Luo, Wu & Lin, 2017).

Paper: [arXiv:1707.06342](https://arxiv.org/abs/1707.06342) · notes: `papers/thinet_luo2017.md`

Removing filter $c$ of layer $i$ removes input channel $c$ of layer $i+1$. One sampled output value of layer
$i+1$ (an example, a filter and a location) is a sum of per-channel contributions,

$$
\hat{y} = \sum_{c=1}^{C} \hat{x}_c, \qquad \hat{x}_c = \sum_{k=1}^{K} W_{c,k}\, x_{c,k},
$$

and ThiNet removes the set $T$ of channels whose summed contribution over $m$ samples is smallest (Eq. 5),

$$
\min_T \sum_{i=1}^{m} \Big( \sum_{c \in T} \hat{x}_{i,c} \Big)^2 \quad \text{s.t.} \quad |T| = C(1 - r),
$$

greedily, one channel at a time (Algorithm 1). The kept channels are then rescaled by least squares (Eq. 7),
$\hat{w} = \arg\min_w \sum_i (\hat{y}_i - w^\top \hat{x}_{i,S})^2$, folded into layer $i+1$'s weights. Layers
are pruned one after the other, each with statistics from the already-pruned network, then the thinner network
is fine-tuned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.pruning._base import prune_channels

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "ThiNet", "channel_contributions", "greedy_remove", "least_squares_scales", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; the paper keeps half of the channels of each pruned layer (ThiNet-50)."""

    keep_ratio: float = 0.5  # $r$, fraction of channels kept per layer
    images: int = 256  # training examples used for the statistics
    locations: int = 10  # sampled (filter, location) pairs per example (the paper samples 10 locations)
    rescale: bool = True  # least-squares rescaling of the kept channels (Eq. 7)


def channel_contributions(
    activation: Tensor, consumer: nn.Module, locations: int, generator: torch.Generator
) -> Tensor:
    r"""Per-channel contributions $\hat{x}_{i,c}$ to sampled outputs of the next layer.

    Args:
        activation: Input of the next layer, `(N, C, L)`.
        consumer: The next layer: a `Conv1d`, or a `Linear` on the flattened `(C, L)` activation.
        locations: Samples per example (random output unit and, for a conv, random position).
        generator: CPU generator for the samples.

    Returns:
        $\hat{x}$, shape `(N * locations, C)`; its row sums are the sampled outputs without bias.
    """
    n, c, length = activation.shape
    if isinstance(consumer, nn.Conv1d):
        k, stride, pad = consumer.kernel_size[0], consumer.stride[0], consumer.padding[0]
        patches = F.pad(activation, (pad, pad)).unfold(2, k, stride)  # (N, C, T, K)
        out = torch.randint(0, consumer.out_channels, (n, locations), generator=generator)
        pos = torch.randint(0, patches.shape[2], (n, locations), generator=generator)
        rows = torch.arange(n)[:, None].expand(n, locations)
        x = patches.permute(0, 2, 1, 3)[rows, pos]  # (N, loc, C, K)
        w = consumer.weight.detach()[out]  # (N, loc, C, K)
    else:
        out = torch.randint(0, consumer.out_features, (n, locations), generator=generator)
        x = activation[:, None].expand(n, locations, c, length)  # (N, loc, C, L)
        w = consumer.weight.detach().view(consumer.out_features, c, length)[out]  # (N, loc, C, L)
    return (w * x).sum(-1).flatten(0, 1)  # sum over the kernel window: (N * loc, C)


def greedy_remove(contributions: Tensor, n_remove: int) -> list[int]:
    r"""Algorithm 1: grow the removed set $T$ one channel at a time, minimising $\sum_i (\sum_{c \in T}
    \hat{x}_{i,c})^2$.

    Args:
        contributions: $\hat{x}$, shape `(m, C)`.
        n_remove: $|T|$.

    Returns:
        The removed channels, in the order chosen.
    """
    removed: list[int] = []
    partial = torch.zeros(contributions.shape[0], dtype=contributions.dtype)  # sum over T, (m,)
    for _ in range(n_remove):
        values = ((partial[:, None] + contributions) ** 2).sum(0)  # objective with each candidate added, (C,)
        values[removed] = torch.inf
        best = int(values.argmin())
        removed.append(best)
        partial += contributions[:, best]
    return removed


def least_squares_scales(contributions: Tensor, keep: Tensor) -> Tensor:
    r"""Eq. 7: $\hat{w} = \arg\min_w \lVert \hat{y} - \hat{X}_S w \rVert^2$ with $\hat{y} = \sum_c \hat{x}_c$.

    Args:
        contributions: $\hat{x}$, shape `(m, C)`.
        keep: Kept channel indices $S$, shape `(|S|,)`.

    Returns:
        $\hat{w}$, shape `(|S|,)`.
    """
    target = contributions.sum(1, keepdim=True).double()  # (m, 1)
    return torch.linalg.lstsq(contributions[:, keep].double(), target).solution.squeeze(1).float()


class ThiNet(nn.Module):
    """A `CNN1d`-like model (stages + linear head) pruned channel-wise by ThiNet; `prune()` swaps in the thin net."""

    def __init__(self, model: nn.Module, cfg: Config | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg or Config()

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`."""
        return self.model(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the cross-entropy of fine-tuning."""
        logits = self.model(x)
        return logits, {"ce": F.cross_entropy(logits, y)}

    @torch.no_grad()
    def prune_stage(
        self, i: int, x: Tensor, criterion: str = "thinet", generator: torch.Generator | None = None
    ) -> Tensor:
        """Remove output channels of stage `i` (keeping `keep_ratio`) and swap in the thinner model.

        Args:
            i: Stage index; its consumer is stage `i + 1`'s conv or the linear head.
            x: Training examples for the statistics, `(N, ...)` (ThiNet only).
            criterion: `"thinet"` (next-layer reconstruction) or `"weight_sum"` (sum of |W| of each filter, the
                criterion of Li et al. (2017) that the paper compares with).
            generator: CPU generator of the sampled locations.

        Returns:
            The kept channel indices.
        """
        stages = self.model.stages
        channels = stages[i][0].out_channels
        n_keep = max(1, round(self.cfg.keep_ratio * channels))
        consumer = stages[i + 1][0] if i + 1 < len(stages) else self.model.head
        if criterion == "weight_sum":
            keep = stages[i][0].weight.abs().flatten(1).sum(1).argsort(descending=True)[:n_keep].sort().values
        else:
            was_training = self.model.training
            self.model.eval()
            _, features = self.model(x, return_features=True)
            self.model.train(was_training)
            contributions = channel_contributions(features[i], consumer, self.cfg.locations, generator)
            removed = set(greedy_remove(contributions, channels - n_keep))
            keep = torch.tensor([c for c in range(channels) if c not in removed])
            if self.cfg.rescale:
                scales = least_squares_scales(contributions, keep)  # (|S|,)
                weight = consumer.weight.view(consumer.weight.shape[0], channels, -1)  # (out, C, K or L)
                weight[:, keep] *= scales[None, :, None]
        full = [torch.arange(s[0].out_channels) for s in stages]
        full[i] = keep
        self.model = prune_channels(self.model, full)
        return keep

    def prune(self, x: Tensor, criterion: str = "thinet", seed: int = 0, between: Any = None) -> None:
        """Prune every stage in turn; `between(task)` (e.g. one fine-tuning epoch) runs after each stage."""
        generator = torch.Generator().manual_seed(seed)
        images = x[torch.randperm(len(x), generator=generator)[: self.cfg.images]]
        for i in range(len(self.model.stages)):
            self.prune_stage(i, images, criterion, generator)
            if between is not None:
                between(self)

    @classmethod
    def smoke_task(cls) -> tuple[ThiNet, Tensor, Tensor]:
        """A tiny 1-D conv net pruned to half its channels, for the generic smoke test."""
        from implementations._models import CNN1d

        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(8, 1, 40, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        task = cls(CNN1d(1, 40, 10, channels=(8, 8, 8)))
        task.prune(x)
        task.train()
        return task, x, y


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run thinet_luo2017`
# ---------------------------------------------------------------------------------------------------------------------


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """ThiNet vs weight-sum filter pruning of a trained 1-D CNN on MNIST-1D, both fine-tuned alike. The run is in
    `experiment.py`."""
    from implementations.pruning.thinet_luo2017.experiment import reproduce as run

    return run(ctx)
