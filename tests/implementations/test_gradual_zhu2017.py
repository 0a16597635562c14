"""Paper properties of Zhu & Gupta (2017) gradual pruning, and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from implementations._models import build_model
from implementations.pruning.gradual_zhu2017 import Config, GradualPruning, gradual_sparsity


def test_cubic_schedule_values() -> None:
    cfg = Config(final_sparsity=0.8, initial_sparsity=0.0, begin_step=10, pruning_steps=4, frequency=5)
    assert gradual_sparsity(0, cfg) == 0.0 and gradual_sparsity(10, cfg) == 0.0
    # halfway (k = 2 of 4): s_f + (s_i - s_f) (1 - 1/2)^3 = 0.8 - 0.8 / 8
    assert abs(gradual_sparsity(20, cfg) - 0.7) < 1e-12
    assert gradual_sparsity(24, cfg) == gradual_sparsity(20, cfg)  # constant between pruning steps
    assert gradual_sparsity(30, cfg) == 0.8 and gradual_sparsity(1000, cfg) == 0.8
    values = [gradual_sparsity(t, cfg) for t in range(0, 40)]
    assert values == sorted(values)
    increments = [gradual_sparsity(10 + 5 * (k + 1), cfg) - gradual_sparsity(10 + 5 * k, cfg) for k in range(4)]
    assert increments == sorted(increments, reverse=True)  # prunes fast first, slowly at the end


def test_training_reaches_exact_final_sparsity_with_shrinking_masks() -> None:
    torch.manual_seed(0)
    model = build_model("cnn1d", 10, (1, 40), width=0.25)
    task = GradualPruning(model, Config(final_sparsity=0.75, begin_step=2, pruning_steps=3, frequency=2))
    params = {id(p) for p in task.parameters()}
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1)
    x, y = torch.randn(16, 1, 40), torch.randint(0, 10, (16,))
    previous = None
    for _ in range(12):
        _, losses = task.forward_train(x, y)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        pruned = torch.cat([(m.weight == 0).flatten() for _, m in task.layers])
        if previous is not None:
            assert bool(pruned[previous].all())  # a masked weight never comes back
        previous = pruned
    assert {id(p) for p in task.parameters()} == params  # masks were updated in place
    for _, module in task.layers:
        assert int((module.weight == 0).sum()) == int(0.75 * module.weight.numel())
    first = model.stages[0][0]
    assert not hasattr(first, "weight_mask") and bool((first.weight != 0).all())  # first conv stays dense
    assert int(task.step) == 12 and isinstance(task.layers[-1][1], nn.Linear)


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.pruning.gradual_zhu2017 import reproduce
    from kb.results import Result

    data = reproduce(make_context("quick", results_dir=tmp_path / "results", device="cpu"))
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    extra = {"profile": "quick", "command": "kb run gradual_zhu2017 --quick", "environment": env}
    result = Result.model_validate({**data, **extra, "wall_time_s": 1.0, "created": "2025-01-01T00:00:00"})
    for small, sparse in (("small_w50", "sparse_w50"), ("small_w25", "sparse_w25")):
        # equal non-zero parameter counts (up to topk flooring), but the sparse model is the large one
        assert abs(result.row(sparse).nonzero_params - result.row(small).nonzero_params) <= 5
        assert result.row(sparse).params > 3 * result.row(small).params
