r"""Pruning Convolutional Neural Networks for Resource Efficient Inference (Molchanov et al., 2017).

Paper: [arXiv:1611.06440](https://arxiv.org/abs/1611.06440) · notes: `papers/taylor_molchanov2017.md`

Removing feature map $z_l^{(k)}$ (entries $z_{l,m}^{(k)}$ over $M$ positions) changes the cost $C$ by about its
first-order Taylor term, computed per example and averaged over the $T$ examples of a few mini-batches:

$$
\Theta_{TE}\big(z_l^{(k)}\big) = \frac{1}{T} \sum_{t=1}^{T} \left\lvert \frac{1}{M} \sum_{m=1}^{M}
\frac{\partial C}{\partial z_{l,m}^{(k)}}\, z_{l,m}^{(k)} \right\rvert_t ,
$$

normalised per layer so one global ranking can compare layers,

$$
\hat{\Theta}\big(z_l^{(k)}\big) = \frac{\Theta\big(z_l^{(k)}\big)}{\sqrt{\sum_j \Theta\big(z_l^{(j)}\big)^2}} .
$$

Pruning is greedy: remove the lowest-ranked maps, fine-tune briefly, re-score, repeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._models import build_model
from implementations.pruning._base import channel_units, keep_top, prune_channels

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "TaylorPruning", "layer_normalise", "reproduce", "taylor_scores"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the small-scale reproduction (the paper removes one map per step)."""

    iterations: int = 4  # prune/fine-tune rounds
    maps_per_iteration: int = 10  # maps removed per round (paper: 1, then 10 updates); 4 x 10 = 50% of 80 maps
    oneshot_maps: int = 20  # maps removed at once, without fine-tuning, to compare raw and normalised scores
    score_batches: int = 8  # mini-batches the criterion is averaged over
    finetune_epochs: int = 1  # fine-tuning between rounds
    final_epochs: int = 2  # fine-tuning after the last round
    epochs: int = 12  # training of the dense network
    lr: float = 0.05  # $\eta_0$ of dense training
    finetune_lr: float = 0.01  # fine-tuning rate
    width: float = 0.5  # CNN1d width multiplier: channels (16, 32, 32)


def taylor_scores(activation: Tensor, grad: Tensor) -> Tensor:
    r"""$\Theta_{TE}$ per channel: $|$mean over positions of $z \cdot \partial C / \partial z|$, averaged over examples.

    Args:
        activation: Feature maps $z$, shape `(B, C, *spatial)` or `(B, C)`.
        grad: $\partial C / \partial z$, same shape.

    Returns:
        Scores, shape `(C,)`.
    """
    per_example = (activation * grad).flatten(2).mean(dim=2) if activation.dim() > 2 else activation * grad  # (B, C)
    return per_example.abs().mean(dim=0)


def layer_normalise(scores: list[Tensor]) -> list[Tensor]:
    r"""$\hat\Theta = \Theta / \lVert \Theta_l \rVert_2$ within each layer $l$."""
    return [s / s.norm().clamp_min(1e-12) for s in scores]


def _global_keep(scores: list[Tensor], n_remove: int) -> list[Tensor]:
    """Drop the `n_remove` lowest scores across layers; a layer keeps at least its best channel."""
    flat = torch.cat(scores)
    order = torch.sort(flat, stable=True).indices
    alive = torch.ones_like(flat, dtype=torch.bool)
    alive[order[:n_remove]] = False
    keep, start = [], 0
    for s in scores:
        mask = alive[start : start + s.numel()]
        keep.append(mask.nonzero().flatten() if mask.any() else keep_top(s, 1))
        start += s.numel()
    return keep


class TaylorPruning(nn.Module):
    """CE task around a network; `scores()` ranks its feature maps and `prune()` removes the lowest ones."""

    def __init__(self, model: nn.Module, cfg: Config | None = None, criterion: str = "taylor") -> None:
        super().__init__()
        self.model, self.cfg, self.criterion = model, cfg or Config(), criterion

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`."""
        return self.model(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits `(B, K)` and `{"ce": CE}` (training and fine-tuning use the plain loss)."""
        logits = self.model(x)  # (B, K)
        return logits, {"ce": F.cross_entropy(logits, y)}

    def scores(self, batches: list[tuple[Tensor, Tensor]], generator: torch.Generator | None = None) -> list[Tensor]:
        """Per-layer map scores of `self.criterion`, normalised per layer unless it is `taylor_raw` or `random`."""
        units, _ = channel_units(self.model)
        if self.criterion == "random":
            return [torch.rand(p.weight.shape[0], generator=generator) for p, _ in units]
        if self.criterion == "weight":  # the paper's "minimum weight": mean squared kernel weight of the filter
            return layer_normalise([p.weight.detach().pow(2).flatten(1).mean(1) for p, _ in units])
        was_training = self.model.training
        self.model.eval()  # score with running BN statistics; nothing is updated
        totals = [torch.zeros(p.weight.shape[0]) for p, _ in units]
        device = units[0][0].weight.device
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits, features = self.model(x, return_features=True)  # features: post-ReLU maps (B, C_l, L_l)
            for f in features:
                f.retain_grad()
            self.model.zero_grad(set_to_none=True)
            F.cross_entropy(logits, y).backward()
            for total, f in zip(totals, features, strict=True):
                total += taylor_scores(f.detach(), f.grad).cpu()
        self.model.zero_grad(set_to_none=True)
        self.model.train(was_training)
        totals = [t / len(batches) for t in totals]
        return totals if self.criterion == "taylor_raw" else layer_normalise(totals)

    def prune(self, n_remove: int, batches: list, generator: torch.Generator | None = None) -> nn.Module:
        """Remove the `n_remove` globally lowest-ranked maps; sets and returns the physically smaller model."""
        self.model = prune_channels(self.model, _global_keep(self.scores(batches, generator), n_remove))
        return self.model

    @classmethod
    def smoke_task(cls) -> tuple[TaylorPruning, Tensor, Tensor]:
        """A tiny CNN1d after one Taylor pruning round, for the generic smoke test."""
        torch.manual_seed(0)
        x, y = torch.randn(8, 1, 40), torch.randint(0, 10, (8,))
        task = cls(build_model("cnn1d", 10, (1, 40), width=0.25))
        task.prune(4, [(x, y)])
        return task, x, y


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run taylor_molchanov2017`
# ---------------------------------------------------------------------------------------------------------------------


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """CNN1d on MNIST-1D; greedy map pruning by Taylor, raw Taylor, weight and random; Spearman vs the oracle. The run
    is in `experiment.py`."""
    from implementations.pruning.taylor_molchanov2017.experiment import reproduce as run

    return run(ctx)
