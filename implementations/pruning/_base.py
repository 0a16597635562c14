r"""Pruning family contract: score, mask, fine-tune, (optionally) physically remove.

A pruning paper module exports a score function `<criterion>_scores(weight, grad=None) -> Tensor` of the weight's
shape (higher = more important) and/or a structured method. Masks go through `torch.nn.utils.prune`, so a pruned
layer computes with $W \odot M$ and the mask survives `state_dict()`. For a sparsity $s$ over $n$ scores,
`topk_mask` zeroes exactly $\lfloor s n \rfloor$ entries: the ones with the smallest scores (ties broken by index).

Channel surgery for structured methods on the zoo's MLP, CNN1d and CNN2d: `channel_units` lists the removable
stages, `mask_channels` zeroes channels through prune masks, and `prune_channels` returns a physically smaller copy
that computes what the masked model computes. `size_rows` measures rows (sizes, FLOPs, interleaved latency).

`smoke_task(entrypoint)` adapts a paper's entry point to the harness contract for the generic smoke test: a class
or function may define its own `smoke_task()`; a plain score function gets a tiny MLP pruned to 50% per layer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from implementations._harness import Supervised
from implementations._models import MLP, CNN1d, CNN2d, build_model

__all__ = [
    "PRUNABLE",
    "apply_masks",
    "channel_units",
    "global_masks",
    "keep_top",
    "layer_masks",
    "mask_channels",
    "prunable_layers",
    "prune_channels",
    "remove_masks",
    "size_rows",
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
    # floor with a tolerance: 0.29 * 100 is 28.999999999999996 in floating point and must give 29
    n_prune = math.floor(sparsity * flat.numel() + 1e-9)
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
    """Prune each layer to `sparsity` on its own (local masking); already-pruned weights stay pruned.

    If `sparsity` is below a layer's current sparsity, the old mask is kept as it is (masks never grow back).
    """
    masks = {}
    for name, module in layers:
        weight = _weight(module)
        scores = score_fn(weight.detach(), weight.grad if use_grad else None)
        old = getattr(module, "weight_mask", None)
        mask = topk_mask(_exclude_pruned(scores, old), sparsity)
        masks[name] = mask if old is None else mask * old.to(mask.dtype)  # masks only shrink
    return masks


def _exclude_pruned(scores: Tensor, old: Tensor | None) -> Tensor:
    r"""Scores with already-pruned entries set to $-\infty$, so they are the first to be pruned again."""
    if old is None:
        return scores
    return torch.where(old.bool(), scores, torch.full_like(scores, -torch.inf))


def global_masks(
    layers: Iterable[tuple[str, nn.Module]], score_fn: ScoreFn, sparsity: float, use_grad: bool = False
) -> dict[str, Tensor]:
    """One threshold across all layers (global masking): scores compete across layers.

    Already-pruned weights stay pruned, also when `sparsity` is below the current one.
    """
    layers = list(layers)
    all_scores = []
    for _, module in layers:
        weight = _weight(module)
        scores = score_fn(weight.detach(), weight.grad if use_grad else None)
        all_scores.append(_exclude_pruned(scores, getattr(module, "weight_mask", None)).flatten())
    mask = topk_mask(torch.cat(all_scores), sparsity)
    out, start = {}, 0
    for (name, module), scores in zip(layers, all_scores, strict=True):
        layer_mask = mask[start : start + scores.numel()].view_as(_weight(module))
        old = getattr(module, "weight_mask", None)
        out[name] = layer_mask if old is None else layer_mask * old.to(layer_mask.dtype)
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


def _folded(model: nn.Module) -> nn.Module:
    """A copy of `model` with every `torch.nn.utils.prune` mask folded into its parameter (same outputs)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return model


def size_rows(
    models: dict[str, nn.Module], input_shape: tuple[int, ...] | list[int], profile: str = "default"
) -> dict[str, dict]:
    """Per model, `_measure.model_row` (bytes = min(dense fp32, sparse value + int32 index)) with CPU latency at batch
    1 (`latency_ms`) and batch 256 (`extra["latency_ms_batch256"]`), plus `extra["sparse_bytes"]`.

    Latencies are the fastest of interleaved rounds over all `models` (`_measure.interleaved_latency`), so rows are
    timed under the same conditions on a shared CPU; the quick profile uses one round.
    """
    from implementations._measure import interleaved_latency, model_row, sparse_bytes

    rounds = 1 if profile == "quick" else 3
    folded = {name: _folded(model) for name, model in models.items()}  # no mask hooks in the timed forward pass
    single = interleaved_latency(folded, input_shape, rounds=rounds)
    batched = interleaved_latency(folded, input_shape, batch_size=256, rounds=rounds)
    rows = {}
    for name, model in models.items():
        row = model_row(model, input_shape)
        row["latency_ms"] = single[name]
        row["extra"] = {"latency_ms_batch256": batched[name], "sparse_bytes": sparse_bytes(model)}
        rows[name] = row
    return rows


