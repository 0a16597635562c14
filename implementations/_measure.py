r"""What the results tables report: accuracy over seeds, size, compute and latency of a model.

Sizes count the parameters only (buffers such as BN running statistics are left out), in bytes:

- dense: $4P$ for $P$ fp32 parameters;
- sparse: $\mathrm{nnz} \cdot (4 + b_{\text{idx}})$, each non-zero value stored with its flat index
  ($b_{\text{idx}} = 4$ bytes, int32, by default);
- quantized: $\lceil b P / 8 \rceil + 4 S$ for $b$-bit codes and $S$ fp32 scales.

The `bytes` column of a results row (`model_row`) is the storage of the model as it would be shipped: the quantized
size when a bit width is given, otherwise the smaller of the dense and the sparse size, so a pruned model is counted
in sparse format once that is smaller and an unpruned one stays dense.

`beats` is the one rule for "the method wins" used by every verdict: the per-seed accuracies are paired by seed and the
mean gain must exceed one standard error of the paired difference.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`: a multiply-add counts as 2 FLOPs, so a
`Linear(d_in, d_out)` on a batch of $B$ costs $2 B\, d_{\text{in}}\, d_{\text{out}}$ (the bias add is not counted).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

# torch.utils.benchmark imports torch.utils.cpp_extension, which warns "No CUDA runtime is found" on every CPU-only
# machine that has a CUDA_HOME; that says nothing about our measurements, so keep it out of every `kb run`.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils.benchmark import Timer  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

__all__ = [
    "accuracy_stats",
    "beats",
    "versus",
    "count_flops",
    "count_nonzero",
    "count_params",
    "cpu_time_ms",
    "dense_bytes",
    "interleaved_latency",
    "latency_ms",
    "model_row",
    "quantized_bytes",
    "sparse_bytes",
]


def accuracy_stats(values: Sequence[float]) -> dict[str, Any]:
    """`{"mean", "std", "values"}` of per-seed accuracies; `std` is the sample std (ddof 1), 0 for one seed."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("accuracy_stats needs at least one value")
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.fmean(vals), "std": std, "values": vals}


def beats(method: Sequence[float], baseline: Sequence[float]) -> bool:
    r"""Whether `method` beats `baseline` beyond seed noise, on per-seed accuracies paired by seed.

    With $d_s = a_s - b_s$ over $n$ seeds: $\bar d > 0$ and, for $n > 1$, $\bar d > \mathrm{sd}(d) / \sqrt{n}$ (one
    standard error of the paired difference). With one seed only the direction is checked.
    """
    diffs = [float(a) - float(b) for a, b in zip(method, baseline, strict=True)]
    if not diffs:
        raise ValueError("beats needs at least one pair of values")
    mean = sum(diffs) / len(diffs)
    if len(diffs) == 1:
        return mean > 0
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    return mean > 0 and mean > sd / math.sqrt(len(diffs))


def versus(method: Sequence[float], baseline: Sequence[float], digits: int | None = None) -> str:
    """`"beats"`, `"loses to"` or `"is within noise of"`: `method` against `baseline` by the `beats` rule both ways.

    With `digits`, the mean paired difference follows, e.g. `"beats (+1.25 points)"`.
    """
    word = "beats" if beats(method, baseline) else "loses to" if beats(baseline, method) else "is within noise of"
    if digits is None:
        return word
    diff = statistics.fmean(method) - statistics.fmean(baseline)
    return f"{word} ({diff:+.{digits}f} points)"


