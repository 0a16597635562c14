r"""Subclass Distillation (Müller, Kornblith & Hinton, 2020).

Paper: [arXiv:2002.03936](https://arxiv.org/abs/2002.03936) · notes: `papers/subclass_muller2020.md`

The teacher has $s$ subclass logits $z_{c,j}$ per class and is trained on class labels only; a class's
probability is the sum of its subclass probabilities, i.e. its logit is a log-sum-exp:

$$
z_c = \log \sum_{j=1}^{s} \exp(z_{c,j}), \qquad P(c \mid x) = \mathrm{softmax}(z)_c .
$$

Nothing in the class loss decides how mass is split inside a class, so an auxiliary loss makes different examples
use different subclasses: the subclass logits are normalised over the batch, $v_{n,k} = (z_{n,k} - \mu_k)/\sigma_k$,
and each example must be recognisable from its own vector among the $N$ of the batch,

$$
\mathcal{L}_{\mathrm{aux}} = -\frac{1}{N} \sum_{n=1}^{N}
    \log \frac{\exp(v_n^\top v_n / T_a)}{\sum_{m=1}^{N} \exp(v_n^\top v_m / T_a)} .
$$

The student has the same $C s$ outputs and is distilled on the subclass distribution at temperature $T$,
$\alpha\, T^2\, \mathrm{KL}(p_t^{(T)} \Vert p_s^{(T)}) + (1 - \alpha)\, \mathrm{CE}(y, \mathrm{softmax}(z_{s,c}))$.
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

__all__ = ["Config", "SubclassDistillation", "auxiliary_loss", "class_logits", "expand_head", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters (our choices where the paper's values were not checked)."""

    subclasses: int = 5  # $s$ per class (CIFAR-2x5 hides 5 classes in each super-class)
    num_classes: int | None = None  # $C$; None = the width of the student's original head
    aux_weight: float = 0.1  # $\beta$ (ours): at init the aux term is ~ln N, the class CE ~ln C
    aux_temperature: float = 1.0  # $T_a$
    temperature: float = 4.0  # $T$ of the subclass distillation
    alpha: float = 0.9  # weight of the distillation term


