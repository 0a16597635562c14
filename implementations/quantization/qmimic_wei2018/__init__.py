r"""Quantization Mimic: Towards Very Tiny CNN for Object Detection (Wei, Pan, Qin, Ouyang & Yan, 2018).

Paper: [arXiv:1805.02152](https://arxiv.org/abs/1805.02152) · notes: `papers/qmimic_wei2018.md`

The feature maps of both networks go through the same uniform quantizer with step $\Delta$ and $2^b$ levels,

$$
Q(a) = \Delta \cdot \operatorname{round}\!\Big(\frac{\operatorname{clip}(a, 0, (2^b - 1)\Delta)}{\Delta}\Big),
$$

with the straight-through estimator in the backward pass. A full-precision teacher is fine-tuned with quantized
activations, then a tiny student whose activations are quantized the same way learns from the labels and from an
L2 mimic loss between the quantized feature maps,

$$
\mathcal{L} = \mathcal{L}_{\mathrm{cls}} + \lambda\, \frac{1}{2N} \sum_{i=1}^{N}
              \big\lVert Q\big(f_t^{(i)}\big) - Q\big(r(f_s^{(i)})\big) \big\rVert_2^2 ,
$$

where $r$ is a $1 \times 1$ convolution that maps the student's channels to the teacher's and $N$ counts the mimicked
locations (the proposals in the paper's detectors, the examples here). Quantizing both sides maps nearby values to
one level, so the student only has to land in the right bin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._models import CNN1d
from implementations.quantization._base import round_ste

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "QuantReLU", "QuantizationMimic", "mimic_loss", "quantize_activations", "reproduce", "uniform_q"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; the quantizer is fixed for BN-normalised activations."""

    bits: int = 2  # $b$: $2^b$ levels $\{0, \Delta, \dots, (2^b - 1)\Delta\}$
    step: float = 0.538  # $\Delta$: optimal uniform step for a half Gaussian at 2 bits (HWGQ, Cai et al. 2017)
    mimic_weight: float = 1.0  # $\lambda$ per feature entry: the loss is divided by $C_t L$ (our choice)
    quantize_mimic: bool = True  # False: plain mimic of unquantized features (the control)


def uniform_q(a: Tensor, step: float, bits: int) -> Tensor:
    r"""$Q(a) = \Delta\,\operatorname{round}(\operatorname{clip}(a, 0, (2^b - 1)\Delta) / \Delta)$ with an STE.

    The gradient is 1 inside $[0, (2^b - 1)\Delta]$ and 0 outside (the clip's own gradient).

    Args:
        a: Activations, any shape.
        step: $\Delta > 0$.
        bits: $b$.

    Returns:
        Quantized activations, same shape, on the levels $\{0, \Delta, \dots, (2^b-1)\Delta\}$.
    """
    top = (2**bits - 1) * step
    return step * round_ste(a.clamp(0.0, top) / step)


class QuantReLU(nn.Module):
    """ReLU followed by the uniform quantizer: the activation of a network with quantized feature maps."""

    def __init__(self, step: float, bits: int) -> None:
        super().__init__()
        self.step, self.bits = step, bits

    def forward(self, x: Tensor) -> Tensor:
        """$Q(x)$, same shape (negative values go to level 0, as after a ReLU)."""
        return uniform_q(x, self.step, self.bits)


def quantize_activations(model: nn.Module, step: float, bits: int) -> nn.Module:
    """Replace every `nn.ReLU` of `model` by `QuantReLU(step, bits)`, in place; returns `model`."""
    for name, child in model.named_children():
        if isinstance(child, nn.ReLU):
            setattr(model, name, QuantReLU(step, bits))
        else:
            quantize_activations(child, step, bits)
    return model


def mimic_loss(student_feature: Tensor, teacher_feature: Tensor, step: float, bits: int, quantize: bool) -> Tensor:
    r"""$\frac{1}{2N} \sum_i \lVert Q(f_t^{(i)}) - Q(r(f_s^{(i)})) \rVert_2^2$ (without $Q$ when `quantize` is False).

    Args:
        student_feature: Adapted student features $r(f_s)$, `(N, C_t, L)`.
        teacher_feature: Teacher features $f_t$ (detached), `(N, C_t, L)`.
        step: $\Delta$ of the shared quantizer.
        bits: $b$ of the shared quantizer.
        quantize: Apply $Q$ to both sides.

    Returns:
        A scalar tensor.
    """
    if quantize:
        student_feature, teacher_feature = (
            uniform_q(student_feature, step, bits),
            uniform_q(teacher_feature, step, bits),
        )
    return (student_feature - teacher_feature).pow(2).flatten(1).sum(1).mean() / 2


class QuantizationMimic(nn.Module):
    r"""Quantized tiny student + $1\times1$ adapter, trained on CE and the mimic loss to a frozen teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Config()
        self.student = quantize_activations(student, self.cfg.step, self.cfg.bits)
        self.teacher = teacher
        self.adapter = None
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
            c_s = [m for m in student.modules() if isinstance(m, nn.Conv1d)][-1].out_channels
            c_t = [m for m in teacher.modules() if isinstance(m, nn.Conv1d)][-1].out_channels
            self.adapter = nn.Conv1d(c_s, c_t, 1)  # $r$

    def train(self, mode: bool = True) -> QuantizationMimic:
        """The teacher always stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Student logits `(B, K)`."""
        return self.student(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)`, `{"ce"}` and, with a teacher, the weighted `mimic` term on the last stage."""
        logits, features = self.student(x, return_features=True)
        losses = {"ce": F.cross_entropy(logits, y)}
        if self.teacher is not None:
            with torch.no_grad():
                _, teacher_features = self.teacher(x, return_features=True)
            cfg = self.cfg
            adapted = self.adapter(features[-1])  # $r(f_s)$, (B, C_t, L)
            mimic = mimic_loss(adapted, teacher_features[-1], cfg.step, cfg.bits, cfg.quantize_mimic)
            # lambda is per entry: divide by C_t * L so the term is a per-entry mean, comparable to the CE
            losses["mimic"] = cfg.mimic_weight / adapted[0].numel() * mimic
        return logits, losses

    @classmethod
    def smoke_task(cls, batch_size: int = 8, seed: int = 0) -> tuple[QuantizationMimic, Tensor, Tensor]:
        """A 2-4-4 student mimicking a quantized 8-16-16 teacher on MNIST-1D-shaped inputs."""
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        teacher = quantize_activations(CNN1d(1, 40, 10, (8, 16, 16)), Config().step, Config().bits)
        task = cls(CNN1d(1, 40, 10, (2, 4, 4)), teacher)
        x = torch.randn(batch_size, 1, 40, generator=gen)  # (B, 1, 40)
        y = torch.randint(0, 10, (batch_size,), generator=gen)  # (B,)
        return task, x, y


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """One FP teacher and its quantized fine-tune; quantized students alone, with plain mimic, with Q-mimic. The run is
    in `experiment.py`."""
    from implementations.quantization.qmimic_wei2018.experiment import reproduce as run

    return run(ctx)
