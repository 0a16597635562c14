"""Properties of the VC bound used by the statistical-learning-theory illustration, and the quick run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from implementations.other.slt_vapnik1999 import CapacitySweep, Config, vc_bound, vc_confidence


def test_vc_confidence_matches_the_formula_by_hand() -> None:
    # h = 10, l = 1000, eta = 0.05: sqrt((10 (ln 200 + 1) - ln 0.0125) / 1000)
    expected = math.sqrt((10 * (math.log(200) + 1) - math.log(0.0125)) / 1000)
    assert vc_confidence(10, 1000, 0.05) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.2596, abs=1e-4)
    assert vc_bound(0.1, 10, 1000, 0.05) == pytest.approx(0.1 + expected)
    assert vc_confidence(500, 500) == math.inf and vc_confidence(2000, 500) == math.inf  # h >= l: nothing holds


def test_confidence_grows_with_capacity_and_shrinks_with_samples() -> None:
    by_h = [vc_confidence(h, 10_000) for h in (1, 10, 100, 1000)]
    by_n = [vc_confidence(50, n) for n in (100, 1000, 10_000, 100_000)]
    assert all(a < b for a, b in zip(by_h, by_h[1:], strict=False))
    assert all(a > b for a, b in zip(by_n, by_n[1:], strict=False))
    assert vc_confidence(50, 100_000, eta=0.01) > vc_confidence(50, 100_000, eta=0.1)  # more confidence costs more


def test_sweep_plan_and_model_capacity() -> None:
    sweep = CapacitySweep(Config(widths=(4, 16), sizes=(100, 300, 1000), n_fixed=300, width_fixed=32))
    assert sweep.configs() == [
        ("width", 4, 300),
        ("width", 16, 300),
        ("size", 32, 100),
        ("size", 32, 1000),
        ("size", 32, 300),
    ]
    # 40 -> w -> 10 with biases: 40 w + w + 10 w + 10 weights
    assert sum(p.numel() for p in CapacitySweep.build(16).parameters()) == 40 * 16 + 16 + 16 * 10 + 10


def test_quick_illustration_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.other.slt_vapnik1999 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    extra = {"profile": "quick", "command": "kb run slt_vapnik1999 --quick", "environment": env}
    result = Result.model_validate({**data, **extra, "wall_time_s": 1.0, "created": "2025-01-01T00:00:00"})
    for row in result.rows:
        gap = row.extra["gap_points"]
        assert gap == pytest.approx(row.extra["train_accuracy"] - row.accuracy.mean, abs=1e-6)
    assert "illustration" in result.protocol.notes.lower()
    assert (tmp_path / "results" / "figures" / "slt_vapnik1999_gap.png").stat().st_size > 1000
