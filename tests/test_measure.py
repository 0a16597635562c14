"""Measurement: hand-checkable parameter counts, sizes, FLOPs, latency, accuracy statistics."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from implementations._measure import (
    accuracy_stats,
    beats,
    count_flops,
    count_nonzero,
    count_params,
    dense_bytes,
    latency_ms,
    model_row,
    quantized_bytes,
    sparse_bytes,
    versus,
)


def test_linear_counts() -> None:
    layer = nn.Linear(10, 5)
    assert count_params(layer) == 55  # 10 * 5 weights + 5 biases
    assert dense_bytes(layer) == 220
    for batch in (1, 3):
        assert count_flops(layer, torch.randn(batch, 10)) == 2 * 10 * 5 * batch


def test_conv_flops() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    # 2 * H * W * C_out * C_in * k * k multiply-adds for one 8x8 image.
    assert count_flops(conv, torch.randn(1, 3, 8, 8)) == 2 * 8 * 8 * 8 * 3 * 3 * 3


def test_sparse_and_quantized_sizes() -> None:
    layer = nn.Linear(10, 5)
    with torch.no_grad():
        layer.weight[:, :6] = 0.0  # 30 of the 50 weights are zero
        layer.bias.fill_(1.0)
    assert count_nonzero(layer) == 25
    assert sparse_bytes(layer) == 25 * (4 + 4)
    assert sparse_bytes(layer, value_bytes=2, index_bytes=2) == 25 * 4
    assert quantized_bytes(55, bits=8) == 55 + 4
    assert quantized_bytes(layer, bits=4, num_scales=2) == math.ceil(4 * 55 / 8) + 8  # 28 + 8
    assert quantized_bytes(1000, bits=1.58, num_scales=10, scale_bytes=2) == 198 + 20


def test_accuracy_stats() -> None:
    stats = accuracy_stats([90.0, 92.0, 94.0])
    assert stats == {"mean": 92.0, "std": 2.0, "values": [90.0, 92.0, 94.0]}  # sample std (ddof 1)
    assert accuracy_stats([71.5])["std"] == 0.0
    with pytest.raises(ValueError):
        accuracy_stats([])


def test_latency_is_positive_and_scales_with_work() -> None:
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    small = latency_ms(model, (256,), batch_size=1, min_run_time=0.05)
    large = latency_ms(model, (256,), batch_size=512, min_run_time=0.05)
    assert 0 < small < large and model.training


def test_model_row_columns() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    row = model_row(model, (3, 4))
    assert row == {
        "params": 52,
        "nonzero_params": 52,
        "bytes": 208,
        "flops": 2 * 12 * 4,
        "latency_ms": None,
        "bits": None,
    }
    assert model_row(model, (3, 4), bits=8)["bytes"] == 52 + 2 * 4  # one fp32 scale per parameter tensor


def test_model_row_counts_a_pruned_model_in_sparse_format_once_smaller() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    with torch.no_grad():
        model[1].weight[:, :9] = 0.0  # 36 of 52 parameters zeroed: 16 non-zeros * 8 bytes = 128 < 208
    assert model_row(model, (3, 4))["bytes"] == 16 * 8
    with torch.no_grad():
        model[1].weight.fill_(1.0)
        model[1].bias.zero_()  # 48 non-zeros * 8 = 384 > 208: stays dense
    assert model_row(model, (3, 4))["bytes"] == 208


def test_beats_needs_a_paired_gain_beyond_one_standard_error() -> None:
    assert beats([71.0, 72.0, 73.0], [70.0, 71.0, 72.0])  # +1 on every seed: sd 0
    assert not beats([70.0, 70.0, 70.0], [70.0, 70.0, 70.0])  # a tie is not a win
    # mean gain +1 but differences (+4, -2, +1): sd 3, standard error sqrt(3) > 1
    assert not beats([74.0, 68.0, 71.0], [70.0, 70.0, 70.0])
    assert beats([70.5], [70.0]) and not beats([69.5], [70.0])  # one seed: direction only
    with pytest.raises(ValueError):
        beats([70.0, 71.0], [70.0])


def test_gpu_benchmark_script_runs_on_cpu(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(root / "scripts" / "bench_gpu_kd.py"), "--device", "cpu", "--steps", "3"]
    proc = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["mode"] for r in report["results"]] == ["baseline", "optimized", "optimized+cache"]
    assert report["results"][0]["speedup"] == 1.0 and all(r["images_per_s"] > 0 for r in report["results"])
    assert "speedup" in proc.stdout and report["args"]["steps"] == 3


def test_versus_names_the_direction_only_beyond_noise() -> None:
    assert versus([71.0, 72.0, 73.0], [70.0, 71.0, 72.0]) == "beats"
    assert versus([70.0, 71.0, 72.0], [71.0, 72.0, 73.0]) == "loses to"
    assert versus([74.0, 68.0, 71.0], [70.0, 70.0, 70.0]) == "is within noise of"
    assert versus([71.0, 72.0, 73.0], [70.0, 71.0, 72.0], digits=2) == "beats (+1.00 points)"