def count_params(model: nn.Module) -> int:
    """Number of parameters $P$ (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    """Number of non-zero parameter entries."""
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def dense_bytes(model: nn.Module, bytes_per_value: int = 4) -> int:
    r"""Dense storage in bytes, $P \cdot$ `bytes_per_value` (fp32 by default)."""
    return count_params(model) * bytes_per_value


def sparse_bytes(model: nn.Module, value_bytes: int = 4, index_bytes: int = 4) -> int:
    r"""Sparse storage in bytes, $\mathrm{nnz} \cdot (\text{value\_bytes} + \text{index\_bytes})$."""
    return count_nonzero(model) * (value_bytes + index_bytes)


def quantized_bytes(num_params: int | nn.Module, bits: float, num_scales: int = 1, scale_bytes: int = 4) -> int:
    r"""Quantized storage in bytes, $\lceil b P / 8 \rceil + S \cdot \text{scale\_bytes}$.

    Args:
        num_params: $P$, or a model whose parameters are counted.
        bits: Bits per code $b$.
        num_scales: Number of scales (and zero points, if counted as scales) $S$.
        scale_bytes: Bytes per scale (4 for fp32, 2 for fp16).
    """
    n = count_params(num_params) if isinstance(num_params, nn.Module) else int(num_params)
    return math.ceil(bits * n / 8) + num_scales * scale_bytes


def count_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass of `model(inputs)` (inputs include the batch dimension), in eval mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(inputs)
    model.train(was_training)
    return int(counter.get_total_flops())


def latency_ms(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    device: str = "cpu",
    min_run_time: float = 0.2,
    num_threads: int = 1,
) -> float:
    """Median wall time in milliseconds of one forward pass on a batch, via `torch.utils.benchmark.Timer`.

    Args:
        model: Model, moved to `device` and put in eval mode for the measurement.
        input_shape: Shape of one input without the batch dimension.
        batch_size: Batch size of the timed forward pass.
        device: Where to run it.
        min_run_time: Seconds `blocked_autorange` keeps measuring.
        num_threads: CPU threads for the timed statement.
    """
    was_training = model.training
    model.to(device).eval()
    x = torch.randn(batch_size, *input_shape, device=device)
    with torch.no_grad():
        timer = Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=num_threads)
        measurement = timer.blocked_autorange(min_run_time=min_run_time)
    model.train(was_training)
    return measurement.median * 1e3


def interleaved_latency(
    models: dict[str, nn.Module], input_shape: Sequence[int], batch_size: int = 1, rounds: int = 5
) -> dict[str, float]:
    """Per model, the minimum over interleaved rounds of `_measure.latency_ms` (ms): robust to other processes.

    On a shared CPU one measurement can land in another job's burst; alternating the models and keeping each one's
    fastest round compares them under the same conditions.
    """
    best = dict.fromkeys(models, float("inf"))
    for _ in range(rounds):
        for name, model in models.items():
            best[name] = min(best[name], latency_ms(model, input_shape, batch_size=batch_size, min_run_time=0.05))
    return best


@torch.no_grad()
def cpu_time_ms(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, min_time: float = 0.2) -> float:
    """Median CPU time (ms) of the calling thread per forward pass, in eval mode; with one intra-op thread this is
    the compute cost, unaffected by time spent waiting for a core that other processes hold."""
    was_training = model.training
    model.eval()
    x = torch.randn(batch_size, *input_shape)
    model(x)  # warm-up
    times: list[int] = []
    started = time.thread_time()
    while time.thread_time() - started < min_time or len(times) < 5:
        tick = time.thread_time_ns()
        model(x)
        times.append(time.thread_time_ns() - tick)
    model.train(was_training)
    return statistics.median(times) / 1e6


def model_row(
    model: nn.Module, input_shape: Sequence[int], latency: bool = False, bits: float | None = None
) -> dict[str, Any]:
    """The size/compute columns of a results row for `model`: params, nonzero_params, bytes, flops, latency, bits.

    `bytes` is the quantized size when `bits` is given (one scale per parameter tensor), otherwise
    `min(dense_bytes, sparse_bytes)`: dense fp32, or value + int32 index per non-zero once that is smaller.
    FLOPs are per example (batch 1). Latency (batch 1, CPU) is measured only when asked, as it takes time.
    """
    device = next(model.parameters()).device
    n_tensors = sum(1 for _ in model.parameters())
    if bits is None:
        size = min(dense_bytes(model), sparse_bytes(model))
    else:
        size = quantized_bytes(model, bits, num_scales=n_tensors)
    return {
        "params": count_params(model),
        "nonzero_params": count_nonzero(model),
        "bytes": size,
        "flops": count_flops(model, torch.zeros(1, *input_shape, device=device)),
        "latency_ms": latency_ms(model, input_shape, device=str(device)) if latency else None,
        "bits": bits,
    }
