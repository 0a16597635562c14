"""Paper properties of Hu et al. (2016) network trimming by APoZ, and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import torch

from implementations._models import build_model
from implementations.pruning._base import keep_top, prune_channels
from implementations.pruning.apoz_hu2016 import apoz_scores, layer_apoz, trim


def test_apoz_counts_exact_zeros_over_examples_and_positions() -> None:
    out = torch.tensor([[[0.0, 1.0], [0.0, 0.0], [2.0, 3.0]], [[0.0, 0.0], [0.0, 0.5], [1e-6, 1.0]]])  # (N=2, C=3, M=2)
    assert torch.allclose(apoz_scores(out), torch.tensor([0.75, 0.75, 0.0]))  # 1e-6 is not a zero
    assert torch.allclose(apoz_scores(torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])), torch.tensor([1.0, 2 / 3]))


def test_dead_neurons_are_trimmed_first() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", 10, (8,), width=1 / 32)  # hidden 8, 8
    dead = [1, 4, 6]
    with torch.no_grad():
        model.layers[0].bias[dead] = -100.0  # ReLU output is always 0: APoZ = 1
    x = torch.randn(64, 8)
    apoz = layer_apoz(model, x)
    assert torch.allclose(apoz[0][dead], torch.ones(3)) and bool((apoz[0][[0, 2, 3, 5, 7]] < 1).all())
    trimmed = trim(model, [-a for a in apoz], 3 / 8)
    assert trimmed.layers[0].weight.shape == (5, 8) and trimmed.layers[1].weight.shape == (5, 5)
    assert trimmed.head.weight.shape == (10, 5)
    assert not torch.isin(trimmed.layers[0].bias, torch.tensor(-100.0)).any()  # the dead units are the ones removed
    # removing never-active units leaves the function unchanged
    assert torch.allclose(prune_channels(model, [keep_top(-apoz[0], 5), None])(x), model(x), atol=1e-5)


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.pruning.apoz_hu2016 import reproduce
    from kb.results import Result

    data = reproduce(make_context("quick", results_dir=tmp_path / "results", device="cpu"))
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    extra = {"profile": "quick", "command": "kb run apoz_hu2016 --quick", "environment": env}
    result = Result.model_validate({**data, **extra, "wall_time_s": 1.0, "created": "2025-01-01T00:00:00"})
    assert result.row("mlp_apoz").params < result.row("mlp_dense").params / 3
    assert result.row("mlp_apoz").params == result.row("mlp_random").params
    assert [a.question for a in result.answers][1].startswith("Does APoZ still work")
