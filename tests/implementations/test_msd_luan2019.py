"""Paper properties of MSD (Luan et al., 2019), and the quick reproduction."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from implementations._models import build_model
from implementations.self_distillation.byot_zhang2019 import BYOT
from implementations.self_distillation.byot_zhang2019 import Config as BYOTConfig
from implementations.self_distillation.msd_luan2019 import MSD, Config, cosine_weight


def test_cosine_weight_decays_from_lambda0_to_zero() -> None:
    assert cosine_weight(0, 100, 0.4) == pytest.approx(0.4)
    assert cosine_weight(50, 100, 0.4) == pytest.approx(0.2)
    assert cosine_weight(25, 100, 0.4) == pytest.approx(0.2 * (1 + math.cos(math.pi / 4)))
    assert cosine_weight(100, 100, 0.4) == pytest.approx(0.0, abs=1e-12)
    assert cosine_weight(150, 100, 0.4) == pytest.approx(0.0, abs=1e-12)


def test_hint_term_follows_the_schedule_and_constant_weight_is_byot() -> None:
    torch.manual_seed(0)
    backbone = build_model("cnn1d", 10, (1, 40), width=0.25)
    x, y = torch.randn(5, 1, 40), torch.randint(0, 10, (5,))
    msd = MSD(backbone, (1, 40), Config(hint_weight=0.5, total_steps=4)).eval()  # eval: no BN updates, no steps
    byot = BYOT(backbone, (1, 40), BYOTConfig(hint_weight=0.5)).eval()
    byot.exits.load_state_dict(msd.exits.state_dict())
    _, at_start = msd.forward_train(x, y)
    _, reference = byot.forward_train(x, y)
    assert all(torch.allclose(at_start[k], reference[k]) for k in reference)  # lambda(0) = lambda_0: same loss
    msd.step.fill_(2)
    _, halfway = msd.forward_train(x, y)
    assert torch.allclose(halfway["hint0"], 0.5 * reference["hint0"])  # lambda(T/2) = lambda_0 / 2
    assert torch.allclose(halfway["kl0"], reference["kl0"])  # only the feature weight changes
    msd.train()
    msd.forward_train(x, y)
    assert int(msd.step) == 3


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.self_distillation.msd_luan2019 import Q_LATE, Q_SAME, reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run msd_luan2019 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"plain", "exits_ce", "byot", "msd", "msd_lambda003"} == {row.name for row in result.rows}
    assert [a.question for a in result.answers] == [Q_SAME, Q_LATE]
