"""Paper properties of ISTA batch-norm channel pruning (Ye et al., 2018), and the quick reproduction."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from implementations._models import build_model
from implementations.pruning.bnprune_ye2018 import (
    BNChannelPruning,
    Config,
    channel_costs,
    ista,
    replicate_padding,
    soft_threshold,
)


def _net(seed: int = 0, replicate: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("cnn2d", 10, (1, 8, 8), width=0.125)  # channels (4, 8, 16)
    with torch.no_grad():  # non-trivial BN statistics and shifts
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.bias.uniform_(-0.5, 1.0)
    return replicate_padding(model) if replicate else model


def test_soft_threshold_values() -> None:
    gamma = torch.tensor([0.5, -0.2, 0.05, -0.01, 0.0])
    assert torch.allclose(soft_threshold(gamma, 0.1), torch.tensor([0.4, -0.1, 0.0, 0.0, 0.0]))


def test_rescaling_trick_keeps_the_function() -> None:
    task = BNChannelPruning(_net(), (1, 8, 8))
    x = torch.randn(6, 1, 8, 8)
    task.eval()
    before = task(x)
    task.rescale(0.1)
    assert torch.allclose(task(x), before, atol=1e-5)
    assert torch.allclose(task.norms()[0].weight, 0.1 * torch.ones(4))


def test_removing_zero_scale_channels_is_exact_with_folding() -> None:
    x = torch.randn(6, 1, 8, 8)
    for replicate in (True, False):
        task = BNChannelPruning(_net(replicate=replicate), (1, 8, 8)).eval()
        with torch.no_grad():
            for norm, dead in zip(task.norms(), ([0, 2], [1, 5, 6], [3, 9, 10, 15]), strict=True):
                norm.weight[dead] = 0.0  # these channels now output the constant max(beta, 0)
        thin = task.pruned().eval()
        assert [m.num_features for m in thin.modules() if isinstance(m, torch.nn.BatchNorm2d)] == [2, 5, 12]
        error = (task(x) - thin(x)).abs().max().item()
        # exact with replicate padding; zero padding sees a different constant at the borders
        assert error < 1e-5 if replicate else error > 1e-3


def test_ista_hook_soft_thresholds_after_every_step() -> None:
    task = BNChannelPruning(_net(), (1, 8, 8), Config(sparsity=0.5, alpha=1.0)).train()
    costs = channel_costs(task.model, (1, 8, 8))
    # conv1: 1x3x3 filter on 8x8 + (8 filters x 3x3) of conv2 on 4x4; conv2: 4x9 on 4x4 + 16x9 on 2x2; conv3: 8x9x4 + 10
    assert costs == [9 * 64 + 8 * 9 * 16, 36 * 16 + 16 * 9 * 4, 72 * 4 + 10]
    assert abs(sum(task.rho) / 3 - 1) < 1e-9
    with torch.no_grad():
        task.norms()[0].weight.copy_(torch.tensor([0.01, 1.0, -0.02, 2.0]))
    opt = torch.optim.SGD(task.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    sum(task.forward_train(x, y)[1].values()).backward()
    expected = [
        soft_threshold(n.weight.detach() - 0.1 * n.weight.grad, 0.1 * 0.5 * rho)
        for n, rho in zip(task.norms(), task.rho, strict=True)
    ]
    plain = copy.deepcopy(task)
    with ista(task):
        opt.step()
    for norm, want in zip(task.norms(), expected, strict=True):
        assert torch.allclose(norm.weight, want, atol=1e-6)
    assert int((task.norms()[0].weight == 0).sum()) == 2  # the two small scales hit exactly zero
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    plain_opt.step()  # outside the context: no proximal step
    assert not torch.allclose(plain.norms()[0].weight, expected[0])


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.pruning.bnprune_ye2018 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run bnprune_ye2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert result.row("slim").flops <= result.row("ista").flops  # slimming cut to the ISTA network's budget
    assert result.row("ista").flops <= result.row("dense").flops
    assert result.figures == ["results/figures/bnprune_ye2018_accuracy.png"]
