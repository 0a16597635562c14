r"""Self-distillation family contract: one network is its own teacher, through auxiliary heads or classifiers.

A self-distiller wraps one backbone (any model of `implementations._models` with
`forward(x, return_features=True) -> (logits, [F_1, ..., F_C])`) and adds what the method needs: classifiers on
intermediate stages (Be Your Own Teacher, MSD) or extra heads on the final features (label augmentation). It is a
harness task, `forward_train(x, y) -> (logits, {name: weighted_loss})`, whose `forward(x)` is the network that is
deployed (by default the backbone's own, deepest classifier, at no extra cost), so `evaluate(task, data)` scores it.
Entry points are built as `entrypoint(backbone, in_shape)`; the shapes of the stage features come from one forward
pass in eval mode at construction.

Multi-exit networks (`MultiExit`) hang an exit on each stage $i < C$: an adaptation block (stride-2 conv-BN-ReLU
layers, then a conv to the deepest stage's channels) maps $F_i$ to $F_i'$ with the shape of $F_C$, and a linear
classifier reads $F_i'$ pooled the way the backbone pools $F_C$ (flattened for `CNN1d`, global average otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._models import build_model

__all__ = ["Exit", "MultiExit", "SelfDistiller", "feature_shapes", "smoke_task", "soft_kl"]


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    r"""$T^2\,\mathrm{KL}(p_t^{(T)} \,\|\, p_s^{(T)})$, averaged over the batch; detach the teacher before calling."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)  # (B, K)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)  # (B, K)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


@torch.no_grad()
def feature_shapes(backbone: nn.Module, in_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Shapes `(C_i, *S_i)` of the backbone's stage features for one input of shape `in_shape` (eval mode)."""
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    _, features = backbone(torch.zeros(2, *in_shape, device=device), return_features=True)
    backbone.train(was_training)
    return [tuple(f.shape[1:]) for f in features]


def _pool(feature: Tensor, flatten: bool) -> Tensor:
    return feature.flatten(1) if flatten else feature.flatten(2).mean(-1)


class Exit(nn.Module):
    r"""Adaptation block $F_i \mapsto F_i'$ (shape of $F_C$) and a linear classifier on the pooled $F_i'$."""

    def __init__(self, shape: tuple[int, ...], target: tuple[int, ...], num_classes: int, flatten: bool) -> None:
        super().__init__()
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if len(shape) == 2 else (nn.Conv2d, nn.BatchNorm2d)
        layers, channels, size = [], shape[0], shape[1]
        while size > target[1]:  # stride-2 convs until the spatial size matches the deepest stage's
            layers += [conv(channels, target[0], 3, stride=2, padding=1, bias=False), norm(target[0]), nn.ReLU()]
            channels, size = target[0], (size - 1) // 2 + 1
        layers += [conv(channels, target[0], 1, bias=False), norm(target[0]), nn.ReLU()]
        if size != target[1]:
            pool = nn.AdaptiveAvgPool1d if len(shape) == 2 else nn.AdaptiveAvgPool2d
            layers.append(pool(target[1:]))
        self.adapt = nn.Sequential(*layers)
        self.flatten = flatten
        numel = 1
        for d in target[1:]:
            numel *= d
        self.classifier = nn.Linear(target[0] * (numel if flatten else 1), num_classes)

    def forward(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """Logits `(B, K)` and the adapted feature $F_i'$ `(B, C_C, *S_C)`."""
        adapted = self.adapt(feature)
        return self.classifier(_pool(adapted, self.flatten)), adapted


class SelfDistiller(nn.Module):
    """Base class: one backbone plus auxiliary modules; `forward` is the backbone's own prediction."""

    def __init__(self, backbone: nn.Module, in_shape: Sequence[int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.in_shape = tuple(in_shape)

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` of the deployed network (the backbone's deepest classifier)."""
        return self.backbone(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Deployed logits `(B, K)` and the weighted loss terms; implemented by each method."""
        raise NotImplementedError


class MultiExit(SelfDistiller):
    """A backbone with an `Exit` on every stage but the last; the last stage keeps the backbone's own head."""

    def __init__(self, backbone: nn.Module, in_shape: Sequence[int]) -> None:
        super().__init__(backbone, in_shape)
        shapes = feature_shapes(backbone, in_shape)
        numel = 1
        for d in shapes[-1]:
            numel *= d
        flatten = backbone.head.in_features == numel  # CNN1d flattens its last map, image nets pool it
        num_classes = backbone.head.out_features
        self.exits = nn.ModuleList(Exit(shape, shapes[-1], num_classes, flatten) for shape in shapes[:-1])

    def exit_outputs(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Logits of every exit, shallow to deep (last = backbone head), and the matching features.

        Returns:
            `([z_1, ..., z_C], [F_1', ..., F_{C-1}', F_C])`, logits `(B, K)` and features `(B, C_C, *S_C)`.
        """
        logits_deep, features = self.backbone(x, return_features=True)
        logits, adapted = [], []
        for exit_, feature in zip(self.exits, features[:-1], strict=True):
            z, f = exit_(feature)
            logits.append(z)
            adapted.append(f)
        return [*logits, logits_deep], [*adapted, features[-1]]


def smoke_task(
    entrypoint: type[SelfDistiller], batch_size: int = 8, num_classes: int = 10, seed: int = 0
) -> tuple[SelfDistiller, Tensor, Tensor]:
    """A tiny self-distillation task for the generic smoke test.

    An entrypoint with its own `smoke_task()` classmethod is delegated to. Otherwise it is built as
    `entrypoint(backbone, in_shape)` with a quarter-width `cnn2d` (three stages, channels 8-16-32) on 8x8
    single-channel images, the shape of sklearn digits.

    Returns:
        `(task, x, y)`: the task, a batch `x` of shape `(B, 1, 8, 8)` and labels `y` of shape `(B,)`.
    """
    if hasattr(entrypoint, "smoke_task"):
        return entrypoint.smoke_task()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    in_shape = (1, 8, 8)
    task = entrypoint(build_model("cnn2d", num_classes, in_shape, width=0.25), in_shape)
    x = torch.randn(batch_size, *in_shape, generator=gen)  # (B, 1, 8, 8)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen)  # (B,)
    return task, x, y
