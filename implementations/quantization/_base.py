r"""Quantization family contract: quantizers, the straight-through estimator and a QAT wrapper task.

A quantization paper module exports a quantizer: a pure function (`quantize(w, ...) -> (q, scale[, zero_point])`
with its `dequantize`, or a function returning the fake-quantized tensor) and/or an `nn.Module` quantizer or task.
This file holds what they share:

- `round_ste(x)` $= x + (\lfloor x \rceil - x)$ with the second term detached: rounds in the forward pass and has
  gradient 1 in the backward pass (the straight-through estimator, STE).
- The reference symmetric absmax quantizer (llama2.c `quantize_q80`): for each group $g$ of values and $b$ bits,

$$
s_g = \frac{\max_{i \in g} |w_i|}{2^{b-1} - 1}, \qquad q_i = \operatorname{round}(w_i / s_g) \in
\{-(2^{b-1}-1), \dots, 2^{b-1}-1\}, \qquad \hat w_i = s_g\, q_i ,
$$

  so $|\hat w_i - w_i| \le s_g / 2$; an all-zero group gets a clamped scale and codes 0.
- `quantize_weights(model, make)`: every Linear/Conv weight goes through a quantizer in the forward pass, via
  `torch.nn.utils.parametrize`, so the latent fp32 weights are what the optimiser updates (QAT). A quantizer that
  returns a non-differentiable tensor (k-means, sorting, ...) is wrapped in the STE automatically.
- `QAT(model, make)`: that wrapped model as a cross-entropy harness task.

`smoke_task(entrypoint)` adapts a paper's entry point to the harness contract for the generic smoke test: a class or
function may define its own `smoke_task()`; otherwise the entry point is called as `entrypoint(weight)` on every
weight of a tiny MLP (returning the fake-quantized weight, or a tuple whose first element is it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from implementations._harness import Supervised
from implementations._measure import beats, latency_ms, quantized_bytes
from implementations._models import build_model

__all__ = [
    "QUANTIZABLE",
    "QAT",
    "QuantMLP",
    "WeightQuantizer",
    "beats",
    "bits_for",
    "latency",
    "dequantize",
    "fake_quantize",
    "model_bytes",
    "quantizable_layers",
    "quantize",
    "quantize_weights",
    "remove_weight_quantizers",
    "round_ste",
    "single_thread",
    "smoke_task",
]

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def round_ste(x: Tensor) -> Tensor:
    r"""Round to the nearest integer in the forward pass, identity gradient in the backward pass."""
    return x + (x.round() - x).detach()


def _groups(w: Tensor, group_size: int | None) -> Tensor:
    flat = w.reshape(-1)
    if group_size is None:
        return flat[None, :]  # (1, N): one group for the whole tensor
    if flat.numel() % group_size != 0:
        raise ValueError(f"group_size {group_size} does not divide {flat.numel()} values")
    return flat.view(-1, group_size)  # (G, group_size)


def quantize(w: Tensor, bits: int = 8, group_size: int | None = None) -> tuple[Tensor, Tensor]:
    r"""Symmetric absmax quantization, $q = \operatorname{round}(w / s)$ with $s = \max|w| / (2^{b-1}-1)$ per group.

    Args:
        w: Values, any shape; groups are consecutive runs of `group_size` values of `w.reshape(-1)`.
        bits: Bits per code $b \ge 2$.
        group_size: Values per group, or None for one group (one scale) per tensor.

    Returns:
        `(q, scale)`: integer codes of `w`'s shape (int8 when $b \le 8$, else int32) and the scales, shape `(G,)`.
    """
    if bits < 2:
        raise ValueError(f"symmetric absmax quantization needs bits >= 2, got {bits}")
    qmax = 2 ** (bits - 1) - 1
    groups = _groups(w.detach().float(), group_size)  # (G, n)
    # all-zero groups: clamp the scale so the codes are 0 instead of NaN
    scale = (groups.abs().amax(dim=1) / qmax).clamp_min(torch.finfo(torch.float32).tiny)  # (G,)
    q = (groups / scale[:, None]).round().clamp(-qmax, qmax)
    return q.to(torch.int8 if bits <= 8 else torch.int32).view(w.shape), scale


def dequantize(q: Tensor, scale: Tensor, group_size: int | None = None) -> Tensor:
    r"""$\hat w = s_g\, q$ per group, returned in float32 with `q`'s shape."""
    groups = _groups(q.float(), group_size)  # (G, n)
    return (groups * scale[:, None]).view(q.shape)


def fake_quantize(w: Tensor, bits: int = 8, group_size: int | None = None) -> Tensor:
    r"""$\hat w = s \cdot \operatorname{round\_ste}(w / s)$ with $s$ detached: quantized values, gradient 1 (STE)."""
    _, scale = quantize(w, bits, group_size)
    qmax = 2 ** (bits - 1) - 1
    groups = _groups(w, group_size)  # (G, n), differentiable view
    scaled = groups / scale[:, None]
    # the clamp only guards float round-off at +-max|w|; it sits inside the detached term so the gradient stays 1
    codes = scaled + (scaled.round().clamp(-qmax, qmax) - scaled).detach()
    return (codes * scale[:, None]).view(w.shape)


