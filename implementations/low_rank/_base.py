r"""Low-rank family contract: replace a trained layer by cheaper factors fitted to its weights, then fine-tune.

The shared decompositions, each the best fit in the Frobenius norm for its structure (Eckart-Young for the SVD,
truncated higher-order SVD for Tucker-2):

- `svd_linear`: $W \in \mathbb{R}^{N \times C} \approx (U_r S_r^{1/2})(S_r^{1/2} V_r^\top)$, two linear layers
  with $r(C + N)$ instead of $NC$ weights;
- `svd_conv`: the same on the filters reshaped to $N \times C k^2$, i.e. a $k \times k$ conv to $r$ channels then
  a $1 \times 1$ conv to $N$ (channel-wise low rank), $r(C k^2 + N)$ multiply-adds per output position;
- `tucker2_conv`: $W_{n c i j} \approx \sum_{r_1, r_2} G_{r_2 r_1 i j}\, U_{c r_1} V_{n r_2}$, with $U$, $V$ the leading
  left singular vectors of the input- and output-mode unfoldings and $G = W \times_1 V^\top \times_2 U^\top$; it
  runs as $1 \times 1$ ($C \to R_1$), $k \times k$ ($R_1 \to R_2$), $1 \times 1$ ($R_2 \to N$), so
  $C R_1 + R_1 R_2 k^2 + R_2 N$ multiply-adds per output position instead of $N C k^2$.

The reproductions compress `cnn2d` from `implementations._models` (3x3 conv-BN-ReLU stages of 32, 64, 128
channels with max-pooling, global average pooling, linear head) trained on `sklearn` digits (8x8 images, 2-D
convolutions). `smoke_task(entrypoint)` delegates to `entrypoint.smoke_task()` when there is one; otherwise the
entrypoint is a function `model -> compressed model`, applied to a tiny trained-from-init `cnn2d`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations._harness import Supervised
from implementations._models import build_model

if TYPE_CHECKING:
    from implementations._data import TensorData
    from implementations._harness import RunContext

__all__ = [
    "base_cnn",
    "ceil_log2",
    "conv_layers",
    "finetune",
    "min_latency",
    "replace_module",
    "save_tradeoff_plot",
    "size_columns",
    "smoke_task",
    "svd_conv",
    "svd_linear",
    "tucker2_conv",
]

CHANNELS = (32, 64, 128)  # cnn2d widths of the reproductions


def _like(conv: nn.Conv2d, c_in: int, c_out: int, kernel_size: int, core: bool, bias: bool) -> nn.Conv2d:
    """A conv with `conv`'s stride / padding / dilation when `core`, else a plain 1x1."""
    if core:
        return nn.Conv2d(c_in, c_out, kernel_size, conv.stride, conv.padding, conv.dilation, bias=bias)
    return nn.Conv2d(c_in, c_out, 1, bias=bias)


@torch.no_grad()
def svd_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    r"""Rank-$r$ factorisation of a linear layer, $W \approx (U_r S_r^{1/2})(S_r^{1/2} V_r^\top)$."""
    u, s, vh = torch.linalg.svd(layer.weight, full_matrices=False)  # (N, q), (q,), (q, C)
    root = s[:rank].sqrt()
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    first.weight.copy_(root[:, None] * vh[:rank])  # (r, C)
    second.weight.copy_(u[:, :rank] * root)  # (N, r)
    if layer.bias is not None:
        second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


