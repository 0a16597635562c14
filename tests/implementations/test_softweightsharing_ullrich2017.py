"""Paper properties of soft weight-sharing (Ullrich et al., 2017), and the quick reproduction."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from implementations.quantization.softweightsharing_ullrich2017 import (
    Config,
    GaussianMixturePrior,
    SoftWeightSharing,
    storage_bits,
)


def _prior(means: list[float], sigma: float, cfg: Config) -> GaussianMixturePrior:
    prior = GaussianMixturePrior(torch.tensor([-1.0, 1.0]), cfg)
    with torch.no_grad():
        prior.means.copy_(torch.tensor(means))
        prior.log_var.fill_(2 * math.log(sigma))
    return prior


def test_log_prob_is_the_mixture_density_with_fixed_zero_component() -> None:
    cfg = Config(components=3, pi_zero=0.9, min_sigma=1e-6)
    prior = _prior([0.5, -0.3], 0.2, cfg)
    mu, var, pi = prior.parameters_now()
    assert mu[0].item() == 0 and pi[0].item() == pytest.approx(0.9) and pi.sum().item() == pytest.approx(1.0)
    w = torch.tensor([0.0, 0.1, -0.3, 0.7])
    density = sum(
        p * torch.exp(-((w - m) ** 2) / (2 * 0.04)) / math.sqrt(2 * math.pi * 0.04)
        for p, m in zip((0.9, 0.05, 0.05), (0.0, 0.5, -0.3), strict=True)
    )
    assert prior.log_prob(w).item() == pytest.approx(density.log().sum().item(), rel=1e-5)
    # the same gradient as torch.logsumexp
    w1, w2 = w.clone().requires_grad_(), w.clone().requires_grad_()
    prior.log_prob(w1).backward()
    torch.logsumexp(prior.log_joint(w2), dim=1).sum().backward()
    assert torch.allclose(w1.grad, w2.grad, atol=1e-6)


def test_snapping_sends_each_weight_to_its_most_responsible_mean() -> None:
    cfg = Config(components=3, pi_zero=0.5, min_sigma=1e-6, merge_kl=1e-3)
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.49, -0.31, 0.01], [0.02, 0.52, -0.28]]))
    task = SoftWeightSharing(model, n_train=10, cfg=cfg)
    with torch.no_grad():
        task.prior.means.copy_(torch.tensor([0.5, -0.3]))
        task.prior.log_var.fill_(2 * math.log(0.05))
    snapped = task.quantize()[0].weight
    assert torch.equal(snapped, torch.tensor([[0.5, -0.3, 0.0], [0.0, 0.5, -0.3]]))


def test_near_identical_components_are_merged() -> None:
    cfg = Config(components=4, merge_kl=0.5)
    prior = _prior([0.3, 0.301, 0.001], 0.05, cfg)  # 1 and 2 coincide, 3 sits on the zero component
    mu, target = prior.merged()
    assert target[1] == target[2] and target[3] == 0 and target[1] != 0
    assert mu[1].item() == pytest.approx(0.3005, abs=1e-6) and mu[3] == 0


def test_storage_bits_follow_the_sparse_format() -> None:
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, -0.5]]))
    bits, values = storage_bits(nn.Sequential(layer), index_bits=2)
    # codebook {-0.5, 0.5}: 2-bit codes; stored entries at 1, 5 (filler: gap 6 > 2^2) and 7, each 2 + 2 bits
    assert values == 2 and bits == 3 * (2 + 2) + 2 * 32 + 2 * 32


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.quantization.softweightsharing_ullrich2017 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run softweightsharing_ullrich2017 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"pretrained", "sws", "posthoc"} <= {row.name for row in result.rows}
    assert result.row("sws").nonzero_params <= result.row("pretrained").nonzero_params
    assert len(result.answers) == 2
    assert result.figures == ["results/figures/softweightsharing_ullrich2017_accuracy.png"]
