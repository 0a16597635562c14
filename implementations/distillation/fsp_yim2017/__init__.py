r"""A Gift from Knowledge Distillation: FSP matrices (Yim, Joo, Bae & Kim, CVPR 2017).

Paper: [CVPR 2017](https://openaccess.thecvf.com/content_cvpr_2017/html/Yim_A_Gift_From_CVPR_2017_paper.html) ·
notes: `papers/fsp_yim2017.md`

The "flow of solution procedure" (FSP) matrix of a network section with input features $F^1 \in \mathbb{R}^{h \times
w \times m}$ and output features $F^2 \in \mathbb{R}^{h \times w \times n}$ (Eq. 1) is

$$
G_{i,j}(x; W) = \sum_{s=1}^{h} \sum_{t=1}^{w} \frac{F^1_{s,t,i}(x; W)\, F^2_{s,t,j}(x; W)}{h \times w},
$$

with $F^1$ max-pooled to the size of $F^2$ when the section downsamples. Stage 1 trains the student to match the
teacher's FSP matrices of $n$ sections (Eq. 2),

$$
L_{FSP}(W_t, W_s) = \frac{1}{N} \sum_{x} \sum_{i=1}^{n} \lambda_i
    \big\lVert G_i^{T}(x; W_t) - G_i^{S}(x; W_s) \big\rVert_2^2 ,
$$

and stage 2 trains it on the task loss alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation._base import Distiller

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["FSP", "Config", "fsp_loss", "fsp_matrix", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the FSP loss."""

    section_weight: float = 1.0  # $\lambda_i$, equal for all sections (Sec. 3.3)
    joint_weight: float = 1.0  # weight of $L_{FSP}$ next to CE in the one-stage ("joint") ablation


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    r"""FSP matrix $G = F^1 {F^2}^\top / (h w)$ of one section, per example.

    Args:
        first: Section input $F^1$, shape `(B, m, *S_1)`; max-pooled to `S_2` when larger.
        second: Section output $F^2$, shape `(B, n, *S_2)`.

    Returns:
        $G$, shape `(B, m, n)`.
    """
    spatial = second.shape[2:]
    if first.shape[2:] != spatial:
        pool = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d}[len(spatial)]
        first = pool(first, spatial)
    f1, f2 = first.flatten(2), second.flatten(2)  # (B, m, hw), (B, n, hw)
    return torch.bmm(f1, f2.transpose(1, 2)) / f1.shape[-1]  # (B, m, n)


def fsp_loss(student_matrices: list[Tensor], teacher_matrices: list[Tensor], weights: list[float]) -> Tensor:
    r"""$\mathrm{mean}_x \sum_i \lambda_i \lVert G_i^T - G_i^S \rVert_2^2$ (squared Frobenius norm per example).

    Args:
        student_matrices: $G_i^S$, each `(B, m_i, n_i)`.
        teacher_matrices: $G_i^T$, same shapes.
        weights: $\lambda_i$.
    """
    pairs = zip(student_matrices, teacher_matrices, weights, strict=True)
    return sum(w * (gt - gs).pow(2).flatten(1).sum(dim=1).mean() for gs, gt, w in pairs)


class FSP(Distiller):
    """FSP matching between consecutive feature maps (`stage = "fsp"`), then the task loss (`stage = "task"`).

    Sections are the spans between consecutive entries of `features` (so a CIFAR ResNet gives the three residual
    stages, as in the paper). When a student feature has a different channel count than the teacher's, a learned
    1x1 convolution maps it to the teacher's width first, which the paper does not need (its students have the
    teacher's widths); connectors are built from a probe of shape `in_shape`, or on the first `forward_train`.
    `stage = "joint"` adds `joint_weight` times $L_{FSP}$ to the cross-entropy (a one-stage ablation).
    """

    def __init__(
        self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None, in_shape: tuple[int, ...] | None = None
    ) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()
        self.stage = "fsp"
        self.connectors: nn.ModuleList | None = None
        if in_shape is not None:
            with torch.no_grad():
                self._build(torch.zeros(2, *in_shape))

    def _build(self, x: Tensor) -> None:
        was_training = self.student.training
        self.student.eval()
        _, feats_s = self.student(x, return_features=True)
        _, feats_t = self.teacher(x, return_features=True)
        self.student.train(was_training)
        conv = {3: nn.Conv1d, 4: nn.Conv2d}[feats_s[0].dim()]
        self.connectors = nn.ModuleList(
            nn.Identity() if fs.shape[1] == ft.shape[1] else conv(fs.shape[1], ft.shape[1], 1, bias=False)
            for fs, ft in zip(feats_s, feats_t, strict=True)
        ).to(x.device)

    def matrices(self, features: list[Tensor]) -> list[Tensor]:
        """FSP matrices of consecutive feature pairs, `[(B, m_i, n_i)]`."""
        return [fsp_matrix(a, b) for a, b in zip(features[:-1], features[1:], strict=True)]

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and `{"fsp"}`, `{"ce"}` or `{"ce", "fsp"}` depending on `stage`."""
        if self.stage == "task":
            logits_s = self.student(x)
            return logits_s, {"ce": F.cross_entropy(logits_s, y)}
        if self.connectors is None:
            with torch.no_grad():
                self._build(x)
        logits_s, feats_s = self.student(x, return_features=True)
        with torch.no_grad():
            _, feats_t = self.teacher(x, return_features=True)
            g_t = self.matrices(feats_t)
        g_s = self.matrices([c(f) for c, f in zip(self.connectors, feats_s, strict=True)])
        loss = fsp_loss(g_s, g_t, [self.cfg.section_weight] * len(g_s))
        if self.stage == "fsp":
            return logits_s, {"fsp": loss}
        return logits_s, {"ce": F.cross_entropy(logits_s, y), "fsp": self.cfg.joint_weight * loss}


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher, FSP two-stage students, scratch baselines, a joint-loss ablation and a narrow student.

    The run is in `experiment.py`.
    """
    from implementations.distillation.fsp_yim2017.experiment import reproduce as run

    return run(ctx)
