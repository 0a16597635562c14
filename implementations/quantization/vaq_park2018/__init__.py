r"""Value-aware Quantization for Training and Inference of Neural Networks (Park, Yoo & Vajda, 2018).

Paper: [arXiv:1804.07802](https://arxiv.org/abs/1804.07802) · notes: `papers/vaq_park2018.md`

A uniform quantizer whose range must cover the rare large values wastes its levels on them. Value-aware quantization
keeps the fraction $r$ of entries with the largest magnitude in high precision and quantizes the rest over the range
set by the threshold $\tau$ (the $(1 - r)$ quantile of $|x|$) instead of $\max |x|$:

$$
\hat x_i = \begin{cases} x_i & |x_i| > \tau \quad \text{(stored sparsely, high precision)}, \\
\Delta \operatorname{clip}\big(\operatorname{round}(x_i / \Delta), -q_{\max}, q_{\max}\big) & \text{otherwise},
\end{cases} \qquad \Delta = \frac{\tau}{q_{\max}},
$$

with $q_{\max} = 2^{b-1} - 1$ for signed data and $2^b - 1$ for non-negative data (activations after a ReLU).
With $r = 0$ this is the absmax uniform quantizer.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations.quantization._base import quantizable_layers

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "clip_quantize", "quantize_model", "reproduce", "value_aware_quantize"]


@dataclass(frozen=True)
class Config:
    """Inference setting of the paper's abstract."""

    bits: int = 4  # $b$ for the bulk of the values (weights and activations)
    ratio: float = 0.01  # $r$: fraction of entries kept in high precision
    outlier_bits: int = 16  # precision of the kept large values (counted in bytes; simulated in fp32)


def _threshold(x: Tensor, ratio: float) -> tuple[Tensor, Tensor]:
    r"""$\tau$ and the mask of the $\lceil r n \rceil$ largest-magnitude entries (exact count, ties by order)."""
    flat = x.detach().abs().reshape(-1)
    n_large = math.ceil(ratio * flat.numel()) if ratio > 0 else 0
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if n_large >= flat.numel():
        return flat.max(), ~mask.view_as(x)
    if n_large > 0:
        top = flat.topk(n_large + 1)  # the (n_large + 1)-th largest magnitude is tau
        mask[top.indices[:n_large]] = True
        return top.values[-1], mask.view_as(x)
    return flat.max(), mask.view_as(x)


def value_aware_quantize(
    x: Tensor, bits: int = 4, ratio: float = 0.01, signed: bool | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Keep the $\lceil r n \rceil$ largest $|x_i|$ exactly; quantize the rest uniformly on $[-\tau, \tau]$.

    Args:
        x: Values (weights or activations), any shape.
        bits: $b$.
        ratio: $r \in [0, 1]$.
        signed: Symmetric grid ($q_{\max} = 2^{b-1}-1$) or non-negative grid ($2^b - 1$); None: signed unless
            `x` is non-negative.

    Returns:
        `(x_hat, large, step)`: the dequantized tensor (shape of `x`), the mask of the kept entries and $\Delta$.
    """
    signed = bool((x < 0).any()) if signed is None else signed
    qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    tau, large = _threshold(x, ratio)
    step = (tau / qmax).clamp_min(torch.finfo(torch.float32).tiny)  # all-zero tensor: codes 0
    low = -qmax if signed else 0
    bulk = (x / step).round().clamp(low, qmax) * step
    return torch.where(large, x, bulk), large, step


def clip_quantize(x: Tensor, bits: int = 4, ratio: float = 0.01, signed: bool | None = None) -> Tensor:
    r"""The "clip, discard outliers" baseline: the same $\tau$ and grid, but large values are clipped to $\pm\tau$."""
    signed = bool((x < 0).any()) if signed is None else signed
    qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    tau, _ = _threshold(x, ratio)
    step = (tau / qmax).clamp_min(torch.finfo(torch.float32).tiny)
    return (x / step).round().clamp(-qmax if signed else 0, qmax) * step


def quantize_model(model: nn.Module, bits: int, ratio: float, clip: bool = False) -> tuple[nn.Module, int]:
    """A copy of `model` with value-aware weights and activations (inputs of every Linear/Conv but the first).

    Activations are quantized dynamically per tensor by forward pre-hooks. Returns the copy and the number of kept
    (high-precision) weight entries.
    """
    quantized = copy.deepcopy(model).eval()
    kept = 0
    layers = quantizable_layers(quantized)
    with torch.no_grad():
        for _, layer in layers:
            if clip:
                layer.weight.copy_(clip_quantize(layer.weight, bits, ratio, signed=True))
            else:
                w_hat, large, _ = value_aware_quantize(layer.weight, bits, ratio, signed=True)
                layer.weight.copy_(w_hat)
                kept += int(large.sum())

    def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        x = args[0]
        x_hat = clip_quantize(x, bits, ratio) if clip else value_aware_quantize(x, bits, ratio)[0]
        return (x_hat, *args[1:])

    for _, layer in layers[1:]:
        layer.register_forward_pre_hook(hook)
    return quantized, kept


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Train a CNN per seed, then post-training uniform, clip-at-tau and VAQ quantization of weights and activations.

    The run is in `experiment.py`.
    """
    from implementations.quantization.vaq_park2018.experiment import reproduce as run

    return run(ctx)
