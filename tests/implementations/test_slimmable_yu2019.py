"""Paper properties of slimmable networks (Yu et al., 2019), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from implementations.pruning.slimmable_yu2019 import Config, SlimmableNet, width_channels


def _stats(net: SlimmableNet) -> list[list[torch.Tensor]]:
    return [[bn.running_mean.clone() for bn in norm.bns] for norm in net.norms]


def test_switchable_bn_keeps_separate_statistics() -> None:
    torch.manual_seed(0)
    net = SlimmableNet(Config(channels=(4, 8, 8))).train()
    x = torch.randn(16, 1, 40)
    before = _stats(net)
    net.width = 0.5
    net(x)
    after = _stats(net)
    assert [bn.num_features for bn in net.norms[-1].bns] == [8, 8, 8, 8]  # fixed-width tail, private BN per switch
    for layer in range(3):
        for index, width in enumerate(net.widths):
            moved = not torch.equal(before[layer][index], after[layer][index])
            assert moved == (width == 0.5), (layer, width)  # only the active switch's statistics move
    net.width = 1.0
    net(x)
    # layer 2 sees 2 input channels at 0.5x and 4 at 1.0x: its statistics differ, and each width keeps its own
    full = net.norms[1].bns[-1].running_mean
    half = net.norms[1].bns[net.widths.index(0.5)].running_mean
    assert len(half) == 4 and len(full) == 8 and not torch.allclose(half, full[:4])


def test_each_width_is_the_nested_plain_network() -> None:
    assert width_channels((16, 32, 32), 0.25) == (4, 8, 8)
    assert width_channels((10,), 0.33) == (4,)  # ceil(3.3)
    assert width_channels((16, 32, 32), 0.25, fixed_tail=True) == (4, 8, 32)
    torch.manual_seed(0)
    net = SlimmableNet(Config(channels=(8, 16, 16))).eval()
    for bn in [b for norm in net.norms for b in norm.bns]:  # non-trivial statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(5, 1, 40)
    for width in net.widths:
        net.width = width
        plain = net.to_standalone(width)
        assert [s[0].out_channels for s in plain.stages] == list(width_channels((8, 16, 16), width, fixed_tail=True))
        assert torch.allclose(net(x), plain(x), atol=1e-5)
    # the 0.5x sub-network reads the first channels only: changing a channel above 0.5x leaves it unchanged
    net.width = 0.5
    out = net(x)
    with torch.no_grad():
        net.convs[1].weight[12:] += 1.0
    assert torch.allclose(net(x), out)
    net.width = 1.0
    assert not torch.allclose(net(x)[:, :1], plain(x)[:, :1])


def test_training_loss_is_the_sum_over_widths() -> None:
    torch.manual_seed(0)
    net = SlimmableNet(Config(channels=(4, 8, 8)))
    x, y = torch.randn(6, 1, 40), torch.tensor([0, 1, 2, 3, 4, 5])
    state = {k: v.clone() for k, v in net.state_dict().items()}
    logits, losses = net.forward_train(x, y)
    assert set(losses) == {"ce_w0.25", "ce_w0.5", "ce_w0.75", "ce_w1"}
    net.load_state_dict(state)  # same BN state for the manual pass
    for width in net.widths:
        net.width = width
        assert torch.allclose(losses[f"ce_w{width:g}"], F.cross_entropy(net(x), y), atol=1e-6)
    assert logits.shape == (6, 10) and net.width == 1.0


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.pruning.slimmable_yu2019 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run slimmable_yu2019 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"slimmable_w025", "individual_w1", "sharedstats_w05"} <= {row.name for row in result.rows}
    gaps = [
        result.row(f"slimmable_w{t}").accuracy.mean - result.row(f"individual_w{t}").accuracy.mean
        for t in ("025", "05", "075", "1")
    ]
    assert result.claim.reproduced == all(g >= -1.0 for g in gaps)
    assert result.row("slimmable_w05").flops < result.row("slimmable_w1").flops
    assert (tmp_path / "results" / "figures" / "slimmable_yu2019_widths.png").stat().st_size > 1000
