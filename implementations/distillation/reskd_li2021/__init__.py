r"""ResKD: Residual-Guided Knowledge Distillation (Li, Li, Omar, Wu & Li, 2021).

Paper: [arXiv:2006.04719](https://arxiv.org/abs/2006.04719) · notes: `papers/reskd_li2021.md`

A base student $S_0$ is distilled from the teacher $T$. The knowledge it still misses, the residual
$z_T(x) - z_{S_{k-1}}(x)$ between the teacher's logits and those of the current student, is the target of a much
smaller *res-student* $R_k$, and the new student is the sum

$$
z_{S_k}(x) = z_{S_{k-1}}(x) + z_{R_k}(x) = z_{S_0}(x) + \sum_{j=1}^{k} z_{R_j}(x).
$$

$R_k$ is trained with everything before it frozen, on the residual regression plus the label loss of the sum,

$$
\mathcal{L}_k = \alpha\, \tfrac{1}{K}\big\lVert z_{R_k}(x) - \big(z_T(x) - z_{S_{k-1}}(x)\big) \big\rVert_2^2
              + (1 - \alpha)\, \mathrm{CE}\big(y, \mathrm{softmax}(z_{S_k}(x))\big).
$$

Res-students are added while the gap energy $E_k = \mathbb{E}_x \tfrac{1}{K}\lVert z_T(x) - z_{S_k}(x)\rVert^2$ on
held-out data keeps shrinking, $E_k < (1 - \epsilon) E_{k-1}$. At inference the chain is evaluated stage by stage
and an input leaves at the first stage $k$ whose prediction is confident, $\max_c \mathrm{softmax}(z_{S_k})_c \ge
\tau$, so easy inputs pay only for $S_0$ (sample-adaptive inference). The paper searches the res-students'
architectures with NAS; here they are a fixed small 1-D CNN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation._base import Distiller
from implementations.distillation.kd_hinton2015 import kd_loss

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "ResKD", "adaptive_exit", "gap_energy", "reproduce", "residual_loss", "stop_index"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters (the paper's are not in our notes; these mirror the KD defaults)."""

    alpha: float = 0.9  # $\alpha$: weight of the residual (teacher) term vs the label term
    temperature: float = 4.0  # $T$ of the KD loss that trains the base student $S_0$
    min_decrease: float = 0.05  # $\epsilon$: stop when the gap energy shrinks by less than this fraction
    confidence: float = 0.9  # $\tau$: an input exits at the first stage with max softmax >= tau


def residual_loss(res_logits: Tensor, teacher_logits: Tensor, prev_logits: Tensor) -> Tensor:
    r"""$\tfrac{1}{K}\lVert z_R - (z_T - z_{S_{k-1}}) \rVert^2$, averaged over the batch.

    Args:
        res_logits: Output of the res-student $z_{R_k}$, `(B, K)`.
        teacher_logits: $z_T$, `(B, K)`.
        prev_logits: Logits of the current student $z_{S_{k-1}}$ (frozen), `(B, K)`.

    Returns:
        A scalar tensor, 0 when the res-student predicts the gap exactly.
    """
    return F.mse_loss(res_logits, teacher_logits - prev_logits)


def gap_energy(teacher_logits: Tensor, student_logits: Tensor) -> float:
    r"""$E = \frac{1}{BK} \sum_b \lVert z_T(x_b) - z_S(x_b) \rVert^2$, the size of the remaining residual."""
    return float((teacher_logits - student_logits).pow(2).mean())


def stop_index(energies: Sequence[float], min_decrease: float) -> int:
    r"""Number of res-students to keep: add $R_k$ while $E_k < (1 - \epsilon) E_{k-1}$.

    Args:
        energies: $E_0, E_1, \dots$: gap energy of $S_0$ and of each longer chain.
        min_decrease: $\epsilon$.

    Returns:
        $k^\ast$, the length of the chain after which the gap stopped shrinking (0 = base student only).
    """
    for k in range(1, len(energies)):
        if energies[k] >= (1 - min_decrease) * energies[k - 1]:
            return k - 1
    return len(energies) - 1


