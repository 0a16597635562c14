"""Paper properties of FSP matrices (Yim et al., 2017), and the quick reproduction."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from implementations._models import CNN1d
from implementations.distillation.fsp_yim2017 import FSP, fsp_loss, fsp_matrix


def test_fsp_matrix_by_hand_with_max_pooling() -> None:
    first = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (B=1, m=2, L=2)
    second = torch.tensor([[[1.0, 1.0], [0.0, 2.0]]])  # (B=1, n=2, L=2)
    # G_ij = sum_s F1_si F2_sj / 2
    assert torch.allclose(fsp_matrix(first, second), torch.tensor([[[1.5, 2.0], [3.5, 4.0]]]))
    longer = torch.tensor([[[1.0, 0.0, 5.0, 2.0]]])  # max-pooled to (1, 5)
    assert torch.allclose(fsp_matrix(longer, torch.tensor([[[2.0, 4.0]]])), torch.tensor([[[11.0]]]))
    images = fsp_matrix(torch.randn(3, 4, 8, 8), torch.randn(3, 6, 4, 4))
    assert images.shape == (3, 4, 6)


def test_permuting_channels_permutes_the_matrix() -> None:
    torch.manual_seed(0)
    first, second = torch.randn(2, 3, 5), torch.randn(2, 4, 5)
    p, q = torch.tensor([2, 0, 1]), torch.tensor([3, 1, 0, 2])
    g = fsp_matrix(first, second)
    assert torch.allclose(fsp_matrix(first[:, p], second[:, q]), g[:, p][:, :, q])


def test_loss_is_weighted_squared_frobenius_norm_averaged_over_examples() -> None:
    g_t = [torch.zeros(2, 2, 2), torch.zeros(2, 1, 3)]
    g_s = [torch.ones(2, 2, 2), torch.full((2, 1, 3), 2.0)]
    assert fsp_loss(g_s, g_t, [1.0, 0.5]).item() == pytest.approx(4.0 + 0.5 * 12.0)
    assert fsp_loss(g_t, g_t, [1.0, 1.0]).item() == 0.0


def test_connectors_only_where_widths_differ_and_stages_switch_losses() -> None:
    torch.manual_seed(0)
    teacher = CNN1d(1, 40, 10, (8, 16, 16))
    same = FSP(CNN1d(1, 40, 10, (8, 16, 16)), teacher, in_shape=(1, 40))
    assert all(isinstance(c, nn.Identity) for c in same.connectors)
    narrow = FSP(CNN1d(1, 40, 10, (4, 16, 8)), teacher, in_shape=(1, 40))
    kinds = [type(c) for c in narrow.connectors]
    assert kinds == [nn.Conv1d, nn.Identity, nn.Conv1d] and narrow.connectors[0].out_channels == 8
    x, y = torch.randn(4, 1, 40), torch.randint(0, 10, (4,))
    student = CNN1d(1, 40, 10, (8, 16, 16))
    twin = FSP(student, copy.deepcopy(student), in_shape=(1, 40)).eval()  # eval: both use running BN statistics
    assert twin.forward_train(x, y)[1]["fsp"].item() == pytest.approx(0.0, abs=1e-10)
    assert same.eval().forward_train(x, y)[1]["fsp"].item() > 1e-6
    narrow.stage = "task"
    assert set(narrow.forward_train(x, y)[1]) == {"ce"}
    narrow.stage = "joint"
    assert set(narrow.forward_train(x, y)[1]) == {"ce", "fsp"}


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    # MNIST-1D comes from the user cache (generated once, offline, when missing).
    from implementations._runner import make_context
    from implementations.distillation.fsp_yim2017 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run fsp_yim2017 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    m = {row.name: row.accuracy.mean for row in result.rows}
    assert {"teacher", "scratch_short", "scratch", "fsp", "fsp_joint"} <= set(m)
    from implementations._measure import beats

    v = {row.name: row.accuracy.values for row in result.rows}
    assert result.claim.reproduced == beats(v["fsp"], v["scratch"])  # judged at equal total epochs
    assert len(result.answers) == 3