def keep_top(scores: Tensor, n_keep: int) -> Tensor:
    """Sorted indices of the `n_keep` highest scores (among ties the lower index is removed first)."""
    order = torch.sort(scores.detach(), stable=True).indices  # ascending
    return order[scores.numel() - n_keep :].sort().values


# ---------------------------------------------------------------------------------------------------------------------
# Channel surgery on the `_models` networks (MLP neurons, CNN1d/CNN2d conv channels)
# ---------------------------------------------------------------------------------------------------------------------


def channel_units(model: nn.Module) -> tuple[list[tuple[nn.Module, nn.Module | None]], nn.Linear]:
    """`([(producer, batch_norm_or_None), ...], head)`: one entry per hidden stage whose outputs can be removed."""
    if isinstance(model, MLP):
        return [(layer, None) for layer in model.layers], model.head
    if isinstance(model, CNN1d | CNN2d):
        units = []
        for stage in model.stages:
            conv = next(m for m in stage.modules() if isinstance(m, nn.Conv1d | nn.Conv2d))
            norm = next((m for m in stage.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)), None)
            units.append((conv, norm))
        return units, model.head
    raise TypeError(f"channel surgery supports MLP, CNN1d and CNN2d, not {type(model).__name__}")


def _fold_masks(model: nn.Module) -> None:
    """Make every `torch.nn.utils.prune` re-parametrisation permanent (any parameter name, not only `weight`)."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)


def _select(module: nn.Module, name: str, dim: int, index: Tensor) -> None:
    tensor = getattr(module, name)
    if tensor is None:
        return
    kept = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
    setattr(module, name, nn.Parameter(kept) if isinstance(tensor, nn.Parameter) else kept)


def _sync_shape(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.Conv1d | nn.Conv2d):
        module.out_channels, module.in_channels = module.weight.shape[:2]
    else:  # batch norm
        module.num_features = module.weight.shape[0]


def prune_channels(model: nn.Module, keep: Sequence[Tensor | None]) -> nn.Module:
    """A physically smaller copy of `model` that keeps only the channels `keep[i]` of hidden stage `i`.

    Removes rows of the producer (weight, bias), entries of its batch norm (gamma, beta, running stats), and the
    matching input channels of the next layer, or the matching `C x L` input columns of a flattening head.

    Args:
        model: An MLP, CNN1d or CNN2d (masks from `torch.nn.utils.prune` are folded in first).
        keep: Per hidden stage, the channel indices to keep, or None to keep the stage whole.
    """
    model = copy.deepcopy(model)
    _fold_masks(model)
    units, head = channel_units(model)
    for i, index in enumerate(keep):
        if index is None:
            continue
        index = torch.as_tensor(index, dtype=torch.long).sort().values  # (C_keep,)
        producer, norm = units[i]
        n_out = producer.weight.shape[0]
        for name in ("weight", "bias"):
            _select(producer, name, 0, index)
        _sync_shape(producer)
        if norm is not None:
            for name in ("weight", "bias", "running_mean", "running_var"):
                _select(norm, name, 0, index)
            _sync_shape(norm)
        consumer = units[i + 1][0] if i + 1 < len(units) else head
        if consumer is head:  # CNN1d flattens (C, L) channel-major into the head: column c*L + l
            per = head.in_features // n_out
            index = (index[:, None] * per + torch.arange(per)[None, :]).flatten()  # (C_keep * L,)
        _select(consumer, "weight", 1, index)
        _sync_shape(consumer)
    return model


def mask_channels(model: nn.Module, keep: Sequence[Tensor | None]) -> None:
    r"""Zero, in place and through `torch.nn.utils.prune` masks, every channel not in `keep[i]`.

    The producer's rows and bias, and the batch norm's $\gamma$ and $\beta$ are masked, so a removed channel
    outputs exactly 0 after the ReLU and the masked model computes what `prune_channels` computes.
    """
    units, _ = channel_units(model)
    for (producer, norm), index in zip(units, keep, strict=False):
        if index is None:
            continue
        weight = producer.weight
        alive = torch.zeros(weight.shape[0], device=weight.device)
        alive[torch.as_tensor(index, dtype=torch.long)] = 1.0  # (C,)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        prune.custom_from_mask(producer, "weight", alive.view(shape).expand_as(weight).clone())
        for module, name in ((producer, "bias"), (norm, "weight"), (norm, "bias")):
            if module is not None and getattr(module, name, None) is not None:
                prune.custom_from_mask(module, name, alive.clone())


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
