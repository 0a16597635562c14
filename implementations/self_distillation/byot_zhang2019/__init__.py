r"""Be Your Own Teacher: Improve the Performance of CNNs via Self Distillation (Zhang et al., 2019).

Paper: [arXiv:1905.08094](https://arxiv.org/abs/1905.08094) · notes: `papers/byot_zhang2019.md`

The network is cut into $C$ sections; every section $i < C$ gets an adaptation block and a classifier with softmax
output $q^i$ and adapted feature $F_i$, and the network's own last classifier $q^C$ (on $F_C$) is the teacher. With
$q^i_\tau = \mathrm{softmax}(z_i / \tau)$ all classifiers train together on

$$
\mathcal{L} = \mathrm{CE}(q^C, y) + \sum_{i=1}^{C-1} \Big[ (1-\alpha)\, \mathrm{CE}(q^i, y)
  + \alpha\, \tau^2\, \mathrm{KL}\big(q^C_\tau \,\|\, q^i_\tau\big)
  + \lambda\, \lVert F_i - F_C \rVert_2^2 \Big],
$$

the deepest outputs $q^C$ and $F_C$ being held fixed as targets. At test time the deepest classifier is the plain
network (no extra cost); the shallow classifiers are early exits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import Tensor, nn

from implementations.self_distillation._base import MultiExit, soft_kl

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["BYOT", "Config", "byot_loss", "hint_loss", "reproduce", "select_hint_weight"]


@dataclass(frozen=True)
class Config:
    r"""Hyperparameters as our notes record them for the CIFAR setting (not checked against the paper or its code).

    $\lambda$ multiplies a per-example *summed* squared distance, so its useful size depends on the feature scale;
    the reproduction chooses it on held-out training data (`select_hint_weight`) and keeps 0.03 as an ablation.
    """

    temperature: float = 3.0  # $\tau$
    alpha: float = 0.3  # $\alpha$: KL weight; shallow CE gets $1 - \alpha$
    hint_weight: float = 0.03  # $\lambda$ (unverified CIFAR value)


def hint_loss(feature: Tensor, target: Tensor) -> Tensor:
    r"""$\lVert F_i - F_C \rVert_2^2$ per example (sum over channels and positions), averaged over the batch."""
    return (feature - target).pow(2).flatten(1).sum(1).mean()


def byot_loss(
    logits: Sequence[Tensor], features: Sequence[Tensor], y: Tensor, cfg: Config, hint_weight: float | None = None
) -> dict[str, Tensor]:
    r"""The BYOT terms, shallow exits $i = 0 \dots C-2$ and the deepest classifier.

    Args:
        logits: $z_1, \dots, z_C$, each `(B, K)`, shallow to deep.
        features: $F_1', \dots, F_{C-1}', F_C$, each of the deepest feature's shape `(B, C_C, *S)`.
        y: Labels, `(B,)`.
        cfg: $\tau$, $\alpha$, $\lambda$.
        hint_weight: Overrides $\lambda$ (a schedule, as in MSD).

    Returns:
        `{"ce_deep", "ce{i}", "kl{i}", "hint{i}"}`, already weighted; zero-weight terms are left out.
    """
    weight = cfg.hint_weight if hint_weight is None else hint_weight
    teacher, target = logits[-1].detach(), features[-1].detach()  # the deepest classifier is the teacher
    losses = {"ce_deep": F.cross_entropy(logits[-1], y)}
    for i, (z, f) in enumerate(zip(logits[:-1], features[:-1], strict=True)):
        losses[f"ce{i}"] = (1 - cfg.alpha) * F.cross_entropy(z, y)
        if cfg.alpha > 0:
            losses[f"kl{i}"] = cfg.alpha * soft_kl(z, teacher, cfg.temperature)
        if weight > 0:
            losses[f"hint{i}"] = weight * hint_loss(f, target)
    return losses


class BYOT(MultiExit):
    """Self distillation from the deepest classifier into classifiers on every earlier stage."""

    def __init__(self, backbone: nn.Module, in_shape: Sequence[int], cfg: Config | None = None) -> None:
        super().__init__(backbone, in_shape)
        self.cfg = cfg or Config()

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Deepest logits `(B, K)` and the BYOT terms."""
        logits, features = self.exit_outputs(x)
        return logits[-1], byot_loss(logits, features, y, self.cfg)


SETTINGS = dict(
    dataset="mnist1d",
    n_train=2000,
    model=("cnn1d", 0.5),
    epochs=5,
    lr=0.1,
    batch_size=128,
    hint_weights=(0.03, 0.003, 0.0003),  # candidates for $\lambda$, chosen on held-out training data
    held_out=0.2,  # fraction of the training set held out for that choice
)


def select_hint_weight(
    data: Any, new_backbone: Any, candidates: Sequence[float], cfg: Config, train: dict[str, Any], held_out: float
) -> tuple[float, dict[float, float]]:
    r"""Choose $\lambda$ by the deepest classifier's accuracy on a held-out part of the *training* set (seed 0).

    Returns:
        The chosen $\lambda$ and `{lambda: held-out accuracy (%)}`. The test set is never used.
    """
    import torch

    from implementations._harness import evaluate, fit, seed_everything

    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(data.n_train, generator=g)
    n_val = int(held_out * data.n_train)
    val_idx, fit_idx = perm[:n_val], perm[n_val:]
    split = replace(
        data,
        x_train=data.x_train[fit_idx],
        y_train=data.y_train[fit_idx],
        x_test=data.x_train[val_idx],
        y_test=data.y_train[val_idx],
    )
    scores = {}
    for weight in candidates:
        seed_everything(0)
        task = BYOT(new_backbone(), data.input_shape, replace(cfg, hint_weight=weight))
        fit(task, task.parameters(), split, seed=0, **train)
        scores[weight] = evaluate(task, split)
    return max(candidates, key=lambda w: scores[w]), scores


def exit_accuracies(task: MultiExit, data: Any) -> list[float]:
    """Test accuracy (%) of every exit, shallow to deep."""
    import torch

    task.eval()
    correct = None
    with torch.no_grad():
        x, y = data.x_test.to(next(task.parameters()).device), data.y_test.to(next(task.parameters()).device)
        logits, _ = task.exit_outputs(x)
        correct = [(z.argmax(-1) == y).float().mean().item() * 100 for z in logits]
    return correct


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Plain network vs. BYOT, and BYOT with one or two of its terms switched off, over `ctx.seeds`.

    The run is in `experiment.py`.
    """
    from implementations.self_distillation.byot_zhang2019.experiment import reproduce as run

    return run(ctx)
