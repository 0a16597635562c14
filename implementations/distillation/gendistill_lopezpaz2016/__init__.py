r"""Unifying Distillation and Privileged Information (Lopez-Paz, Bottou, Schölkopf & Vapnik, ICLR 2016).

Paper: [arXiv:1511.03643](https://arxiv.org/abs/1511.03643) · notes: `papers/gendistill_lopezpaz2016.md`

Training data are triplets $(x_i, x_i^\star, y_i)$: $x_i$ the features seen at test time, $x_i^\star$ privileged
features seen only in training. *Generalized distillation* (Sec. 3) trains a teacher $f_t$ on $(x_i^\star, y_i)$,
computes soft labels with temperature $T$,

$$
s_i = \sigma\big(f_t(x_i^\star) / T\big),
$$

and trains the student on the regular features with imitation weight $\lambda \in [0, 1]$:

$$
f_s = \arg\min_{f \in \mathcal{F}_s} \frac{1}{n} \sum_{i=1}^{n}
      \Big[(1 - \lambda)\, \ell\big(y_i, \sigma(f(x_i))\big) + \lambda\, \ell\big(s_i, \sigma(f(x_i))\big)\Big],
$$

with $\ell$ the cross-entropy and $\sigma$ the softmax (the student's own softmax is not tempered). Hinton's
distillation is the special case $x^\star = x$.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation._base import Distiller

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = [
    "Config",
    "GeneralizedDistillation",
    "generalized_distillation_loss",
    "make_synthetic",
    "pack",
    "reproduce",
    "soft_labels",
    "unpack",
]


@dataclass(frozen=True)
class Config:
    r"""Hyperparameters; $T = 1$, $\lambda = 1$ is the setting of the paper's synthetic simulations (as we recall)."""

    temperature: float = 1.0  # $T$ of the teacher's soft labels
    imitation: float = 1.0  # $\lambda$, weight of the soft-label term


def soft_labels(teacher_logits: Tensor, temperature: float) -> Tensor:
    r"""$s_i = \sigma(f_t(x_i^\star) / T)$, shape `(B, K)` from teacher logits `(B, K)`."""
    return F.softmax(teacher_logits / temperature, dim=-1)


def generalized_distillation_loss(
    student_logits: Tensor, labels: Tensor, teacher_logits: Tensor, temperature: float, imitation: float
) -> dict[str, Tensor]:
    r"""The two weighted terms $(1-\lambda)\,\ell(y, \sigma(f(x)))$ and $\lambda\,\ell(s, \sigma(f(x)))$.

    Args:
        student_logits: $f(x_i)$ on the regular features, shape `(B, K)`.
        labels: Hard labels $y_i$, shape `(B,)`.
        teacher_logits: $f_t(x_i^\star)$ on the privileged features, shape `(B, K)`.
        temperature: $T$ of the soft labels.
        imitation: $\lambda$.

    Returns:
        `{"hard": ..., "soft": ...}`, scalars averaged over the batch.
    """
    log_q = F.log_softmax(student_logits, dim=-1)  # (B, K): the student's softmax is not tempered
    s = soft_labels(teacher_logits, temperature)  # (B, K)
    return {
        "hard": (1 - imitation) * F.nll_loss(log_q, labels),
        "soft": imitation * -(s * log_q).sum(dim=-1).mean(),
    }


def pack(x: Tensor, x_star: Tensor) -> Tensor:
    """Concatenate flattened regular and privileged features into one `(N, D + D*)` tensor (for `fit`)."""
    return torch.cat([x.flatten(1), x_star.flatten(1)], dim=1)


def unpack(regular_dim: int) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """The inverse of `pack`: a function `(N, D + D*) -> ((N, D), (N, D*))` splitting after `regular_dim` columns."""

    def split(batch: Tensor) -> tuple[Tensor, Tensor]:
        return batch[:, :regular_dim], batch[:, regular_dim:]

    return split


class GeneralizedDistillation(Distiller):
    r"""Student on $x$ imitating a teacher trained on privileged $x^\star$.

    A training batch carries both views: `split(batch) -> (x, x_star)` (see `pack` / `unpack`). Without `split`,
    the teacher sees the student's input ($x^\star = x$, Hinton's distillation), which is how the generic smoke test
    builds the task. At test time only $x$ exists, so `forward` applies `split` only to packed inputs.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        cfg: Config | None = None,
        split: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()
        self.split = split

    def views(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """`(x, x_star)` of a training batch."""
        return self.split(batch) if self.split is not None else (batch, batch)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and the weighted `hard` and `soft` terms."""
        x_regular, x_star = self.views(x)
        logits_s = self.student(x_regular)  # (B, K)
        with torch.no_grad():
            logits_t = self.teacher(x_star)  # (B, K)
        return logits_s, generalized_distillation_loss(logits_s, y, logits_t, self.cfg.temperature, self.cfg.imitation)


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic data of Sec. 4.1
# ---------------------------------------------------------------------------------------------------------------------


def make_synthetic(kind: str, n: int, d: int, gen: torch.Generator, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""One of the paper's synthetic LUPI problems, `(x, x_star, y)` with $d$ regular features.

    - `clean_labels`: $x \sim \mathcal{N}(0, I_d)$, $x^\star = \langle \alpha, x \rangle$,
      $y = \mathbb{1}[x^\star + \varepsilon > 0]$, $\varepsilon \sim \mathcal{N}(0, 1)$.
    - `clean_features`: $x^\star \sim \mathcal{N}(0, I_d)$, $x = x^\star + \varepsilon$,
      $\varepsilon \sim \mathcal{N}(0, I_d)$, $y = \mathbb{1}[\langle \alpha, x^\star \rangle > 0]$.
    - `relevant_features`: $x \sim \mathcal{N}(0, I_d)$, $x^\star = x_J$ with $J = \{0, 1, 2\}$,
      $y = \mathbb{1}[\langle \alpha_J, x_J \rangle > 0]$.

    Args:
        kind: One of the three names above.
        n: Number of samples.
        d: Dimension $d$ of $x$.
        gen: CPU generator for the samples.
        alpha: The fixed separating direction $\alpha$, shape `(d,)`.

    Returns:
        `x` `(n, d)`, `x_star` `(n, d*)`, `y` `(n,)` int64.
    """
    if kind == "clean_labels":
        x = torch.randn(n, d, generator=gen)
        x_star = (x @ alpha)[:, None]  # (n, 1)
        y = (x_star[:, 0] + torch.randn(n, generator=gen) > 0).long()
    elif kind == "clean_features":
        x_star = torch.randn(n, d, generator=gen)
        x = x_star + torch.randn(n, d, generator=gen)
        y = (x_star @ alpha > 0).long()
    elif kind == "relevant_features":
        x = torch.randn(n, d, generator=gen)
        x_star = x[:, :3]
        y = (x_star @ alpha[:3] > 0).long()
    else:
        raise ValueError(f"unknown synthetic problem {kind!r}")
    return x, x_star, y


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """The three synthetic problems of Sec. 4.1, a digits analogue of the MNIST experiment, and a learning curve.

    The run is in `experiment.py`.
    """
    from implementations.distillation.gendistill_lopezpaz2016.experiment import reproduce as run

    return run(ctx)