def adaptive_exit(stage_logits: Tensor, stage_flops: Sequence[float], confidence: float) -> tuple[Tensor, Tensor]:
    r"""Sample-adaptive inference: each input leaves at the first stage with $\max_c p_c \ge \tau$.

    Args:
        stage_logits: Logits of $S_0, S_1, \dots, S_n$, `(n + 1, B, K)`.
        stage_flops: Cumulative FLOPs of running the chain up to each stage, length $n + 1$.
        confidence: $\tau$; the last stage answers every input that never reaches it.

    Returns:
        `(predictions, flops)`: predicted classes `(B,)` and the FLOPs each input used `(B,)`.
    """
    confident = F.softmax(stage_logits, dim=-1).amax(dim=-1) >= confidence  # (S, B)
    confident[-1] = True
    exit_stage = confident.float().argmax(dim=0)  # first confident stage, (B,)
    batch = torch.arange(stage_logits.shape[1], device=stage_logits.device)
    predictions = stage_logits[exit_stage, batch].argmax(dim=-1)  # (B,)
    flops = torch.as_tensor(list(stage_flops), dtype=torch.float32, device=stage_logits.device)[exit_stage]
    return predictions, flops


class ResKD(Distiller):
    """Base student plus a chain of res-students; trains $S_0$ by KD, then only the newest res-student."""

    def __init__(
        self, student: nn.Module, teacher: nn.Module, res_students: Sequence[nn.Module] = (), cfg: Config | None = None
    ) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()
        self.res_students = nn.ModuleList()
        self.use_teacher = True  # False: fit the res-student to the labels only (boosting ablation)
        for res in res_students:
            self.add_res_student(res)

    def add_res_student(self, res_student: nn.Module) -> None:
        """Freeze the current chain and append `res_student`, the only trainable part from now on."""
        self.student.requires_grad_(False)
        for res in self.res_students:
            res.requires_grad_(False)
        self.res_students.append(res_student)
        self.train(self.training)

    def train(self, mode: bool = True) -> ResKD:
        """Only the module being trained follows `mode`; the teacher and the frozen chain stay in eval mode."""
        super().train(mode)
        frozen = [self.student, *self.res_students[:-1]] if len(self.res_students) else []
        for module in frozen:
            module.eval()
        return self

    def stage_logits(self, x: Tensor, stages: int | None = None) -> Tensor:
        r"""Cumulative logits $z_{S_0}, z_{S_1}, \dots$ of the first `stages` chains, `(S, B, K)`."""
        count = len(self.res_students) + 1 if stages is None else stages
        running = self.student(x)  # (B, K)
        out = [running]
        for res in self.res_students[: count - 1]:
            running = running + res(x)
            out.append(running)
        return torch.stack(out)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the whole chain $z_{S_n}$, `(B, K)`."""
        return self.stage_logits(x)[-1]

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits of the chain `(B, K)` and the weighted terms of the stage being trained."""
        cfg = self.cfg
        with torch.no_grad():
            teacher_logits = self.teacher(x)  # (B, K)
        if not len(self.res_students):  # stage 0: distil the base student (Hinton KD)
            logits = self.student(x)
            return logits, {
                "ce": (1 - cfg.alpha) * F.cross_entropy(logits, y),
                "kd": cfg.alpha * kd_loss(logits, teacher_logits, cfg.temperature),
            }
        with torch.no_grad():
            prev = self.stage_logits(x, len(self.res_students))[-1]  # $z_{S_{k-1}}$, (B, K)
        res = self.res_students[-1](x)  # $z_{R_k}$, (B, K)
        logits = prev + res
        if not self.use_teacher:
            return logits, {"ce": F.cross_entropy(logits, y)}
        return logits, {
            "residual": cfg.alpha * residual_loss(res, teacher_logits, prev),
            "ce": (1 - cfg.alpha) * F.cross_entropy(logits, y),
        }


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher, KD base student, chains of up to 3 res-students, adaptive inference and two controls.

    The run is in `experiment.py`.
    """
    from implementations.distillation.reskd_li2021.experiment import reproduce as run

    return run(ctx)
