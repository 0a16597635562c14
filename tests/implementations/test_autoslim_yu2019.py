"""Paper properties of AutoSlim (Yu & Huang, 2019), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations._measure import beats, count_flops
from implementations._models import CNN1d
from implementations.automl._base import cnn1d_flops
from implementations.automl.autoslim_yu2019 import AutoSlim, Config, greedy_slim


def test_greedy_slimming_removes_the_least_harmful_group_until_the_target() -> None:
    # accuracy drops 3 points per channel removed from layer 0, 1 from layer 1, 2 from layer 2
    cost = (3.0, 1.0, 2.0)
    start, group, minimum = (8, 8, 8), (2, 2, 2), (2, 2, 2)

    def accuracy(c: tuple[int, ...]) -> float:
        return 100.0 - sum(w * (s - x) for w, s, x in zip(cost, start, c, strict=True))

    path = greedy_slim(accuracy, start, group, minimum, resource=sum, target=14)
    configs = [p["channels"] for p in path]
    # layer 1 is emptied to its minimum first (3 steps), then layer 2, and the loop stops at the first sum <= 14
    assert configs == [(8, 8, 8), (8, 6, 8), (8, 4, 8), (8, 2, 8), (8, 2, 6), (8, 2, 4)]
    assert path[-1]["resource"] <= 14 < path[-2]["resource"]
    assert path[-1]["accuracy"] == accuracy((8, 2, 4))


def test_analytic_flops_match_the_flop_counter() -> None:
    for channels in ((16, 32, 32), (10, 12, 20), (3, 5, 7, 9)):
        model = CNN1d(1, 40, 10, channels=channels)
        assert cnn1d_flops(channels) == count_flops(model, torch.zeros(1, 1, 40))


def test_search_reaches_the_uniform_budget_one_group_at_a_time() -> None:
    torch.manual_seed(0)
    cfg = Config(channels=(8, 16, 16), groups=4)
    slim = AutoSlim(cfg)
    x, y = torch.randn(64, 1, 40), torch.randint(0, 10, (64,))
    path = slim.search(x[:32], y[:32], x)
    target = cnn1d_flops((4, 8, 8))  # uniform 0.5x
    assert path[-1]["resource"] <= target < path[-2]["resource"]
    for a, b in zip(path, path[1:], strict=False):
        diff = [p - q for p, q in zip(a["channels"], b["channels"], strict=True)]
        assert sorted(diff) == [0, 0, max(diff)] and max(diff) in (2, 4)  # exactly one group from one layer
    assert slim.evaluations > len(path)  # every step scored several candidates
    assert slim.supernet.channels == (8, 16, 16)  # the estimator leaves the network at full width


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.automl.autoslim_yu2019 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run autoslim_yu2019 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {row.name for row in result.rows} == {"uniform", "random", "autoslim"}
    assert result.row("autoslim").flops <= result.row("uniform").flops
    autoslim, uniform = result.row("autoslim").accuracy.values, result.row("uniform").accuracy.values
    assert result.claim.reproduced == beats(autoslim, uniform)
    assert len(result.answers) == 2
