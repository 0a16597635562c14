"""Properties of the transfer-compress-Siamese analogue of Grundström et al. (2016)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from implementations._models import CNN1d
from implementations.pruning.transfercompress_grundstrom2016 import (
    TransferCompress,
    balanced_pairs,
    contrastive_loss,
    verification_accuracy,
)


def test_contrastive_loss_by_hand() -> None:
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.3, 0.4], [0.3, 0.4], [0.9, 1.2]])  # distances 0.5, 0.5, 1.5
    same = torch.tensor([1.0, 0.0, 0.0])
    expected = (0.5**2 + (1.0 - 0.5) ** 2 + 0.0) / 3  # pull the same pair, push the close different pair only
    assert contrastive_loss(a, b, same, margin=1.0).item() == pytest.approx(expected)
    assert contrastive_loss(a[:1], a[:1], same[:1], margin=1.0).item() == 0.0


def test_compression_keeps_the_top_l1_third_of_every_layer() -> None:
    torch.manual_seed(0)
    model = CNN1d(1, 40, 5, channels=(6, 9, 9))
    with torch.no_grad():  # filter j of every layer gets L1 norm growing with j: the last third must survive
        for stage in model.stages:
            conv = stage[0]
            conv.weight.copy_(torch.ones_like(conv.weight) * torch.arange(1.0, conv.out_channels + 1)[:, None, None])
    small = TransferCompress(model).compress()
    assert [s[0].out_channels for s in small.stages] == [2, 3, 3]
    assert [s[0].in_channels for s in small.stages] == [1, 2, 3]
    assert torch.equal(small.stages[0][0].weight[:, 0, 0], torch.tensor([5.0, 6.0]))
    assert torch.equal(small.stages[1][0].weight[:, 0, 0], torch.tensor([7.0, 8.0, 9.0]))
    assert small.head.in_features == 3 * 5
    # conv weights between two pruned layers shrink by keep^2
    big_w = model.stages[2][0].weight.numel()
    assert small.stages[2][0].weight.numel() * 9 == big_w


def test_balanced_pairs_and_verification_of_a_perfect_descriptor() -> None:
    y = torch.arange(50) % 5
    i, j, same = balanced_pairs(y, 100, torch.Generator().manual_seed(0))
    assert len(i) == 100 and same.sum() == 50
    assert torch.equal((y[i] == y[j]).float(), same) and not torch.any(i[same == 1] == j[same == 1])

    class Oracle(nn.Module):  # descriptor = one-hot of the class that the input encodes
        def forward(self, x: Tensor, return_features: bool = False) -> tuple[Tensor, list[Tensor]]:
            return x, [x]

    def encode(labels: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(labels, 5).float()

    assert verification_accuracy(Oracle(), (encode(y), y), (encode(y), y), seed=0) == 100.0
    noise = torch.randn(50, 5, generator=torch.Generator().manual_seed(1))
    assert verification_accuracy(Oracle(), (noise, y), (noise.flip(0), y), seed=0) < 75.0


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.pruning.transfercompress_grundstrom2016 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run transfercompress_grundstrom2016 --quick",
            "environment": {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"},
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    large, small = result.row("large_ft"), result.row("small_siamese")
    assert large.params > 7 * small.params and large.flops > 7 * small.flops
    assert result.answers and result.figures
