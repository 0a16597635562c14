"""Paper properties of Li et al. (2017) L1-norm filter pruning, the channel surgery, and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations._models import build_model
from implementations.pruning._base import channel_units, keep_top, mask_channels, prune_channels
from implementations.pruning.l1filter_li2017 import L1FilterPruning, l1_filter_scores


def _randomise_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.weight.data.normal_()
            m.bias.data.normal_()
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_smallest_l1_filters_are_removed() -> None:
    weight = torch.zeros(4, 2, 3)
    weight[0] = 1.0  # L1 = 6
    weight[1, 0, 0] = -0.5  # L1 = 0.5
    weight[2] = -2.0  # L1 = 12
    weight[3, 1] = 0.1  # L1 = 0.3
    assert torch.allclose(l1_filter_scores(weight), torch.tensor([6.0, 0.5, 12.0, 0.3]))
    assert keep_top(l1_filter_scores(weight), 2).tolist() == [0, 2]
    model = build_model("cnn1d", 10, (1, 40), width=0.125)  # channels 4/8/8
    with torch.no_grad():
        model.stages[0][0].weight.copy_(torch.tensor([1.0, -3.0, 0.2, 2.0])[:, None, None].expand(4, 1, 5))
    pruned = L1FilterPruning(model).prune((0.5, 0.0, 0.0))
    # filters 0 (L1 = 5) and 2 (L1 = 1) go; filters 1 and 3 survive, and conv2 keeps only their input kernels
    assert torch.equal(pruned.stages[0][0].weight, model.stages[0][0].weight[[1, 3]])
    assert torch.equal(pruned.stages[1][0].weight, model.stages[1][0].weight[:, [1, 3]])
    assert torch.equal(pruned.stages[0][1].running_mean, model.stages[0][1].running_mean[[1, 3]])


def test_shapes_after_physical_removal() -> None:
    model = build_model("cnn1d", 10, (1, 40), width=0.5)  # channels 16/32/32, length 40 -> 20 -> 10 -> 5
    pruned = L1FilterPruning(model).prune((0.5, 0.25, 0.75))
    (c1, b1), (c2, b2), (c3, b3) = channel_units(pruned)[0]
    assert (c1.weight.shape, c2.weight.shape, c3.weight.shape) == ((8, 1, 5), (24, 8, 5), (8, 24, 5))
    assert (c1.out_channels, c2.in_channels, c3.out_channels, b3.num_features) == (8, 8, 8, 8)
    assert pruned.head.weight.shape == (10, 8 * 5) and pruned.head.in_features == 40
    assert pruned(torch.randn(3, 1, 40)).shape == (3, 10)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "shape"), [("cnn1d", (1, 40)), ("cnn2d", (1, 8, 8)), ("mlp", (40,))])
def test_pruned_model_equals_masked_model(name: str, shape: tuple[int, ...]) -> None:
    model = _randomise_bn(build_model(name, 10, shape, width=0.25))
    units, _ = channel_units(model)
    gen = torch.Generator().manual_seed(0)
    keep = [keep_top(torch.rand(p.weight.shape[0], generator=gen), p.weight.shape[0] // 2) for p, _ in units]
    x = torch.randn(5, *shape)
    small = prune_channels(model, keep).eval()
    reference = model(x)
    mask_channels(model, keep)
    removed = [sorted(set(range(p.weight.shape[0])) - set(k.tolist())) for (p, _), k in zip(units, keep, strict=True)]
    assert all(float(p.weight.detach()[r].abs().sum()) == 0.0 for (p, _), r in zip(units, removed, strict=True))
    assert torch.allclose(model(x), small(x), atol=1e-5)
    assert not torch.allclose(model(x), reference, atol=1e-3)  # masking really changed the network


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.pruning.l1filter_li2017 import reproduce
    from kb.results import Result

    data = reproduce(make_context("quick", results_dir=tmp_path / "results", device="cpu"))
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    extra = {"profile": "quick", "command": "kb run l1filter_li2017 --quick", "environment": env}
    result = Result.model_validate({**data, **extra, "wall_time_s": 1.0, "created": "2025-01-01T00:00:00"})
    assert {"dense", "l1", "random", "scratch"} <= {row.name for row in result.rows}
    assert result.row("l1").flops < result.row("dense").flops and result.row("l1").params < result.row("dense").params
    assert result.answers[0].question.startswith("Is the L1 norm of a filter")
    assert (tmp_path / "results" / "figures" / "l1filter_li2017_sensitivity.png").stat().st_size > 1000
