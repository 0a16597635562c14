r"""Slimmable Neural Networks (Yu, Yang, Xu, Yang & Huang, 2019).

Paper: [arXiv:1812.08928](https://arxiv.org/abs/1812.08928) · notes: `papers/slimmable_yu2019.md`

One set of weights $W$ runs at every width multiplier $k \in \mathcal{K} = \{k_1, \dots, k_S\}$: at width $k$ layer
$l$ uses its first $\lceil k\,C_l \rceil$ channels, so narrower networks are nested in wider ones. Feature
statistics differ between widths, so each width gets its own (switchable) batch normalisation,

$$
z_{\text{out}} = \gamma_k \, \frac{z_{\text{in}} - \mu_k}{\sqrt{\sigma_k^2 + \epsilon}} + \beta_k ,
\qquad k \in \mathcal{K},
$$

and every mini-batch accumulates the gradients of all widths before one update,

$$
\min_{W,\ \{\gamma_k, \beta_k\}} \; \sum_{k \in \mathcal{K}} \ell\big(f_k(x; W), y\big).
$$

The network here is the harness's `CNN1d` made slimmable: stride-2 conv-BN-ReLU stages and a linear head on the
channel-major flatten. As in the authors' MobileNets, the last stage is a fixed-width tail: only its input is
slimmed, its outputs and the classifier are shared by all widths (its BN is switchable like every other).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._models import CNN1d

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = [
    "Config",
    "SlicedBatchNorm1d",
    "SlimmableConv1d",
    "SlimmableLinear",
    "SlimmableNet",
    "SwitchableBatchNorm1d",
    "reproduce",
    "width_channels",
]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; the four switches are the paper's MobileNet setting."""

    widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # $\mathcal{K}$, the switches (Sec. 3)
    channels: tuple[int, ...] = (16, 32, 32)  # $C_l$ of the full-width network (width 1.0)
    switchable_bn: bool = True  # False: one BN shared by all widths (the naive baseline of Sec. 3.2)
    fixed_tail: bool = True  # the last stage keeps its full output width, as the authors' MobileNet tail
    in_channels: int = 1  # MNIST-1D has one input channel
    length: int = 40  # input length of MNIST-1D
    num_classes: int = 10  # $K$


def width_channels(channels: Sequence[int], width: float, fixed_tail: bool = False) -> tuple[int, ...]:
    r"""Channels $\lceil k\,C_l \rceil$ (at least 1) of every layer at width multiplier $k$.

    With `fixed_tail` the last layer keeps all its channels: in the authors' slimmable and universally slimmable
    MobileNets only the input of the final 1x1 conv is slimmed, its 1280 outputs and the classifier are not.
    """
    out = tuple(max(1, math.ceil(width * c - 1e-9)) for c in channels)
    return (*out[:-1], channels[-1]) if fixed_tail else out


class SlimmableConv1d(nn.Conv1d):
    """A conv whose active filters are the first `out_channels`, reading as many inputs as the input has."""

    def forward(self, x: Tensor, out_channels: int | None = None) -> Tensor:
        """`(B, c_in, L) -> (B, out_channels, L')` with the weight slice `W[:out_channels, :c_in]`."""
        out_channels = self.out_channels if out_channels is None else out_channels
        weight = self.weight[:out_channels, : x.shape[1]]  # (c_out, c_in, K)
        bias = None if self.bias is None else self.bias[:out_channels]
        return F.conv1d(x, weight, bias, self.stride, self.padding, self.dilation)


class SlimmableLinear(nn.Linear):
    """A linear layer that reads only the first `x.shape[1]` input features."""

    def forward(self, x: Tensor) -> Tensor:
        """`(B, d) -> (B, out_features)` with the weight slice `W[:, :d]`."""
        return F.linear(x, self.weight[:, : x.shape[1]], self.bias)


class SwitchableBatchNorm1d(nn.Module):
    r"""One private `BatchNorm1d` ($\mu_k, \sigma_k^2, \gamma_k, \beta_k$) per width (switchable BN, Sec. 3.2)."""

    def __init__(self, channels_per_width: Sequence[int]) -> None:
        super().__init__()
        self.bns = nn.ModuleList(nn.BatchNorm1d(c) for c in channels_per_width)

    def forward(self, x: Tensor, index: int) -> Tensor:
        """Normalise `(B, C_k, L)` with the statistics and affine parameters of width number `index`."""
        return self.bns[index](x)


