"""Paper properties of transparent model distillation into additive models (Tan et al., 2018)."""

from __future__ import annotations

from pathlib import Path

import torch

from implementations.distillation.transparent_tan2018 import (
    AdditiveModel,
    Config,
    TransparentDistillation,
    distillation_loss,
    fast_pair_scores,
)


def _cross_difference(model: AdditiveModel, x: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """g(a, b) - g(a', b) - g(a, b') + g(a', b') for features i, j: zero iff no (i, j) interaction."""
    a, b = x.clone(), x.clone()
    a[:, i] += 0.7
    b[:, j] -= 0.4
    ab = x.clone()
    ab[:, i] += 0.7
    ab[:, j] -= 0.4
    return model(x) - model(a) - model(b) + model(ab)


def test_gam_is_additive_and_a_pair_term_adds_exactly_one_interaction() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 4)
    gam = AdditiveModel(4, 3, Config(hidden=8))
    assert torch.allclose(_cross_difference(gam, x, 0, 2), torch.zeros(5, 3), atol=1e-5)
    logits = gam(x)
    assert torch.allclose(logits, gam.bias + gam.shape_functions(x).sum(1), atol=1e-6)
    ga2m = AdditiveModel(4, 3, Config(hidden=8, pairs=((0, 2),)))
    assert _cross_difference(ga2m, x, 0, 2).abs().max() > 1e-3
    assert torch.allclose(_cross_difference(ga2m, x, 1, 3), torch.zeros(5, 3), atol=1e-5)
    # d (H + H + H K) shape-function parameters + K intercepts, + (2H + H + HK + K) per pair.
    d, h, k = 4, 8, 3
    assert sum(p.numel() for p in gam.parameters()) == d * (2 * h + h * k) + k
    assert sum(p.numel() for p in ga2m.parameters()) == d * (2 * h + h * k) + k + (3 * h + h * k + k)


def test_fidelity_loss_ignores_a_per_example_logit_shift() -> None:
    teacher = torch.tensor([[1.0, 3.0], [0.0, -2.0]])
    shifted = teacher + torch.tensor([[5.0], [-1.0]])  # same softmax
    assert distillation_loss(shifted, teacher).item() < 1e-10
    # Binary case: centred logits are +-(z1 - z0) / 2, so a logit error e costs 2 (e / 2)^2 = e^2 / 2.
    off = teacher + torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    assert distillation_loss(off, teacher).item() == 0.5 * 2.0**2 / 2


def test_distiller_never_reads_the_labels() -> None:
    torch.manual_seed(0)
    student, teacher = AdditiveModel(3, 2), torch.nn.Linear(3, 2)
    task = TransparentDistillation(student, teacher)
    x = torch.randn(6, 3)
    _, a = task.forward_train(x, torch.zeros(6, dtype=torch.long))
    _, b = task.forward_train(x, torch.ones(6, dtype=torch.long))
    assert torch.equal(a["fidelity"], b["fidelity"])


def test_fast_ranks_the_interacting_pair_first() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2000, 5, generator=gen) * 2 - 1
    residual = 2 * x[:, 1] * x[:, 3] + 0.1 * torch.randn(2000, generator=gen)
    scores = fast_pair_scores(x, residual, bins=4)
    assert len(scores) == 10 and max(scores, key=scores.get) == (1, 3)


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.distillation.transparent_tan2018 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run transparent_tan2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {row.name for row in result.rows} == {"teacher", "gam_labels", "gam_distilled", "ga2m_distilled"}
    assert "fidelity_r2" in result.row("gam_distilled").extra and len(result.figures) == 2
    assert (tmp_path / "results" / "figures" / "transparent_tan2018_shapes.png").stat().st_size > 1000
