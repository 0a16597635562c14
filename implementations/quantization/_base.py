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
- `int8_ptq(model, calibration_inputs)`: real post-training int8 of any torch.fx-traceable model through torch.ao's
  FX graph mode (static: int8 weights and activations, conv-BN folded, residual adds in int8), falling back to
  dynamic int8 of the `nn.Linear` layers when the model cannot be traced; `serialized_bytes(model)` is the size of
  its `torch.save`d state dict.
- `kmeans(x, k)`: Lloyd's k-means, shared by the codebook quantizers.

`smoke_task(entrypoint)` adapts a paper's entry point to the harness contract for the generic smoke test: a class or
function may define its own `smoke_task()`; otherwise the entry point is called as `entrypoint(weight)` on every
weight of a tiny MLP (returning the fake-quantized weight, or a tuple whose first element is it).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

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
    "int8_kernels",
    "int8_ptq",
    "interleaved_time_ms",
    "kmeans",
    "model_bytes",
    "quantizable_layers",
    "quantize",
    "quantize_weights",
    "remove_weight_quantizers",
    "round_ste",
    "serialized_bytes",
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


def latency(model: nn.Module, input_shape: Sequence[int], profile: str) -> float | None:
    """Batch-1 CPU latency in ms via `_measure.latency_ms`, or None in the quick profile (it costs ~0.5 s a model).

    The models here simulate quantization in fp32 (no low-bit kernels), so the number shows the cost of the
    simulated model, not a deployment speed-up.
    """
    return None if profile == "quick" else latency_ms(model, input_shape)


def kmeans(x: Tensor, k: int, iterations: int = 25, generator: torch.Generator | None = None) -> Tensor:
    """Lloyd's k-means from `k` distinct random points; an emptied cluster keeps its centroid. Returns `(k, D)`."""
    centroids = x[torch.randperm(len(x), generator=generator)[:k]].clone()  # (k, D)
    for _ in range(iterations):
        assign = torch.cdist(x, centroids).argmin(1)  # (N,)
        counts = torch.bincount(assign, minlength=k)  # (k,)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
    return centroids


def interleaved_time_ms(
    calls: dict[str, Callable[[], object]], rounds: int = 3, min_run_time: float = 0.05
) -> dict[str, float]:
    """Per call, the fastest over interleaved rounds of the median wall time (ms) of `call()` on one thread.

    Each round times every call once with `torch.utils.benchmark.Timer.blocked_autorange`; alternating them and keeping
    each one's best round compares them under the same load on a shared CPU (as `_measure.interleaved_latency` does
    for models). Used for search time, e.g. lookup-table (asymmetric) search against exhaustive float search.
    """
    from torch.utils.benchmark import Timer

    best = dict.fromkeys(calls, float("inf"))
    with torch.no_grad():
        for _ in range(rounds):
            for name, call in calls.items():
                timer = Timer(stmt="call()", globals={"call": call}, num_threads=1)
                best[name] = min(best[name], timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)
    return best


# ---------------------------------------------------------------------------------------------------------------------
# Real int8 post-training quantization (torch.ao)
# ---------------------------------------------------------------------------------------------------------------------

# The warnings torch.ao emits on every quantization call, silenced only around those calls: the package-wide
# deprecation notice (it moves to torchao, which is not installed here), the observers' `reduce_range` notice, and the
# notice that quantized tensor creation functions are deprecated.
_TORCH_AO_NOTICES = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"Please use quant_min and quant_max to specify the range for observers"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation"),
)


@contextlib.contextmanager
def _torch_ao_notices_silenced() -> Iterator[None]:
    with warnings.catch_warnings():
        for category, message in _TORCH_AO_NOTICES:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


