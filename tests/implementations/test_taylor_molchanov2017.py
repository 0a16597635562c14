"""Paper properties of Molchanov et al. (2017) Taylor feature-map pruning, and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import torch

from implementations._models import build_model
from implementations.pruning._base import channel_units
from implementations.pruning.taylor_molchanov2017 import TaylorPruning, layer_normalise, taylor_scores


def test_score_is_abs_of_positional_mean_averaged_over_examples() -> None:
    activation = torch.tensor([[[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]], [[2.0, 0.0, 0.0], [4.0, 4.0, 4.0]]])  # (2, 2, 3)
    grad = torch.tensor([[[1.0, -1.0, 1.0], [0.5, 0.5, 0.5]], [[-3.0, 9.0, 9.0], [1.0, -1.0, 0.0]]])
    # channel 0: example 1 mean(1, -2, 3) = 2/3, example 2 mean(-6, 0, 0) = -2 -> (2/3 + 2) / 2
    # channel 1: example 1 mean(0.5, 0.5, 0.5) = 0.5, example 2 mean(4, -4, 0) = 0 (cancels) -> 0.25
    assert torch.allclose(taylor_scores(activation, grad), torch.tensor([4.0 / 3.0, 0.25]))
    assert torch.allclose(taylor_scores(torch.ones(3, 2), torch.tensor([[1.0, -2.0]] * 3)), torch.tensor([1.0, 2.0]))


def test_first_order_term_is_exact_for_a_linear_cost() -> None:
    # For C = sum_m w_m z_m, zeroing map z changes C by exactly -sum_m w_m z_m = -M * mean_m(dC/dz * z).
    z = torch.randn(1, 1, 5, requires_grad=True)
    w = torch.randn(5)
    cost = (z[0, 0] * w).sum()
    cost.backward()
    assert torch.allclose(5 * taylor_scores(z.detach(), z.grad), cost.detach().abs())


def test_layer_normalisation_and_global_pruning() -> None:
    scores = layer_normalise([torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.0, 2.0])])
    assert torch.allclose(scores[0], torch.tensor([0.6, 0.8])) and torch.allclose(scores[1], torch.tensor([0, 0, 1.0]))
    torch.manual_seed(0)
    task = TaylorPruning(build_model("cnn1d", 10, (1, 40), width=0.25))  # 8/16/16 maps
    x, y = torch.randn(16, 1, 40), torch.randint(0, 10, (16,))
    before = sum(p.weight.shape[0] for p, _ in channel_units(task.model)[0])
    model = task.prune(10, [(x, y)])
    widths = [p.weight.shape[0] for p, _ in channel_units(model)[0]]
    assert sum(widths) == before - 10 and min(widths) >= 1 and model(x).shape == (16, 10)


def test_dead_maps_are_the_ones_removed() -> None:
    torch.manual_seed(0)
    model = build_model("cnn1d", 10, (1, 40), width=0.25)  # 8/16/16 maps
    norm = model.stages[0][1]
    with torch.no_grad():  # maps 2 and 5 of stage 0 are dead: gamma 0, beta -1, so ReLU outputs 0 and z * dC/dz = 0
        norm.weight[[2, 5]] = 0.0
        norm.bias[[2, 5]] = -1.0
        norm.bias[[0, 1, 3, 4, 6, 7]] = 0.1 * torch.arange(1.0, 7.0)  # labels to track the kept maps
    x, y = torch.randn(16, 1, 40), torch.randint(0, 10, (16,))
    scores = TaylorPruning(model).scores([(x, y)])
    assert scores[0][2] == 0 and scores[0][5] == 0 and (scores[0][[0, 1, 3, 4, 6, 7]] > 0).all()
    pruned = TaylorPruning(model).prune(2, [(x, y)])
    assert [p.weight.shape[0] for p, _ in channel_units(pruned)[0]] == [6, 16, 16]
    assert torch.allclose(pruned.stages[0][1].bias.detach(), 0.1 * torch.arange(1.0, 7.0))  # maps 2 and 5 went


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.pruning.taylor_molchanov2017 import reproduce
    from kb.results import Result

    data = reproduce(make_context("quick", results_dir=tmp_path / "results", device="cpu"))
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    extra = {"profile": "quick", "command": "kb run taylor_molchanov2017 --quick", "environment": env}
    result = Result.model_validate({**data, **extra, "wall_time_s": 1.0, "created": "2025-01-01T00:00:00"})
    assert {"dense", "taylor", "weight", "random", "taylor_oneshot", "taylor_raw_oneshot"} == {
        r.name for r in result.rows
    }
    assert all(result.row(c).flops < result.row("dense").flops for c in ("taylor", "weight", "random"))
    assert result.row("taylor").extra["spearman_layer"] > result.row("random").extra["spearman_layer"]
