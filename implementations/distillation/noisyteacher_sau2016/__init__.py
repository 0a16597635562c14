r"""Deep Model Compression: Distilling Knowledge from Noisy Teachers (Sau & Balasubramanian, 2016).

Paper: [arXiv:1610.09650](https://arxiv.org/abs/1610.09650) · notes: `papers/noisyteacher_sau2016.md`

The student regresses the teacher's logits as in mimic learning (Ba & Caruana), but for a random fraction $\alpha$ of
the samples of each mini-batch the teacher's logits are perturbed by multiplicative Gaussian noise,

$$
\tilde z_T(x) = \big(1 + \xi\big) \odot z_T(x), \qquad \xi \sim \mathcal{N}(0, \sigma^2 I),
$$

and the student minimises

$$
\mathcal{L} = \frac{1}{2} \big\lVert z_S(x) - \tilde z_T(x) \big\rVert_2^2 .
$$

Each draw of $\xi$ acts as a different teacher; in expectation the noise adds a penalty that grows with $\sigma^2$
(a regulariser). With `loss="kd"` the same noisy logits feed Hinton's temperature-softened KD instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation._base import Distiller
from implementations.distillation.kd_hinton2015 import kd_loss
from implementations.distillation.mimic_ba2014 import mimic_loss

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "NoisyTeacher", "perturb_logits", "reproduce"]


@dataclass(frozen=True)
class Config:
    r"""Hyperparameters; the paper sweeps $\sigma$ and $\alpha$ (values here are our defaults)."""

    sigma: float = 0.3  # $\sigma$, standard deviation of the multiplicative noise
    alpha: float = 0.5  # $\alpha$, probability that a sample's teacher logits are perturbed
    loss: str = "mse"  # "mse" (the paper's logit regression) or "kd" (temperature KD + CE, open question)
    temperature: float = 4.0  # $T$ when loss="kd"
    kd_alpha: float = 0.9  # weight of the KD term when loss="kd" (CE gets 1 - kd_alpha)


def perturb_logits(
    logits: Tensor, sigma: float, alpha: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    r"""$\tilde z = (1 + \xi) \odot z$ on a random subset of rows, $\xi \sim \mathcal{N}(0, \sigma^2)$ elementwise.

    Args:
        logits: Teacher logits $z_T$, shape `(B, K)`.
        sigma: $\sigma$.
        alpha: Probability $\alpha$ that a row is perturbed.
        generator: Optional generator (on the logits' device) for reproducible draws.

    Returns:
        The noisy logits `(B, K)` and the boolean mask of perturbed rows `(B,)`.
    """
    rows = torch.rand(logits.shape[0], generator=generator, device=logits.device) < alpha  # (B,)
    xi = sigma * torch.randn(logits.shape, generator=generator, device=logits.device)  # (B, K)
    return torch.where(rows[:, None], (1 + xi) * logits, logits), rows


class NoisyTeacher(Distiller):
    """Logit regression (or KD) on teacher logits perturbed afresh in every mini-batch.

    As with `Mimic`, a float `y` of shape `(B, K)` is read as teacher logits computed offline; integer labels make
    the teacher run on `x` (needed for `loss="kd"`, which also uses the labels).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and `{"mimic"}` or `{"ce", "kd"}`."""
        cfg = self.cfg
        logits_s = self.student(x)  # (B, K)
        offline = y.is_floating_point() and y.shape == logits_s.shape
        if offline:
            logits_t = y
        else:
            with torch.no_grad():
                logits_t = self.teacher(x)  # (B, K)
        noisy, _ = perturb_logits(logits_t, cfg.sigma, cfg.alpha)  # (B, K)
        if cfg.loss == "mse":
            return logits_s, {"mimic": mimic_loss(logits_s, noisy)}
        if offline:
            raise ValueError('loss="kd" needs integer labels y (and the teacher run online)')
        return logits_s, {
            "ce": (1 - cfg.kd_alpha) * F.cross_entropy(logits_s, y),
            "kd": cfg.kd_alpha * kd_loss(logits_s, noisy, cfg.temperature),
        }


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Noise-free mimic vs noisy-teacher mimic at several sigma, and KD with and without noise.

    The run is in `experiment.py`.
    """
    from implementations.distillation.noisyteacher_sau2016.experiment import reproduce as run

    return run(ctx)