@contextlib.contextmanager
def int8_kernels() -> Iterator[None]:
    """Run the block with `torch.use_deterministic_algorithms` off (restored after).

    The quantized CPU kernels have no deterministic flag, so under the harness's deterministic mode every call of an
    int8 model warns; they are deterministic on one thread anyway. Wrap evaluation and timing of int8 models in this.
    """
    previous, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


class _LogitsOnly(nn.Module):
    """`forward(x) = model(x)`: pins optional forward arguments (e.g. `return_features`) to their defaults, so
    torch.fx traces one input and one output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())` (into memory): the file a deployment would ship, container included."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def _module_census(model: nn.Module) -> dict[str, int]:
    counts = Counter(f"{type(m).__module__}.{type(m).__name__}" for m in model.modules())
    return dict(sorted((name, n) for name, n in counts.items() if ".quantized" in name))


@torch.no_grad()
def int8_ptq(
    model: nn.Module, calibration_inputs: Tensor | Iterable[Tensor], backend: str = "x86", batch_size: int = 256
) -> tuple[nn.Module, dict[str, Any]]:
    r"""Post-training int8 quantization of any model with torch.ao; `model` itself is left unchanged.

    Static path (any model torch.fx can trace): `prepare_fx` with `get_default_qconfig_mapping(backend)` folds
    conv-BN(-ReLU) and inserts observers, the calibration inputs are run through it to fix each activation's scale
    and zero point, and `convert_fx` swaps in real int8 kernels (`torch.ao.nn.quantized` Conv/Linear with per-channel
    int8 weights, uint8 activations, residual adds as `quantized::add(_relu)`). Inputs and outputs stay float.

    Fallback (the trace fails, e.g. Python control flow on tensor values): `quantize_dynamic` of every `nn.Linear`
    (int8 weights, activations quantized on the fly); convolutions stay fp32 on that path.

    Args:
        model: A float model; it is copied and put in eval mode. Optional forward arguments keep their defaults.
        calibration_inputs: Inputs `(N, ...)` (split into batches of `batch_size`) or an iterable of batches;
            unlabelled data drawn like the inputs the model will see.
        backend: Quantized engine whose default qconfig mapping is used (`x86`, `fbgemm` or `qnnpack`).
        batch_size: Calibration batch size when a tensor is given.

    Returns:
        `(quantized_model, info)`; `info["path"]` is `"fx_static"` or `"dynamic_linear"`, `info["reason"]` why the
        fallback ran (None otherwise), `info["quantized_modules"]` counts the quantized module types, and
        `info["float_layers_left"]` counts the `nn.Linear`/`nn.Conv*` layers still in float.
    """
    from torch.ao.quantization import get_default_qconfig_mapping, quantize_dynamic
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if backend in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = backend
    batches = list(
        calibration_inputs.split(batch_size) if isinstance(calibration_inputs, Tensor) else calibration_inputs
    )
    if not batches:
        raise ValueError("int8_ptq needs at least one calibration batch")
    float_model = copy.deepcopy(model).cpu().eval()
    info: dict[str, Any] = {"backend": backend, "reason": None}
    with _torch_ao_notices_silenced():
        try:
            prepared = prepare_fx(_LogitsOnly(float_model), get_default_qconfig_mapping(backend), (batches[0].cpu(),))
        except (torch.fx.proxy.TraceError, RuntimeError, TypeError, NotImplementedError) as error:
            info.update(path="dynamic_linear", reason=f"{type(error).__name__}: {error}")
            quantized = quantize_dynamic(float_model, {nn.Linear}, dtype=torch.qint8, inplace=True)
        else:
            with int8_kernels():
                for batch in batches:
                    prepared(batch.cpu())
            quantized = convert_fx(prepared)
            info["path"] = "fx_static"
            info["calibration_inputs"] = sum(len(b) for b in batches)
    info["quantized_modules"] = _module_census(quantized)
    info["float_layers_left"] = sum(1 for m in quantized.modules() if isinstance(m, (*QUANTIZABLE, nn.Conv3d)))
    return quantized, info
