"""Paper properties of Liu et al. (2017) network slimming, and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from implementations._models import build_model
from implementations.pruning._base import mask_channels
from implementations.pruning.slimming_liu2017 import Config, NetworkSlimming, scale_penalty, slimming_keep


def test_penalty_and_its_subgradient() -> None:
    gammas = [torch.tensor([0.5, -2.0]), torch.tensor([0.0, 1.5, -0.1])]
    assert torch.isclose(scale_penalty(gammas, "l1"), torch.tensor(4.1))
    assert torch.isclose(scale_penalty(gammas, "l2"), torch.tensor(0.25 + 4.0 + 2.25 + 0.01))
    assert scale_penalty(gammas, "none").item() == 0.0
    model = build_model("cnn1d", 10, (1, 40), width=0.125)
    task = NetworkSlimming(model, Config(sparsity=0.1))
    with torch.no_grad():
        model.stages[0][1].weight.copy_(torch.tensor([1.0, -1.0, 2.0, -0.5]))
    _, losses = task.forward_train(torch.randn(4, 1, 40), torch.tensor([0, 1, 2, 3]))
    assert torch.isclose(losses["gamma_penalty"], 0.1 * sum(g.abs().sum() for g in task.gammas()))
    losses["gamma_penalty"].backward()
    assert torch.equal(model.stages[0][1].weight.grad, 0.1 * torch.tensor([1.0, -1.0, 1.0, -1.0]))  # lambda sign(g)


def test_global_threshold_and_no_empty_layer() -> None:
    gammas = [torch.tensor([0.1, 0.9, 0.05]), torch.tensor([0.5, -0.01, 0.3])]
    keep = slimming_keep(gammas, 0.5)  # drop the 3 smallest |gamma| network-wide: 0.01, 0.05, 0.1
    assert [k.tolist() for k in keep] == [[1], [0, 2]]
    keep = slimming_keep([torch.tensor([0.01, 0.02]), torch.tensor([1.0, 2.0])], 0.5)
    assert [k.tolist() for k in keep] == [[1], [0, 1]]  # layer 0 would be empty: its largest gamma survives


def test_per_layer_counts_keep_each_layers_largest_gammas() -> None:
    model = build_model("cnn1d", 10, (1, 40), width=0.125)  # 4/8/8 channels
    task = NetworkSlimming(model)
    with torch.no_grad():
        for stage in model.stages:
            stage[1].weight.copy_(torch.linspace(-1.0, 1.0, stage[1].num_features))
    slim = task.prune(counts=[1, 2, 3])
    widths = [m.num_features for m in slim.modules() if isinstance(m, nn.BatchNorm1d)]
    assert widths == [1, 2, 3]
    # |gamma| of layer 0 is (1, 1/3, 1/3, 1): the stable order keeps index 3 (index 0 ties but goes first)
    assert torch.equal(slim.stages[0][1].weight.detach(), torch.tensor([1.0]))
    # layer 2 keeps channels 0, 6, 7 (|gamma| 1, 5/7, 1), in index order
    assert torch.allclose(slim.stages[2][1].weight.detach().abs(), torch.tensor([1.0, 5 / 7, 1.0]))


def test_slimmed_network_is_smaller_and_matches_gamma_masking() -> None:
    torch.manual_seed(0)
    model = build_model("cnn1d", 10, (1, 40), width=0.25)  # 8/16/16 channels
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.weight.data.uniform_(-1, 1)
            m.bias.data.normal_()
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    task = NetworkSlimming(model, Config(prune_fraction=0.5))
    slim = task.prune().eval()
    assert sum(m.num_features for m in slim.modules() if isinstance(m, nn.BatchNorm1d)) == 20  # 40 -> 20 channels
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    keep = slimming_keep(task.gammas(), 0.5)
    x = torch.randn(6, 1, 40)
    mask_channels(model, keep)
    assert torch.allclose(model(x), slim(x), atol=1e-5)


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.pruning.slimming_liu2017 import reproduce
    from kb.results import Result

    data = reproduce(make_context("quick", results_dir=tmp_path / "results", device="cpu"))
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    extra = {"profile": "quick", "command": "kb run slimming_liu2017 --quick", "environment": env}
    result = Result.model_validate({**data, **extra, "wall_time_s": 1.0, "created": "2025-01-01T00:00:00"})
    assert result.row("slim_l1").params < result.row("trained_none").params
    assert result.row("slim_l1").flops < result.row("trained_none").flops
    assert len(result.answers) == 2 and result.figures == ["results/figures/slimming_liu2017_accuracy.png"]
