r"""AutoML family contract: search per-layer compression settings of a trained network under a resource budget.

A paper module exports a search procedure (an agent, an optimiser, a greedy slimmer) as its entrypoint. The searched
objects are channel configurations of a `CNN1d`-like net (stride-2 conv-BN-ReLU stages and a linear head on the
channel-major flatten). Its cost is counted analytically, 2 FLOPs per multiply-add as in `_measure.count_flops`:

$$
R(c) = \sum_{l=1}^{L} 2\, c_{l-1}\, c_l\, k\, L_l \;+\; 2\, c_L\, L_L\, K,
$$

with $c_0$ input channels, $c_l$ the channels and $L_l$ the length of stage $l$, kernel size $k$ and $K$ classes.

`prune_channels` turns per-layer channel counts into a physically thinner network: channel $j$ of stage $l$ is ranked
by the magnitude of the next layer's weights that read it, $\sum |W_{l+1}[:, j]|$ (AMC's criterion), and, when
calibration inputs are given, the next layer's kept weights are refitted by least squares so that its outputs match
the unpruned network's (the channel-pruning reconstruction AMC uses),

$$
\hat W_{l+1} = \arg\min_{W} \big\lVert Y_{l+1} - X_{l+1}^{\text{kept}}\, W^\top \big\rVert_F^2
              + \lambda \lVert W \rVert_F^2 .
$$

The family's task is plain cross-entropy; `smoke_task(entrypoint)` delegates to `entrypoint.smoke_task()` when the
entrypoint defines it, else treats the entrypoint as `compress(model) -> model` on a tiny `CNN1d`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._models import CNN1d

if TYPE_CHECKING:
    from implementations._data import TensorData

__all__ = ["CETask", "ChannelPruner", "cnn1d_flops", "finetune", "prune_channels", "smoke_task", "stage_lengths"]


class CETask(nn.Module):
    """Cross-entropy task around a (compressed) model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`."""
        return self.model(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits `(B, K)` and `{"ce": CE(y, softmax(logits))}`."""
        logits = self.model(x)
        return logits, {"ce": F.cross_entropy(logits, y)}


def stage_lengths(length: int, n_stages: int) -> list[int]:
    """Output length $L_l$ of each stride-2, padding-2, kernel-5 stage."""
    out = []
    for _ in range(n_stages):
        length = (length - 1) // 2 + 1
        out.append(length)
    return out


def cnn1d_flops(
    channels: Sequence[int], in_channels: int = 1, length: int = 40, num_classes: int = 10, kernel: int = 5
) -> int:
    r"""$R(c)$ of the module docstring: forward FLOPs per example of a `CNN1d` with these stage channels."""
    lengths = stage_lengths(length, len(channels))
    flops, c_prev = 0, in_channels
    for c, n in zip(channels, lengths, strict=True):
        flops += 2 * c_prev * c * kernel * n
        c_prev = c
    return flops + 2 * c_prev * lengths[-1] * num_classes


def _channel_importance(model: CNN1d) -> list[Tensor]:
    r"""Per stage, $\sum |W_{l+1}[:, j]|$ over everything the next layer reads from channel $j$."""
    scores = []
    for i, stage in enumerate(model.stages):
        c = stage[0].out_channels
        if i + 1 < len(model.stages):
            scores.append(model.stages[i + 1][0].weight.detach().abs().sum(dim=(0, 2)))  # (C_l,)
        else:
            scores.append(model.head.weight.detach().abs().view(model.head.out_features, c, -1).sum(dim=(0, 2)))
    return scores


def _unfold(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """`(N, C, L)` -> `(N * L_out, C * k)`: the receptive fields a conv multiplies with its flattened weight."""
    padded = F.pad(x, (conv.padding[0], conv.padding[0]))
    patches = padded.unfold(2, conv.kernel_size[0], conv.stride[0])  # (N, C, L_out, k)
    return patches.permute(0, 2, 1, 3).reshape(-1, x.shape[1] * conv.kernel_size[0])


class ChannelPruner:
    r"""Prune a trained `CNN1d`-like model to any channel counts, fast enough to sit inside a search loop.

    The channel ranking is fixed by the trained weights, so it is computed once. For the least-squares refit, the
    inputs $U$ of every layer (unfolded receptive fields of the unpruned features on the calibration set) enter only
    through $G = U^\top U$: with kept input columns $I$ and kept outputs $O$, the ridge solution is
    $\hat W^\top = (G_{II} + \lambda I)^{-1} (G W^\top)_{IO}$, so each candidate costs a few small solves.
    """

    def __init__(self, model: CNN1d, calib_x: Tensor | None = None, ridge: float = 1e-3) -> None:
        self.model = model.eval()
        self.ridge = ridge
        self.order = [s.argsort(descending=True, stable=True) for s in _channel_importance(model)]
        self.grams: list[Tensor] = []  # per refitted layer (convs 2..L, then the head): G = U^T U
        if calib_x is None:
            return
        with torch.no_grad():
            h, feats = calib_x, []
            for stage in model.stages:
                h = stage(h)
                feats.append(h)  # (N, C_l, L_l), post-ReLU
            for i in range(1, len(model.stages)):
                u = _unfold(feats[i - 1], model.stages[i][0])  # (N * L, C_{l-1} * k)
                self.grams.append(u.T @ u)
            u = feats[-1].flatten(1)  # (N, C_L * L_L)
            self.grams.append(u.T @ u)

    def indices(self, keep: Sequence[int]) -> list[Tensor]:
        """Kept channel indices of every stage (the `keep[l]` highest-ranked, in their original order)."""
        return [order[: int(k)].sort().values for order, k in zip(self.order, keep, strict=True)]

    def _refit(self, gram: Tensor, weight: Tensor, cols: Tensor, rows: Tensor | None) -> Tensor:
        """Ridge refit of `weight` `(M, D)` restricted to input columns `cols` and output rows `rows`."""
        w_t = weight.reshape(weight.shape[0], -1).T  # (D, M)
        if rows is not None:
            w_t = w_t[:, rows]
        g = gram[cols][:, cols]
        g = g + self.ridge * g.diagonal().mean().clamp_min(1e-8) * torch.eye(len(cols))
        return torch.linalg.solve(g, gram[cols] @ w_t).T  # (M', D')

    @torch.no_grad()
    def __call__(self, keep: Sequence[int]) -> CNN1d:
        """The pruned model (eval mode) with `keep[l]` channels in stage `l`."""
        from implementations.pruning._base import prune_channels

        index = self.indices(keep)
        thin = prune_channels(self.model, index).eval()
        if not self.grams:
            return thin
        for i in range(1, len(self.model.stages)):
            conv, new_conv = self.model.stages[i][0], thin.stages[i][0]
            k = conv.kernel_size[0]
            cols = (index[i - 1][:, None] * k + torch.arange(k)[None, :]).flatten()  # receptive-field columns
            new_conv.weight.copy_(self._refit(self.grams[i - 1], conv.weight, cols, index[i]).view_as(new_conv.weight))
        length = self.model.head.in_features // self.model.stages[-1][0].out_channels
        cols = (index[-1][:, None] * length + torch.arange(length)[None, :]).flatten()  # channel-major flatten
        thin.head.weight.copy_(self._refit(self.grams[-1], self.model.head.weight, cols, None))
        return thin


def prune_channels(model: CNN1d, keep: Sequence[int], calib_x: Tensor | None = None, ridge: float = 1e-3) -> CNN1d:
    r"""A thinner copy of `model` with `keep[l]` channels in stage `l` (see the module docstring).

    Args:
        model: A trained `CNN1d`-like model (stages of conv, BN, ReLU; linear head on the flatten).
        keep: Channels to keep per stage, `1 <= keep[l] <= C_l`.
        calib_x: Calibration inputs `(N, C, L)`; when given, the next layer's kept weights are refitted by ridge
            least squares to the unpruned outputs (features of the unpruned network, as in AMC).
        ridge: Relative ridge $\lambda$ (times the mean diagonal of $X^\top X$).

    Returns:
        The pruned model in eval mode.
    """
    return ChannelPruner(model, calib_x, ridge)(keep)


def finetune(model: nn.Module, data: TensorData, epochs: int, lr: float, seed: int, device: str = "cpu") -> None:
    """Briefly retrain a compressed model with cross-entropy (SGD, cosine schedule)."""
    from implementations._harness import fit

    fit(CETask(model), model.parameters(), data, epochs, lr, batch_size=128, device=device, seed=seed, progress=False)


def smoke_task(entrypoint: Any, batch_size: int = 8, num_classes: int = 10, seed: int = 0):
    """`(task, x, y)` for the generic smoke test (see the module docstring)."""
    custom = getattr(entrypoint, "smoke_task", None)
    if callable(custom):
        return custom()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = CNN1d(1, 40, num_classes, channels=(8, 8, 8))
    x = torch.randn(batch_size, 1, 40, generator=gen)  # (B, 1, 40)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen)  # (B,)
    return CETask(entrypoint(model).train()), x, y
