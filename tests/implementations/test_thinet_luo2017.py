"""Paper properties of ThiNet (Luo, Wu & Lin, 2017), and the quick reproduction."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from implementations._models import CNN1d
from implementations.pruning.thinet_luo2017 import (
    Config,
    ThiNet,
    channel_contributions,
    greedy_remove,
    least_squares_scales,
)


def test_greedy_selection_removes_channels_whose_contributions_cancel() -> None:
    # Columns: c0 = +1, c1 = -1, c2 = +0.5, c3 = +2 on every sample. Step 1 removes c2 (0.25 per sample); step 2
    # adds c1, which cancels c2 down to (-0.5)^2, rather than a channel with a smaller own norm.
    contributions = torch.tensor([[1.0, -1.0, 0.5, 2.0]]).repeat(3, 1)
    assert greedy_remove(contributions, 2) == [2, 1]
    assert greedy_remove(contributions, 3) == [2, 1, 0]


def test_least_squares_rescaling_absorbs_a_removed_proportional_channel() -> None:
    gen = torch.Generator().manual_seed(0)
    kept = torch.randn(50, 2, generator=gen)
    contributions = torch.cat([kept, 0.5 * kept[:, :1]], dim=1)  # c2 = 0.5 c0, so y = 1.5 c0 + c1
    scales = least_squares_scales(contributions, torch.tensor([0, 1]))
    assert torch.allclose(scales, torch.tensor([1.5, 1.0]), atol=1e-5)


def test_contributions_sum_to_the_next_layers_output() -> None:
    gen = torch.Generator().manual_seed(0)
    activation = torch.randn(4, 3, 5, generator=gen)
    conv = nn.Conv1d(3, 1, 5, bias=False)  # one filter, one output position: every sample is that output
    contributions = channel_contributions(activation, conv, 2, gen)
    assert contributions.shape == (8, 3)
    assert torch.allclose(contributions.sum(1), conv(activation).flatten().repeat_interleave(2), atol=1e-5)
    head = nn.Linear(15, 1)
    contributions = channel_contributions(activation, head, 1, gen)
    assert torch.allclose(contributions.sum(1), head(activation.flatten(1)).flatten() - head.bias, atol=1e-5)


def test_contributions_with_stride_and_padding_of_cnn1d() -> None:
    # CNN1d's convs use kernel 5, stride 2, padding 2: sampled positions must line up with the conv's outputs.
    activation = torch.randn(3, 2, 9, generator=torch.Generator().manual_seed(1))
    conv = nn.Conv1d(2, 4, 5, stride=2, padding=2, bias=False)
    n, locations, length_out = 3, 6, (9 + 2 * 2 - 5) // 2 + 1  # 5 output positions
    contributions = channel_contributions(activation, conv, locations, torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)  # the same draws as inside channel_contributions
    out = torch.randint(0, 4, (n, locations), generator=replay)
    pos = torch.randint(0, length_out, (n, locations), generator=replay)
    for c in range(2):  # channel c's contribution = the conv applied to channel c alone
        alone = activation.clone()
        alone[:, 1 - c] = 0.0
        full = conv(alone).detach()  # (N, 4, 5)
        expected = torch.stack([full[e, out[e], pos[e]] for e in range(n)])  # (N, loc)
        assert torch.allclose(contributions[:, c], expected.flatten(), atol=1e-5)


def test_pruned_stage_is_physically_removed_and_matches_the_masked_model() -> None:
    torch.manual_seed(0)
    model = CNN1d(1, 40, 10, channels=(6, 6, 4)).eval()
    x = torch.randn(32, 1, 40)
    task = ThiNet(copy.deepcopy(model), Config(keep_ratio=0.5, rescale=False))
    keep = task.prune_stage(0, x, generator=torch.Generator().manual_seed(0))
    assert len(keep) == 3 and task.model.stages[0][0].weight.shape == (3, 1, 5)
    assert task.model.stages[1][0].weight.shape == (6, 3, 5)
    mask = torch.zeros(6)
    mask[keep] = 1.0
    model.stages[0].register_forward_hook(lambda _m, _i, out: out * mask[None, :, None])
    assert torch.allclose(task.model(x), model(x), atol=1e-5)
    full = ThiNet(CNN1d(1, 40, 10, channels=(6, 6, 4)), Config(keep_ratio=0.5))
    full.prune(x)
    assert [s[0].out_channels for s in full.model.stages] == [3, 3, 2] and full.model.head.in_features == 2 * 5


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.pruning.thinet_luo2017 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run thinet_luo2017 --quick",
            "environment": env,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    dense, thinet, norm = result.row("dense"), result.row("thinet_ft"), result.row("weightsum_ft")
    assert thinet.params == norm.params < dense.params / 3 and thinet.flops < dense.flops / 3
    assert result.claim.reproduced == (thinet.accuracy.mean > norm.accuracy.mean)
