r"""MutualNet: Adaptive ConvNet via Mutual Learning from Network Width and Resolution (Yang et al., 2020).

Paper: [arXiv:1909.12978](https://arxiv.org/abs/1909.12978) · notes: `papers/mutualnet_yang2020.md`

One set of weights $\Theta$ runs at any width $w \in [w_{\min}, 1]$: the sub-network $\Theta_w$ keeps the first
$\lceil w C_l \rceil$ channels of every layer $l$. Each step follows the sandwich rule: the full network, the
smallest one and $n - 2$ random widths. The full network sees the input at the highest resolution $r_{\max}$ and
learns from the label; every other sampled width gets the input resized to a resolution $r$ drawn from a fixed set,
and learns from the full network's prediction (in-place distillation):

$$
\mathcal{L} = \mathrm{CE}\big(y, f(x^{r_{\max}}; \Theta_1)\big)
  + \sum_{w \in \mathcal{W}} \mathrm{KL}\Big(\operatorname{sg}\big[f(x^{r_{\max}}; \Theta_1)\big] \,\Big\|\,
    f(x^{r}; \Theta_w)\Big).
$$

The gradients of all sampled sub-networks are summed before one update. US-Net is the special case with a single
resolution. After training, the BatchNorm statistics are recomputed for each width-resolution configuration, and a
FLOPs budget is met with the configuration that is most accurate on held-out data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.mutual_learning._base import MutualLearner, soft_kl

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "MutualNet", "SlimmableCNN1d", "SubNetwork", "calibrate_bn", "resize", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; the paper's ImageNet set is 224/192/160/128 px, here a signal of 40 points."""

    min_width: float = 0.25  # $w_{\min}$ (the paper's MobileNet range is 0.25x-1.0x)
    num_sampled: int = 3  # $n$ sub-networks per step: full, smallest, $n - 2$ random
    resolutions: tuple[int, ...] = (40, 34, 29, 23)  # the paper's 224/192/160/128 ratios of a 40-point signal


def resize(x: Tensor, length: int) -> Tensor:
    """Resample signals `(B, C, L)` to `(B, C, length)` by linear interpolation (the 1-D analogue of resizing)."""
    if x.shape[-1] == length:
        return x
    return F.interpolate(x, size=length, mode="linear", align_corners=True)


class _SlimBN(nn.BatchNorm1d):
    """BatchNorm over the first `C` channels of its input, with its parameters and statistics sliced to match."""

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        if self.training and self.momentum is None:  # cumulative average, used for post-training calibration
            self.num_batches_tracked += 1
            momentum = 1.0 / float(self.num_batches_tracked)
        else:
            momentum = self.momentum or 0.0
        return F.batch_norm(
            x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
            self.training, momentum, self.eps,
        )  # fmt: skip


class SlimmableCNN1d(nn.Module):
    """The `cnn1d` of the harness made width-switchable: stride-2 conv-BN-ReLU stages, pooled to `pool` positions."""

    def __init__(self, in_channels: int, num_classes: int, channels: Sequence[int] = (16, 32, 32), pool: int = 5):
        super().__init__()
        self.channels = tuple(channels)
        sizes = [in_channels, *channels]
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, 5, stride=2, padding=2, bias=False) for a, b in zip(sizes[:-1], channels, strict=True)
        )
        self.norms = nn.ModuleList(_SlimBN(c) for c in channels)
        self.pool = nn.AdaptiveAvgPool1d(pool)  # any resolution maps to `pool` positions (40 points: 5, no pooling)
        self.head = nn.Linear(channels[-1] * pool, num_classes)

    def widths(self, width: float) -> list[int]:
        r"""Channels kept at width $w$: $\max(1, \lceil w C_l \rceil)$ per stage."""
        return [max(1, math.ceil(width * c - 1e-9)) for c in self.channels]

    def forward(self, x: Tensor, width: float = 1.0) -> Tensor:
        """Logits `(B, K)` of the sub-network of the given width, for inputs `(B, C_in, L)` of any length."""
        h = x
        for conv, norm, c in zip(self.convs, self.norms, self.widths(width), strict=True):
            weight = conv.weight[:c, : h.shape[1]]  # first c filters over the channels present
            h = F.relu(norm(F.conv1d(h, weight, stride=2, padding=2)))  # (B, c, L_l)
        h = self.pool(h).flatten(1)  # channel-major: the first c channels are the first c * pool features
        return F.linear(h, self.head.weight[:, : h.shape[1]], self.head.bias)


class SubNetwork(nn.Module):
    """A deployable configuration: the shared network at one width, on inputs resized to one resolution."""

    def __init__(self, net: SlimmableCNN1d, width: float, resolution: int | None = None) -> None:
        super().__init__()
        self.net, self.width, self.resolution = net, width, resolution

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`."""
        return self.net(x if self.resolution is None else resize(x, self.resolution), self.width)


@torch.no_grad()
def calibrate_bn(sub: SubNetwork, x: Tensor, batch_size: int = 500) -> None:
    """Recompute the BN statistics of one configuration as the exact average over `x` (US-Net's calibration)."""
    norms = [m for m in sub.net.modules() if isinstance(m, _SlimBN)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    sub.train()
    for start in range(0, len(x), batch_size):
        sub(x[start : start + batch_size])
    for norm in norms:
        norm.momentum = 0.1
    sub.eval()


class MutualNet(MutualLearner):
    """Sandwich-rule training of a `SlimmableCNN1d` over widths and resolutions; `peers` are evaluation widths."""

    def __init__(self, net: SlimmableCNN1d, cfg: Config | None = None, eval_widths: Sequence[float] = (1.0, 0.25)):
        super().__init__([SubNetwork(net, w) for w in eval_widths])
        self.net = net
        self.cfg = cfg or Config()

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` of the full network at the full resolution."""
        return self.net(x, 1.0)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Full-network logits `(B, K)`, its CE, and the in-place distillation term of each sampled sub-network."""
        cfg = self.cfg
        full = self.net(resize(x, cfg.resolutions[0]), 1.0)  # (B, K), $r_{\max}$
        losses = {"ce": F.cross_entropy(full, y)}
        target = full.detach()  # in-place distillation: the full network's prediction, no gradient
        widths = [cfg.min_width] + (cfg.min_width + (1 - cfg.min_width) * torch.rand(cfg.num_sampled - 2)).tolist()
        picks = torch.randint(len(cfg.resolutions), (len(widths),)).tolist()
        for i, (width, pick) in enumerate(zip(widths, picks, strict=True)):
            logits = self.net(resize(x, cfg.resolutions[pick]), width)
            losses[f"kd{i}"] = soft_kl(logits, target)
        return full, losses

    @classmethod
    def smoke_task(cls, batch_size: int = 8, seed: int = 0) -> tuple[MutualNet, Tensor, Tensor]:
        """A 8-16-16 switchable net on MNIST-1D-shaped inputs."""
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        task = cls(SlimmableCNN1d(1, 10, (8, 16, 16)))
        x = torch.randn(batch_size, 1, 40, generator=gen)  # (B, 1, 40)
        y = torch.randint(0, 10, (batch_size,), generator=gen)  # (B,)
        return task, x, y


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """MutualNet vs US-Net (same sandwich rule and distillation, one resolution) on the accuracy-FLOPs trade-off.

    The run is in `experiment.py`.
    """
    from implementations.mutual_learning.mutualnet_yang2020.experiment import reproduce as run

    return run(ctx)
