"""Paper properties of MutualNet (Yang et al., 2020), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from implementations._measure import count_flops
from implementations.mutual_learning._base import soft_kl
from implementations.mutual_learning.mutualnet_yang2020 import (
    Config,
    MutualNet,
    SlimmableCNN1d,
    SubNetwork,
    calibrate_bn,
    resize,
)


def test_a_sub_network_uses_only_the_first_channels_of_every_layer() -> None:
    torch.manual_seed(0)
    net = SlimmableCNN1d(1, 10, (16, 32, 32)).eval()
    assert net.widths(0.25) == [4, 8, 8] and net.widths(1.0) == [16, 32, 32]
    x = torch.randn(3, 1, 40)
    before = net(x, 0.25)
    with torch.no_grad():
        net.convs[1].weight[8:] += 1.0  # filters the 0.25x network does not keep
        net.head.weight[:, 40:] += 1.0  # classifier inputs of channels it does not keep (8 channels x 5 positions)
    assert torch.equal(net(x, 0.25), before)
    with torch.no_grad():
        net.convs[1].weight[:8] += 1.0
    assert not torch.allclose(net(x, 0.25), before)


def test_flops_shrink_with_width_and_resolution_as_counted_by_hand() -> None:
    net = SlimmableCNN1d(1, 10, (16, 32, 32))
    # 0.5x (8-16-16) at 40 points: lengths 20, 10, 5; 2 * L_out * C_out * C_in * k per conv + 2 * 80 * 10 for the head
    at_40 = 2 * (20 * 8 * 1 * 5 + 10 * 16 * 8 * 5 + 5 * 16 * 16 * 5 + 80 * 10)
    assert count_flops(SubNetwork(net, 0.5, 40), torch.zeros(1, 1, 40)) == at_40 == 28800
    # at 23 points: lengths 12, 6, 3 (pooled up to 5 positions; pooling is not counted)
    at_23 = 2 * (12 * 8 * 1 * 5 + 6 * 16 * 8 * 5 + 3 * 16 * 16 * 5 + 80 * 10)
    assert count_flops(SubNetwork(net, 0.5, 23), torch.zeros(1, 1, 40)) == at_23
    assert resize(torch.arange(5.0).view(1, 1, 5), 3).flatten().tolist() == [0.0, 2.0, 4.0]


def test_sandwich_step_distils_the_full_network_into_the_sampled_ones() -> None:
    torch.manual_seed(0)
    net = SlimmableCNN1d(1, 10, (8, 16, 16))
    task = MutualNet(net, Config(num_sampled=2, resolutions=(40, 23)))
    x, y = torch.randn(6, 1, 40), torch.randint(0, 10, (6,))
    torch.manual_seed(1)
    logits, losses = task.forward_train(x, y)
    assert set(losses) == {"ce", "kd0"}
    torch.manual_seed(1)
    pick = torch.randint(2, (1,)).item()  # the resolution drawn for the smallest width
    full = net(x, 1.0)
    assert torch.allclose(logits, full) and torch.allclose(losses["ce"], F.cross_entropy(full, y))
    expected = soft_kl(net(resize(x, (40, 23)[pick]), 0.25), full.detach())
    assert torch.allclose(losses["kd0"], expected)
    full.sum().backward()  # the target is detached: the KD term alone leaves the full-width-only filters untouched
    net.zero_grad()
    losses["kd0"].backward()
    assert net.convs[0].weight.grad[2:].abs().sum() == 0 and net.convs[0].weight.grad[:2].abs().sum() > 0


def test_bn_calibration_stores_the_exact_statistics_of_the_configuration() -> None:
    torch.manual_seed(0)
    net = SlimmableCNN1d(1, 10, (8, 16, 16))
    x = torch.randn(50, 1, 40)
    calibrate_bn(SubNetwork(net, 0.5, 40), x, batch_size=25)
    h = F.conv1d(x, net.convs[0].weight[:4], stride=2, padding=2)  # (50, 4, 20)
    bn = net.norms[0]
    assert torch.allclose(bn.running_mean[:4], h.mean(dim=(0, 2)), atol=1e-5)
    # cumulative average over the two batches of the per-batch unbiased variances
    var = torch.stack([h[:25].var(dim=(0, 2)), h[25:].var(dim=(0, 2))]).mean(0)
    assert torch.allclose(bn.running_var[:4], var, atol=1e-4)
    assert torch.equal(bn.running_mean[4:], torch.zeros(4))  # channels outside the configuration stay reset


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.mutual_learning.mutualnet_yang2020 import reproduce
    from implementations.mutual_learning.mutualnet_yang2020.experiment import QUESTION
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run mutualnet_yang2020 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    for w in (25, 50, 75, 100):
        assert result.row(f"mutualnet_budget_w{w}").flops <= result.row(f"usnet_w{w}_r40").flops
    assert result.answers[0].question == QUESTION
    assert result.figures == ["results/figures/mutualnet_yang2020_flops.png"]
    assert (tmp_path / "results" / "figures" / "mutualnet_yang2020_flops.png").stat().st_size > 1000
