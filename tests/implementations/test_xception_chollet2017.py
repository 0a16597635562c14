"""Paper properties of Xception (Chollet, 2017): separable layer = constrained conv, residual flows, equal params."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from implementations._measure import count_params
from implementations.architecture.xception_chollet2017 import (
    TINY,
    Config,
    SeparableConv,
    Xception,
    _Module,
    matched_plain_width,
)


def test_separable_layer_is_a_regular_conv_with_kernel_w_nm_times_k_m() -> None:
    torch.manual_seed(0)
    m, n = 5, 7
    layer = SeparableConv(m, n)
    depthwise, pointwise = layer.layers[0].weight, layer.layers[1].weight  # (M, 1, 3, 3), (N, M, 1, 1)
    kernel = pointwise[:, :, 0, 0, None, None] * depthwise[None, :, 0]  # W_nm = w_nm k_m, (N, M, 3, 3)
    x = torch.randn(2, m, 6, 6)
    assert torch.allclose(layer.layers[:-1](x), F.conv2d(x, kernel, padding=1), atol=1e-5)
    # 9M + MN weights (+ 2N BatchNorm) against 9MN for a regular conv; the ablation adds no parameters
    assert count_params(layer) == 9 * m + m * n + 2 * n
    assert count_params(SeparableConv(m, n, separable=False)) == 9 * m * n + 2 * n
    relu = SeparableConv(m, n, intermediate_relu=True)
    assert count_params(relu) == count_params(layer) and isinstance(relu.layers[1], torch.nn.ReLU)


def test_middle_modules_are_residual_and_entry_modules_downsample() -> None:
    x = torch.randn(2, 8, 4, 4)
    middle = _Module(8, 8, 3, downsample=False, first_relu=True, cfg=Config()).eval()
    with torch.no_grad():  # zero the last BatchNorm: the module must reduce to its identity shortcut
        middle.body[-1].layers[-1].weight.zero_()
        middle.body[-1].layers[-1].bias.zero_()
    assert torch.equal(middle(x), x)
    entry = _Module(8, 16, 2, downsample=True, first_relu=False, cfg=Config())
    assert entry(x).shape == (2, 16, 2, 2) and entry.shortcut[0].stride == (2, 2)
    assert Xception(TINY)(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_plain_baseline_is_matched_in_parameters() -> None:
    width = matched_plain_width(Config())
    separable, plain = count_params(Xception()), count_params(Xception(replace(Config(), separable=False, width=width)))
    assert abs(plain - separable) / separable < 0.03
    assert count_params(Xception(replace(Config(), separable=False))) > 4 * separable  # same widths: far larger
    assert width < 0.6


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.architecture.xception_chollet2017 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    data = reproduce(make_context("quick", results_dir=tmp_path / "results", device="cpu"))
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run xception_chollet2017 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    sep, plain = result.row("xception"), result.row("plain_equal_params")
    assert abs(sep.params - plain.params) / sep.params < 0.03
    assert result.claim.reproduced == (sep.accuracy.mean > plain.accuracy.mean)
    assert len(result.answers) == 2 and result.figures == ["results/figures/xception_chollet2017_tradeoff.png"]
