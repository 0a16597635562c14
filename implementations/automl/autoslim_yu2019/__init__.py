r"""AutoSlim: Towards One-Shot Architecture Search for Channel Numbers (Yu & Huang, 2019).

Paper: [arXiv:1903.11728](https://arxiv.org/abs/1903.11728) · notes: `papers/autoslim_yu2019.md`

A channel configuration $c = (c_1, \dots, c_L)$ gives every layer its first $c_l$ channels of one slimmable
network, trained once with the universally slimmable recipe (sandwich rule, in-place distillation; here with a
random width per layer so that non-uniform configurations are trained too). The trained network is the accuracy
estimator of a greedy search: starting from the largest configuration, each step removes one channel group $g_l$
from the layer whose slimming costs the least held-out accuracy,

$$
l^\star = \arg\max_{l} \operatorname{Acc}_{\mathcal{D}_{\text{val}}}\big(c - g_l\, e_l\big), \qquad
c \leftarrow c - g_{l^\star} e_{l^\star},
$$

until the resource $R(c)$ (FLOPs) reaches the target; the BN statistics of every candidate are recalibrated
before it is evaluated. The configuration found is then trained from scratch as an ordinary network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations.automl._base import cnn1d_flops
from implementations.pruning.usnet_yu2019 import Config as USConfig
from implementations.pruning.usnet_yu2019 import USNet, recalibrate_bn

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["AutoSlim", "Config", "greedy_slim", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the search; the one-shot network follows `usnet_yu2019.Config`."""

    channels: tuple[int, ...] = (16, 32, 32)  # largest configuration (the slimmable network at width 1)
    groups: int = 8  # channels of each layer split into this many groups $g_l = C_l / 8$ (the paper uses 10)
    target_width: float = 0.5  # $R_{\text{target}}$ = FLOPs of the uniform network at this width
    min_width: float = 0.125  # the one-shot network trains widths in [min_width, 1]; no layer goes below it
    inplace_distillation: bool = True  # one-shot training with in-place distillation (US-Nets recipe)


def greedy_slim(
    accuracy: Callable[[tuple[int, ...]], float],
    start: Sequence[int],
    group: Sequence[int],
    minimum: Sequence[int],
    resource: Callable[[tuple[int, ...]], float],
    target: float,
) -> list[dict[str, Any]]:
    r"""AutoSlim's greedy slimming: remove one group from the layer that costs the least accuracy, until $R \le$ target.

    Args:
        accuracy: Estimated held-out accuracy $\operatorname{Acc}(c)$ of a configuration.
        start: The largest configuration.
        group: Group size $g_l$ removed from layer $l$ in one step.
        minimum: Smallest channel count allowed per layer.
        resource: $R(c)$, e.g. FLOPs.
        target: $R_{\text{target}}$.

    Returns:
        The path: one dict per accepted step (`channels`, `resource`, `accuracy`), the first being `start`; the last
        is the first configuration with $R(c) \le$ target (or the smallest reachable one).
    """
    config = tuple(int(c) for c in start)
    path = [{"channels": config, "resource": resource(config), "accuracy": accuracy(config)}]
    while path[-1]["resource"] > target:
        candidates = []
        for layer, (c, g, low) in enumerate(zip(config, group, minimum, strict=True)):
            if c - g >= low:
                trial = config[:layer] + (c - g,) + config[layer + 1 :]
                candidates.append((accuracy(trial), -layer, trial))  # ties: the earliest layer
        if not candidates:
            break
        best_acc, _, config = max(candidates)
        path.append({"channels": config, "resource": resource(config), "accuracy": best_acc})
    return path


class AutoSlim(nn.Module):
    """A one-shot slimmable network (training) and the greedy channel search that uses it as an estimator."""

    def __init__(self, cfg: Config | None = None, **network: Any) -> None:
        super().__init__()
        self.cfg = cfg = cfg or Config()
        us = USConfig(
            channels=cfg.channels, nonuniform=True, fixed_tail=False, inplace_distillation=cfg.inplace_distillation
        )  # every layer is searched, the last one included (the AutoSlim configurations list it)
        self.supernet = USNet(replace(us, width_range=(cfg.min_width, 1.0), **network))
        self.evaluations = 0  # configurations scored by `estimate` so far

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` of the active configuration."""
        return self.supernet(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One-shot training step: sandwich rule over per-layer random widths, in-place distillation."""
        return self.supernet.forward_train(x, y)

    @torch.no_grad()
    def estimate(self, channels: Sequence[int], val_x: Tensor, val_y: Tensor, calib_x: Tensor, seed: int = 0) -> float:
        """Held-out accuracy (%) of one configuration, after recalibrating its BN statistics on `calib_x`."""
        self.evaluations += 1
        self.supernet.channels = tuple(int(c) for c in channels)
        recalibrate_bn(self.supernet, calib_x, self.supernet.cfg, torch.Generator().manual_seed(seed))
        correct = (self.supernet(val_x).argmax(-1) == val_y).sum().item()
        self.supernet.channels = tuple(self.cfg.channels)
        return 100.0 * correct / len(val_y)

    def search(self, val_x: Tensor, val_y: Tensor, calib_x: Tensor, seed: int = 0) -> list[dict[str, Any]]:
        """Greedy slimming from the largest configuration to the FLOPs of the uniform `target_width` network."""
        cfg, us = self.cfg, self.supernet.cfg
        group = [max(1, c // cfg.groups) for c in cfg.channels]
        minimum = [max(1, round(c * cfg.min_width)) for c in cfg.channels]
        target = cnn1d_flops(uniform_channels(cfg), us.in_channels, us.length, us.num_classes)
        return greedy_slim(
            lambda c: self.estimate(c, val_x, val_y, calib_x, seed),
            cfg.channels,
            group,
            minimum,
            lambda c: cnn1d_flops(c, us.in_channels, us.length, us.num_classes),
            target,
        )

    @classmethod
    def smoke_task(cls) -> tuple[AutoSlim, Tensor, Tensor]:
        """A tiny one-shot network and a seeded batch, for the generic smoke test."""
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(8, 1, 40, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        return cls(Config(channels=(8, 8, 8))), x, y


def uniform_channels(cfg: Config) -> tuple[int, ...]:
    """Channels of the uniformly slimmed baseline at `cfg.target_width`."""
    from implementations.pruning.slimmable_yu2019 import width_channels

    return width_channels(cfg.channels, cfg.target_width)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """One-shot training, greedy slimming to the FLOPs of the 0.5x network, retraining from scratch, per seed.

    The run is in `experiment.py`.
    """
    from implementations.automl.autoslim_yu2019.experiment import reproduce as run

    return run(ctx)
