"""Paper properties of Structured Sparsity Learning (Wen et al., 2016), and the quick reproduction."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from implementations._models import CNN1d
from implementations.pruning.ssl_wen2016 import SSL, Config, channel_groups, consumers, group_lasso


def test_group_lasso_sums_the_l2_norms_of_filters_channels_and_shapes() -> None:
    weight = torch.zeros(2, 2, 2)  # (N filters, C channels, K)
    weight[0, 0] = torch.tensor([3.0, 0.0])
    weight[0, 1] = torch.tensor([0.0, 4.0])
    weight[1, 1] = torch.tensor([0.0, 3.0])
    assert group_lasso(weight, "filter") == 5.0 + 3.0  # ||W_0|| = 5, ||W_1|| = 3
    assert group_lasso(weight, "channel") == 3.0 + 5.0  # ||W_:,0|| = 3, ||W_:,1|| = sqrt(16 + 9)
    assert group_lasso(weight, "shape") == 3.0 + 0.0 + 0.0 + 5.0  # (c, k) = (0,0), (0,1), (1,0), (1,1)
    leaf = weight.clone().requires_grad_(True)
    group_lasso(leaf, "filter").backward()  # d||w_g|| / dw = w / ||w_g||: unit vectors
    assert torch.allclose(leaf.grad[0], weight[0] / 5.0) and torch.allclose(leaf.grad[1], weight[1] / 3.0)


def test_channel_groups_hold_the_consumer_slice_and_the_bn_affine() -> None:
    torch.manual_seed(0)
    model = CNN1d(1, 40, 10, channels=(3, 4, 2))
    groups = channel_groups(model)
    assert [tuple(g.shape) for g in groups] == [(3, 4 * 5 + 2), (4, 2 * 5 + 2), (2, 10 * 5 + 2)]
    head = model.head.weight.view(10, 2, 5)
    assert torch.equal(groups[2][1, :50], head[:, 1].flatten())  # head columns 5..9 belong to channel 1
    assert groups[0][2, -2] == model.stages[0][1].weight[2] and groups[0][2, -1] == model.stages[0][1].bias[2]
    _, losses = SSL(model, Config(strength=0.5)).forward_train(torch.randn(4, 1, 40), torch.zeros(4, dtype=int))
    assert torch.isclose(losses["group_lasso"], 0.5 * sum(g.norm(dim=1).sum() for g in groups))


def test_zero_groups_are_removed_and_the_thin_net_equals_the_masked_one() -> None:
    torch.manual_seed(0)
    task = SSL(CNN1d(1, 40, 10, channels=(4, 4, 3)), Config(threshold=1e-2))
    task.eval()
    with torch.no_grad():  # channel 1 of stage 0 and channel 2 of stage 2 collapse to 1e-4 of their peers
        consumers(task.model)[0][:, 1] *= 1e-4
        task.model.stages[0][1].weight[1] *= 1e-4
        task.model.stages[0][1].bias[1] *= 1e-4
        consumers(task.model)[2][:, 2] *= 1e-4
        task.model.stages[2][1].weight[2] *= 1e-4
        task.model.stages[2][1].bias[2] *= 1e-4
    thin = task.pruned()
    assert [s[0].out_channels for s in thin.stages] == [3, 4, 2] and thin.head.in_features == 2 * 5
    assert thin.stages[1][0].weight.shape == (4, 3, 5)
    masked = copy.deepcopy(task.model)
    with torch.no_grad():
        consumers(masked)[0][:, 1] = 0.0
        consumers(masked)[2][:, 2] = 0.0
    x = torch.randn(6, 1, 40)
    assert torch.allclose(thin(x), masked(x), atol=1e-6)


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.pruning.ssl_wen2016 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run ssl_wen2016 --quick",
            "environment": env,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    dense, ssl, sparse = result.row("dense"), result.row("ssl"), result.row("unstructured")
    assert ssl.params == ssl.nonzero_params <= dense.params and sparse.params == dense.params
    assert sparse.nonzero_params <= dense.nonzero_params
    assert sparse.bytes == min(4 * sparse.params, 8 * sparse.nonzero_params)  # _measure.model_row's rule
    speed = {n: result.row(n).extra["cpu_speedup_batch256"] for n in ("ssl", "unstructured")}
    assert result.claim.reproduced == (
        ssl.accuracy.mean >= dense.accuracy.mean - 1 and speed["ssl"] > max(1.0, speed["unstructured"])
    )