class SlicedBatchNorm1d(nn.BatchNorm1d):
    r"""One BN for every width: the first $c$ entries of $\gamma, \beta, \mu, \sigma^2$ serve a $c$-channel input.

    This is the shared BN of the paper's naive baseline, and the BN of universally slimmable networks (whose
    statistics are recomputed per width after training). With `momentum=None` the running statistics are the
    cumulative average of all batches seen since the last reset, as in `torch.nn.BatchNorm1d`.
    """

    def forward(self, x: Tensor, index: int | None = None) -> Tensor:
        """Normalise `(B, c, L)` with the first `c` entries (`index` is ignored: no per-width state)."""
        c = x.shape[1]
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or not self.track_running_stats
        # in-place updates of the slices write into the first c entries of the running buffers
        return F.batch_norm(
            x,
            self.running_mean[:c] if self.track_running_stats else None,
            self.running_var[:c] if self.track_running_stats else None,
            self.weight[:c],
            self.bias[:c],
            use_batch,
            factor,
            self.eps,
        )


class SlimmableNet(nn.Module):
    """A 1-D conv net runnable at every width of `cfg.widths`; set `.width` to switch."""

    def __init__(self, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or Config()
        self.widths = tuple(sorted(cfg.widths))
        convs, norms, c_in, length = [], [], cfg.in_channels, cfg.length
        for layer, c_out in enumerate(cfg.channels):
            convs.append(SlimmableConv1d(c_in, c_out, 5, stride=2, padding=2, bias=False))
            if cfg.switchable_bn:  # every BN is private to its switch, the tail's included (Sec. 3.2)
                sizes = [width_channels(cfg.channels, w, cfg.fixed_tail)[layer] for w in self.widths]
                norms.append(SwitchableBatchNorm1d(sizes))
            else:
                norms.append(SlicedBatchNorm1d(c_out))
            c_in, length = c_out, (length - 1) // 2 + 1
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        self.out_length = length  # $L$ of the last stage; the head reads its first c * L features
        self.head = SlimmableLinear(c_in * length, cfg.num_classes)
        self.width = self.widths[-1]  # the active switch

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` of the sub-network at `self.width` from inputs `(B, C, L)`."""
        index = self.widths.index(self.width)
        h = x if x.dim() == 3 else x.unsqueeze(1)  # (B, C, L)
        chans = width_channels(self.cfg.channels, self.width, self.cfg.fixed_tail)
        for conv, norm, c in zip(self.convs, self.norms, chans, strict=True):
            h = F.relu(norm(conv(h, c), index))  # (B, c, L_l)
        return self.head(h.flatten(1))  # channel-major flatten: the first c * L features

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        r"""Full-width logits and one cross-entropy per width; their sum is the paper's objective."""
        losses, logits = {}, None
        for width in reversed(self.widths):  # widest first, as in the authors' training loop
            self.width = width
            out = self(x)  # (B, K)
            losses[f"ce_w{width:g}"] = F.cross_entropy(out, y)
            logits = out if logits is None else logits
        self.width = self.widths[-1]
        return logits, losses

    @torch.no_grad()
    def to_standalone(self, width: float) -> CNN1d:
        """The width-`width` sub-network as a plain `CNN1d` (weights and that width's BN copied), in eval mode."""
        index, chans = self.widths.index(width), width_channels(self.cfg.channels, width, self.cfg.fixed_tail)
        net = CNN1d(self.cfg.in_channels, self.cfg.length, self.cfg.num_classes, channels=chans)
        c_prev = self.cfg.in_channels
        for stage, conv, norm, c in zip(net.stages, self.convs, self.norms, chans, strict=True):
            stage[0].weight.copy_(conv.weight[:c, :c_prev])
            source = norm.bns[index] if isinstance(norm, SwitchableBatchNorm1d) else norm
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(stage[1], name).copy_(getattr(source, name)[:c])
            c_prev = c
        net.head.weight.copy_(self.head.weight[:, : c_prev * self.out_length])
        net.head.bias.copy_(self.head.bias)
        return net.eval()

    @classmethod
    def smoke_task(cls) -> tuple[SlimmableNet, Tensor, Tensor]:
        """A tiny slimmable net and a seeded batch, for the generic smoke test."""
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(8, 1, 40, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        return cls(Config(channels=(8, 8, 8))), x, y


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Slimmable (switchable BN) and shared-BN nets against one network trained alone per width, same seeds/epochs.

    The run is in `experiment.py`.
    """
    from implementations.pruning.slimmable_yu2019.experiment import reproduce as run

    return run(ctx)
