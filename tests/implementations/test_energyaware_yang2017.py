"""Paper properties of energy-aware pruning (Yang et al., 2017), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations._data import TensorData
from implementations.pruning.energyaware_yang2017 import (
    Config,
    EnergyModel,
    calibration_accuracy,
    energy_aware_prune,
    least_squares_refit,
)


def test_layer_energy_counts_by_hand() -> None:
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0, 2, 0], [0, 3, 0, 4], [5, 0, 0, 6]]))  # 6 non-zeros
    terms = EnergyModel().layer_energy(layer, (4,), (3,))
    assert terms == {
        "compute": 6 * 1 + 4 * 6 * 1,  # 6 MACs (zeros skipped), 4 RF accesses each
        "weights": 6 * (200 + 6 + 2),  # each non-zero weight through DRAM, buffer, array once
        "inputs": 4 * 200 + 4 * 6 * 1 + 4 * 2 * 1,  # DRAM once, buffer once per 16-channel tile, array x kernel 1
        "outputs": 3 * (200 + 6),
    }
    assert EnergyModel(weights_on_chip=True).layer_energy(layer, (4,), (3,))["weights"] == 6 * (6 + 2)
    conv = nn.Conv1d(2, 4, 3, bias=False)
    conv_terms = EnergyModel().layer_energy(conv, (2, 10), (4, 8))
    assert conv_terms["compute"] == 5 * 24 * 8  # every weight used at the 8 output positions


def test_least_squares_refit_recovers_a_sparse_layer_exactly() -> None:
    torch.manual_seed(0)
    for layer in (nn.Linear(6, 4), nn.Conv1d(3, 4, 5, stride=2, padding=2, bias=False)):
        mask = (torch.rand_like(layer.weight) > 0.5).float()
        true_weight = torch.randn_like(layer.weight) * mask
        x = torch.randn(64, 6) if isinstance(layer, nn.Linear) else torch.randn(64, 3, 12)
        with torch.no_grad():
            layer.weight.copy_(true_weight)
            y = layer(x)
            layer.weight.normal_()  # forget the answer
            if layer.bias is not None:
                true_bias = layer.bias.clone()
                layer.bias.zero_()
        fitted = least_squares_refit(layer, mask, x, y, ridge=0.0)
        assert torch.allclose(fitted, true_weight, atol=1e-4)
        assert torch.all(fitted[mask == 0] == 0)
        if layer.bias is not None:
            assert torch.allclose(layer.bias, true_bias, atol=1e-4)


def test_prune_respects_tolerance_and_order() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(200, 8)
    y = model(x).argmax(1)
    calib, accuracy = calibration_accuracy(TensorData(x, y, x, y, num_classes=3, input_shape=(8,)), 200)
    before = [p.detach().clone() for p in model.parameters()]
    assert accuracy(model) == 100.0
    pruned, rates = energy_aware_prune(model, ["2", "0"], calib, accuracy, Config(tolerance=100.0))
    assert rates == {"2": 0.95, "0": 0.95}  # no accuracy limit: the top rate everywhere
    assert int((pruned[0].weight == 0).sum()) == int(0.95 * 128) and hasattr(pruned[0], "weight_mask")
    strict, rates = energy_aware_prune(model, ["0", "2"], calib, accuracy, Config(tolerance=5.0))
    assert accuracy(strict) >= 95.0 and max(rates.values()) < 0.95
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # input untouched
    assert not hasattr(model[0], "weight_mask")


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.pruning.energyaware_yang2017 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run energyaware_yang2017 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert result.row("dense").extra["energy_eyeriss"] == 1.0
    assert result.row("eap_ft").extra["energy_eyeriss"] < 1.0
    assert result.row("eap_ft").nonzero_params < result.row("dense").nonzero_params
    assert result.figures == ["results/figures/energyaware_yang2017_energy.png"]
