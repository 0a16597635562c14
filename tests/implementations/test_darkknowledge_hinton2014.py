"""Paper properties of the omitted-class demonstration from Hinton's Dark Knowledge talk, and the quick run."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from implementations._data import TensorData
from implementations.distillation.darkknowledge_hinton2014 import (
    Config,
    OmittedClassTransfer,
    bias_shift_for_rate,
    omitted_class_loss,
    soft_targets,
    transfer_set,
)


def test_bias_shift_hits_the_target_rate_exactly() -> None:
    # Margins max_{j != 0} z_j - z_0 of the four rows: 1, 3, -1 (already class 0), 2.
    logits = torch.tensor([[0.0, 1.0, 0.5], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])
    delta = bias_shift_for_rate(logits, cls=0, rate=0.75)  # 3 of 4 rows: margins -1, 1, 2 must fall below delta
    assert 2.0 < delta < 2.01
    shifted = logits.clone()
    shifted[:, 0] += delta
    assert (shifted.argmax(-1) == 0).sum().item() == 3
    assert bias_shift_for_rate(logits, cls=0, rate=0.25) == 0.0  # row 3 already predicts 0: never lower the bias
    assert bias_shift_for_rate(logits, cls=0, rate=0.0) == 0.0


def test_thresholded_soft_targets_keep_ratios_and_loss_vanishes_at_the_teacher() -> None:
    teacher = torch.tensor([[2.0, 0.0, -3.0, 1.0]])
    full = soft_targets(teacher, temperature=2.0)
    assert torch.allclose(full, torch.softmax(teacher / 2.0, -1))
    cut = soft_targets(teacher, temperature=2.0, min_prob=0.1)
    assert cut[0, 2] == 0.0 and torch.allclose(cut.sum(-1), torch.ones(1))
    kept = full[0, [0, 1, 3]]
    assert torch.allclose(cut[0, [0, 1, 3]], kept / kept.sum())  # the surviving probabilities keep their ratios
    assert omitted_class_loss(teacher, full, 2.0).abs().item() < 1e-6
    assert omitted_class_loss(torch.zeros(1, 4), full, 2.0).item() > 0.1


def test_transfer_set_and_bias_shift_touch_only_the_omitted_class() -> None:
    y = torch.tensor([0, 3, 1, 3, 2])
    data = TensorData(torch.arange(5.0)[:, None], y, torch.zeros(2, 1), torch.tensor([3, 0]), 4, (1,))
    transfer = transfer_set(data, 3)
    assert transfer.y_train.tolist() == [0, 1, 2] and transfer.x_train.flatten().tolist() == [0.0, 2.0, 4.0]
    assert transfer.n_test == 2  # the test split keeps the omitted class
    torch.manual_seed(0)
    task = OmittedClassTransfer(nn.Linear(1, 4), nn.Linear(1, 4), Config(omitted_class=3, temperature=4.0))
    x = torch.randn(6, 1)
    before = task(x)
    task.bias_shift.fill_(2.5)
    assert torch.allclose(task(x) - before, torch.tensor([0.0, 0.0, 0.0, 2.5]).expand(6, 4))
    # Labels never enter the loss; teacher logits given offline as a float y give the same loss as running it.
    _, online = task.forward_train(x, torch.zeros(6, dtype=torch.long))
    _, other_labels = task.forward_train(x, torch.full((6,), 3))
    _, offline = task.forward_train(x, task.teacher(x).detach())
    assert torch.allclose(online["soft"], other_labels["soft"]) and torch.allclose(online["soft"], offline["soft"])


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.distillation.darkknowledge_hinton2014 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run darkknowledge_hinton2014 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    omitted = {row.name: row.extra["class_3_accuracy"] for row in result.rows}
    assert omitted["labels"] == 0.0  # a student trained on hard labels without 3s never predicts 3
    assert result.claim.reproduced == (omitted["kd_corrected"] > 50.0 and omitted["kd_corrected"] > omitted["labels"])
    assert result.figures == ["results/figures/darkknowledge_hinton2014_accuracy.png"]
