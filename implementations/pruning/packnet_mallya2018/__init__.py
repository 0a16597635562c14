r"""PackNet: Adding Multiple Tasks to a Single Network by Iterative Pruning (Mallya & Lazebnik, 2018).

Paper: [arXiv:1711.05769](https://arxiv.org/abs/1711.05769) · notes: `papers/packnet_mallya2018.md`

Every weight of the shared layers has an owner: task $k \ge 1$, or $0$ (free). Task $k$ trains only the free
weights $F_k$ (earlier tasks' weights take part in the forward pass, frozen). Then a fraction $p$ of them, the
smallest in magnitude per layer, is released (set to zero and freed) and the rest become task $k$'s,

$$
M_k = F_k \odot \mathbf{1}\big[\,|W| > \tau_k\,\big], \qquad \tau_k = p\text{-quantile of } \{|W_i| : F_{k,i} = 1\},
$$

followed by a short retraining of the weights in $M_k$ alone. Task $k$ is evaluated with its own head and

$$
W^{(k)} = W \odot \sum_{j \le k} M_j ,
$$

so later tasks reuse earlier weights but never change them: no forgetting, by construction. Batch norm (when the
backbone has it) is learned with the first task and frozen afterwards, so it cannot drift either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from implementations._models import CNN1d
from implementations.pruning._base import prunable_layers, topk_mask

if TYPE_CHECKING:
    from implementations._data import TensorData
    from implementations._harness import RunContext

__all__ = ["Config", "PackNet", "class_split", "release_mask", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters (the paper prunes 50-75% per step; epochs are ours)."""

    prune_ratio: float = 0.75  # $p$, fraction of a task's free weights released after it (Sec. 3)
    epochs: int = 8  # training of each task on its free weights
    retrain_epochs: int = 4  # retraining of the kept weights after pruning
    lr: float = 0.05  # SGD learning rate of both phases (no weight decay: frozen weights must not move)


def release_mask(weight: Tensor, free: Tensor, prune_ratio: float) -> Tensor:
    r"""$M_k$: the free weights that task $k$ keeps, i.e. all but the fraction $p$ with the smallest $|W|$.

    Args:
        weight: Layer weight $W$, any shape.
        free: Boolean mask $F_k$ of the weights task $k$ trained, same shape.
        prune_ratio: $p$; exactly $\lfloor p\,|F_k| \rfloor$ free weights are released.

    Returns:
        Boolean mask, True where task $k$ keeps the weight (always inside `free`).
    """
    keep = torch.zeros_like(free)
    keep[free] = topk_mask(weight.detach()[free].abs(), prune_ratio).bool()
    return keep


class _OwnerMask(nn.Module):
    r"""Parametrization $W \mapsto W \odot \mathbf{1}[\text{owner usable by the active task}]$."""

    def __init__(self, weight: Tensor, state: dict[str, int]) -> None:
        super().__init__()
        self.register_buffer("owner", torch.zeros_like(weight, dtype=torch.long))  # 0 = free, k = task k
        self.state = state  # shared: {"task": active task, "train_free": 1 while the free weights are trained}

    def usable(self) -> Tensor:
        task, owner = self.state["task"], self.owner
        used = (owner >= 1) & (owner <= task)
        return used | (owner == 0) if self.state["train_free"] else used

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.usable().to(weight.dtype)


