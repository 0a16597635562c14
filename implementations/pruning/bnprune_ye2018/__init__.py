r"""Rethinking the Smaller-Norm-Less-Informative Assumption in Channel Pruning of Convolution Layers (Ye et al., 2018).

Paper: [arXiv:1802.00124](https://arxiv.org/abs/1802.00124) · notes: `papers/bnprune_ye2018.md`

Each channel ends in batch norm, $z = \gamma \hat x + \beta$. The scales of layer $l$ get a cost-weighted sparsity
penalty, $\min_\theta \ell(\theta) + \lambda \sum_l \rho_l \lVert \gamma^{(l)} \rVert_1$, handled not by a
sub-gradient but by ISTA: after each gradient step with learning rate $\mu$ the scales are soft-thresholded,

$$
\gamma \leftarrow \operatorname{sign}(\gamma)\,\max\big(|\gamma| - \mu \lambda \rho_l,\ 0\big),
$$

which makes many of them *exactly* zero. A channel with $\gamma = 0$ outputs the constant $\max(\beta, 0)$ after the
ReLU, so it can be removed with no change to the function: its contribution $\max(\beta, 0) \sum_k W_{o,c,k}$ to
the next convolution is a constant per output channel, folded into the next batch norm's running mean (or into the
classifier's bias after global pooling). The rescaling trick multiplies $\gamma, \beta$ by $\alpha$ and the next
layer's weights by $1/\alpha$ before training, which changes nothing in the function but sets how fast ISTA
sparsifies (the very symmetry that makes "small norm = unimportant" ambiguous). Here $\rho_l$ is the MAC cost of one
channel of layer $l$ (its filter plus its share of the next layer), divided by the mean over layers.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._models import build_model
from implementations.pruning._base import channel_units, prune_channels

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["BNChannelPruning", "Config", "channel_costs", "ista", "reproduce", "soft_threshold"]


@dataclass(frozen=True)
class Config:
    r"""Hyperparameters; the values are ours (the paper tunes $\lambda$ and $\alpha$ per network)."""

    sparsity: float = 0.1  # $\lambda$, ISTA penalty strength (ours: about a quarter of the channels reach 0)
    alpha: float = 0.1  # $\alpha$ of the rescaling trick (paper: one of 0.001, 0.01, 0.1, 1)


def soft_threshold(gamma: Tensor, threshold: float | Tensor) -> Tensor:
    r"""$\operatorname{sign}(\gamma)\max(|\gamma| - t, 0)$, the proximal step of $t\,\lVert\gamma\rVert_1$."""
    return gamma.sign() * (gamma.abs() - threshold).clamp_min(0.0)


def replicate_padding(model: nn.Module) -> nn.Module:
    """Switch every conv to replicate padding, so a constant channel stays constant at the borders and its removal
    (with folding) is exact; with zero padding the border positions would see a different constant."""
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d):
            module.padding_mode = "replicate"
    return model


def channel_costs(model: nn.Module, input_shape: tuple[int, ...]) -> list[float]:
    """MACs of one channel per hidden stage: its filter over its output map plus its input share of the next layer."""
    units, head = channel_units(model)
    sizes, hooks = [], []
    for conv, _ in units:
        hooks.append(conv.register_forward_hook(lambda m, i, o: sizes.append(o[0, 0].numel())))
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    costs = []
    for i, (conv, _) in enumerate(units):
        own = conv.weight[0].numel() * sizes[i]  # C_{l-1} k^2 H_l W_l
        if i + 1 < len(units):
            nxt = units[i + 1][0]
            share = nxt.weight.shape[0] * nxt.weight[0, 0].numel() * sizes[i + 1]  # C_{l+1} k^2 H_{l+1} W_{l+1}
        else:
            share = head.weight.shape[0] * head.weight.shape[1] // conv.weight.shape[0]
        costs.append(float(own + share))
    return costs


class BNChannelPruning(nn.Module):
    """Cross-entropy task whose BN scales are sparsified by ISTA (use inside `with ista(task):`)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], cfg: Config | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg or Config()
        costs = channel_costs(model, input_shape)
        self.rho = [c / (sum(costs) / len(costs)) for c in costs]  # $\rho_l$, mean 1

    def norms(self) -> list[nn.Module]:
        """The batch norms whose scales are sparsified, one per hidden stage."""
        return [norm for _, norm in channel_units(self.model)[0]]

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`."""
        return self.model(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        r"""Logits and the cross-entropy; the $\ell_1$ term acts through `ista_step`, not through the loss."""
        logits = self.model(x)
        return logits, {"ce": F.cross_entropy(logits, y)}

    @torch.no_grad()
    def ista_step(self, lr: float) -> None:
        r"""Soft-threshold every $\gamma^{(l)}$ by $\mu \lambda \rho_l$ (call after each gradient step)."""
        for norm, rho in zip(self.norms(), self.rho, strict=True):
            norm.weight.copy_(soft_threshold(norm.weight, lr * self.cfg.sparsity * rho))

    @torch.no_grad()
    def rescale(self, alpha: float) -> None:
        r"""$\gamma, \beta \leftarrow \alpha\gamma, \alpha\beta$ and the next layer's weights $W \leftarrow W / \alpha$.

        Exact for $\alpha > 0$: ReLU is positively homogeneous, so the next layer sees the same input.
        """
        units, head = channel_units(self.model)
        for i, (_, norm) in enumerate(units):
            norm.weight.mul_(alpha)
            norm.bias.mul_(alpha)
            consumer = units[i + 1][0] if i + 1 < len(units) else head
            consumer.weight.div_(alpha)  # ReLU(a z) = a ReLU(z) for a > 0, so the function is unchanged

    def zero_channels(self) -> list[Tensor]:
        """Per stage, boolean `(C_l,)`: channels whose scale is exactly zero."""
        return [norm.weight.detach() == 0 for norm in self.norms()]

    @torch.no_grad()
    def pruned(self) -> nn.Module:
        r"""A thinner copy without the $\gamma = 0$ channels, their constant output folded into the next layer."""
        model = copy.deepcopy(self.model)
        units, head = channel_units(model)
        keep = []
        for i, (_, norm) in enumerate(units):
            dead = norm.weight == 0  # (C_l,)
            if dead.all():  # keep one channel so the layer stays connected (removing none is always exact)
                dead[norm.bias.argmax()] = False
            constant = F.relu(norm.bias) * dead  # (C_l,), the channel's value after the ReLU
            if i + 1 < len(units):
                nxt_conv, nxt_norm = units[i + 1]
                shift = torch.einsum("oc...,c->o", nxt_conv.weight, constant)  # (C_{l+1},), replicate padding
                nxt_norm.running_mean.sub_(shift)
            else:  # global average pooling keeps the constant, the classifier adds W c
                head.bias.add_(head.weight @ constant)
            keep.append((~dead).nonzero().flatten())
        return prune_channels(model, keep)

    @classmethod
    def smoke_task(cls) -> tuple[BNChannelPruning, Tensor, Tensor]:
        """A tiny CNN2d on 8x8 inputs, for the generic smoke test."""
        torch.manual_seed(0)
        model = replicate_padding(build_model("cnn2d", 10, (1, 8, 8), width=0.125))
        task = cls(model, (1, 8, 8))
        task.rescale(0.5)
        return task.train(), torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))


@contextlib.contextmanager
def ista(task: BNChannelPruning) -> Iterator[None]:
    """Within the block, every optimizer step is followed by `task.ista_step(lr)` with that step's learning rate."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda opt, _args, _kwargs: task.ista_step(opt.param_groups[0]["lr"]))
    try:
        yield
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run bnprune_ye2018`
# ---------------------------------------------------------------------------------------------------------------------


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """CNN2d on digits: ISTA on the BN scales, exact removal of the zero channels, fine-tuning; against network slimming
    (L1 sub-gradient + global threshold) cut to the same FLOPs and fine-tuned the same. The run is in
    `experiment.py`."""
    from implementations.pruning.bnprune_ye2018.experiment import reproduce as run

    return run(ctx)
