"""Paper properties of label-free compression (He & Cheng, 2018): LS-scaled quantizer and BN re-normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations.quantization.limiteddata_he2018 import (
    Config,
    LimitedDataCompression,
    ls_quantize,
    naive_quantize,
    renormalize,
)


def test_least_squares_scale_by_hand_and_monotone_error() -> None:
    # ternary (b = 2, q_max = 1): alpha_0 = max|w| = 1 -> Q = (0, 0, 1, -1) -> alpha = (0.9 + 1.0) / 2 = 0.95
    w = torch.tensor([0.1, 0.2, 0.9, -1.0])
    codes, alpha, errors = ls_quantize(w, bits=2)
    assert codes.tolist() == [0.0, 0.0, 1.0, -1.0] and alpha.item() == pytest.approx(0.95)
    assert errors[-1] == pytest.approx(0.01 + 0.04 + 0.0025 + 0.0025)
    assert float(((naive_quantize(w, 2) - w) ** 2).sum()) == pytest.approx(0.06)  # absmax scale is worse
    # on random weights the alternating fit never increases the error and ends below the absmax error
    v = torch.randn(500, generator=torch.Generator().manual_seed(0))
    for bits in (2, 3, 4):
        codes, alpha, errors = ls_quantize(v, bits)
        assert all(b <= a + 1e-4 for a, b in zip(errors, errors[1:], strict=False))
        assert errors[-1] < float(((naive_quantize(v, bits) - v) ** 2).sum())
        qmax = 2 ** (bits - 1) - 1
        assert codes.abs().max() <= qmax and torch.equal(codes, codes.round())
        # at the fixed point alpha is the least-squares scale of its own codes
        assert alpha.item() == pytest.approx(float((v * codes).sum() / (codes * codes).sum()), rel=1e-5)
    # weights already on a scaled grid are recovered exactly
    grid = 0.3 * torch.tensor([-3.0, -1.0, 0.0, 2.0, 3.0, 1.0])
    codes, alpha, errors = ls_quantize(grid, bits=3)
    assert torch.allclose(alpha * codes, grid) and errors[-1] < 1e-10


def test_naive_quantizer_error_is_at_most_half_a_step() -> None:
    w = torch.randn(64, generator=torch.Generator().manual_seed(1))
    for bits in (2, 3, 4):
        step = float(w.abs().max()) / (2 ** (bits - 1) - 1)
        w_hat = naive_quantize(w, bits)
        assert torch.all((w_hat - w).abs() <= step / 2 + 1e-6)
        assert len(torch.unique(w_hat)) <= 2**bits - 1


def test_renormalisation_sets_batch_norm_statistics_to_those_of_the_unlabelled_inputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 3, 3, padding=1, bias=False), nn.BatchNorm1d(3), nn.ReLU())
    x = torch.randn(20, 1, 8) * 2 + 1  # (N, C, L)
    stale = model[1].running_mean.clone()
    weight = model[0].weight.detach().clone()
    renormalize(model, x, batch_size=64)  # one batch: exact statistics
    h = model[0](x).detach()  # (N, 3, L) pre-BN activations
    assert torch.allclose(model[1].running_mean, h.mean(dim=(0, 2)), atol=1e-5)
    assert torch.allclose(model[1].running_var, h.transpose(0, 1).reshape(3, -1).var(dim=1), atol=1e-4)
    assert not torch.allclose(model[1].running_mean, stale)
    assert torch.equal(model[0].weight, weight) and not model.training  # no weight update, back in eval mode
    # after re-estimation the BN output on the same inputs is normalised: zero mean per channel
    assert torch.allclose(model[1](h).mean(dim=(0, 2)), torch.zeros(3), atol=1e-4)


def test_compress_quantizes_every_layer_and_leaves_the_source_model_alone() -> None:
    task, x, _ = LimitedDataCompression.smoke_task()
    task.cfg = Config(bits=2)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    stale = task.compress(None)
    renormed = task.compress(x)
    for module in stale.modules():
        if isinstance(module, nn.Conv1d | nn.Linear):
            assert len(torch.unique(module.weight)) <= 3  # ternary: {-alpha, 0, alpha}
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())
    assert torch.equal(stale.stages[0][1].running_mean, before["stages.0.1.running_mean"])
    assert not torch.equal(renormed.stages[0][1].running_mean, before["stages.0.1.running_mean"])
    assert torch.equal(renormed.stages[0][0].weight, stale.stages[0][0].weight)


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.quantization.limiteddata_he2018 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run limiteddata_he2018 --quick",
            "environment": {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"},
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    names = {r.name for r in result.rows}
    assert {"fp", "naive_w3_stale", "ls_w3_n256", "int8_static", "int8_dynamic"} <= names
    assert result.row("int8_static").bytes < result.row("fp").extra["serialized_bytes"]
    assert result.row("ls_w2_n256").bytes < result.row("ls_w4_n256").bytes < result.row("fp").bytes
    assert len(result.answers) == 2 and (tmp_path / "results" / "figures" / "limiteddata_he2018_samples.png").exists()
