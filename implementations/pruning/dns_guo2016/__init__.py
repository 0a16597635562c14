r"""Dynamic Network Surgery for Efficient DNNs (Guo, Yao & Chen, 2016).

Paper: [arXiv:1608.04493](https://arxiv.org/abs/1608.04493) · notes: `papers/dns_guo2016.md`

Each layer $k$ keeps its dense weights $W_k$ and a binary mask $T_k$; the network computes with $W_k \odot T_k$.
With probability $\sigma(\text{iter}) = (1 + \gamma\,\text{iter})^{-\text{power}}$ the mask is refreshed from the
weight magnitudes with two thresholds $a_k < b_k$ (Eq. 3), a hysteresis band:

$$
T_k^{(ij)} \leftarrow
\begin{cases}
0 & \lvert W_k^{(ij)} \rvert < a_k \\
T_k^{(ij)} & a_k \le \lvert W_k^{(ij)} \rvert < b_k \\
1 & \lvert W_k^{(ij)} \rvert \ge b_k
\end{cases}
$$

and *every* entry of $W_k$, masked or not, is updated with the gradient taken at the masked product (Eq. 2),

$$
W_k \leftarrow W_k - \beta\, \frac{\partial \mathcal{L}(W_k \odot T_k)}{\partial (W_k \odot T_k)} ,
$$

so a pruned weight that keeps being pushed up crosses $b_k$ and is spliced back. As in the authors' code, the
thresholds come from the layer's weights when surgery starts: $t_k = \mathrm{mean}\lvert W_k \rvert + c_k\,
\mathrm{std}\lvert W_k \rvert$, $a_k = 0.9\, t_k$, $b_k = 1.1\, t_k$.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from implementations.pruning._base import apply_masks, prunable_layers, remove_masks

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "DynamicNetworkSurgery", "surgery_mask", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the surgery (thresholds per prunable layer, in definition order)."""

    crate: tuple[float, ...] = (4.0, 4.0, 2.5)  # $c_k$ of $t_k$; ~50x on LeNet-300-100 (paper: 56x, Table 1)
    band: float = 0.1  # $a_k = (1 - \text{band})\,t_k$, $b_k = (1 + \text{band})\,t_k$ (0.9 / 1.1 in the code)
    gamma: float = 1e-4  # $\gamma$ of the mask-update probability
    power: float = 1.0  # power of the mask-update probability
    splice: bool = True  # False: masked weights get no gradient and never return (ablation)
    max_sparsity: tuple[float, ...] | None = None  # per-layer cap on the zeros (ablations at a matched sparsity)


def surgery_mask(weight: Tensor, mask: Tensor, low: float, high: float) -> Tensor:
    r"""The hysteresis rule $h_k$: 0 below $a_k$, 1 from $b_k$ up, the previous mask in between.

    Args:
        weight: $W_k$, any shape.
        mask: Current $T_k$, same shape, 0/1 floats.
        low: $a_k$.
        high: $b_k$.
    """
    magnitude = weight.detach().abs()
    return torch.where(magnitude < low, torch.zeros_like(mask), torch.where(magnitude >= high, 1.0, mask))


