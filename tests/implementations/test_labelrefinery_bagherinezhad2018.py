"""Paper properties of Label Refinery (Bagherinezhad et al., 2018), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations.distillation.labelrefinery_bagherinezhad2018 import (
    Config,
    LabelRefinery,
    random_crop_1d,
    refinery_loss,
)


def test_loss_is_kl_to_the_refined_labels() -> None:
    # Hand-checkable case: refinery p = (0.5, 0.5), student q = (0.8, 0.2) -> KL = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2).
    refinery = torch.log(torch.tensor([[0.5, 0.5]]))
    student = torch.log(torch.tensor([[0.8, 0.2]]))
    expected = 0.5 * torch.log(torch.tensor(0.5 / 0.8)) + 0.5 * torch.log(torch.tensor(0.5 / 0.2))
    assert torch.allclose(refinery_loss(student, refinery), expected, atol=1e-6)
    assert refinery_loss(refinery, refinery.clone()).abs().item() < 1e-7
    # The gradient w.r.t. the student's logits is (softmax(z) - softmax(r)) / B, the soft-label CE gradient.
    logits = torch.randn(3, 4, requires_grad=True)
    target = torch.randn(3, 4)
    refinery_loss(logits, target).backward()
    expected_grad = (logits.softmax(-1) - target.softmax(-1)) / 3
    assert torch.allclose(logits.grad, expected_grad, atol=1e-6)


def test_labels_are_computed_on_the_same_crop() -> None:
    # The refinery's labels must depend on the crop the student sees, not on a clean copy of the input.
    torch.manual_seed(0)
    student, refinery = nn.Linear(6, 3), nn.Linear(6, 3)
    task = LabelRefinery(student, refinery, Config())
    x = torch.randn(4, 6)
    crop = torch.roll(x, 1, dims=1)
    _, losses = task.forward_train(crop, torch.zeros(4, dtype=torch.long))
    assert set(losses) == {"refined"}
    assert torch.allclose(losses["refined"], refinery_loss(student(crop), refinery(crop)))
    assert not torch.allclose(losses["refined"], refinery_loss(student(crop), refinery(x)))
    _, weighted = LabelRefinery(student, refinery, Config(ground_truth_weight=0.25)).forward_train(
        crop, torch.tensor([0, 1, 2, 0])
    )
    assert torch.allclose(weighted["refined"], 0.75 * losses["refined"])


def test_random_crop_shifts_with_zero_fill() -> None:
    x = torch.arange(1, 7, dtype=torch.float32).repeat(64, 1, 1)  # (64, 1, 6): the values 1..6

    def shifted(offset: int) -> list[float]:  # out[t] = x[t - offset], zero outside
        return [float(t - offset + 1) if 0 <= t - offset < 6 else 0.0 for t in range(6)]

    out = random_crop_1d(x, max_shift=2, generator=torch.Generator().manual_seed(0))
    allowed = {tuple(shifted(o)): o for o in range(-2, 3)}
    seen = {allowed[tuple(row.tolist())] for row in out[:, 0]}  # KeyError if a row is not a legal shift
    assert seen == {-2, -1, 0, 1, 2}  # every offset occurs in 64 draws


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.distillation.labelrefinery_bagherinezhad2018 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run labelrefinery_bagherinezhad2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"round0", "round1", "round3", "other_by_cnn"} <= {row.name for row in result.rows}
    assert result.claim.reproduced == (result.row("round1").accuracy.mean > result.row("round0").accuracy.mean)
    assert result.answers[0].question.startswith("How many refinement rounds help")
    assert (tmp_path / "results" / "figures" / "labelrefinery_bagherinezhad2018_rounds.png").stat().st_size > 1000
