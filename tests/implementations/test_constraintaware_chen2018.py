"""Paper properties of constraint-aware compression (Chen et al., 2018), and the quick reproduction."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from implementations._models import CNN1d
from implementations.automl.constraintaware_chen2018 import (
    Config,
    ConstraintAwareCompression,
    constrained_ei,
    cooling_schedule,
)


def test_cooling_schedules_start_at_p0_and_end_at_the_target() -> None:
    cfg = Config(cooling_steps=10)
    for kind in ("linear", "exponential"):
        g = [cooling_schedule(t, replace(cfg, cooling=kind), 1.0, 0.2) for t in range(15)]
        assert math.isclose(g[0], 1.0) and math.isclose(g[10], 0.2) and g[14] == pytest.approx(0.2)
        assert all(a > b for a, b in zip(g[:10], g[1:11], strict=True))  # tightens monotonically
    lin = cooling_schedule(5, replace(cfg, cooling="linear"), 1.0, 0.2)
    exp = cooling_schedule(5, replace(cfg, cooling="exponential"), 1.0, 0.2)
    assert lin == pytest.approx(0.6) and exp < lin  # the exponential schedule tightens early
    assert cooling_schedule(0, replace(cfg, cooling="none"), 1.0, 0.2) == 0.2
    notes = [cooling_schedule(t, replace(cfg, cooling="notes"), 1.0, 0.2) for t in (0, 10)]
    assert notes == [pytest.approx(1.2), pytest.approx(0.2 + math.e)]  # the notes' form: never reaches c


def test_constrained_expected_improvement() -> None:
    prob = np.array([0.3, 0.9])
    assert np.array_equal(constrained_ei(np.zeros(2), np.ones(2), None, prob), prob)  # no feasible point yet
    ei = constrained_ei(np.array([1.0, 1.0]), np.array([2.0, 2.0]), 1.0, np.array([1.0, 0.5]))
    assert ei[0] == pytest.approx(2.0 / math.sqrt(2 * math.pi))  # mu = a*: EI = sigma * phi(0)
    assert ei[1] == pytest.approx(0.5 * ei[0])
    far = constrained_ei(np.array([10.0]), np.array([1e-12]), 1.0, np.array([1.0]))
    assert far[0] == pytest.approx(9.0)  # no uncertainty: EI = mu - a*


def test_search_returns_the_best_feasible_configuration() -> None:
    torch.manual_seed(0)
    model = CNN1d(1, 40, 10, channels=(8, 8, 8)).eval()
    x, y = torch.randn(64, 1, 40), torch.randint(0, 10, (64,))
    cfg = Config(flops_ratio=0.3, iterations=8, n_init=4, candidates=64, cooling_steps=3)
    search = ConstraintAwareCompression(model, x, y, x, cfg)
    best = search.search(np.random.default_rng(0))
    assert len(search.history) == 8
    feasible = [h for h in search.history if h["cost"] <= 0.3]
    assert best is not None and best["cost"] <= 0.3 and best["accuracy"] == max(h["accuracy"] for h in feasible)
    assert [h["bound"] for h in search.history[4:]] == pytest.approx([1.0, 1 - 0.7 / 3, 1 - 1.4 / 3, 0.3])


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.automl.constraintaware_chen2018 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run constraintaware_chen2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    names = [row.name for row in result.rows]
    assert names == ["unpruned", "random", "bo_fixed", "bo_linear", "bo_exp", "bo_notes"]
    for name in names[1:]:
        assert result.row(name).flops <= 0.2 * result.row("unpruned").flops + 1
    assert [a.question for a in result.answers][1].startswith("The notes give the exponential cooling function")
    for name in names[1:]:  # the chosen configuration is fine-tuned, and both accuracies are reported
        assert 0 <= result.row(name).extra["accuracy_before_finetune"] <= 100