class DynamicNetworkSurgery(nn.Module):
    """Train a model with masks that are pruned and spliced on the fly; `pruned()` returns the sparse model."""

    def __init__(self, model: nn.Module, cfg: Config | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg or Config()
        self.names = [name for name, _ in prunable_layers(model)]
        if len(self.cfg.crate) != len(self.names):
            raise ValueError(f"crate has {len(self.cfg.crate)} entries for {len(self.names)} prunable layers")
        modules = dict(model.named_modules())
        for i, name in enumerate(self.names):
            self.register_buffer(f"mask{i}", torch.ones_like(modules[name].weight))
            self.register_buffer(f"band{i}", torch.full((2,), torch.nan))  # (a_k, b_k), set when surgery starts
        self.iteration = 0
        self.spliced = 0  # mask entries that went 0 -> 1
        self.cut = 0  # mask entries that went 1 -> 0

    def _weights(self) -> list[Tensor]:
        modules = dict(self.model.named_modules())
        return [modules[name].weight for name in self.names]

    def _masked(self, straight_through: bool) -> dict[str, Tensor]:
        out = {}
        for i, (name, weight) in enumerate(zip(self.names, self._weights(), strict=True)):
            masked = weight * getattr(self, f"mask{i}")  # W ⊙ T
            # Eq. 2: the gradient at W ⊙ T updates every entry of W, masked ones included.
            out[f"{name}.weight"] = weight + (masked - weight).detach() if straight_through else masked
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` of the masked network."""
        return functional_call(self.model, self._masked(False), (x,), strict=False)

    @torch.no_grad()
    def update_masks(self) -> None:
        """One mask refresh with the two thresholds (thresholds are fixed at the first call)."""
        for i, weight in enumerate(self._weights()):
            band, mask = getattr(self, f"band{i}"), getattr(self, f"mask{i}")
            if torch.isnan(band).any():
                magnitude = weight.abs()
                threshold = max(float(magnitude.mean() + self.cfg.crate[i] * magnitude.std()), 0.0)
                band.copy_(torch.tensor([1 - self.cfg.band, 1 + self.cfg.band]) * threshold)
            new = surgery_mask(weight, mask, float(band[0]), float(band[1]) if self.cfg.splice else torch.inf)
            if self.cfg.max_sparsity is not None:
                new = _cap_zeros(weight, mask, new, self.cfg.max_sparsity[i])
            self.spliced += int(((mask == 0) & (new == 1)).sum())
            self.cut += int(((mask == 1) & (new == 0)).sum())
            mask.copy_(new)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        r"""Refresh the masks with probability $\sigma(\text{iter})$, then CE of the masked network."""
        if self.training:
            probability = (1 + self.cfg.gamma * self.iteration) ** -self.cfg.power
            if self.iteration == 0 or float(torch.rand(())) < probability:
                self.update_masks()
            self.iteration += 1
        logits = functional_call(self.model, self._masked(self.cfg.splice), (x,), strict=False)
        return logits, {"ce": F.cross_entropy(logits, y)}

    def masks(self) -> dict[str, Tensor]:
        """Layer name -> current mask $T_k$."""
        return {name: getattr(self, f"mask{i}").clone() for i, name in enumerate(self.names)}

    def pruned(self) -> nn.Module:
        r"""A copy of the model with $W \odot T$ folded in (pruned entries are exact zeros)."""
        model = copy.deepcopy(self.model)
        apply_masks(model, self.masks())
        remove_masks(model)
        return model

    @classmethod
    def smoke_task(cls) -> tuple[DynamicNetworkSurgery, Tensor, Tensor]:
        """A tiny MLP after one surgery step, for the generic smoke test."""
        from implementations._models import MLP

        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        task = cls(MLP(40, 10, hidden=(16,)), Config(crate=(0.5, 0.5)))
        x, y = torch.randn(8, 40, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        task.train()
        task.forward_train(x, y)
        return task, x, y


def _cap_zeros(weight: Tensor, old: Tensor, new: Tensor, max_sparsity: float) -> Tensor:
    """`new` with at most `floor(max_sparsity * n)` zeros: the largest newly cut weights are kept instead."""
    excess = int((new == 0).sum()) - math.floor(max_sparsity * new.numel() + 1e-9)
    fresh = ((old == 1) & (new == 0)).flatten()  # only this step's cuts can be undone
    if excess <= 0 or not fresh.any():
        return new
    scores = torch.where(fresh, weight.detach().abs().flatten(), torch.full_like(fresh, -torch.inf, dtype=weight.dtype))
    restore = scores.argsort(descending=True)[: min(excess, int(fresh.sum()))]
    out = new.flatten().clone()
    out[restore] = 1.0
    return out.view_as(new)


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run dns_guo2016`
# ---------------------------------------------------------------------------------------------------------------------


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """DNS vs one-shot prune-and-retrain at DNS's per-layer sparsity, plus splicing and threshold ablations. The run is
    in `experiment.py`."""
    from implementations.pruning.dns_guo2016.experiment import reproduce as run

    return run(ctx)
