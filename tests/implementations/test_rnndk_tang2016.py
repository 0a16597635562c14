"""Paper properties of RNN training with dark knowledge (Tang et al., 2016), and the quick reproduction."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from implementations.distillation.rnndk_tang2016 import (
    Config,
    RNNDarkKnowledge,
    SequenceLSTM,
    dark_knowledge_loss,
    smoothing_for_entropy,
)


def test_at_unit_temperature_the_loss_is_cross_entropy_with_interpolated_targets() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
    labels = torch.tensor([0, 3, 1, 4])
    lam = 0.3
    terms = dark_knowledge_loss(student, teacher, labels, temperature=1.0, soft_weight=lam)
    targets = (1 - lam) * F.one_hot(labels, 5) + lam * F.softmax(teacher, -1)  # (1 - lambda) y + lambda p_T
    expected = -(targets * F.log_softmax(student, -1)).sum(-1).mean()
    assert torch.allclose(terms["hard"] + terms["soft"], expected)
    only_labels = dark_knowledge_loss(student, teacher, labels, temperature=3.0, soft_weight=0.0)
    assert only_labels["soft"].item() == 0.0 and torch.allclose(only_labels["hard"], F.cross_entropy(student, labels))


def test_matched_label_smoothing_has_the_requested_entropy() -> None:
    k = 10
    for entropy in (0.1, 0.7, 1.5):
        eps = smoothing_for_entropy(entropy, k)
        target = torch.full((k,), eps / k)
        target[0] += 1 - eps
        assert abs(-(target * target.log()).sum().item() - entropy) < 1e-6
    assert smoothing_for_entropy(0.0, k) < 1e-9
    assert abs(smoothing_for_entropy(math.log(k), k) - (1 - 1 / k)) < 1e-6  # uniform target


def test_lstm_reads_the_signal_in_steps() -> None:
    net = SequenceLSTM(in_channels=1, num_classes=10, step=4, hidden=8)
    # One LSTM layer: 4 gates x (input 4 + hidden 8 + 2 biases) x 8 units, plus the 8 -> 10 head.
    assert sum(p.numel() for p in net.parameters()) == 4 * 8 * (4 + 8 + 2) + 8 * 10 + 10
    x = torch.randn(3, 1, 40)
    assert net(x).shape == (3, 10)
    # Only the last time step changes when the last 4 samples change, and the output depends on it.
    y = x.clone()
    y[..., -4:] += 1.0
    assert not torch.allclose(net(x), net(y))


def test_offline_teacher_logits_match_the_online_teacher() -> None:
    torch.manual_seed(0)
    task = RNNDarkKnowledge(nn.Linear(6, 3), nn.Linear(6, 3), Config(temperature=2.0, soft_weight=0.5))
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    _, online = task.forward_train(x, y)
    packed = torch.cat([task.teacher(x).detach(), y[:, None].float()], 1)  # (B, K + 1)
    _, offline = task.forward_train(x, packed)
    assert all(torch.allclose(online[k], offline[k]) for k in ("hard", "soft"))


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.distillation.rnndk_tang2016 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run rnndk_tang2016 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    m = {row.name: row.accuracy.mean for row in result.rows}
    assert {"teacher", "labels", "dk_mixed", "dk_pretrain", "label_smoothing"} == set(m)
    assert result.claim.reproduced == (m["dk_mixed"] > m["labels"])
    assert result.protocol.n_train == 500 and result.answers[0].question.startswith("Why does a weaker teacher")
