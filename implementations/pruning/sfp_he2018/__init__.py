r"""Soft Filter Pruning for Accelerating Deep Convolutional Neural Networks (He et al., 2018).

Paper: [arXiv:1808.06866](https://arxiv.org/abs/1808.06866) · notes: `papers/sfp_he2018.md`

Filter $j$ of conv layer $i$ is scored by its $\ell_p$ norm (Eq. 2, $p = 2$),

$$
\lVert \mathcal{F}_{i,j} \rVert_p = \Big( \sum_{n=1}^{N_i} \sum_{k_1=1}^{K} \sum_{k_2=1}^{K}
\lvert \mathcal{F}_{i,j}(n, k_1, k_2) \rvert^p \Big)^{1/p} .
$$

At the end of every epoch the $\lfloor P_i N_{i+1} \rfloor$ filters with the smallest norms are set to zero, but
they stay in the network and keep being updated, so a filter zeroed early can grow back and leave the zeroed set.
After the last epoch the zero filters (here together with their BatchNorm scale and shift, so that the channel is
exactly zero) and the matching input channels of the next layer are removed, giving a thinner network. *Hard*
filter pruning instead keeps the zeroed filters at zero for good (a `torch.nn.utils.prune` mask).

With BatchNorm after the conv (as in the paper's ResNets and in the authors' code, which zeroes the conv weights
only), a zeroed filter gives an all-zero channel whose batch variance is 0, so its first gradient is scaled by
$\gamma / \sqrt{\epsilon}$; it regrows only if its BN shift $\beta > 0$ lets the ReLU pass. BatchNorm then rescales
the regrown filter to full strength whatever its norm, so the raw conv norm no longer says how much the channel is
used. By default the filter is therefore scored after folding its BatchNorm into it (as it would be deployed),

$$
\lVert \tilde{\mathcal{F}}_{i,j} \rVert_p = \frac{\lvert \gamma_j \rvert}{\sqrt{\sigma_j^2 + \epsilon}}
\lVert \mathcal{F}_{i,j} \rVert_p ,
$$

with the running variance $\sigma_j^2$; `Config(score="raw")` keeps the plain conv norm of Eq. 2 as an ablation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.pruning._base import apply_masks, prune_channels, remove_masks, topk_mask

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = [
    "Config",
    "SoftFilterPruning",
    "bn_folded_norms",
    "filter_norms",
    "reproduce",
]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; the paper prunes every layer at the same rate."""

    rate: float = 0.3  # $P_i$, fraction of filters zeroed per layer (30% for the ImageNet ResNets)
    p: float = 2.0  # $p$ of the filter norm (Eq. 2)
    hard: bool = False  # True: zeroed filters stay zero (hard filter pruning, the paper's comparison)
    score: str = "bn"  # "bn": norm of the BN-folded filter; "raw": norm of the conv weight only (Eq. 2 verbatim)


def filter_norms(weight: Tensor, p: float = 2.0) -> Tensor:
    r"""$\lVert \mathcal{F}_{i,j} \rVert_p$ of every filter: shape `(N_out,)` for a weight `(N_out, N_in, *K)`."""
    return weight.detach().flatten(1).norm(p=p, dim=1)


def bn_folded_norms(conv: nn.Module, norm: nn.Module, p: float = 2.0) -> Tensor:
    r"""$\lvert\gamma_j\rvert / \sqrt{\sigma_j^2 + \epsilon}\, \lVert \mathcal{F}_j \rVert_p$: the norm of each filter
    with its BatchNorm folded in, shape `(N_out,)`; the plain filter norm when `norm` is not a BatchNorm."""
    scores = filter_norms(conv.weight, p)
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        scale = norm.weight.detach().abs() / torch.sqrt(norm.running_var + norm.eps)  # (N_out,)
        scores = scores * scale
    return scores


class SoftFilterPruning(nn.Module):
    """A conv net trained with soft (or hard) filter pruning; call `prune_epoch()` at the end of every epoch."""

    def __init__(self, model: nn.Module, cfg: Config | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg or Config()
        self.zeroed: list[Tensor] = []  # per stage, boolean (C_out,) of the currently zeroed filters
        self.revived: list[int] = []  # per epoch, filters zeroed at the previous epoch and kept at this one

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`."""
        return self.model(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the cross-entropy (pruning happens between epochs, not in the loss)."""
        logits = self.model(x)
        return logits, {"ce": F.cross_entropy(logits, y)}

    @torch.no_grad()
    def prune_epoch(self) -> None:
        r"""Zero the $\lfloor P N \rfloor$ smallest-norm filters of every conv layer (soft: they keep training)."""
        zeroed = []
        for stage in self.model.stages:
            conv = stage[0]
            if self.cfg.score == "bn":
                scores = bn_folded_norms(conv, stage[1], self.cfg.p)
            else:
                scores = filter_norms(conv.weight, self.cfg.p)
            keep = topk_mask(scores, self.cfg.rate).bool()  # (C_out,)
            if self.cfg.hard:
                mask = keep.float().view(-1, *[1] * (conv.weight.dim() - 1)).expand_as(conv.weight)
                apply_masks(stage, {"0": mask.clone()})  # stays zero from now on
            else:
                conv.weight[~keep] = 0.0
            zeroed.append(~keep)
        if self.zeroed:
            self.revived.append(sum(int((old & ~new).sum()) for old, new in zip(self.zeroed, zeroed, strict=True)))
        self.zeroed = zeroed

    @torch.no_grad()
    def pruned(self) -> nn.Module:
        """The thinner network: zero filters, with their BN scale/shift, removed for good."""
        model = copy.deepcopy(self.model)
        remove_masks(model)
        for stage, gone in zip(model.stages, self.zeroed, strict=True):
            stage[0].weight[gone] = 0.0
            if isinstance(stage[1], nn.modules.batchnorm._BatchNorm):
                stage[1].weight[gone] = 0.0
                stage[1].bias[gone] = 0.0
        return prune_channels(model, [(~gone).nonzero().squeeze(1) for gone in self.zeroed])

    @classmethod
    def smoke_task(cls) -> tuple[SoftFilterPruning, Tensor, Tensor]:
        """A tiny 1-D conv net after one soft-pruning step, for the generic smoke test."""
        from implementations._models import CNN1d

        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        task = cls(CNN1d(1, 40, 10, channels=(8, 8, 8)))
        task.prune_epoch()
        return task, torch.randn(8, 1, 40, generator=gen), torch.randint(0, 10, (8,), generator=gen)


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run sfp_he2018`
# ---------------------------------------------------------------------------------------------------------------------


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Soft vs hard filter pruning from scratch of a 1-D CNN on MNIST-1D, against the unpruned net. The run is in
    `experiment.py`."""
    from implementations.pruning.sfp_he2018.experiment import reproduce as run

    return run(ctx)
