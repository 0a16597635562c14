"""Properties of the survey illustration (Cheng et al., 2018): Pareto front, low-rank factors, and the quick run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations.other.survey_cheng2018 import low_rank_mlp, pareto_front


def test_pareto_front_keeps_only_non_dominated_points() -> None:
    points = [(100.0, 90.0), (50.0, 85.0), (60.0, 80.0), (10.0, 70.0), (10.0, 60.0), (200.0, 90.0)]
    # (60, 80) is beaten by (50, 85); (10, 60) by (10, 70); (200, 90) by (100, 90)
    assert pareto_front(points) == [0, 1, 3]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # ties dominate nobody


def test_low_rank_factors_have_r_times_m_plus_n_weights_and_rank_r() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    factored = low_rank_mlp(model, rank=12)
    first, second = factored[2][0], factored[2][1]
    assert first.weight.shape == (12, 32) and second.weight.shape == (32, 12)
    assert first.weight.numel() + second.weight.numel() == 12 * (32 + 32)
    assert isinstance(factored[4], nn.Linear)  # min(32, 10) <= r: left alone
    assert isinstance(factored[0], nn.Sequential)  # min(40, 32) > r: factored
    product = second.weight @ first.weight  # (32, 32)
    assert torch.linalg.matrix_rank(product) == 12
    # Eckart-Young: the error is the energy of the dropped singular values
    s = torch.linalg.svdvals(model[2].weight.detach())
    error = (product - model[2].weight).norm()
    assert error.item() == pytest.approx(s[12:].norm().item(), rel=1e-4)
    full = low_rank_mlp(model, rank=40)  # no layer has min(m, n) > 40: unchanged
    x = torch.randn(3, 40)
    assert torch.allclose(full(x), model(x))


def test_quick_illustration_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.other.survey_cheng2018 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    extra = {"profile": "quick", "command": "kb run survey_cheng2018 --quick", "environment": env}
    result = Result.model_validate({**data, **extra, "wall_time_s": 1.0, "created": "2025-01-01T00:00:00"})
    base = result.row("baseline")
    for family in ("pruning", "low_rank", "int8", "distillation"):
        assert result.row(family).bytes < base.bytes / 3
    assert result.row("int8").bits == 8.0 and result.row("pruning").nonzero_params < base.nonzero_params / 5
    assert (tmp_path / "results" / "figures" / "survey_cheng2018_pareto.png").stat().st_size > 1000