@torch.no_grad()
def svd_conv(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    r"""Channel-wise rank-$r$ factorisation: $W$ reshaped to $N \times C k^2$ is split by a truncated SVD into a
    $k \times k$ conv with $r$ outputs and a $1 \times 1$ conv with $N$ outputs."""
    n, c, kh, kw = conv.weight.shape
    u, s, vh = torch.linalg.svd(conv.weight.reshape(n, -1), full_matrices=False)  # (N, q), (q,), (q, C k^2)
    root = s[:rank].sqrt()
    first = _like(conv, c, rank, (kh, kw), core=True, bias=False)
    second = _like(conv, rank, n, 1, core=False, bias=conv.bias is not None)
    first.weight.copy_((root[:, None] * vh[:rank]).reshape(rank, c, kh, kw))
    second.weight.copy_((u[:, :rank] * root)[:, :, None, None])
    if conv.bias is not None:
        second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


@torch.no_grad()
def tucker2_conv(conv: nn.Conv2d, ranks: tuple[int, int]) -> nn.Sequential:
    r"""Tucker-2 by truncated HOSVD: $1 \times 1$ ($C \to R_1$), core $k \times k$ ($R_1 \to R_2$), $1 \times 1$
    ($R_2 \to N$). `ranks` is $(R_1, R_2)$ for the input and output channel modes."""
    n, c, kh, kw = conv.weight.shape
    r_in, r_out = ranks
    w = conv.weight  # (N, C, k, k)
    u_in = torch.linalg.svd(w.transpose(0, 1).reshape(c, -1), full_matrices=False)[0][:, :r_in]  # U, (C, R1)
    u_out = torch.linalg.svd(w.reshape(n, -1), full_matrices=False)[0][:, :r_out]  # V, (N, R2)
    core = torch.einsum("ncij,nr,cs->rsij", w, u_out, u_in)  # G, (R2, R1, k, k)
    first = _like(conv, c, r_in, 1, core=False, bias=False)
    middle = _like(conv, r_in, r_out, (kh, kw), core=True, bias=False)
    last = _like(conv, r_out, n, 1, core=False, bias=conv.bias is not None)
    first.weight.copy_(u_in.T[:, :, None, None])
    middle.weight.copy_(core)
    last.weight.copy_(u_out[:, :, None, None])
    if conv.bias is not None:
        last.bias.copy_(conv.bias)
    return nn.Sequential(first, middle, last)


def conv_layers(model: nn.Module, min_in_channels: int = 2) -> list[tuple[str, nn.Conv2d]]:
    """`(name, conv)` of the spatial (k > 1) convolutions with at least `min_in_channels` inputs, in order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) and m.in_channels >= min_in_channels
    ]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted path `name` for `new` (in place)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def base_cnn(num_classes: int = 10, in_shape: tuple[int, ...] = (1, 8, 8), width: float = 1.0) -> nn.Module:
    """The `cnn2d` the reproductions compress (channels 32, 64, 128 times `width`)."""
    return build_model("cnn2d", num_classes, in_shape, width=width)


def finetune(
    model: nn.Module, data: TensorData, ctx: RunContext, epochs: int, lr: float, seed: int, **kw: Any
) -> float:
    """Train `model` with cross-entropy (SGD, cosine lr) and return its test accuracy in percent."""
    from implementations._harness import evaluate, fit

    fit(
        Supervised(model),
        model.parameters(),
        data,
        epochs,
        lr,
        device=ctx.device,
        seed=seed,
        progress=ctx.progress,
        **kw,
    )
    return evaluate(model, data)


def size_columns(
    models: dict[str, nn.Module], shape: tuple[int, ...], ctx: RunContext, latency: bool = True
) -> dict[str, dict[str, Any]]:
    """`model_row` columns of each model plus its CPU latency at batch 1 (`latency_ms`) and 256 (`extra`), each
    the minimum over 3 interleaved rounds of `latency_ms` (other processes on a shared machine only add time)."""
    from implementations._measure import model_row

    models = {name: model.to("cpu").eval() for name, model in models.items()}
    cols = {name: model_row(model, shape) for name, model in models.items()}
    if latency:
        single = min_latency(models, shape, 1, ctx)
        batched = min_latency(models, shape, 256, ctx)
        for name in models:
            cols[name].update(latency_ms=single[name], extra={"latency_ms_b256": batched[name]})
    return cols


def min_latency(models: dict[str, nn.Module], shape: tuple[int, ...], batch: int, ctx: RunContext) -> dict[str, float]:
    """Per-model CPU latency (ms) of one forward pass on a batch: the minimum over interleaved rounds of
    `latency_ms` (3 rounds of 0.07 s each, one short round in the quick profile)."""
    from implementations._measure import latency_ms

    run_time, rounds = (0.02, 1) if ctx.profile == "quick" else (0.07, 3)
    best = dict.fromkeys(models, math.inf)
    for _ in range(rounds):
        for name, model in models.items():
            best[name] = min(best[name], latency_ms(model, shape, batch_size=batch, min_run_time=run_time))
    return best


def smoke_task(entrypoint: Callable[..., Any], batch_size: int = 8, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """`(task, x, y)` for the generic smoke test: the entrypoint's own `smoke_task()`, or `entrypoint(model)`
    applied to a tiny `cnn2d` (channels 8, 16, 16) on `(B, 1, 8, 8)` inputs."""
    custom = getattr(entrypoint, "smoke_task", None)
    if callable(custom):
        return custom()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = entrypoint(base_cnn(width=0.25))
    x = torch.randn(batch_size, 1, 8, 8, generator=gen)  # (B, 1, 8, 8)
    y = torch.randint(0, 10, (batch_size,), generator=gen)  # (B,)
    return Supervised(model), x, y


def ceil_log2(k: int) -> int:
    r"""Bits of an index into a codebook of `k` entries, $\lceil \log_2 k \rceil$ (at least 1)."""
    return max(1, math.ceil(math.log2(k)))


def save_tradeoff_plot(
    rows: list[dict[str, Any]], ctx: RunContext, paper_id: str, x_key: str, x_label: str, title: str = ""
) -> str:
    """Accuracy (mean +- std over seeds) against `row[x_key]` (or `row["extra"][x_key]`), one labelled point per
    row; writes `<results_dir>/figures/<paper_id>_tradeoff.png` and returns the path to list in `figures`."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"teacher": "#7f7f7f", "baseline": "#1f77b4", "method": "#d62728", "ablation": "#ff7f0e"}
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for row in rows:
        x = row[x_key] if x_key in row else row["extra"][x_key]
        acc = row["accuracy"]
        ax.errorbar(x, acc["mean"], yerr=acc["std"], fmt="o", color=colors.get(row["role"], "#999"))
        ax.annotate(row["label"], (x, acc["mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or paper_id, fontsize=9)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / f"{paper_id}_tradeoff.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return (Path(ctx.results_dir.resolve().name) / "figures" / path.name).as_posix()
