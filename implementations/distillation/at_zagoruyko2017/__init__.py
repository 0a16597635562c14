r"""Paying More Attention to Attention: Attention Transfer (Zagoruyko & Komodakis, 2017).

Paper: [arXiv:1612.03928](https://arxiv.org/abs/1612.03928) · notes: `papers/at_zagoruyko2017.md`

An activation tensor $A \in \mathbb{R}^{C \times H \times W}$ is collapsed over channels into a spatial attention map
(Sec. 3.1), vectorised and L2-normalised:

$$
F^{p}_{\mathrm{sum}}(A) = \sum_{c=1}^{C} \lvert A_c \rvert^{p}, \qquad
\hat Q = \frac{\mathrm{vec}\, F^{p}_{\mathrm{sum}}(A)}{\lVert \mathrm{vec}\, F^{p}_{\mathrm{sum}}(A) \rVert_2} .
$$

The student pays, at each chosen pair of layers $j \in \mathcal{I}$ (Eq. 2),

$$
\mathcal{L}_{AT} = \mathcal{L}(W_S, x) + \frac{\beta}{2} \sum_{j \in \mathcal{I}}
    \big\lVert \hat Q_S^{j} - \hat Q_T^{j} \big\rVert_p .
$$

The paper sets $\beta = 10^3$ divided by the number of elements of the map and the batch size; the authors' code
computes this as $\frac{\beta}{2}\,\mathrm{mean}\big((\hat Q_S - \hat Q_T)^2\big)$ over batch and positions, which
is the default here (`reduction="mean_square"`); `reduction="norm"` gives the $\lVert\cdot\rVert_p$ of Eq. 2 as
printed, averaged over the batch. Maps of 1-D features `(B, C, L)` are profiles over positions.

Because $\hat Q$ has unit norm, $\mathrm{mean}_s(\hat Q_S - \hat Q_T)^2 = \lVert \hat Q_S - \hat Q_T \rVert_2^2 / N_j$
for a map of $N_j$ positions: the same $\beta$ weighs the unit-norm maps $1/N_j$ as strongly. To carry the paper's
weight to maps of another size, `reference_positions` $(N^{\mathrm{ref}}_j)$ multiplies stage $j$'s term by
$N_j / N^{\mathrm{ref}}_j$, so that $\beta\,\mathrm{mean}_s$ weighs $\lVert \hat Q_S - \hat Q_T \rVert_2^2$ by
$\beta / N^{\mathrm{ref}}_j$ as it does on the paper's maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation._base import Distiller
from implementations.distillation.kd_hinton2015 import kd_loss

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["AT", "Config", "at_loss", "attention_map", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; defaults follow the authors' CIFAR code (AT at the end of each residual group)."""

    beta: float = 1000.0  # $\beta$
    p: float = 2.0  # exponent $p$ of $F^p_{\mathrm{sum}}$
    reduction: str = "mean_square"  # "mean_square" (authors' code) or "norm" (Eq. 2 as printed)
    kd_alpha: float = 0.0  # weight of an added KD term (AT+KD uses 0.9), CE gets 1 - kd_alpha
    temperature: float = 4.0  # $T$ of the added KD term
    # $N^{ref}_j$: positions of the paper's maps at the matched stages (last ones last), e.g. (1024, 256, 64) for a
    # WRN on CIFAR; stage j's term is scaled by N_j / N^ref_j. Empty = no rescaling (the authors' code as is).
    reference_positions: tuple[int, ...] = ()


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    r"""$\hat Q = \mathrm{vec}(F^p_{\mathrm{sum}}(A)) / \lVert \mathrm{vec}(F^p_{\mathrm{sum}}(A)) \rVert_2$.

    Args:
        feature: Activations $A$, shape `(B, C, *S)` (e.g. `(B, C, H, W)` or `(B, C, L)`).
        p: Exponent $p$.

    Returns:
        Unit-norm maps, shape `(B, prod(S))`.
    """
    summed = feature.abs().pow(p).sum(dim=1).flatten(1)  # (B, prod(S))
    return F.normalize(summed, p=2.0, dim=1)


def at_loss(student_feature: Tensor, teacher_feature: Tensor, p: float = 2.0, reduction: str = "mean_square") -> Tensor:
    r"""Distance between normalised attention maps of one pair of layers (without the $\beta/2$ factor).

    Args:
        student_feature: Student activations, shape `(B, C_s, *S)`.
        teacher_feature: Teacher activations, shape `(B, C_t, *S)`; channel counts may differ.
        p: Exponent of the map and of the norm.
        reduction: `"mean_square"`: $\mathrm{mean}_{b,s}(\hat Q_S - \hat Q_T)^2$; `"norm"`:
            $\mathrm{mean}_b \lVert \hat Q_S - \hat Q_T \rVert_p$.

    Returns:
        A scalar tensor.
    """
    diff = attention_map(student_feature, p) - attention_map(teacher_feature, p)  # (B, prod(S))
    if reduction == "mean_square":
        return diff.pow(2).mean()
    if reduction == "norm":
        return diff.norm(p=p, dim=1).mean()
    raise ValueError(f"unknown reduction {reduction!r}")


class AT(Distiller):
    """Cross-entropy (optionally plus KD) plus attention transfer at every stage the two nets have in common.

    Stages are paired from the last one backwards, and each pair must have the same spatial size.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and the weighted `ce`, `at` (and `kd`) terms."""
        cfg = self.cfg
        logits_s, feats_s = self.student(x, return_features=True)
        with torch.no_grad():
            logits_t, feats_t = self.teacher(x, return_features=True)
        n = min(len(feats_s), len(feats_t))
        pairs = list(zip(feats_s[-n:], feats_t[-n:], strict=True))
        scales = [1.0] * n
        if cfg.reference_positions:
            refs = cfg.reference_positions[-n:]
            if len(refs) != n:
                raise ValueError(f"reference_positions needs {n} entries, got {len(cfg.reference_positions)}")
            # N_j / N^ref_j: keeps beta's weight on the unit-norm maps what it is at the paper's map size
            scales = [fs[0, 0].numel() / ref for (fs, _), ref in zip(pairs, refs, strict=True)]
        transfer = sum(w * at_loss(fs, ft, cfg.p, cfg.reduction) for w, (fs, ft) in zip(scales, pairs, strict=True))
        losses = {"ce": (1 - cfg.kd_alpha) * F.cross_entropy(logits_s, y), "at": cfg.beta / 2 * transfer}
        if cfg.kd_alpha > 0:
            losses["kd"] = cfg.kd_alpha * kd_loss(logits_s, logits_t, cfg.temperature)
        return logits_s, losses


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Student alone, KD, AT, AT+KD and FitNets on identical students over `ctx.seeds`.

    The run is in `experiment.py`.
    """
    from implementations.distillation.at_zagoruyko2017.experiment import reproduce as run

    return run(ctx)
