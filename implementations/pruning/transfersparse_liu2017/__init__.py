r"""Transfer Knowledge for High Sparsity in Deep Neural Networks (Liu, Chen & Ji, 2017; identification unconfirmed).

Paper: [search link](https://scholar.google.com/scholar?q=%22Transfer+knowledge+for+high+sparsity+in+deep+neural+networks%22)
· notes: `papers/transfersparse_liu2017.md`

The paper's content could not be retrieved; this module implements the idea in its title. A network trained on a
*source* task is pruned to a high sparsity $s$ there, by global magnitude pruning with retraining,

$$
M_{ij} = \mathbb{1}\big[\lvert W_{ij} \rvert \ge \tau_s\big], \qquad
\tau_s = \text{the } \lfloor s\,n \rfloor\text{-th smallest } \lvert W \rvert \text{ over all prunable layers},
$$

and the sparse network (weights $W \odot M$ *and* mask $M$) is transferred to a *target* task with little data:
a new classifier head, then fine-tuning with the mask fixed,

$$
\min_{W, V} \; \mathcal{L}_{\text{target}}\big(f(x; W \odot M, V)\big).
$$

The comparison is pruning on the target task directly (same schedule, only the small target set), which has to
find both the mask and the weights from few examples.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.pruning._base import apply_masks, global_masks, prunable_layers
from implementations.pruning.magnitude_han2015 import magnitude_scores

if TYPE_CHECKING:
    from implementations._data import TensorData
    from implementations._harness import RunContext

__all__ = ["Config", "SparseTransfer", "detached_copy", "reproduce", "split_task"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the small-scale reproduction (MNIST-1D digits 0-4 -> 5-9)."""

    sparsities: tuple[float, ...] = (0.9, 0.95, 0.98)  # $s$ over the conv weights, reached iteratively
    width: float = 0.5  # CNN1d width: channels (16, 32, 32)
    source_epochs: int = 15  # dense training on the source task
    source_retrain_epochs: int = 4  # retraining after each pruning step on the source
    target_train: int = 400  # labelled target examples (the "limited data")
    target_epochs: int = 24  # dense training from scratch on the target set
    target_retrain_epochs: int = 6  # retraining after each pruning step on the target
    finetune_epochs: int = 15  # fine-tuning of a transferred network on the target set
    lr: float = 0.05  # $\eta_0$ of training from scratch
    finetune_lr: float = 0.01  # $\eta_0$ of retraining and fine-tuning
    temperature: float = 4.0  # $T$ of the soft-output ablation
    alpha: float = 0.9  # weight of the soft-output term in that ablation


def split_task(data: TensorData, classes: range, n_train: int | None = None, seed: int = 0) -> TensorData:
    """The sub-task on `classes` (labels renumbered from 0), with an optional seeded training subset."""
    from dataclasses import replace

    keep_train = torch.isin(data.y_train, torch.tensor(list(classes)))
    keep_test = torch.isin(data.y_test, torch.tensor(list(classes)))
    sub = replace(
        data,
        x_train=data.x_train[keep_train],
        y_train=data.y_train[keep_train] - classes.start,
        x_test=data.x_test[keep_test],
        y_test=data.y_test[keep_test] - classes.start,
        num_classes=len(classes),
    )
    return sub.subset(n_train, seed=seed)


def _refresh(module: nn.Module) -> None:
    """Recompute every pruned tensor `w = w_orig * w_mask` without autograd (as the next forward pass would)."""
    with torch.no_grad():
        for sub in module.modules():
            for name in [n[: -len("_mask")] for n, _ in sub.named_buffers(recurse=False) if n.endswith("_mask")]:
                setattr(sub, name, getattr(sub, f"{name}_orig") * getattr(sub, f"{name}_mask"))


def detached_copy(module: nn.Module) -> nn.Module:
    """`copy.deepcopy` that also works right after training a pruned module (its masked weights are non-leaf
    tensors until the next forward pass; they are recomputed here without autograd first)."""
    _refresh(module)
    return copy.deepcopy(module)


class SparseTransfer(nn.Module):
    """A network whose trunk (all prunable layers but the head) is magnitude-pruned; transferable with its mask."""

    def __init__(self, model: nn.Module, cfg: Config | None = None, teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg or Config()
        self.teacher = teacher  # optional dense network whose soft outputs are matched (ablation)
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`."""
        return self.model(x)

    def trunk(self) -> list[tuple[str, nn.Module]]:
        """The prunable layers except the classifier head."""
        return prunable_layers(self.model, skip_last=True)

    def prune(self, target: float) -> None:
        """Global magnitude pruning of the trunk to sparsity `target` (earlier zeros stay zero)."""
        apply_masks(self.model, global_masks(self.trunk(), magnitude_scores, target))

    def transfer(self, num_classes: int, reinit_weights: nn.Module | None = None) -> SparseTransfer:
        """A copy for a new task: same trunk weights and masks, a fresh head with `num_classes` outputs.

        With `reinit_weights` (a freshly initialised network of the same shape), only the masks are transferred.
        """
        model = detached_copy(self.model)
        if reinit_weights is not None:
            fresh = dict(reinit_weights.named_modules())
            with torch.no_grad():
                for name, module in prunable_layers(model, skip_last=True):
                    module.weight_orig.copy_(fresh[name].weight)
            _refresh(model)
        model.head = nn.Linear(model.head.in_features, num_classes)
        return SparseTransfer(model, self.cfg)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and CE (plus the temperature-softened KL to the teacher when one is set)."""
        logits = self.model(x)  # (B, K)
        if self.teacher is None:
            return logits, {"ce": F.cross_entropy(logits, y)}
        from implementations.distillation.kd_hinton2015 import kd_loss

        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return logits, {
            "ce": (1 - self.cfg.alpha) * F.cross_entropy(logits, y),
            "kd": self.cfg.alpha * kd_loss(logits, teacher_logits, self.cfg.temperature),
        }

    @classmethod
    def smoke_task(cls) -> tuple[SparseTransfer, Tensor, Tensor]:
        """A tiny CNN1d pruned to 90% on a "source" and transferred to a 5-class "target"."""
        from implementations._models import build_model

        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        source = cls(build_model("cnn1d", 10, (1, 40), width=0.25))
        source.prune(0.9)
        return source.transfer(5), torch.randn(8, 1, 40, generator=gen), torch.randint(0, 5, (8,), generator=gen)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """MNIST-1D digits 0-4 (source, all data) -> 5-9 (target, few labels): transfer sparse net vs prune on target.

    The run is in `experiment.py`.
    """
    from implementations.pruning.transfersparse_liu2017.experiment import reproduce as run

    return run(ctx)
