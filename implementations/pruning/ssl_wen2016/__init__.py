r"""Learning Structured Sparsity in Deep Neural Networks (Wen et al., 2016).

Paper: [arXiv:1608.03665](https://arxiv.org/abs/1608.03665) · notes: `papers/ssl_wen2016.md`

SSL adds a group-lasso term to the loss (Eq. 1), so that training drives whole groups of weights to zero:

$$
E(W) = E_D(W) + \lambda R(W) + \lambda_g \sum_{l=1}^{L} R_g\big(W^{(l)}\big), \qquad
R_g(w) = \sum_{g=1}^{G} \lVert w^{(g)} \rVert_2 .
$$

For a conv weight $W^{(l)} \in \mathbb{R}^{N_l \times C_l \times K_l}$ the groups are filters $W^{(l)}_{n,:,:}$,
channels $W^{(l)}_{:,c,:}$ or shapes $W^{(l)}_{:,c,k}$ (Eq. 2 uses filters and channels,
$\lambda_n \sum_l \sum_{n} \lVert W^{(l)}_{n,:,:} \rVert_2 + \lambda_c \sum_l \sum_{c} \lVert W^{(l)}_{:,c,:}
\rVert_2$). After training, groups whose norm has collapsed are zeroed and removed: a zero channel of layer
$l+1$ makes filter $c$ of layer $l$ useless, so both go, and the result is a smaller *dense* network.

Here one group per conv output channel $c$ joins the channel-wise group of its consumer (the next conv's
$W_{:,c,:}$, or the linear head's columns for channel $c$) with the BatchNorm scale and shift $\gamma_c,
\beta_c$ of the filter that produces it. With BatchNorm after each conv a filter's own weights are scale-invariant
(shrinking them changes nothing), so the filter-wise part of the group is carried by $\gamma_c, \beta_c$; a
group at zero means channel $c$ is both silent and unused.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.pruning._base import prune_channels

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["SSL", "Config", "channel_groups", "consumers", "group_lasso", "reproduce", "zero_channels"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the group-lasso training."""

    strength: float = 3e-2  # $\lambda_g$ (the paper tunes it per network)
    threshold: float = 1e-2  # a group is zero when its norm is below this fraction of the layer's largest group
    group: str = "channel"  # "channel" (default), or "filter" / "shape" groups of each conv weight (sweep)


def group_lasso(weight: Tensor, group: str = "channel") -> Tensor:
    r"""$R_g(W) = \sum_g \lVert W^{(g)} \rVert_2$ over filters, channels or shapes of a `(N, C, *K)` weight.

    Args:
        weight: Conv weight `(N, C, K...)`, or a linear weight `(N, C)`.
        group: `"filter"` ($W_{n,:,:}$), `"channel"` ($W_{:,c,:}$) or `"shape"` ($W_{:,c,k}$).

    Returns:
        A scalar.
    """
    if group == "filter":
        return weight.flatten(1).norm(dim=1).sum()
    if group == "channel":
        return weight.transpose(0, 1).flatten(1).norm(dim=1).sum()
    if group == "shape":
        return weight.flatten(1).norm(dim=0).sum()
    raise ValueError(f"unknown group {group!r}")


def consumers(model: nn.Module) -> list[Tensor]:
    r"""For each conv stage, the weight of its consumer viewed as `(out, C, K)`: channel $c$ is `[:, c]`.

    The consumer of the last stage is the linear head; its columns for channel $c$ are the positions
    $c L, \dots, c L + L - 1$ of the channel-major flatten.
    """
    weights = [stage[0].weight for stage in model.stages[1:]]
    channels = model.stages[-1][0].out_channels
    weights.append(model.head.weight.view(model.head.out_features, channels, -1))
    return weights


def channel_groups(model: nn.Module) -> list[Tensor]:
    r"""Per stage, a `(C, G)` matrix whose row $c$ is channel $c$'s group: $[W^{(l+1)}_{:,c,:}, \gamma_c,
    \beta_c]$ (the BN entries only when the stage has BatchNorm)."""
    groups = []
    for stage, weight in zip(model.stages, consumers(model), strict=True):
        rows = weight.transpose(0, 1).flatten(1)  # (C, out * K)
        norm = stage[1]
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.affine:
            rows = torch.cat([rows, norm.weight[:, None], norm.bias[:, None]], dim=1)
        groups.append(rows)
    return groups


