"""Paper properties of Piggyback (Mallya et al., 2018), and the quick reproduction."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from implementations._models import build_model
from implementations.pruning.piggyback_mallya2018 import Config, Piggyback, binarize


def test_binarize_thresholds_forward_and_passes_gradient_straight_through() -> None:
    scores = torch.tensor([0.004, 0.005, 0.02, -1.0], requires_grad=True)
    mask = binarize(scores, threshold=0.005)
    assert mask.tolist() == [0.0, 1.0, 1.0, 0.0]
    (mask * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert scores.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_score_gradient_is_weight_times_effective_weight_gradient() -> None:
    # dL/dm^r = dL/dm = (dL/dy x^T) * W, with W the frozen weight and W * m the effective weight
    torch.manual_seed(0)
    backbone = build_model("mlp", 4, (6,), width=0.05)  # hidden (13, 13)
    task = Piggyback(backbone, num_classes=3, cfg=Config(init=0.01, threshold=0.005))
    layer = task.model.layers[0]
    with torch.no_grad():  # switch some masks off
        layer.parametrizations.weight[0].scores[::2] = -0.01
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    _, losses = task.forward_train(x, y)
    losses["ce"].backward()
    plain = copy.deepcopy(task.export())
    effective = plain.layers[0].weight
    F.cross_entropy(plain(x), y).backward()
    frozen = layer.parametrizations.weight.original
    assert torch.allclose(layer.parametrizations.weight[0].scores.grad, effective.grad * frozen, atol=1e-7)
    assert frozen.grad is None and not frozen.requires_grad  # the backbone gets no update


def test_backbone_is_untouched_and_export_matches() -> None:
    torch.manual_seed(0)
    backbone = build_model("cnn1d", 5, (1, 40), width=0.125)
    reference = copy.deepcopy(backbone.state_dict())
    task = Piggyback(backbone, num_classes=4, cfg=Config(train_bn=False)).train()
    opt = torch.optim.Adam(task.trainable_parameters(), lr=0.01)
    x, y = torch.randn(16, 1, 40), torch.randint(0, 4, (16,))
    for _ in range(5):
        opt.zero_grad()
        sum(task.forward_train(x, y)[1].values()).backward()
        opt.step()
    masks = torch.cat([m.flatten() for m in task.masks()])
    assert 0 < int((~masks).sum()) < masks.numel()  # some masks flipped off, not all
    assert task.mask_bits() == masks.numel()
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in reference.items())
    task.eval()
    assert torch.allclose(task(x), task.export().eval()(x), atol=1e-6)


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.pruning.piggyback_mallya2018 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run piggyback_mallya2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"finetune", "head_only", "piggyback", "piggyback_random"} <= {row.name for row in result.rows}
    assert result.row("piggyback").extra["task_bytes"] < result.row("finetune").extra["task_bytes"] / 4
    assert result.figures == ["results/figures/piggyback_mallya2018_accuracy.png"]
