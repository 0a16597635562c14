r"""Universally Slimmable Networks and Improved Training Techniques (Yu & Huang, 2019).

Paper: [arXiv:1903.05134](https://arxiv.org/abs/1903.05134) · notes: `papers/usnet_yu2019.md`

A universally slimmable network runs at any width $w \in [w_{\min}, w_{\max}]$ (layer $l$ keeps its first
$\lceil w\,C_l \rceil$ channels). Each step trains $n$ widths by the *sandwich rule*, the smallest, the largest and
$n - 2$ random ones, because the accuracy of every width lies between the two extremes; the largest learns from
the labels and the others from its predictions (*in-place distillation*, with a stop-gradient $\operatorname{sg}$):

$$
\mathcal{L} = \mathrm{CE}\big(y, p_{w_{\max}}(x)\big)
  + \sum_{w \in \{w_{\min}\} \cup S} \mathrm{CE}\big(\operatorname{sg}[p_{w_{\max}}(x)],\ p_{w}(x)\big),
\qquad S \sim \mathcal{U}[w_{\min}, w_{\max}]^{n-2}.
$$

As in the authors' US-MobileNets, the last stage is a fixed-width tail (only its input is slimmed). Batch
normalisation shares $\gamma, \beta$ across widths (sliced), and cannot store statistics for infinitely
many widths, so after training the statistics of a chosen width are recomputed as the plain average over a few
training batches (*BN calibration*),

$$
\mu_w = \frac{1}{T}\sum_{t=1}^{T} \mathbb{E}_{B_t}[z_w], \qquad \sigma^2_w = \frac{1}{T}\sum_{t=1}^{T}
\mathrm{Var}_{B_t}[z_w].
$$
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.pruning.slimmable_yu2019 import SlicedBatchNorm1d, SlimmableConv1d, SlimmableLinear, width_channels

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "USNet", "inplace_distillation_loss", "recalibrate_bn", "reproduce", "sample_widths"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; $n = 4$ and the sandwich rule with in-place distillation are the paper's defaults."""

    width_range: tuple[float, float] = (0.25, 1.0)  # $[w_{\min}, w_{\max}]$ (MobileNets: [0.35, 1.0])
    n_widths: int = 4  # $n$, widths trained per step (Sec. 4)
    sandwich: bool = True  # always include $w_{\min}$ and $w_{\max}$ (else $n$ uniform random widths)
    inplace_distillation: bool = True  # soft targets from the widest sampled width (else labels for all)
    nonuniform: bool = False  # one random width per layer (AutoSlim's one-shot training); US-Nets: one per network
    fixed_tail: bool = True  # the last stage keeps its full output width (the authors' US-MobileNet tail)
    channels: tuple[int, ...] = (16, 32, 32)  # $C_l$ at $w = 1$
    in_channels: int = 1  # MNIST-1D has one input channel
    length: int = 40  # input length of MNIST-1D
    num_classes: int = 10  # $K$
    calib_batches: int = 8  # $T$, training batches averaged by the BN calibration
    calib_batch_size: int = 128  # batch size of the calibration passes


def sample_widths(cfg: Config, generator: torch.Generator | None = None) -> list[tuple[float, ...]]:
    r"""Per-layer widths of the $n$ sub-networks of one step, the teacher (widest) first.

    Sandwich: $w_{\max}$, $w_{\min}$, then $n-2$ draws from $\mathcal{U}[w_{\min}, w_{\max}]$; otherwise $n$ draws,
    sorted so that the widest comes first. With `nonuniform` each draw gives every layer its own width.
    """
    low, high = cfg.width_range
    layers = len(cfg.channels)

    def draw() -> tuple[float, ...]:
        u = torch.rand(layers if cfg.nonuniform else 1, generator=generator)
        values = (low + (high - low) * u).tolist()
        return tuple(values) if cfg.nonuniform else tuple(values * layers)

    if cfg.sandwich:
        return [(high,) * layers, (low,) * layers] + [draw() for _ in range(cfg.n_widths - 2)]
    return sorted((draw() for _ in range(cfg.n_widths)), key=sum, reverse=True)


