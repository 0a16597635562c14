r"""Distillation family contract: a student learns from a frozen teacher.

A distiller is a harness task: `forward_train(x, y) -> (student_logits, {name: weighted_loss})`, and
`forward(x)` is the student's prediction, so `evaluate(distiller, data)` scores the student. The teacher's
parameters are frozen ($\partial \mathcal{L} / \partial \theta_t$ is never computed) and `train()` keeps the
teacher in eval mode, so its BatchNorm statistics and dropout never change during distillation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from implementations._models import build_model

__all__ = ["CachedTeacher", "Distiller", "smoke_task"]


class Distiller(nn.Module):
    """Base class of distillation methods (mdistiller's `Distiller`)."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> Distiller:
        """Set the student (and any extra modules) to `mode`; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student parameters plus any extra modules' (connectors, projections); never the teacher's."""
        teacher_ids = {id(p) for p in self.teacher.parameters()}
        return [p for p in self.parameters() if id(p) not in teacher_ids and p.requires_grad]

    def forward(self, x: Tensor) -> Tensor:
        """Student logits `(B, K)`, for evaluation."""
        return self.student(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and the weighted loss terms; implemented by each method."""
        raise NotImplementedError


class CachedTeacher(nn.Module):
    r"""A frozen teacher whose outputs $f_t(x)$ on a fixed set of inputs are computed once, then looked up.

    Exact only when the student sees exactly those inputs, i.e. without random augmentation (the teacher is in eval
    mode, so $f_t$ is a fixed function); it then saves the teacher's forward pass at every training step, which
    usually costs more than the student's. Inputs are matched by their bytes; a batch with any input outside the
    cache (e.g. a test batch) goes through the teacher itself.
    """

    def __init__(self, teacher: nn.Module, inputs: Tensor, batch_size: int = 1000) -> None:
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        with torch.no_grad():
            outputs = [teacher(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
        self.register_buffer("outputs", torch.cat(outputs), persistent=False)  # (N, K): moves with .to(), not saved
        self.index = {key: i for i, key in enumerate(self._keys(inputs))}

    @staticmethod
    def _keys(x: Tensor) -> list[bytes]:
        rows = x.detach().cpu().contiguous().view(len(x), -1).numpy()  # (B, D)
        return [row.tobytes() for row in rows]

    def forward(self, x: Tensor) -> Tensor:
        """The cached outputs of `x`'s rows `(B, K)`, or the teacher's forward pass if any row is not cached."""
        found = [self.index.get(key) for key in self._keys(x)]
        if any(i is None for i in found):
            return self.teacher(x)
        return self.outputs[torch.tensor(found, device=self.outputs.device)]


def smoke_task(
    entrypoint: type[Distiller], batch_size: int = 8, num_classes: int = 10, seed: int = 0
) -> tuple[Distiller, Tensor, Tensor]:
    """A tiny distillation task for the generic smoke test.

    The teacher is a `resnet8` (channels 16-16-32-64) and the student a half-width `resnet8` (8-8-16-32), so
    both have the same number of stages and feature-map sizes but different channel counts, which is what
    feature-distillation methods must handle. The entrypoint is built as `entrypoint(student, teacher)` with its
    default config; an entrypoint that defines its own `smoke_task()` classmethod (one whose teacher must have a
    different head, say) is delegated to.

    Args:
        entrypoint: A `Distiller` subclass, e.g. `KD`.
        batch_size: $B$ of the synthetic batch.
        num_classes: $K$.
        seed: Seeds the models' initialisation and the batch.

    Returns:
        `(task, x, y)`: the task, a seeded synthetic batch `x` of shape `(B, 3, 16, 16)` and labels `y` of shape
        `(B,)` in `[0, K)`.
    """
    if hasattr(entrypoint, "smoke_task"):
        return entrypoint.smoke_task(batch_size=batch_size, num_classes=num_classes, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    in_shape = (3, 16, 16)
    teacher = build_model("resnet8", num_classes, in_shape, width=1.0)
    student = build_model("resnet8", num_classes, in_shape, width=0.5)
    task = entrypoint(student, teacher)
    x = torch.randn(batch_size, *in_shape, generator=gen)  # (B, 3, 16, 16)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen)  # (B,)
    return task, x, y