class PackNet(nn.Module):
    """One backbone shared by a sequence of tasks, each with its own head and its own slice of the weights.

    Usage per task `k` (1-based): `start_task(k)`, train, `prune()`, retrain, `finish_task()`; then
    `set_task(j)` selects the weights and head of any finished task `j <= k` for evaluation.
    """

    def __init__(self, backbone: nn.Module, num_tasks: int, classes_per_task: int, cfg: Config | None = None):
        super().__init__()
        self.cfg = cfg or Config()
        self.backbone = backbone
        features = backbone.head.in_features
        backbone.head = nn.Identity()  # the backbone now returns its flattened features
        self.heads = nn.ModuleList(nn.Linear(features, classes_per_task) for _ in range(num_tasks))
        self.state = {"task": 1, "train_free": 1}
        self.layers = [layer for _, layer in prunable_layers(backbone)]
        for layer in self.layers:
            parametrize.register_parametrization(layer, "weight", _OwnerMask(layer.weight, self.state))
            original = layer.parametrizations.weight.original
            original.register_hook(lambda grad, layer=layer: grad * self._trainable(layer))
        self.norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def _mask(self, layer: nn.Module) -> _OwnerMask:
        return layer.parametrizations.weight[0]

    def _trainable(self, layer: nn.Module) -> Tensor:
        owner = self._mask(layer).owner
        return (owner == (0 if self.state["train_free"] else self.state["task"])).to(torch.float32)

    def set_task(self, task: int) -> None:
        """Evaluate (or keep training) as task `task`: its head, and the weights owned by tasks `<= task`."""
        self.state.update(task=task, train_free=0)

    def start_task(self, task: int) -> None:
        """Start training task `task` on the free weights; batch norm is frozen after the first task."""
        self.state.update(task=task, train_free=1)
        for norm in self.norms:
            norm.requires_grad_(task == 1)

    @torch.no_grad()
    def prune(self) -> None:
        r"""Release the fraction $p$ of the free weights with the smallest $|W|$ per layer; the rest become $M_k$."""
        for layer in self.layers:
            mask = self._mask(layer)
            original = layer.parametrizations.weight.original
            free = mask.owner == 0
            keep = release_mask(original, free, self.cfg.prune_ratio)
            mask.owner[keep] = self.state["task"]
            original[free & ~keep] = 0.0  # released weights restart from zero for the next task
        self.state["train_free"] = 0  # retraining touches M_k only

    def finish_task(self) -> None:
        """Freeze task `k`: from now on only the still-free weights can be trained."""
        self.state["train_free"] = 0

    def free_fraction(self) -> float:
        """Share of the backbone's weights not owned by any task."""
        owners = torch.cat([self._mask(layer).owner.flatten() for layer in self.layers])
        return float((owners == 0).float().mean())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Backbone weights (gradients masked to the trainable ones), the active head, BN for task 1."""
        params = [layer.parametrizations.weight.original for layer in self.layers]
        params += list(self.heads[self.state["task"] - 1].parameters())
        return params + [p for norm in self.norms for p in norm.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> PackNet:
        """Training mode, but batch norm stays in eval mode (frozen statistics) after the first task."""
        super().train(mode)
        if self.state["task"] > 1:
            for norm in self.norms:
                norm.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K_task)` of the active task."""
        return self.heads[self.state["task"] - 1](self.backbone(x))

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and cross-entropy of the active task."""
        logits = self(x)
        return logits, {"ce": F.cross_entropy(logits, y)}

    @classmethod
    def smoke_task(cls) -> tuple[PackNet, Tensor, Tensor]:
        """A tiny CNN1d after task 1 was pruned, training task 2 on the freed weights."""
        torch.manual_seed(0)
        net = cls(CNN1d(1, 40, 10, channels=(4, 8, 8)), num_tasks=2, classes_per_task=5)
        net.prune()
        net.finish_task()
        net.start_task(2)
        return net.train(), torch.randn(8, 1, 40), torch.randint(0, 5, (8,))


def class_split(data: TensorData, classes: Sequence[int]) -> TensorData:
    """The examples of `classes` only, relabelled `0 .. len(classes) - 1` in the given order."""
    lookup = torch.full((data.num_classes,), -1, dtype=torch.long)
    lookup[torch.as_tensor(list(classes))] = torch.arange(len(classes))
    train, test = lookup[data.y_train] >= 0, lookup[data.y_test] >= 0
    return replace(
        data,
        x_train=data.x_train[train],
        y_train=lookup[data.y_train[train]],
        x_test=data.x_test[test],
        y_test=lookup[data.y_test[test]],
        num_classes=len(classes),
    )


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Five 2-way MNIST-1D tasks added to one CNN1d by PackNet (p = 0.75 and 0.5), against sequential
    fine-tuning and one independent network per task, all with the same epochs per task.

    The run is in `experiment.py`.
    """
    from implementations.pruning.packnet_mallya2018.experiment import reproduce as run

    return run(ctx)
