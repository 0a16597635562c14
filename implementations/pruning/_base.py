r"""Pruning family contract: score, mask, fine-tune, (optionally) physically remove.

A pruning paper module exports a score function `<criterion>_scores(weight, grad=None) -> Tensor` of the weight's
shape (higher = more important) and/or a structured method. Masks go through `torch.nn.utils.prune`, so a pruned
layer computes with $W \odot M$ and the mask survives `state_dict()`. For a sparsity $s$ over $n$ scores,
`topk_mask` zeroes exactly $\lfloor s n \rfloor$ entries: the ones with the smallest scores (ties broken by index).

`smoke_task(entrypoint)` adapts a paper's entry point to the harness contract for the generic smoke test: a class
or function may define its own `smoke_task()`; a plain score function gets a tiny MLP pruned to 50% per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from implementations._harness import Supervised
from implementations._models import build_model

__all__ = [
    "PRUNABLE",
    "apply_masks",
    "global_masks",
    "layer_masks",
    "prunable_layers",
    "remove_masks",
    "smoke_task",
    "sparsity",
    "topk_mask",
]

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
ScoreFn = Callable[..., Tensor]


def topk_mask(scores: Tensor, sparsity: float) -> Tensor:
    r"""Mask of `scores`' shape with exactly $\lfloor s\,n \rfloor$ zeros at the lowest scores.

    Args:
        scores: Importance scores, any shape.
        sparsity: Fraction $s \in [0, 1]$ of entries to prune.

    Returns:
        A float mask of 0s and 1s, same shape as `scores`.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    flat = scores.detach().flatten()
    n_prune = int(sparsity * flat.numel())
    mask = torch.ones_like(flat)
    if n_prune > 0:
        # stable sort: among equal scores the lower index is pruned first, so the count is exact
        order = torch.sort(flat, stable=True).indices
        mask[order[:n_prune]] = 0.0
    return mask.view_as(scores)


def prunable_layers(model: nn.Module, skip_last: bool = False) -> list[tuple[str, nn.Module]]:
    """Linear and conv layers (name, module) in definition order; optionally without the classifier head."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE)]
    return layers[:-1] if skip_last and layers else layers


def _weight(module: nn.Module) -> Tensor:
    return module.weight_orig if hasattr(module, "weight_orig") else module.weight


def layer_masks(
    layers: Iterable[tuple[str, nn.Module]], score_fn: ScoreFn, sparsity: float, use_grad: bool = False
) -> dict[str, Tensor]:
    """Prune each layer to `sparsity` on its own (local masking); already-pruned weights stay pruned."""
    masks = {}
    for name, module in layers:
        weight = _weight(module)
        scores = score_fn(weight.detach(), weight.grad if use_grad else None)
        old = getattr(module, "weight_mask", None)
        if old is not None:
            scores = torch.where(old.bool(), scores, torch.full_like(scores, -torch.inf))  # masks only shrink
        masks[name] = topk_mask(scores, sparsity)
    return masks


def global_masks(
    layers: Iterable[tuple[str, nn.Module]], score_fn: ScoreFn, sparsity: float, use_grad: bool = False
) -> dict[str, Tensor]:
    """One threshold across all layers (global masking): scores compete across layers."""
    layers = list(layers)
    all_scores = []
    for _, module in layers:
        weight = _weight(module)
        scores = score_fn(weight.detach(), weight.grad if use_grad else None)
        old = getattr(module, "weight_mask", None)
        if old is not None:
            scores = torch.where(old.bool(), scores, torch.full_like(scores, -torch.inf))
        all_scores.append(scores.flatten())
    mask = topk_mask(torch.cat(all_scores), sparsity)
    out, start = {}, 0
    for (name, module), scores in zip(layers, all_scores, strict=True):
        out[name] = mask[start : start + scores.numel()].view_as(_weight(module))
        start += scores.numel()
    return out


def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Attach `masks` with `torch.nn.utils.prune.custom_from_mask` (re-pruning combines with the old mask)."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules[name]
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")  # fold the old mask in; the new mask already excludes those weights
        prune.custom_from_mask(module, "weight", mask.to(module.weight.device))


def remove_masks(model: nn.Module) -> None:
    """Make pruning permanent: fold every mask into its weight (zeros stay zeros) and drop the hooks."""
    for module in model.modules():
        if isinstance(module, PRUNABLE) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")


def sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over all prunable layers' effective weights."""
    total = zeros = 0
    for _, module in prunable_layers(model):
        total += module.weight.numel()
        zeros += int((module.weight == 0).sum())
    return zeros / max(1, total)


def smoke_task(entrypoint: object, batch_size: int = 8, num_classes: int = 10, seed: int = 0):
    """`(task, x, y)` for the generic smoke test (see the module docstring)."""
    custom = getattr(entrypoint, "smoke_task", None)
    if callable(custom):
        return custom()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model("mlp", num_classes, (40,))
    x = torch.randn(batch_size, 40, generator=gen)  # (B, 40)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen)  # (B,)
    task = Supervised(model)
    _, losses = task.forward_train(x, y)
    sum(losses.values()).backward()  # gradients for gradient-based criteria
    apply_masks(model, layer_masks(prunable_layers(model), entrypoint, 0.5, use_grad=True))
    model.zero_grad(set_to_none=True)
    return task, x, y
