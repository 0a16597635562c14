r"""Targeted Dropout (Gomez, Zhang, Swersky, Gal & Hinton, 2018).

Paper: [OpenReview](https://openreview.net/forum?id=HkghWScuoQ) · notes: `papers/targeteddropout_gomez2018.md`

Dropout is aimed at the elements a magnitude criterion would prune. For a weight matrix $W$ whose row $w_j$ holds
the $n$ incoming weights of unit $j$ (PyTorch's `(out, in)` layout), the *targets* of unit $j$ are its
$\lfloor \gamma n \rfloor$ smallest-magnitude weights,

$$
T_j = \{\, i : \lvert W_{ji} \rvert \text{ is among the } \lfloor \gamma n \rfloor \text{ smallest of } \lvert w_j
\rvert \,\},
$$

and every target is dropped independently with probability $\alpha$ at each training step (no rescaling),

$$
\tilde W_{ji} = W_{ji}\,(1 - b_{ji}), \qquad b_{ji} \sim \mathrm{Bernoulli}(\alpha) \text{ if } i \in T_j,
\quad b_{ji} = 0 \text{ otherwise}.
$$

*Unit* targeting ranks whole rows by $\lVert w_j \rVert_2$ and drops each of the $\lfloor \gamma N \rfloor$
lowest-norm units with probability $\alpha$. At test time nothing is dropped; the targeted fraction $\gamma$ is then
pruned outright by the same magnitude criterion, which the network has learned not to depend on. With $\gamma = 1$
every weight is a target and the scheme is plain (untargeted) weight dropout, DropConnect, at rate $\alpha$.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from implementations._models import build_model
from implementations.pruning._base import apply_masks, channel_units, prunable_layers, prune_channels, remove_masks

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "TargetedDropout", "magnitude_prune", "reproduce", "targeted_dropout", "targets"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters (our choice of the paper's two knobs; the notes leave the values open)."""

    gamma: float = 0.75  # $\gamma$, targeting proportion = the post-hoc pruning rate aimed at
    alpha: float = 0.5  # $\alpha$, drop probability of a target
    mode: str = "weight"  # "weight": per-unit smallest weights; "unit": lowest-norm units


def targets(weight: Tensor, gamma: float, mode: str = "weight") -> Tensor:
    r"""Boolean mask of the targeted set: the $\lfloor \gamma n \rfloor$ smallest $|W_{ji}|$ of every row $j$
    (`"weight"`), or all weights of the $\lfloor \gamma N \rfloor$ rows with the smallest $\lVert w_j \rVert_2$
    (`"unit"`). Ties go to the lower index.

    Args:
        weight: Weight `(N, ...)`; row $j$ = `weight[j].flatten()` feeds unit $j$.
        gamma: $\gamma \in [0, 1]$.
        mode: `"weight"` or `"unit"`.

    Returns:
        Mask of `weight`'s shape, True on targets.
    """
    rows = weight.detach().flatten(1)  # (N, n)
    if mode == "weight":
        out = _smallest(rows.abs(), int(gamma * rows.shape[1]))  # (N, n), per row
    elif mode == "unit":
        out = _smallest(rows.norm(dim=1)[None, :], int(gamma * rows.shape[0]))[0]  # (N,) lowest-norm units
        out = out[:, None].expand_as(rows)
    else:
        raise ValueError(f"mode must be 'weight' or 'unit', got {mode!r}")
    return out.reshape(weight.shape)


def _smallest(scores: Tensor, k: int) -> Tensor:
    """Boolean `(R, n)`: exactly the `k` smallest entries of every row (ties to the lower index), via `kthvalue`
    (a full sort per step costs ~10x more)."""
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = scores.kthvalue(k, dim=1, keepdim=True).values  # (R, 1), the k-th smallest
    below, tied = scores < threshold, scores == threshold
    room = k - below.sum(dim=1, keepdim=True)  # how many tied entries still fit
    return below | (tied & (tied.cumsum(dim=1) <= room))


