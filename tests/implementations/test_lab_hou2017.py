"""Paper properties of loss-aware binarization (Hou et al., 2017), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn.utils import parametrize

from implementations.quantization._base import QuantMLP
from implementations.quantization.lab_hou2017 import LAB, Binarizer, Config, binarize, lab_scale


def test_scale_is_curvature_weighted_mean_of_magnitudes() -> None:
    w = torch.tensor([0.5, -1.0, 0.25, 0.0])
    assert torch.isclose(lab_scale(w, torch.ones(4)), w.abs().mean())  # D = I: binary weight network
    assert torch.isclose(lab_scale(w, torch.tensor([1.0, 1.0, 2.0, 0.0])), torch.tensor(0.5))  # (0.5 + 1 + 0.5) / 4
    assert torch.isclose(lab_scale(w, torch.tensor([0.0, 5.0, 0.0, 0.0])), torch.tensor(1.0))  # all curvature on w_2


def test_binarized_weights_and_straight_through_gradient() -> None:
    w = torch.tensor([0.3, -0.2, 0.0, -0.9], requires_grad=True)
    out = binarize(w, 0.5)
    assert out.tolist() == [0.5, -0.5, 0.5, -0.5]  # sign(0) = +1
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones(4))
    binarizer = Binarizer(w.shape, Config(scale="bc"))
    assert binarizer(w).abs().tolist() == [1.0] * 4  # BinaryConnect: alpha = 1


def test_second_moment_matches_adam_and_latents_are_clipped() -> None:
    torch.manual_seed(0)
    task = LAB(QuantMLP(6, 3, (5,)))
    opt = torch.optim.Adam(task.parameters(), lr=0.5, betas=(0.9, 0.999), eps=1e-8)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(4):
        _, losses = task.forward_train(x, y)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    layer = task.model.blocks[0][0]
    latent = layer.parametrizations.weight.original
    binarizer = layer.parametrizations.weight[0].quantizer
    assert int(binarizer.steps) == 4
    assert torch.allclose(binarizer.second_moment, opt.state[latent]["exp_avg_sq"], rtol=1e-5, atol=1e-12)
    assert latent.abs().max() > 1.0  # lr 0.5 pushes latents out of [-1, 1] ...
    task.forward_train(x, y)
    assert latent.abs().max() <= 1.0  # ... and the next forward pass clips them back
    d = binarizer.curvature()
    alpha = (d * latent.detach().abs()).sum() / d.sum()
    assert torch.allclose(layer.weight.abs(), alpha.expand_as(latent))
    assert not parametrize.is_parametrized(task.model.blocks[0][1])  # BN is untouched


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.quantization.lab_hou2017 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run lab_hou2017 --quick",
            "environment": {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"},
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"fp", "bc", "bwn", "lab"} <= {r.name for r in result.rows}
    assert result.row("lab").bits == 1.0 and result.row("lab").bytes < result.row("fp").bytes / 20
    lab, bwn, bc = (result.row(n).accuracy.mean for n in ("lab", "bwn", "bc"))
    assert result.claim.reproduced == (lab > bwn and lab > bc)
    assert result.answers and "width and depth" in result.answers[0].question
