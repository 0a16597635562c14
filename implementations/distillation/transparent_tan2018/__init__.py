r"""Transparent Model Distillation (Tan, Caruana, Hooker & Gordo, 2018).

Paper: [arXiv:1801.08640](https://arxiv.org/abs/1801.08640) · notes: `papers/transparent_tan2018.md`

A black-box teacher is distilled into a transparent student, a generalized additive model with a few pairwise
interactions (GA2M), whose link-scale output is

$$
g(x) = \beta_0 + \sum_{i=1}^{d} f_i(x_i) + \sum_{(i, j) \in \mathcal{P}} f_{ij}(x_i, x_j),
$$

fitted by least squares to the teacher's logit $s_t(x)$ instead of to the labels,

$$
\mathcal{L} = \frac{1}{N} \sum_{n} \big(g(x_n) - s_t(x_n)\big)^2 ,
$$

so that each shape function $f_i$ can be read as the teacher's main effect of feature $i$. For $K$ classes we fit the
centred logits $z - \frac{1}{K}\sum_k z_k$ (for $K = 2$, $\pm\frac{1}{2}$ the binary logit). The paper fits each $f$
with boosted shallow trees; here each $f_i$ is a small one-hidden-layer network on the scalar $x_i$ (and $f_{ij}$ on
the pair), all trained jointly. Interaction pairs are ranked as in FAST (Lou et al., 2013): bin $(x_i, x_j)$ on a grid
and score how much of the additive model's residual the per-cell means explain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations.distillation._base import Distiller

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = [
    "AdditiveModel",
    "Config",
    "TransparentDistillation",
    "centred",
    "distillation_loss",
    "fast_pair_scores",
    "reproduce",
]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the additive student."""

    hidden: int = 16  # width of each shape function's hidden layer
    pairs: tuple[tuple[int, int], ...] = ()  # $\mathcal{P}$, interaction terms (empty: a plain GAM)


def centred(logits: Tensor) -> Tensor:
    r"""$z - \frac{1}{K}\sum_k z_k$: the part of the logits a softmax can see, shape `(B, K)`."""
    return logits - logits.mean(dim=-1, keepdim=True)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    r"""$\frac{1}{B}\sum_n \lVert \bar{z}_s - \bar{z}_t \rVert^2$ on centred logits (least squares, link scale)."""
    return (centred(student_logits) - centred(teacher_logits)).pow(2).sum(dim=-1).mean()


class AdditiveModel(nn.Module):
    """GA2M with neural shape functions: one 1-D network per feature and one 2-D network per pair, summed."""

    def __init__(self, num_features: int, num_classes: int, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Config()
        d, h, k = num_features, self.cfg.hidden, num_classes
        self.w1 = nn.Parameter(torch.randn(d, h))  # (d, H): per-feature input weights
        self.b1 = nn.Parameter(torch.randn(d, h))  # (d, H)
        self.w2 = nn.Parameter(torch.randn(d, h, k) / h**0.5)  # (d, H, K)
        self.bias = nn.Parameter(torch.zeros(k))  # $\beta_0$
        self.pair_nets = nn.ModuleList(
            nn.Sequential(nn.Linear(2, h), nn.ReLU(), nn.Linear(h, k)) for _ in self.cfg.pairs
        )

    def shape_functions(self, x: Tensor) -> Tensor:
        r"""Main effects $f_i(x_i)$ of flattened inputs `(B, d)`, shape `(B, d, K)`."""
        hidden = torch.relu(x.flatten(1)[:, :, None] * self.w1 + self.b1)  # (B, d, H)
        return torch.einsum("bdh,dhk->bdk", hidden, self.w2)

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`: intercept plus the sum of the shape functions and interaction terms."""
        x = x.flatten(1)  # (B, d)
        out = self.bias + self.shape_functions(x).sum(dim=1)  # (B, K)
        for (i, j), net in zip(self.cfg.pairs, self.pair_nets, strict=True):
            out = out + net(x[:, [i, j]])
        return out


class TransparentDistillation(Distiller):
    """Least-squares fit of the student's centred logits to the teacher's; labels are never used."""

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and `{"fidelity": distillation_loss}`."""
        logits_s = self.student(x)  # (B, K)
        with torch.no_grad():
            logits_t = self.teacher(x)  # (B, K)
        return logits_s, {"fidelity": distillation_loss(logits_s, logits_t)}


def fast_pair_scores(x: Tensor, residual: Tensor, bins: int = 8) -> dict[tuple[int, int], float]:
    r"""FAST-style interaction ranking: residual sum of squares explained by per-cell means on a `bins` x `bins` grid.

    Args:
        x: Features `(N, d)`.
        residual: Residual of the additive model on the link scale, `(N,)`.
        bins: Quantile bins per feature.

    Returns:
        `{(i, j): score}` for all pairs $i < j$; score $= \sum_{c} n_c \bar{r}_c^2$.
    """
    edges = torch.quantile(x, torch.linspace(0, 1, bins + 1)[1:-1], dim=0)  # (bins - 1, d)
    codes = torch.stack(
        [torch.bucketize(x[:, i].contiguous(), edges[:, i].contiguous()) for i in range(x.shape[1])], dim=1
    )  # (N, d)
    scores = {}
    for i in range(x.shape[1]):
        for j in range(i + 1, x.shape[1]):
            cell = codes[:, i] * bins + codes[:, j]
            sums = torch.zeros(bins * bins).index_add_(0, cell, residual)
            counts = torch.bincount(cell, minlength=bins * bins).clamp_min(1)
            scores[i, j] = float((sums**2 / counts).sum())
    return scores


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher MLP; additive students fitted to labels or distilled from the teacher; shape recovery.

    The run is in `experiment.py`.
    """
    from implementations.distillation.transparent_tan2018.experiment import reproduce as run

    return run(ctx)