# ---------------------------------------------------------------------------------------------------------------------
# Quantization-aware training
# ---------------------------------------------------------------------------------------------------------------------


class WeightQuantizer(nn.Module):
    r"""Parametrization $w \mapsto Q(w)$; a non-differentiable $Q$ gets the STE $w + (Q(w) - w)$ detached."""

    def __init__(self, quantizer: Callable[[Tensor], Tensor | tuple]) -> None:
        super().__init__()
        self.quantizer = quantizer  # a function or an nn.Module (registered as a submodule if it is one)

    def forward(self, weight: Tensor) -> Tensor:
        """The fake-quantized weight, same shape as `weight`."""
        out = self.quantizer(weight)
        out = out[0] if isinstance(out, tuple) else out
        return out if out.requires_grad or not weight.requires_grad else weight + (out - weight).detach()


def quantizable_layers(model: nn.Module, skip: Iterable[str] = ()) -> list[tuple[str, nn.Module]]:
    """Linear and conv layers (name, module) in definition order, except the names in `skip`."""
    skip = set(skip)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZABLE) and n not in skip]


def quantize_weights(
    model: nn.Module, make: Callable[[nn.Module], Callable[[Tensor], Tensor | tuple]], skip: Iterable[str] = ()
) -> nn.Module:
    """Put `make(layer)` (a quantizer) on the weight of every quantizable layer; returns `model` (modified)."""
    for _, layer in quantizable_layers(model, skip):
        parametrize.register_parametrization(layer, "weight", WeightQuantizer(make(layer)))
    return model


def remove_weight_quantizers(model: nn.Module, keep_quantized: bool = True) -> nn.Module:
    """Drop the parametrizations; with `keep_quantized` the weights keep their (fake-)quantized values."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=keep_quantized)
    return model


class QAT(Supervised):
    """Cross-entropy task on a model whose weights are fake-quantized in every forward pass."""

    def __init__(
        self,
        model: nn.Module,
        make: Callable[[nn.Module], Callable[[Tensor], Tensor | tuple]],
        skip: Iterable[str] = (),
    ) -> None:
        super().__init__(quantize_weights(model, make, skip))


class QuantMLP(nn.Module):
    """MLP with Linear-BN-activation hidden layers (the activation is pluggable, e.g. an activation quantizer)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: tuple[int, ...] = (256, 256),
        activation: Callable[[int], nn.Module] = lambda _width: nn.ReLU(),
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        blocks, width = [], in_features
        for h in hidden:
            norm = nn.BatchNorm1d(h) if batch_norm else nn.Identity()
            blocks.append(nn.Sequential(nn.Linear(width, h, bias=not batch_norm), norm, activation(h)))
            width = h
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` from inputs `(B, ...)` (flattened)."""
        h = x.flatten(1)  # (B, D)
        for block in self.blocks:
            h = block(h)  # (B, H_l)
        return self.head(h)


def model_bytes(model: nn.Module, bits: float, num_scales: int, extra_bytes: int = 0) -> int:
    r"""Bytes when the quantizable layers' weights use `bits` per value and everything else stays fp32.

    $\lceil b\, P_W / 8 \rceil + 4 S + 4 (P - P_W) + $ `extra_bytes`, through `_measure.quantized_bytes`.
    """
    n_weights = sum(m.weight.numel() for _, m in quantizable_layers(model))
    n_total = sum(p.numel() for p in model.parameters())
    return quantized_bytes(n_weights, bits, num_scales=num_scales) + 4 * (n_total - n_weights) + int(extra_bytes)


def smoke_task(entrypoint: object, batch_size: int = 8, num_classes: int = 10, seed: int = 0):
    """`(task, x, y)` for the generic smoke test (see the module docstring)."""
    custom = getattr(entrypoint, "smoke_task", None)
    if callable(custom):
        return custom()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model("mlp", num_classes, (40,), width=0.25)
    task = QAT(model, lambda _layer: entrypoint)
    x = torch.randn(batch_size, 40, generator=gen)  # (B, 40)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen)  # (B,)
    return task, x, y


def bits_for(levels: int) -> float:
    r"""Bits of a code that indexes `levels` values, $\lceil \log_2 L \rceil$ (at least 1)."""
    return float(max(1, math.ceil(math.log2(max(2, levels)))))


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with one intra-op torch thread (restored after).

    The reproductions train tiny models whose ops are too small to split across threads; on a shared 2-core CPU a
    second thread mostly spins and triples the wall time.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def latency(model: nn.Module, input_shape: Sequence[int], profile: str) -> float | None:
    """Batch-1 CPU latency in ms via `_measure.latency_ms`, or None in the quick profile (it costs ~0.5 s a model).

    The models here simulate quantization in fp32 (no low-bit kernels), so the number shows the cost of the
    simulated model, not a deployment speed-up.
    """
    return None if profile == "quick" else latency_ms(model, input_shape)
