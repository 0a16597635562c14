"""Paper properties of Ba & Caruana (2014) mimic learning, and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations.distillation.mimic_ba2014 import Config, Mimic, mimic_loss, shallow_mimic_net


def test_loss_is_half_squared_error_averaged_over_the_batch() -> None:
    student = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 3.0]])
    loss = mimic_loss(student, teacher)
    # 1/(2B) * (|(1, 2, 0)|^2 + |(-1, 1, -3)|^2) = (5 + 11) / 4
    assert loss.item() == pytest.approx(4.0)
    loss.backward()
    assert torch.allclose(student.grad, (student.detach() - teacher) / 2)  # d/dg = (g - z) / B
    assert mimic_loss(teacher, teacher.clone()).item() == 0.0


def test_shallow_net_has_one_hidden_layer_and_a_rank_k_input_matrix() -> None:
    d, k, h, classes = 40, 8, 64, 10
    net = shallow_mimic_net(d, classes, Config(hidden=h, bottleneck=k))
    assert sum(p.numel() for p in net.parameters()) == d * k + (k * h + h) + (h * classes + classes)
    assert sum(isinstance(m, nn.ReLU) for m in net) == 1
    v, u = net[1].weight, net[2].weight  # (k, D), (H, k)
    assert torch.linalg.matrix_rank(u @ v).item() == k  # W = U V has rank k < min(H, D)
    assert net(torch.randn(3, 1, d)).shape == (3, classes)
    plain = shallow_mimic_net(d, classes, Config(hidden=h, bottleneck=0))
    assert sum(p.numel() for p in plain.parameters()) == d * h + h + h * classes + classes


def test_offline_logits_replace_the_teacher_and_labels_are_ignored() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    task = Mimic(student, teacher)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    _, losses = task.forward_train(x, y)
    assert torch.allclose(losses["mimic"], mimic_loss(student(x), teacher(x)))
    _, same = task.forward_train(x, torch.tensor([2, 2, 2, 2, 2]))
    assert torch.allclose(same["mimic"], losses["mimic"])  # no label enters the loss
    _, offline = task.forward_train(x, student(x).detach())
    assert offline["mimic"].item() == 0.0


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    # MNIST-1D comes from the user cache (generated once, offline, when missing).
    from implementations._runner import make_context
    from implementations.distillation.mimic_ba2014 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run mimic_ba2014 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    m = {row.name: row.accuracy.mean for row in result.rows}
    assert {"teacher", "student_ce", "student_mimic", "student_mimic_transfer", "student_kd"} <= set(m)
    from implementations._measure import beats

    v = {row.name: row.accuracy.values for row in result.rows}
    # the right control for mimic on the transfer set is the label net on the same transfer inputs
    assert result.claim.reproduced == beats(v["student_mimic_transfer"], v["student_ce_augmented"])
    assert len(v["teacher"]) == 1  # one shared teacher is stored once
    assert len(result.answers) == 2 and result.protocol.n_train == 500
    assert result.figures == ["results/figures/mimic_ba2014_accuracy.png"]
