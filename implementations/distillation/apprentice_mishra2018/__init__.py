r"""Apprentice: Using Knowledge Distillation Techniques To Improve Low-Precision Network Accuracy (Mishra & Marr, 2018).

Paper: [arXiv:1711.05852](https://arxiv.org/abs/1711.05852) · notes: `papers/apprentice_mishra2018.md`

A full-precision teacher (logits $z^T$, softmax $p^T$) guides a low-precision student, the apprentice (softmax
$p^A$), through the joint loss

$$
\mathcal{L}(x; W_T, W_A) = \alpha\, H\big(y, p^T\big) + \beta\, H\big(y, p^A\big) + \gamma\, H\big(p^T, p^A\big),
$$

where $H$ is the cross-entropy. The student computes with $k_w$-bit weights and $k_a$-bit activations: in the
forward pass each weight tensor is replaced by its quantized value (symmetric, one scale $s_c$ per output channel;
$k_w = 2$ gives ternary weights $\{-s_c, 0, s_c\}$) and each activation entering a layer by

$$
Q_a(a) = \frac{c}{2^{k_a} - 1}\, \operatorname{round}\!\Big(\frac{2^{k_a} - 1}{c}\, \operatorname{clip}(a, 0, c)\Big),
$$

while the straight-through estimator passes the gradients to the full-precision weights. Scheme A trains teacher
and student jointly from scratch, scheme B trains the student from scratch with a trained, frozen teacher (the
$\alpha$ term is then constant), and scheme C starts the student from trained full-precision weights of its own
architecture and fine-tunes it at low precision with the teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation._base import Distiller
from implementations.distillation.kd_hinton2015 import kd_loss
from implementations.quantization._base import fake_quantize, quantizable_layers, quantize_weights, round_ste

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "Apprentice", "apprentice_loss", "low_precision", "quantize_activation", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; the loss weights and the bit widths follow our reading of the paper (Sec. 4-5)."""

    weight_bits: int | None = 2  # $k_w$: 2 = ternary weights; None = full precision
    act_bits: int | None = 4  # $k_a$: 4-bit activations; None = full precision
    act_clip: float = 1.0  # $c$: activations are clipped to $[0, c]$ (WRPN's $[0, 1]$)
    alpha: float = 1.0  # $\alpha$: teacher's hard-label term (only trained in scheme A)
    beta: float = 0.5  # $\beta$: student's hard-label term
    gamma: float = 0.5  # $\gamma$: distillation term
    temperature: float = 1.0  # $T$ of the soft targets; the paper's loss uses plain softmaxes


def quantize_activation(a: Tensor, bits: int, clip: float = 1.0) -> Tensor:
    r"""$Q_a(a) = \frac{c}{2^k - 1} \operatorname{round}(\frac{2^k - 1}{c} \operatorname{clip}(a, 0, c))$ with an STE.

    Args:
        a: Activations (non-negative after a ReLU), any shape.
        bits: $k$, giving the $2^k$ levels $\{0, c/(2^k-1), \dots, c\}$.
        clip: $c > 0$.

    Returns:
        Quantized activations of `a`'s shape; the gradient is 1 inside $[0, c]$ and 0 outside.
    """
    levels = 2**bits - 1
    return clip / levels * round_ste(a.clamp(0.0, clip) * (levels / clip))


def _per_channel(weight: Tensor, bits: int) -> Tensor:
    # one absmax scale per output channel: the flattened weight splits into runs of C_in * k values
    return fake_quantize(weight, bits, group_size=weight[0].numel())


def low_precision(model: nn.Module, weight_bits: int | None, act_bits: int | None, act_clip: float = 1.0) -> nn.Module:
    r"""Make `model` compute with $k_w$-bit weights and $k_a$-bit activations, in place; returns `model`.

    The first and last layers keep full-precision weights (the usual practice of low-precision ResNets); the
    input of every layer but the first (which sees the data) goes through $Q_a$. Weights are fake-quantized by a
    parametrization, so the optimiser updates the full-precision copies.

    Args:
        model: Network with Linear / Conv1d / Conv2d layers.
        weight_bits: $k_w \ge 2$, or None to keep full-precision weights.
        act_bits: $k_a$, or None to keep full-precision activations.
        act_clip: $c$ of $Q_a$.
    """
    layers = [name for name, _ in quantizable_layers(model)]
    if weight_bits is not None:
        quantize_weights(model, lambda _layer: partial(_per_channel, bits=weight_bits), skip=[layers[0], layers[-1]])
    if act_bits is not None:
        for _, layer in quantizable_layers(model, skip=[layers[0]]):
            layer.register_forward_pre_hook(lambda _m, args: (quantize_activation(args[0], act_bits, act_clip),))
    return model


def apprentice_loss(
    student_logits: Tensor, teacher_logits: Tensor, y: Tensor, cfg: Config, train_teacher: bool = False
) -> dict[str, Tensor]:
    r"""The weighted terms of $\alpha H(y, p^T) + \beta H(y, p^A) + \gamma H(p^T, p^A)$.

    $H(p^T, p^A) = \mathrm{KL}(p^T \| p^A) + H(p^T)$, and $H(p^T)$ does not depend on the student, so the
    $\gamma$ term is computed as $T^2\,\mathrm{KL}$ (`kd_loss`), with the same gradient. The teacher's logits are
    detached in it: the teacher learns from the labels only.

    Args:
        student_logits: $z^A$, shape `(B, K)`.
        teacher_logits: $z^T$, shape `(B, K)`.
        y: Labels, shape `(B,)`.
        cfg: Weights $\alpha, \beta, \gamma$ and temperature $T$.
        train_teacher: Add the $\alpha$ term (scheme A); otherwise it is a constant and left out.

    Returns:
        `{"ce": ..., "kd": ...}` plus `"teacher_ce"` when `train_teacher`, each a weighted scalar.
    """
    losses = {
        "ce": cfg.beta * F.cross_entropy(student_logits, y),
        "kd": cfg.gamma * kd_loss(student_logits, teacher_logits.detach(), cfg.temperature),
    }
    if train_teacher:
        losses["teacher_ce"] = cfg.alpha * F.cross_entropy(teacher_logits, y)
    return losses


class Apprentice(Distiller):
    """A low-precision student distilled from a full-precision teacher; `joint=True` trains both (scheme A)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None, joint: bool = False):
        super().__init__(student, teacher)
        self.cfg = cfg or Config()
        self.joint = joint
        low_precision(self.student, self.cfg.weight_bits, self.cfg.act_bits, self.cfg.act_clip)
        if joint:
            self.teacher.requires_grad_(True)

    def train(self, mode: bool = True) -> Apprentice:
        """The teacher follows `mode` in scheme A and stays in eval mode otherwise."""
        super().train(mode)
        if self.joint:
            self.teacher.train(mode)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's parameters, plus the teacher's in scheme A."""
        return [p for p in self.parameters() if p.requires_grad] if self.joint else super().trainable_parameters()

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and the weighted `ce`, `kd` (and, in scheme A, `teacher_ce`) terms."""
        logits_s = self.student(x)  # (B, K)
        with torch.set_grad_enabled(self.joint and torch.is_grad_enabled()):
            logits_t = self.teacher(x)  # (B, K)
        return logits_s, apprentice_loss(logits_s, logits_t, y, self.cfg, train_teacher=self.joint)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """FP teacher and student; W2A4 students without distillation and with schemes A, B, C, at equal epochs.

    The run is in `experiment.py`.
    """
    from implementations.distillation.apprentice_mishra2018.experiment import reproduce as run

    return run(ctx)