def targeted_dropout(weight: Tensor, gamma: float, alpha: float, mode: str = "weight") -> Tensor:
    r"""$\tilde W = W \odot (1 - b)$ with $b_{ji} \sim \mathrm{Bernoulli}(\alpha)$ on the targets, 0 elsewhere.

    Args:
        weight: Weight `(N, ...)`.
        gamma: Targeting proportion $\gamma$.
        alpha: Drop probability $\alpha$.
        mode: `"weight"` or `"unit"` (see `targets`).

    Returns:
        The dropped weight, same shape; gradients flow to the kept entries only.
    """
    candidates = targets(weight, gamma, mode)  # (N, ...)
    if mode == "unit":  # one coin per unit, shared by its row
        coins = torch.rand(weight.shape[0], device=weight.device) < alpha  # (N,)
        coins = coins.view(-1, *[1] * (weight.dim() - 1)).expand_as(weight)
    else:
        coins = torch.rand(weight.shape, device=weight.device) < alpha
    return weight * (~(candidates & coins)).to(weight.dtype)


class _TargetedWeightDropout(nn.Module):
    """Parametrization: targeted dropout in training mode, identity in eval mode."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, weight: Tensor) -> Tensor:
        if not self.training:
            return weight
        return targeted_dropout(weight, self.cfg.gamma, self.cfg.alpha, self.cfg.mode)


class TargetedDropout(nn.Module):
    """Cross-entropy task whose prunable layers get targeted dropout on their weights during training."""

    def __init__(self, model: nn.Module, cfg: Config | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg or Config()
        # unit targeting leaves the classifier's output units alone
        for _, layer in prunable_layers(model, skip_last=self.cfg.mode == "unit"):
            parametrize.register_parametrization(layer, "weight", _TargetedWeightDropout(self.cfg))

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` (no dropout in eval mode)."""
        return self.model(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits `(B, K)` with dropped weights, and the cross-entropy."""
        logits = self.model(x)  # (B, K)
        return logits, {"ce": F.cross_entropy(logits, y)}

    def plain_model(self) -> nn.Module:
        """A copy of the trained network without the dropout parametrizations."""
        model = copy.deepcopy(self.model)
        for _, layer in prunable_layers(model):
            if parametrize.is_parametrized(layer, "weight"):
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        return model

    @classmethod
    def smoke_task(cls) -> tuple[TargetedDropout, Tensor, Tensor]:
        """A tiny MLP with weight-level targeted dropout, for the generic smoke test."""
        torch.manual_seed(0)
        task = cls(build_model("mlp", 10, (40,), width=0.125)).train()
        return task, torch.randn(8, 40), torch.randint(0, 10, (8,))


def magnitude_prune(model: nn.Module, rate: float, mode: str = "weight") -> nn.Module:
    """A copy of `model` with the targeted set of rate `rate` removed in every prunable layer (no retraining).

    Uses the same criterion as `targets`. `"weight"`: the smallest weights of each unit are masked with
    `torch.nn.utils.prune` and folded in (same shapes, zeros). `"unit"`: the lowest-norm hidden units (never the
    classifier's outputs) are removed physically with their biases and the next layer's inputs (`prune_channels`),
    so the copy is a thinner network.
    """
    if mode == "unit":
        units, _ = channel_units(model)
        alive = [~targets(producer.weight, rate, "unit").flatten(1)[:, 0] for producer, _ in units]  # (N_l,) each
        return prune_channels(model, [a.nonzero().flatten() for a in alive])
    pruned = copy.deepcopy(model)
    masks = {name: (~targets(layer.weight, rate, mode)).float() for name, layer in prunable_layers(pruned)}
    apply_masks(pruned, masks)
    remove_masks(pruned)
    return pruned


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run targeteddropout_gomez2018`
# ---------------------------------------------------------------------------------------------------------------------


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """MLP on digits trained plainly, with untargeted weight dropout, and with targeted dropout; then pruned. The run is
    in `experiment.py`."""
    from implementations.pruning.targeteddropout_gomez2018.experiment import reproduce as run

    return run(ctx)
