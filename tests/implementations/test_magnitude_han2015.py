"""Paper properties of Han et al. (2015) magnitude pruning, and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from implementations.pruning._base import apply_masks, global_masks, layer_masks, prunable_layers, sparsity, topk_mask
from implementations.pruning.magnitude_han2015 import iterative_sparsities, magnitude_scores, weight_penalty


def test_exact_sparsity_and_the_smallest_weights_go() -> None:
    layer = nn.Linear(4, 8)
    with torch.no_grad():
        layer.weight.copy_(
            torch.arange(32, dtype=torch.float32).view(8, 4) * torch.tensor([1.0, -1.0]).repeat(16).view(8, 4)
        )
    model = nn.Sequential(layer)
    apply_masks(model, layer_masks(prunable_layers(model), magnitude_scores, 0.75))
    assert int((layer.weight == 0).sum()) == 24 and sparsity(model) == 0.75
    survivors = layer.weight[layer.weight != 0].abs()
    assert sorted(survivors.tolist()) == [float(v) for v in range(24, 32)]  # the 8 largest magnitudes survive


def test_iterative_schedule_reaches_target_and_masks_only_shrink() -> None:
    steps = iterative_sparsities(0.9, 3)
    assert steps[-1] == 0.9 and len(steps) == 3
    kept = [1.0] + [1.0 - s for s in steps]
    ratios = [kept[i + 1] / kept[i] for i in range(3)]
    assert max(ratios) - min(ratios) < 1e-9  # every step removes the same share of the survivors
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    previous = None
    for s in steps:
        apply_masks(model, layer_masks(prunable_layers(model), magnitude_scores, s))
        with torch.no_grad():  # retraining moves the surviving weights; pruned ones must stay pruned
            for _, module in prunable_layers(model):
                module.weight_orig.add_(torch.randn_like(module.weight_orig))
        zeros = torch.cat([(m.weight == 0).flatten() for _, m in prunable_layers(model)])
        if previous is not None:
            assert bool(zeros[previous].all())
        previous = zeros
    assert abs(sparsity(model) - 0.9) < 0.01


def test_topk_mask_count_is_exact_despite_float_rounding() -> None:
    scores = torch.arange(100.0)
    assert int((topk_mask(scores, 0.29) == 0).sum()) == 29  # 0.29 * 100 = 28.999999999999996 in floating point
    assert int((topk_mask(torch.arange(1000.0), 0.57) == 0).sum()) == 570
    assert int((topk_mask(scores, 0.295) == 0).sum()) == 29  # still a floor


def test_lowering_the_sparsity_never_revives_pruned_weights() -> None:
    torch.manual_seed(0)
    for masks_fn in (layer_masks, global_masks):
        layer = nn.Linear(10, 10)
        model = nn.Sequential(layer)
        apply_masks(model, masks_fn(prunable_layers(model), magnitude_scores, 0.9))
        first = layer.weight_mask.clone()
        with torch.no_grad():
            layer.weight_orig.mul_(-1.0).add_(0.5)  # new magnitudes: the old ranking no longer holds
        apply_masks(model, masks_fn(prunable_layers(model), magnitude_scores, 0.5))
        assert int((layer.weight_mask == 0).sum()) == 90  # 90 zeros stay, not 50
        assert bool((layer.weight_mask <= first).all())


def test_weight_penalty_counts_weights_not_biases() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        model[2].weight.copy_(torch.tensor([[-3.0, 1.0]]))
        model[0].bias.fill_(100.0)
    assert weight_penalty(model, 1).item() == 1.0 + 2.0 + 0.5 + 3.0 + 1.0
    assert weight_penalty(model, 2).item() == 1.0 + 4.0 + 0.25 + 9.0 + 1.0


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.pruning.magnitude_han2015 import reproduce
    from kb.results import Result

    data = reproduce(make_context("quick", results_dir=tmp_path / "results", device="cpu"))
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    extra = {"profile": "quick", "command": "kb run magnitude_han2015 --quick", "environment": env}
    result = Result.model_validate({**data, **extra, "wall_time_s": 1.0, "created": "2025-01-01T00:00:00"})
    dense, pruned = result.row("dense_l2"), result.row("iterative")
    assert pruned.nonzero_params < dense.nonzero_params / 8 and pruned.params == dense.params
    assert len(result.answers) == 3 and result.answers[1].question.startswith("How much does iterative")
    assert (tmp_path / "results" / "figures" / "magnitude_han2015_l1_l2.png").stat().st_size > 1000
