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
    assert {"fp", "naive_w3_stale", "ls_w3_n256", "int8_static"} <= names
    fp, int8 = result.row("fp"), result.row("int8_static")
    assert int8.extra["int8_ptq_path"] == "fx_static" and int8.latency_ms is not None
    # one bytes rule: int8 parameter storage sits between the W4 rows and a quarter-plus-BN of fp32
    assert result.row("ls_w4_n256").bytes < int8.bytes < fp.bytes / 3
    assert int8.extra["serialized_bytes"] < fp.extra["serialized_bytes"] / 2
    assert result.row("ls_w2_n256").bytes < result.row("ls_w4_n256").bytes < result.row("fp").bytes
    assert len(result.answers) == 2 and (tmp_path / "results" / "figures" / "limiteddata_he2018_samples.png").exists()


# ---------------------------------------------------------------------------------------------------------------------
# The shared post-training int8 helper (quantization/_base.py) that this paper's int8 rows use
# ---------------------------------------------------------------------------------------------------------------------


class _ResidualNet(nn.Module):
    """Conv-BN-ReLU stem, one basic residual block (identity shortcut), global pool, linear head."""

    def __init__(self, width: int = 48) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h)))))
        return self.head(torch.relu(out + h).mean(dim=(2, 3)))


class _DataDependentBranch(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:
            h = torch.relu(h)
        return self.b(h)


def _with_bn_statistics(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Give the BN layers non-trivial running statistics, then switch to eval."""
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(64, *shape))
    return model.eval()


@pytest.mark.parametrize("name", ["residual", "cnn1d"])
def test_int8_ptq_is_real_static_int8_close_to_float_and_a_quarter_of_the_size(name: str) -> None:
    from torch.ao.nn import quantized as nnq
    from torch.ao.nn.intrinsic import quantized as nniq

    from implementations._models import build_model
    from implementations.quantization._base import int8_kernels, int8_ptq, serialized_bytes

    shape = (3, 8, 8) if name == "residual" else (1, 40)
    model = _ResidualNet() if name == "residual" else build_model("cnn1d", 10, shape)
    model = _with_bn_statistics(model, shape)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized, info = int8_ptq(model, torch.randn(256, *shape))
    assert info["path"] == "fx_static" and info["reason"] is None and info["float_layers_left"] == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the float model is untouched
    kinds = [type(m) for m in quantized.modules()]
    conv = nniq.ConvReLU2d if name == "residual" else nniq.ConvReLU1d  # conv-BN-ReLU folded into one int8 kernel
    assert conv in kinds and nnq.Linear in kinds
    if name == "residual":
        assert nnq.Conv2d in kinds  # the conv before the add (no ReLU of its own)
        assert "quantized.add_relu" in quantized.code  # the residual add runs on int8 tensors
    x = torch.randn(512, *shape)  # drawn like the calibration inputs
    with torch.no_grad(), int8_kernels():
        reference, output = model(x), quantized(x)
    # 8-bit weights and activations: relative L2 error of the logits within 6%, top-1 agreement at least 95%
    assert (output - reference).norm() / reference.norm() < 0.06
    assert (output.argmax(1) == reference.argmax(1)).float().mean() >= 0.95
    # real int8 storage: between 1/4 and 0.35 of the fp32 file (int8 weights; fp32 biases, fp64 per-channel scales
    # and int64 zero points, and the torch.save container make up the rest at this size)
    ratio = serialized_bytes(quantized) / serialized_bytes(model)
    assert 0.25 < ratio < 0.35, ratio


def test_int8_ptq_falls_back_to_dynamic_linear_for_an_untraceable_model() -> None:
    from torch.ao.nn.quantized import dynamic as nnqd

    from implementations.quantization._base import int8_kernels, int8_ptq

    model = _DataDependentBranch().eval()
    quantized, info = int8_ptq(model, torch.randn(64, 16))
    assert info["path"] == "dynamic_linear" and "TraceError" in info["reason"]
    assert sum(isinstance(m, nnqd.Linear) for m in quantized.modules()) == 2 and info["float_layers_left"] == 0
    x = torch.randn(32, 16)
    with torch.no_grad(), int8_kernels():
        assert (quantized(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()


@pytest.mark.parametrize(
    ("name", "shape"), [("mlp", (40,)), ("cnn1d", (40,)), ("cnn2d", (3, 8, 8)), ("resnet8", (3, 8, 8))]
)
def test_every_zoo_model_takes_the_static_int8_path(name: str, shape: tuple[int, ...]) -> None:
    from implementations._models import build_model
    from implementations.quantization._base import int8_ptq

    model = _with_bn_statistics(build_model(name, 10, shape, width=0.5), shape)
    _, info = int8_ptq(model, torch.randn(64, *shape))
    assert info["path"] == "fx_static" and info["float_layers_left"] == 0, info