def zero_channels(model: nn.Module, threshold: float) -> list[Tensor]:
    """Indices of the channels to keep per stage: group norm at least `threshold` times the stage's largest."""
    keep = []
    for rows in channel_groups(model):
        norms = rows.detach().norm(dim=1)  # (C,)
        keep.append((norms >= threshold * norms.max()).nonzero().squeeze(1))
    return keep


class SSL(nn.Module):
    """A conv net trained with channel-wise group lasso; `pruned()` returns the thinner dense network."""

    def __init__(self, model: nn.Module, cfg: Config | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg or Config()

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`."""
        return self.model(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        r"""Logits, the data loss and $\lambda_g \sum_l R_g(W^{(l)})$ over the channel groups."""
        logits = self.model(x)
        if self.cfg.group == "channel":
            # R_g over every stage: row c of a group matrix is one group, i.e. "filter" groups of that matrix
            penalty = sum(group_lasso(rows, "filter") for rows in channel_groups(self.model))
        else:  # filter or shape groups of each conv weight
            penalty = sum(group_lasso(stage[0].weight, self.cfg.group) for stage in self.model.stages)
        return logits, {"ce": F.cross_entropy(logits, y), "group_lasso": self.cfg.strength * penalty}

    @torch.no_grad()
    def pruned(self) -> nn.Module:
        r"""Zero the collapsed groups and remove what can be removed.

        Channel groups: the channels and the filters that fed them are removed physically. Filter groups: the
        collapsed filters are removed with their BN entries (their constant output $\mathrm{ReLU}(\beta)$ is dropped).
        Shape groups: the collapsed $(c, k)$ columns are zeroed in place; the network keeps its shape (a lowered
        im2col GEMM would drop those columns, see `shape_flops`).
        """
        model = copy.deepcopy(self.model)
        if self.cfg.group == "filter":
            keep = []
            for stage in model.stages:
                norms = stage[0].weight.flatten(1).norm(dim=1)  # (N,)
                keep.append((norms >= self.cfg.threshold * norms.max()).nonzero().squeeze(1))
            return prune_channels(model, keep)
        if self.cfg.group == "shape":
            for stage in model.stages:
                weight = stage[0].weight  # (N, C, K)
                norms = weight.flatten(1).norm(dim=0)  # (C * K,)
                gone = norms < self.cfg.threshold * norms.max()
                weight.view(weight.shape[0], -1)[:, gone] = 0.0
            return model
        keep = zero_channels(model, self.cfg.threshold)
        for weight, kept in zip(consumers(model), keep, strict=True):
            gone = torch.ones(weight.shape[1], dtype=torch.bool)
            gone[kept] = False
            weight[:, gone] = 0.0  # the masked model: these input channels no longer contribute
        return prune_channels(model, keep)

    @staticmethod
    def shape_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
        r"""FLOPs of `model` if each conv ran as an im2col GEMM over its non-zero $(c, k)$ columns only."""
        from implementations._measure import count_flops

        flops = count_flops(model, torch.zeros(1, *input_shape))
        x = torch.zeros(1, *input_shape)
        model.eval()
        for stage in model.stages:
            conv = stage[0]
            out = conv(x)  # (1, N, L_out)
            dead = int((conv.weight.flatten(1).abs().sum(dim=0) == 0).sum())  # zero columns
            flops -= 2 * conv.out_channels * out.shape[-1] * dead
            x = stage(x)
        return flops

    @classmethod
    def smoke_task(cls) -> tuple[SSL, Tensor, Tensor]:
        """A tiny 1-D conv net with the SSL penalty, for the generic smoke test."""
        from implementations._models import CNN1d

        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        task = cls(CNN1d(1, 40, 10, channels=(8, 8, 8)))
        return task, torch.randn(8, 1, 40, generator=gen), torch.randint(0, 10, (8,), generator=gen)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """SSL channel sparsity on a 1-D CNN (MNIST-1D) vs the dense net, unstructured pruning at equal non-zeros and
    the SSL-found architecture trained from scratch; real CPU latency of each. The run is in `experiment.py`."""
    from implementations.pruning.ssl_wen2016.experiment import reproduce as run

    return run(ctx)
