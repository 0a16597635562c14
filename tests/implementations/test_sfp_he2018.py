"""Paper properties of Soft Filter Pruning (He et al., 2018), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations._models import CNN1d
from implementations.pruning._base import prune_channels
from implementations.pruning.sfp_he2018 import (
    Config,
    SoftFilterPruning,
    bn_folded_norms,
    filter_norms,
)


def _net(seed: int = 0) -> CNN1d:
    torch.manual_seed(seed)
    return CNN1d(1, 40, 10, channels=(4, 6, 4))


def test_the_smallest_l2_filters_are_zeroed_exactly() -> None:
    model = _net()
    with torch.no_grad():  # first layer: filter norms 3, 1, 4, 2 (one weight per filter carries the norm)
        model.stages[0][0].weight.zero_()
        model.stages[0][0].weight[:, 0, 2] = torch.tensor([3.0, 1.0, 4.0, 2.0])
    assert filter_norms(model.stages[0][0].weight).tolist() == [3.0, 1.0, 4.0, 2.0]
    task = SoftFilterPruning(model, Config(rate=0.5, score="raw"))
    task.prune_epoch()
    assert task.zeroed[0].tolist() == [False, True, False, True]  # floor(0.5 * 4) = 2 smallest
    assert [int(z.sum()) for z in task.zeroed] == [2, 3, 2]
    for stage, zeroed in zip(model.stages, task.zeroed, strict=True):
        norms = filter_norms(stage[0].weight)
        assert (norms[zeroed] == 0).all() and (norms[~zeroed] > 0).all()


def test_bn_folded_score_ranks_by_the_filter_the_next_layer_sees() -> None:
    model = _net()
    conv, norm = model.stages[0][0], model.stages[0][1]
    with torch.no_grad():  # raw norms 3, 1, 4, 2; BN scales gamma/sqrt(var+eps) = 1, 8, 0.5, 1 (eps = 1e-5)
        conv.weight.zero_()
        conv.weight[:, 0, 2] = torch.tensor([3.0, 1.0, 4.0, 2.0])
        norm.weight.copy_(torch.tensor([1.0, -4.0, 1.0, 2.0]))
        norm.running_var.copy_(torch.tensor([1.0, 0.25, 4.0, 4.0]) - norm.eps)
    assert torch.allclose(bn_folded_norms(conv, norm), torch.tensor([3.0, 8.0, 2.0, 2.0]))
    task = SoftFilterPruning(model, Config(rate=0.5))  # default score: BN-folded
    task.prune_epoch()
    # folded norms 3, 8, 2, 2: the two 2s go (the raw norm would have dropped filters 1 and 3)
    assert task.zeroed[0].tolist() == [False, False, True, True]


@pytest.mark.parametrize("hard", [False, True])
def test_soft_pruned_filters_keep_training_hard_ones_do_not(hard: bool) -> None:
    task = SoftFilterPruning(_net(), Config(rate=0.5, hard=hard))
    with torch.no_grad():
        for stage in task.model.stages:
            stage[1].bias.fill_(0.1)  # beta > 0: the ReLU lets the zeroed channel's gradient through
    task.prune_epoch()
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1)
    x, y = torch.randn(16, 1, 40), torch.randint(0, 10, (16,))
    for _ in range(2):
        optimizer.zero_grad()
        task.forward_train(x, y)[1]["ce"].backward()
        optimizer.step()
    norms = filter_norms(task.model.stages[1][0].weight)[task.zeroed[1]]
    assert (norms > 0).all() if not hard else (norms == 0).all()


def test_removed_filters_give_a_thinner_net_with_the_masked_outputs() -> None:
    model = _net()
    model.eval()
    with torch.no_grad():  # non-trivial BN statistics
        for stage in model.stages:
            stage[1].running_mean.uniform_(-0.5, 0.5)
            stage[1].running_var.uniform_(0.5, 2.0)
    keep = [torch.tensor([0, 2, 3]), torch.tensor([1, 4]), torch.tensor([0, 1, 3])]
    thin = prune_channels(model, keep)
    assert [tuple(s[0].weight.shape) for s in thin.stages] == [(3, 1, 5), (2, 3, 5), (3, 2, 5)]
    assert thin.head.in_features == 3 * 5 and thin.stages[0][1].running_mean.shape == (3,)

    def zero_channels(stage_index: int) -> callable:
        def hook(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
            mask = torch.zeros(output.shape[1])
            mask[keep[stage_index]] = 1.0
            return output * mask[None, :, None]

        return hook

    handles = [stage.register_forward_hook(zero_channels(i)) for i, stage in enumerate(model.stages)]
    x = torch.randn(5, 1, 40)
    assert torch.allclose(thin(x), model(x), atol=1e-5)
    for handle in handles:
        handle.remove()
    assert not torch.allclose(thin(x), model(x), atol=1e-3)
    # SoftFilterPruning.pruned() removes the zeroed filters (with their BN scale/shift) the same way.
    task = SoftFilterPruning(_net(), Config(rate=0.5))
    task.prune_epoch()
    task.eval()
    small = task.pruned()
    assert [s[0].out_channels for s in small.stages] == [2, 3, 2]
    with torch.no_grad():  # the masked model: zero filters plus their BN scale and shift
        for stage, zeroed in zip(task.model.stages, task.zeroed, strict=True):
            stage[1].weight[zeroed] = 0.0
            stage[1].bias[zeroed] = 0.0
    assert torch.allclose(small(x), task(x), atol=1e-5)


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._measure import beats
    from implementations._runner import make_context
    from implementations.pruning.sfp_he2018 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run sfp_he2018 --quick",
            "environment": env,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    dense, sfp, hard = result.row("dense"), result.row("sfp"), result.row("hard")
    assert sfp.params < dense.params and sfp.flops < 0.7 * dense.flops and sfp.params == hard.params
    assert result.row("sfp_raw").params == sfp.params
    assert sfp.latency_ms is not None and sfp.extra["cpu_ms_batch256"] > 0
    assert result.claim.reproduced == (
        sfp.accuracy.mean >= dense.accuracy.mean - 1 and beats(sfp.accuracy.values, hard.accuracy.values)
    )
