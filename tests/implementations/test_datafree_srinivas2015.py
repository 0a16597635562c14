"""Paper properties of data-free neuron merging (Srinivas & Babu, 2015), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations._models import MLP
from implementations.pruning.datafree_srinivas2015 import apply_merges, datafree_prune, merge_order, merge_saliency


def test_saliency_formula_and_first_merge_on_a_hand_example() -> None:
    incoming = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # W_0, W_1, W_2 (last column = bias)
    outgoing = torch.tensor([[1.0, 2.0, 0.0], [1.0, 0.0, 2.0]])  # <a_j^2> = 1, 2, 2
    expected = torch.tensor([[torch.inf, 2.0, 8.0], [1.0, torch.inf, 10.0], [4.0, 10.0, torch.inf]])
    assert torch.equal(merge_saliency(incoming, outgoing), expected)
    layer, head = nn.Linear(1, 3), nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(incoming[:, :1])
        layer.bias.copy_(incoming[:, 1])
        head.weight.copy_(outgoing)
    assert merge_order(layer, head, 2) == [(1, 0)]  # smallest s_{i,j}: delete neuron 0 into neuron 1
    new_layer, new_head = apply_merges(layer, head, [(1, 0)])
    assert torch.equal(new_head.weight, torch.tensor([[3.0, 0.0], [1.0, 2.0]]))  # a_1 + a_0, then a_2
    assert torch.equal(new_layer.weight.flatten(), torch.tensor([1.0, 0.0]))


def test_merging_identical_neurons_leaves_the_function_unchanged() -> None:
    torch.manual_seed(0)
    model = MLP(5, 3, hidden=(6,))
    with torch.no_grad():  # neurons 4 and 1 are exact twins (weights and bias)
        model.layers[0].weight[4] = model.layers[0].weight[1]
        model.layers[0].bias[4] = model.layers[0].bias[1]
    pruned = datafree_prune(model, [5])
    x = torch.randn(16, 5)
    assert pruned.layers[0].weight.shape == (5, 5) and pruned.head.weight.shape == (3, 5)
    assert torch.allclose(pruned(x), model(x), atol=1e-6)
    plain = datafree_prune(model, [5], surgery=False)  # deleting without surgery changes the outputs
    assert not torch.allclose(plain(x), model(x), atol=1e-3)


def test_two_hidden_layers_are_physically_shrunk_in_order() -> None:
    torch.manual_seed(0)
    model = MLP(8, 4, hidden=(10, 7))
    pruned = datafree_prune(model, [6, 3])
    shapes = [tuple(m.weight.shape) for m in (*pruned.layers, pruned.head)]
    assert shapes == [(6, 8), (3, 6), (4, 3)]
    assert sum(p.numel() for p in pruned.parameters()) == 6 * 9 + 3 * 7 + 4 * 4
    assert pruned(torch.randn(2, 8)).shape == (2, 4)


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.pruning.datafree_srinivas2015 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run datafree_srinivas2015 --quick",
            "environment": env,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    dense, merged = result.row("dense"), result.row("merge_77")
    assert merged.params == 77 * 65 + 10 * 77 + 10 and merged.extra["params_removed"] > 0.849
    assert merged.flops < 0.2 * dense.flops
    assert result.claim.reproduced == (dense.accuracy.mean - merged.accuracy.mean <= 2.0)


def test_conv_merge_of_duplicate_channels_is_exact() -> None:
    from implementations._models import CNN2d
    from implementations.pruning.datafree_srinivas2015 import conv_datafree_prune

    torch.manual_seed(0)
    model = CNN2d(1, 10, channels=(4, 6, 4)).eval()
    with torch.no_grad():
        for stage in model.stages:
            norm = next(m for m in stage if isinstance(m, torch.nn.BatchNorm2d))
            norm.running_mean.uniform_(-0.3, 0.3)
            norm.running_var.uniform_(0.5, 2.0)
            norm.bias.uniform_(-0.2, 0.2)
        # stage 2: channel 5 duplicates channel 1 after BN folding (twice the filter, twice the std)
        conv, norm = model.stages[1][1], model.stages[1][2]
        conv.weight[5] = 2.0 * conv.weight[1]
        norm.weight[5], norm.bias[5] = norm.weight[1], norm.bias[1]
        norm.running_mean[5] = 2.0 * norm.running_mean[1]
        norm.running_var[5] = 4.0 * (norm.running_var[1] + 1e-5) - 1e-5
    x = torch.randn(3, 1, 8, 8)
    small = conv_datafree_prune(model, 1 / 6).eval()  # floor(6 / 6) = 1 channel of stage 2 (and 0 of the others)
    assert [s[1].out_channels for s in small.stages[1:2]] == [5]
    assert torch.allclose(small(x), model(x), atol=1e-5)  # the duplicate was merged without changing the function
    plain = conv_datafree_prune(model, 1 / 6, surgery=False).eval()
    assert not torch.allclose(plain(x), model(x), atol=1e-3)
