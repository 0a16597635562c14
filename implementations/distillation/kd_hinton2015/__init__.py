r"""Distilling the Knowledge in a Neural Network (Hinton, Vinyals & Dean, 2015).

Paper: [arXiv:1503.02531](https://arxiv.org/abs/1503.02531) · notes: `papers/kd_hinton2015.md`

The student matches the teacher's class distribution softened by a temperature $T$:

$$
p_i^{(T)} = \frac{\exp(z_i / T)}{\sum_j \exp(z_j / T)}
$$

and is trained on a weighted sum of the hard-label loss and the soft-target loss

$$
\mathcal{L} = (1 - \alpha)\,\mathrm{CE}\big(y, p_s^{(1)}\big)
            + \alpha\, T^2\, \mathrm{KL}\big(p_t^{(T)} \,\|\, p_s^{(T)}\big).
$$
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

__all__ = ["Config", "KD", "kd_loss", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; defaults follow the common CIFAR-100 setting."""

    temperature: float = 4.0  # $T$
    alpha: float = 0.9  # weight of the soft-target term
    t_squared: bool = True  # multiply the soft term by $T^2$ (Sec. 2); False is an ablation
    # "teacher": $p_t^{(T)}$; "smoothed": a control that swaps it for label smoothing of the same entropy, per example
    soft_target: str = "teacher"


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    r"""Soft-target loss $T^2\,\mathrm{KL}(p_t^{(T)} \| p_s^{(T)})$, averaged over the batch.

    Args:
        student_logits: Student logits $z_s$, shape `(B, K)`.
        teacher_logits: Teacher logits $z_t$, shape `(B, K)`.
        temperature: Softening temperature $T > 0$.

    Returns:
        A scalar tensor.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)  # (B, K)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)  # (B, K)
    # The soft-target gradients scale as 1/T^2, so multiply by T^2 to keep
    # the two terms comparable when T changes (Sec. 2 of the paper).
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


class KD(Distiller):
    """Logit distillation with a temperature-softened KL term."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and the weighted `ce` and `kd` terms."""
        logits_s = self.student(x)  # (B, K)
        with torch.no_grad():
            logits_t = self.teacher(x)  # (B, K)
        cfg = self.cfg
        if cfg.soft_target == "smoothed":
            from implementations.mutual_learning.dml_zhang2018 import entropy_matched_target

            # control: $q_\varepsilon$ with $H(q_\varepsilon) = H(p_t^{(T)})$ and no class similarities; as logits
            # $T \log q_\varepsilon$ so that kd_loss's softmax at $T$ returns $q_\varepsilon$ itself
            target = entropy_matched_target(y, logits_t / cfg.temperature)  # (B, K)
            logits_t = cfg.temperature * target.clamp_min(1e-12).log()
        elif cfg.soft_target != "teacher":
            raise ValueError(f"soft_target must be 'teacher' or 'smoothed', got {cfg.soft_target!r}")
        soft = kd_loss(logits_s, logits_t, cfg.temperature)
        if not cfg.t_squared:
            soft = soft / cfg.temperature**2  # ablation: the plain KL, gradients shrink as $1/T^2$
        losses = {"ce": (1 - cfg.alpha) * F.cross_entropy(logits_s, y), "kd": cfg.alpha * soft}
        return logits_s, losses


#: `kb run kd_hinton2015 --full` exists: the paper-scale setting, read by `kb` without importing this module.
FULL = "CIFAR-100, resnet32x4 teacher -> resnet8x4 student (mdistiller's setting), 240 epochs, crop+flip; GPU"


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher, student alone, student + KD, and KD from early snapshots of the teacher, over `ctx.seeds`.

    The run is in `experiment.py`.
    """
    from implementations.distillation.kd_hinton2015.experiment import reproduce as run

    return run(ctx)