def class_logits(subclass_logits: Tensor, subclasses: int) -> Tensor:
    r"""$z_c = \log\sum_j \exp(z_{c,j})$; subclass $(c, j)$ is column $c s + j$.

    Args:
        subclass_logits: Shape `(B, C * s)`.
        subclasses: $s$.

    Returns:
        Class logits, shape `(B, C)`.
    """
    b, width = subclass_logits.shape
    return subclass_logits.view(b, width // subclasses, subclasses).logsumexp(dim=-1)


def auxiliary_loss(subclass_logits: Tensor, temperature: float = 1.0, eps: float = 1e-5) -> Tensor:
    r"""$\mathcal{L}_{\mathrm{aux}}$: cross-entropy of picking $n$ out of $\mathrm{softmax}_m(v_n^\top v_m / T_a)$.

    The logits are normalised per subclass over the batch before the dot products, so the loss rewards examples
    whose subclass-logit patterns differ, whatever the class.

    Args:
        subclass_logits: Shape `(N, C * s)`, $N \ge 2$.
        temperature: $T_a$.
        eps: Added to the batch standard deviation.

    Returns:
        A scalar tensor.
    """
    mean = subclass_logits.mean(dim=0, keepdim=True)  # $\mu_k$, (1, Cs)
    std = subclass_logits.std(dim=0, keepdim=True, unbiased=False)  # $\sigma_k$, (1, Cs)
    v = (subclass_logits - mean) / (std + eps)  # (N, Cs)
    similarity = v @ v.T / temperature  # (N, N)
    return F.cross_entropy(similarity, torch.arange(len(v), device=v.device))


def expand_head(model: nn.Module, factor: int) -> nn.Module:
    """Replace `model.head` (a `Linear(d, C)`) by a freshly initialised `Linear(d, C * factor)`, in place."""
    head = model.head
    model.head = nn.Linear(head.in_features, head.out_features * factor, bias=head.bias is not None)
    return model


class SubclassDistillation(Distiller):
    """Distil the teacher's $C s$ subclass probabilities into a student with $C s$ outputs.

    The teacher must already have $C s$ subclass outputs, trained as in the paper (class loss through the
    log-sum-exp plus the auxiliary loss); a $C$-output teacher carries no subclass information and is refused.
    A student whose head has $C$ outputs gets an expanded $C s$ head (fresh weights); one with $C s$ outputs is used
    as is. `forward(x)` returns the student's class logits `(B, C)`, so `evaluate()` scores classes.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None) -> None:
        self.cfg = cfg or Config()
        s = self.cfg.subclasses
        self.num_classes = self.cfg.num_classes or student.head.out_features
        if teacher.head.out_features != self.num_classes * s:
            raise ValueError(
                f"the teacher's head has {teacher.head.out_features} outputs; subclass distillation needs a teacher "
                f"trained with C*s = {self.num_classes}*{s} subclass logits"
            )
        if student.head.out_features == self.num_classes:
            expand_head(student, s)
        elif student.head.out_features != self.num_classes * s:
            raise ValueError(
                f"the student's head has {student.head.out_features} outputs, expected C = {self.num_classes} "
                f"or C*s = {self.num_classes * s}"
            )
        super().__init__(student, teacher)

    @classmethod
    def smoke_task(cls, batch_size: int = 8, num_classes: int = 10, seed: int = 0) -> tuple[Distiller, Tensor, Tensor]:
        """The family's smoke task with a $C s$-output teacher (the student keeps a $C$ head and is expanded)."""
        from implementations._models import build_model

        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        in_shape = (3, 16, 16)
        cfg = Config()
        teacher = build_model("resnet8", num_classes * cfg.subclasses, in_shape, width=1.0)
        student = build_model("resnet8", num_classes, in_shape, width=0.5)
        task = cls(student, teacher, cfg)
        x = torch.randn(batch_size, *in_shape, generator=gen)  # (B, 3, 16, 16)
        y = torch.randint(0, num_classes, (batch_size,), generator=gen)  # (B,)
        return task, x, y

    def forward(self, x: Tensor) -> Tensor:
        """Student class logits `(B, C)`."""
        return class_logits(self.student(x), self.cfg.subclasses)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student class logits `(B, C)`, and the weighted `kd` (subclass) and `ce` (class) terms."""
        cfg = self.cfg
        student = self.student(x)  # (B, C s)
        with torch.no_grad():
            teacher = self.teacher(x)  # (B, C s)
        log_p_s = F.log_softmax(student / cfg.temperature, dim=-1)
        log_p_t = F.log_softmax(teacher / cfg.temperature, dim=-1)
        kd = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * cfg.temperature**2
        logits = class_logits(student, cfg.subclasses)  # (B, C)
        return logits, {"kd": cfg.alpha * kd, "ce": (1 - cfg.alpha) * F.cross_entropy(logits, y)}


class _SubclassTeacher(nn.Module):
    r"""The teacher's task: class cross-entropy through the log-sum-exp, plus $\beta\,\mathcal{L}_{\mathrm{aux}}$."""

    def __init__(self, model: nn.Module, cfg: Config) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, x: Tensor) -> Tensor:
        return class_logits(self.model(x), self.cfg.subclasses)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        subclass = self.model(x)  # (B, C s)
        logits = class_logits(subclass, self.cfg.subclasses)
        losses = {"ce": F.cross_entropy(logits, y)}
        if self.cfg.aux_weight > 0:
            losses["aux"] = self.cfg.aux_weight * auxiliary_loss(subclass, self.cfg.aux_temperature)
        return logits, losses


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teachers with and without the auxiliary loss; students alone, with class KD and with subclass KD.

    The run is in `experiment.py`.
    """
    from implementations.distillation.subclass_muller2020.experiment import reproduce as run

    return run(ctx)
