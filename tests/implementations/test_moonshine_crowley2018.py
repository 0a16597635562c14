"""Paper properties of Moonshine (Crowley et al., 2018), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations._models import build_model
from implementations.distillation.moonshine_crowley2018 import (
    attention_map,
    attention_transfer_loss,
    cheap_conv,
    cheapen,
)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("n", "k", "g"), [(16, 3, 1), (16, 3, 2), (16, 3, 4), (32, 3, 8), (24, 5, 3)])
def test_grouped_conv_cost_is_n2k2_over_g(n: int, k: int, g: int) -> None:
    # The notes' (N/g)^2 k^2 is one group's cost; all g groups together cost g (N/g)^2 k^2 = N^2 k^2 / g.
    assert _params(nn.Conv2d(n, n, k, groups=g, bias=False)) == n * n * k * k // g == g * (n // g) ** 2 * k * k
    # G(g) adds the pointwise conv that mixes the groups, N^2: the saving falls short of g once k^2 / g < 1.
    assert _params(cheap_conv(nn.Conv2d(n, n, k, bias=False), "G", g)) == n * n * k * k // g + n * n


def test_bottleneck_cost_and_shapes() -> None:
    n, k, b = 32, 3, 4
    block = cheap_conv(nn.Conv2d(n, n, k, padding=1, bias=False), "B", b)
    assert _params(block) == n * (n // b) + (n // b) ** 2 * k * k + (n // b) * n
    x = torch.randn(2, n, 8, 8)
    assert block(x).shape == (2, n, 8, 8)
    strided = nn.Conv1d(16, 32, 5, stride=2, padding=2, bias=False)
    for kind in ("G", "B"):
        assert cheap_conv(strided, kind, 2)(torch.randn(3, 16, 20)).shape == strided(torch.randn(3, 16, 20)).shape


def test_cheapen_swaps_only_splittable_convs_and_starts_fresh() -> None:
    teacher = build_model("cnn1d", 10, (1, 40), width=0.5).requires_grad_(False)  # a frozen trained teacher
    student = cheapen(teacher, "G", 4)
    convs = [m for m in student.modules() if isinstance(m, nn.Conv1d)]
    assert [c.groups for c in convs] == [1, 4, 1, 4, 1]  # stem (1 -> 16) stays dense; two G(4) blocks
    assert all(p.requires_grad for p in student.parameters())
    assert not torch.equal(student.head.weight, teacher.head.weight)  # fresh initialisation, not a copy
    x = torch.randn(4, 1, 40)
    assert student(x).shape == teacher(x).shape
    assert [f.shape for f in student(x, return_features=True)[1]] == [
        f.shape for f in teacher(x, return_features=True)[1]
    ]
    assert _params(student) < _params(teacher)


def test_attention_transfer_loss() -> None:
    # Maps [1, 0] and [0, 1]: a_S = (1, 0), a_T = (0, 1), mean squared difference 1, times beta / 2.
    s, t = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]]])
    assert torch.allclose(attention_transfer_loss([s], [t], beta=10.0), torch.tensor(5.0))
    # The map ignores the channel count and the scale of the activations: zero loss against a 3x wider, 2x louder copy.
    features = torch.randn(5, 4, 6)
    wider = 2 * features.repeat(1, 3, 1)
    assert torch.allclose(attention_map(features), attention_map(wider), atol=1e-6)
    assert attention_transfer_loss([features], [wider], beta=1000.0).item() < 1e-8


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.distillation.moonshine_crowley2018 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run moonshine_crowley2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    blocks = [row.name[: -len("_at")] for row in result.rows if row.name.endswith("_at")]
    gains = [result.row(f"{b}_at").accuracy.mean - result.row(f"{b}_scratch").accuracy.mean for b in blocks]
    assert result.claim.reproduced == all(g > 0 for g in gains)
    assert all(result.row(f"{b}_at").params < result.row("teacher").params for b in blocks)
    assert result.figures == ["results/figures/moonshine_crowley2018_params.png"]
