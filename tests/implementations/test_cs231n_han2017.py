"""Properties of the efficiency illustration of CS231n lecture 15: energy model, pruning, int8, and the quick run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations.other.cs231n_han2017 import ENERGY_PJ, Config, EfficiencyReport, energy_pj, magnitude_prune


def test_energy_model_by_hand() -> None:
    assert ENERGY_PJ["dram_read_32b"] == 640.0 and ENERGY_PJ["fp32_add"] == 0.9  # the lecture's headline pair
    one = energy_pj(weight_bytes=4, macs=1, arithmetic="fp32")
    assert one == pytest.approx({"memory": 640.0, "compute": 4.6, "total": 644.6})
    batched = energy_pj(weight_bytes=4, macs=1, arithmetic="int8", batch_size=256)
    assert batched["memory"] == pytest.approx(2.5) and batched["compute"] == pytest.approx(0.3)


def test_global_magnitude_pruning_removes_the_smallest_half() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    original = torch.cat([m.weight.detach().flatten().abs() for m in model if isinstance(m, nn.Linear)])
    magnitude_prune(model, 0.5)
    pruned = torch.cat([m.weight.detach().flatten() for m in model if isinstance(m, nn.Linear)])
    removed = pruned == 0
    assert int(removed.sum()) == round(0.5 * original.numel())  # 45 weights -> 22 (torch rounds the amount)
    assert original[removed].max() <= original[~removed].min()  # global: the smallest magnitudes, any layer
    report = EfficiencyReport(Config(index_bits=4))
    dense, nonzero = report.weight_counts(model)
    assert (dense, nonzero) == (45, 45 - int(removed.sum()))
    assert report.storage_bytes(model, bits=8, sparse=True) == (nonzero * 12 + 7) // 8 + 4 * 8


def test_static_int8_weights_are_within_half_a_per_channel_step() -> None:
    from implementations._models import MLP
    from implementations.quantization._base import int8_kernels, int8_ptq

    torch.manual_seed(0)
    model = MLP(40, 10, (16, 16)).eval()
    quantized, info = int8_ptq(model, torch.randn(256, 40))
    assert info["path"] == "fx_static" and info["float_layers_left"] == 0
    q_layers = [quantized.get_submodule(n) for n in ("model.layers.0", "model.layers.1", "model.head")]
    for float_layer, q_layer in zip([*model.layers, model.head], q_layers, strict=True):
        qweight = q_layer.weight()
        assert qweight.dtype == torch.qint8 and qweight.qscheme() == torch.per_channel_affine  # one scale per row
        assert torch.all(qweight.q_per_channel_zero_points() == 0)  # symmetric: zero points all 0
        error = (qweight.dequantize() - float_layer.weight).abs().amax(dim=1)  # (out,)
        assert torch.all(error <= qweight.q_per_channel_scales().float() / 2 + 1e-7)
    x = torch.randn(64, 40)
    with torch.no_grad(), int8_kernels():
        assert (quantized(x) - model(x)).norm() < 0.05 * model(x).norm()


def test_quick_illustration_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.other.cs231n_han2017 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    extra = {"profile": "quick", "command": "kb run cs231n_han2017 --quick", "environment": env}
    result = Result.model_validate({**data, **extra, "wall_time_s": 1.0, "created": "2025-01-01T00:00:00"})
    fp32, int8 = result.row("fp32"), result.row("int8")
    assert int8.bytes < fp32.bytes / 3.5 and result.row("pruned").nonzero_params < fp32.nonzero_params
    assert fp32.extra["memory_share_batch1"] > fp32.extra["memory_share_batch256"]
    assert "illustration" in result.protocol.notes.lower()
