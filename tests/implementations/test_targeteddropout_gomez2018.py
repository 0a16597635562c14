"""Paper properties of targeted dropout (Gomez et al., 2018), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations.pruning.targeteddropout_gomez2018 import (
    Config,
    TargetedDropout,
    magnitude_prune,
    targeted_dropout,
    targets,
)


def test_targets_are_the_smallest_gamma_fraction_of_each_unit() -> None:
    weight = torch.tensor([[3.0, -1.0, 2.0, 0.5], [1.0, 1.0, 1.0, 1.0], [-4.0, 0.1, -0.2, 5.0]])
    expected = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)  # ties: lower index
    assert torch.equal(targets(weight, 0.5), expected)
    assert targets(weight, 0.7).sum(dim=1).tolist() == [2, 2, 2]  # floor(0.7 * 4) per row
    # unit targeting: the floor(gamma * N) rows with the smallest L2 norm (row norms 3.8, 2, 6.4)
    assert torch.equal(targets(weight, 0.34, mode="unit").all(dim=1), torch.tensor([False, True, False]))


def test_only_targets_are_dropped_with_probability_alpha() -> None:
    torch.manual_seed(0)
    weight = torch.randn(64, 200)
    candidates = targets(weight, 0.75)
    dropped = targeted_dropout(weight, gamma=0.75, alpha=0.5) == 0
    assert not (dropped & ~candidates).any()  # non-targets are never dropped
    assert abs(dropped[candidates].float().mean().item() - 0.5) < 0.02
    assert torch.equal(targeted_dropout(weight, 0.75, alpha=1.0) == 0, candidates)
    assert torch.equal(targeted_dropout(weight, 0.75, alpha=0.0), weight)
    again = targeted_dropout(weight, 0.75, alpha=0.5)
    survivors = again != 0
    assert torch.equal(again[survivors], weight[survivors])  # kept weights are not rescaled


def test_dropout_only_in_training_and_pruning_matches_the_targets() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    reference = [m.weight.detach().clone() for m in (model[0], model[2])]
    task = TargetedDropout(model, Config(gamma=0.5, alpha=1.0))
    x = torch.randn(4, 10)
    task.eval()
    plain = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    for layer, w, b in zip((plain[0], plain[2]), reference, (model[0].bias, model[2].bias), strict=True):
        layer.weight.data.copy_(w)
        layer.bias.data.copy_(b)
    assert torch.allclose(task(x), plain(x))  # eval mode: no dropout
    task.train()
    assert torch.equal(model[0].weight == 0, targets(reference[0], 0.5))  # alpha = 1 drops every target
    pruned = magnitude_prune(task.plain_model(), 0.5)
    assert torch.equal(pruned[0].weight == 0, targets(reference[0], 0.5))
    assert (pruned[2].weight == 0).sum(dim=1).tolist() == [4, 4, 4]


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.pruning.targeteddropout_gomez2018 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run targeteddropout_gomez2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"plain_pruned", "targeted_pruned", "dropconnect_pruned"} <= {row.name for row in result.rows}
    pruned = result.row("targeted_pruned")
    assert pruned.nonzero_params < 0.35 * pruned.params  # 75% of every layer's weights removed
    assert result.figures == ["results/figures/targeteddropout_gomez2018_pruning.png"]
    assert (tmp_path / "results" / "figures" / "targeteddropout_gomez2018_pruning.png").stat().st_size > 1000
