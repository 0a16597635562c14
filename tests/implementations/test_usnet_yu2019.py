"""Paper properties of universally slimmable networks (Yu & Huang, 2019), and the quick reproduction."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from implementations.pruning.usnet_yu2019 import Config, USNet, inplace_distillation_loss, recalibrate_bn, sample_widths


def test_sandwich_rule_samples_both_extremes() -> None:
    torch.manual_seed(0)
    cfg = Config(width_range=(0.25, 1.0), n_widths=4, channels=(4, 8, 8))
    for _ in range(20):
        widths = sample_widths(cfg)
        assert len(widths) == 4 and widths[0] == (1.0, 1.0, 1.0) and widths[1] == (0.25, 0.25, 0.25)
        assert all(0.25 <= w <= 1.0 and len(set(ws)) == 1 for ws in widths[2:] for w in ws)  # one width per net
    per_layer = sample_widths(replace(cfg, nonuniform=True))[2]
    assert len(set(per_layer)) == 3  # AutoSlim's one-shot training: one width per layer
    random = sample_widths(replace(cfg, sandwich=False))
    assert [sum(w) for w in random] == sorted((sum(w) for w in random), reverse=True)  # teacher = widest
    assert all(w[0] < 1.0 for w in random)


def test_inplace_distillation_is_soft_cross_entropy_with_stop_gradient() -> None:
    teacher = torch.randn(4, 5, requires_grad=True)
    student = torch.randn(4, 5, requires_grad=True)
    p_t = F.softmax(teacher, -1)
    entropy = -(p_t * p_t.log()).sum(-1).mean()
    assert torch.allclose(inplace_distillation_loss(teacher.detach().clone(), teacher), entropy, atol=1e-6)
    loss = inplace_distillation_loss(student, teacher)
    loss.backward()
    assert teacher.grad is None  # sg[p_max]: no gradient reaches the widest network through the soft target
    assert torch.allclose(student.grad, (F.softmax(student, -1) - p_t).detach() / 4, atol=1e-6)


def test_bn_calibration_recomputes_the_statistics_of_the_chosen_width() -> None:
    torch.manual_seed(0)
    cfg = Config(channels=(4, 8, 8), calib_batches=1, calib_batch_size=64)
    net = USNet(cfg)
    x = torch.randn(64, 1, 40)
    net.train()
    net(torch.randn(32, 1, 40) * 3 + 1)  # pollute the shared running statistics
    net.set_width(0.5)
    recalibrate_bn(net, x, cfg)
    conv_out = net.convs[0](x, 2)  # (64, 2, 20): pre-BN activations of the 0.5x sub-network
    bn = net.norms[0]
    assert torch.allclose(bn.running_mean[:2], conv_out.mean(dim=(0, 2)), atol=1e-5)
    assert torch.allclose(bn.running_var[:2], conv_out.var(dim=(0, 2), unbiased=True), atol=1e-4)
    assert torch.equal(bn.running_mean[2:], torch.zeros(2))  # channels above the width are reset, not used
    assert not net.training and bn.momentum == 0.1  # left in eval mode with the original momentum


def test_forward_train_losses_follow_the_recipe() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 40), torch.randint(0, 10, (8,))
    _, losses = USNet(Config(channels=(4, 8, 8))).forward_train(x, y)
    assert list(losses) == ["ce_widest", "ipd_1", "ipd_2", "ipd_3"]
    _, losses = USNet(Config(channels=(4, 8, 8), inplace_distillation=False)).forward_train(x, y)
    assert list(losses) == ["ce_widest", "ce_1", "ce_2", "ce_3"]


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.pruning.usnet_yu2019 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run usnet_yu2019 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    names = {row.name for row in result.rows}
    assert {"usnet_w0375", "individual_w1", "no_ipd_avg", "no_sandwich_avg", "norecal_avg"} <= names
    gaps = [
        result.row(f"usnet_w{t}").accuracy.mean - result.row(f"individual_w{t}").accuracy.mean
        for t in ("025", "05", "1")
    ]
    assert result.claim.reproduced == all(g >= -1.0 for g in gaps)
    assert result.answers[0].question.startswith("How much of the gain comes from inplace distillation")
