r"""Pruning Filters for Efficient ConvNets (Li, Kadav, Durdanovic, Samet & Graf, 2017).

Paper: [arXiv:1608.08710](https://arxiv.org/abs/1608.08710) · notes: `papers/l1filter_li2017.md`

Filter $j$ of conv layer $i$, $\mathcal{F}_{i,j} \in \mathbb{R}^{n_i \times k}$ (one kernel $\mathcal{K}_l$ per
input channel), is scored by its L1 norm

$$
s_{i,j} = \sum_{l=1}^{n_i} \sum \lvert \mathcal{K}_l \rvert = \lVert \mathcal{F}_{i,j} \rVert_1 .
$$

The $m_i = \lfloor r_i\, n_{i+1} \rfloor$ filters with the smallest $s_{i,j}$ are removed together with their feature
maps and the matching input kernels of layer $i+1$ (input columns of the classifier for the last conv), so the
network stays dense and both layers' FLOPs drop by the factor $(1 - r_i)$; it is then retrained once.

The channel surgery it uses is shared with the other structured-pruning papers and lives in `pruning/_base.py`:
`channel_units`, `mask_channels` (zero channels with `torch.nn.utils.prune` masks) and `prune_channels` (physically
remove them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._models import build_model
from implementations.pruning._base import channel_units, keep_top, prune_channels, size_rows

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = [
    "Config",
    "L1FilterPruning",
    "l1_filter_scores",
    "reproduce",
    "size_row",
]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the small-scale reproduction (the paper's CIFAR setting in the comments)."""

    prune_ratios: tuple[float, ...] = (
        0.0,
        0.25,
        0.5,
    )  # $r_i$ per conv layer, by sensitivity (Sec. 3.3): conv3 most robust
    aggressive_ratios: tuple[float, ...] = (0.0, 0.5, 0.5)  # a harder cut, reported as an ablation
    epochs: int = 12  # dense training (paper: 160 epochs on CIFAR-10)
    finetune_epochs: int = 4  # retraining once (paper: 40 epochs, a quarter of the schedule)
    lr: float = 0.05  # $\eta_0$ of dense training
    finetune_lr: float = 0.005  # retraining lr (paper: 0.001 = 1/100 of the initial 0.1)
    width: float = 0.5  # CNN1d width multiplier: channels (16, 32, 32)


def l1_filter_scores(weight: Tensor) -> Tensor:
    r"""$s_j = \lVert \mathcal{F}_j \rVert_1$, the L1 norm of each output filter (row) of a weight.

    Args:
        weight: Conv weight `(C_out, C_in, *kernel)` or linear weight `(C_out, C_in)`.

    Returns:
        Scores, shape `(C_out,)`.
    """
    return weight.detach().abs().flatten(1).sum(dim=1)


def size_row(model: nn.Module, input_shape: Sequence[int], profile: str = "default") -> dict[str, Any]:
    """`pruning._base.size_rows` for one model; to compare several rows, time them together with `size_rows`."""
    return size_rows({"model": model}, input_shape, profile)["model"]


class L1FilterPruning(nn.Module):
    """Cross-entropy task around a conv net whose `prune()` returns the net without its lowest-L1 filters."""

    def __init__(self, model: nn.Module, cfg: Config | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg or Config()

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`."""
        return self.model(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits `(B, K)` and `{"ce": CE}` (training and retraining use the plain loss)."""
        logits = self.model(x)  # (B, K)
        return logits, {"ce": F.cross_entropy(logits, y)}

    def keep_indices(self, ratios: Sequence[float] | None = None, random: torch.Generator | None = None) -> list:
        r"""Per stage, the filters that survive removing $\lfloor r_i n \rfloor$ lowest-L1 (or random) ones."""
        units, _ = channel_units(self.model)
        keep = []
        for (producer, _), ratio in zip(units, ratios or self.cfg.prune_ratios, strict=True):
            scores = l1_filter_scores(producer.weight)  # (C_out,)
            if random is not None:
                scores = torch.rand(scores.shape, generator=random)
            keep.append(keep_top(scores, scores.numel() - math.floor(ratio * scores.numel())))
        return keep

    def prune(self, ratios: Sequence[float] | None = None, random: torch.Generator | None = None) -> nn.Module:
        """The physically pruned copy of the model (Sec. 3.1-3.2)."""
        return prune_channels(self.model, self.keep_indices(ratios, random))

    @classmethod
    def smoke_task(cls) -> tuple[L1FilterPruning, Tensor, Tensor]:
        """A tiny CNN1d with half of its filters physically removed, for the generic smoke test."""
        torch.manual_seed(0)
        model = build_model("cnn1d", 10, (1, 40), width=0.25)
        x, y = torch.randn(8, 1, 40), torch.randint(0, 10, (8,))
        return cls(cls(model).prune((0.5, 0.5, 0.5))), x, y


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Dense CNN1d on MNIST-1D; sensitivity scan; L1 vs random filter removal + retraining; narrow net from scratch.

    The run is in `experiment.py`.
    """
    from implementations.pruning.l1filter_li2017.experiment import reproduce as run

    return run(ctx)
