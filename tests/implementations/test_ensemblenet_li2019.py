"""Paper properties of EnsembleNet (Li, Ng & Natsev, 2019), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from implementations._models import CNN1d
from implementations.mutual_learning.ensemblenet_li2019 import Config, EnsembleNet, ensemblenet_loss


def test_codistillation_vanishes_when_heads_agree_and_the_ce_is_the_ensembles() -> None:
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])  # (B=2, K=3)
    y = torch.tensor([0, 2])
    losses = ensemblenet_loss(torch.stack([z, z, z]), y, Config())
    assert set(losses) == {"ce_ensemble", "codistill"}
    assert losses["codistill"].abs().item() < 1e-7
    assert torch.allclose(losses["ce_ensemble"], F.cross_entropy(z, y))
    heads = torch.stack([z, -z])  # ensemble of logits = 0: uniform prediction
    assert torch.allclose(ensemblenet_loss(heads, y, Config())["ce_ensemble"], torch.tensor(3.0).log())


def test_each_head_is_pulled_towards_the_fixed_ensemble() -> None:
    # d/dz_h of (lambda / H) * KL(sg[p_bar] || softmax(z_h)), batch mean = (lambda / H) * (p_h - p_bar) / B
    torch.manual_seed(0)
    heads = torch.randn(2, 4, 5, requires_grad=True)  # (H, B, K)
    y = torch.randint(0, 5, (4,))
    ensemblenet_loss(heads, y, Config(distill_weight=0.5))["codistill"].backward()
    p_bar = F.softmax(heads.detach().mean(0), dim=-1)
    expected = 0.5 / 2 * (F.softmax(heads.detach(), dim=-1) - p_bar) / 4
    assert torch.allclose(heads.grad, expected, atol=1e-6)


def test_half_width_heads_cost_the_single_network_plus_one_bias_per_extra_head() -> None:
    single = CNN1d(1, 40, 10, (16, 32, 32))
    model = EnsembleNet([CNN1d(1, 40, 10, (16, 32, 16)) for _ in range(2)])
    # conv, BN and classifier weights split exactly in half; only the classifier bias (K = 10) is duplicated
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in single.parameters()) + 10
    assert all(head.trunk is model.trunk for head in model.peers)
    x = torch.randn(3, 1, 40)
    model.eval()
    assert torch.allclose(model(x), (model.peers[0](x) + model.peers[1](x)) / 2, atol=1e-6)


def test_comparison_losses_have_their_terms() -> None:
    heads, y = torch.randn(3, 2, 4), torch.tensor([1, 3])
    assert set(ensemblenet_loss(heads, y, Config(loss="independent"))) == {"ce0", "ce1", "ce2"}
    assert set(ensemblenet_loss(heads, y, Config(loss="dml"))) == {"ce0", "ce1", "ce2", "kl0", "kl1", "kl2"}
    assert set(ensemblenet_loss(heads, y, Config(loss="one"))) == {
        "ce0",
        "ce1",
        "ce2",
        "ce_ensemble",
        "kl0",
        "kl1",
        "kl2",
    }
    with pytest.raises(ValueError):
        ensemblenet_loss(heads, y, Config(loss="boosting"))


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.mutual_learning.ensemblenet_li2019 import QUESTION, reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run ensemblenet_li2019 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"single", "codistill", "independent", "dml", "one"} <= {row.name for row in result.rows}
    assert result.row("codistill").params == result.row("single").params + 10  # one extra classifier bias
    assert result.row("codistill").flops == result.row("single").flops
    assert result.claim.reproduced == (
        result.row("codistill").accuracy.mean > max(result.row(n).accuracy.mean for n in ("single", "independent"))
    )
    assert result.answers[0].question == QUESTION