def inplace_distillation_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    r"""$\mathrm{CE}(\operatorname{sg}[p_t], p_s) = -\frac{1}{B}\sum_b \sum_k p_{t,bk} \log p_{s,bk}$ (no grad to $p_t$)

    Args:
        student_logits: Logits of the narrower sub-network, `(B, K)`.
        teacher_logits: Logits of the widest sub-network, `(B, K)` (detached here).

    Returns:
        A scalar tensor.
    """
    target = F.softmax(teacher_logits.detach(), dim=-1)  # (B, K)
    return -(target * F.log_softmax(student_logits, dim=-1)).sum(dim=-1).mean()


class USNet(nn.Module):
    """A 1-D conv net runnable at any channel configuration; set `.channels` (or call `set_width`) to switch."""

    def __init__(self, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or Config()
        convs, norms, c_in, length = [], [], cfg.in_channels, cfg.length
        for c_out in cfg.channels:
            convs.append(SlimmableConv1d(c_in, c_out, 5, stride=2, padding=2, bias=False))
            norms.append(SlicedBatchNorm1d(c_out))
            c_in, length = c_out, (length - 1) // 2 + 1
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        self.out_length = length  # $L$ of the last stage
        self.head = SlimmableLinear(c_in * length, cfg.num_classes)
        self.channels: tuple[int, ...] = tuple(cfg.channels)  # active configuration $c = (c_1, \dots, c_L)$

    def set_width(self, width: float | Sequence[float]) -> None:
        """Activate a uniform width (a float) or per-layer widths (a sequence)."""
        widths = [width] * len(self.cfg.channels) if isinstance(width, float | int) else list(width)
        chans = tuple(width_channels([c], w)[0] for c, w in zip(self.cfg.channels, widths, strict=True))
        self.channels = (*chans[:-1], self.cfg.channels[-1]) if self.cfg.fixed_tail else chans

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` of the sub-network with `self.channels` from inputs `(B, C, L)`."""
        h = x if x.dim() == 3 else x.unsqueeze(1)  # (B, C, L)
        for conv, norm, c in zip(self.convs, self.norms, self.channels, strict=True):
            h = F.relu(norm(conv(h, c)))  # (B, c, L_l)
        return self.head(h.flatten(1))

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Teacher logits and one loss per sampled sub-network (sandwich rule, in-place distillation)."""
        losses: dict[str, Tensor] = {}
        teacher = None
        for i, widths in enumerate(sample_widths(self.cfg)):
            self.set_width(widths)
            logits = self(x)  # (B, K)
            if teacher is None:
                teacher = logits
                losses["ce_widest"] = F.cross_entropy(logits, y)
            elif self.cfg.inplace_distillation:
                losses[f"ipd_{i}"] = inplace_distillation_loss(logits, teacher)
            else:
                losses[f"ce_{i}"] = F.cross_entropy(logits, y)
        self.channels = tuple(self.cfg.channels)
        return teacher, losses

    @classmethod
    def smoke_task(cls) -> tuple[USNet, Tensor, Tensor]:
        """A tiny US-Net and a seeded batch, for the generic smoke test."""
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(8, 1, 40, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        return cls(Config(channels=(8, 8, 8))), x, y


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: Tensor, cfg: Config, generator: torch.Generator | None = None) -> None:
    r"""Reset every sliced BN and refill $\mu_w, \sigma^2_w$ with the cumulative average over `cfg.calib_batches`.

    Runs the model in training mode at its current configuration, then leaves it in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the plain mean over the calibration batches
    model.train()
    order = torch.randperm(len(x), generator=generator)
    for t in range(cfg.calib_batches):
        idx = order[t * cfg.calib_batch_size : (t + 1) * cfg.calib_batch_size]
        if len(idx):
            model(x[idx.to(x.device)])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run usnet_yu2019`
# ---------------------------------------------------------------------------------------------------------------------


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """US-Net (sandwich + in-place distillation) and two ablations against individually trained nets. The run is in
    `experiment.py`."""
    from implementations.pruning.usnet_yu2019.experiment import reproduce as run

    return run(ctx)
