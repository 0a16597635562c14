r"""Architecture family contract: a compact network trained from scratch with cross-entropy.

A paper module exports `class <Arch>(nn.Module)` with `forward(x) -> logits` of shape `(B, K)`, a frozen
`Config` (nanoGPT's `GPTConfig` style) with at least `in_channels`, `image_size` and `num_classes`, and a
`TINY = Config(...)` used by the smoke test. The harness task is the plain supervised one,

$$
\mathcal{L} = \mathrm{CE}\big(y, \mathrm{softmax}(f_\theta(x))\big),
$$

so `smoke_task(entrypoint)` builds `Supervised(entrypoint(cfg=TINY))`, unless the entrypoint defines its own
`smoke_task()`.

The reproductions of this family run on `sklearn` digits: 8x8 grey-scale images, so the 2-D convolutions and
$D_K \times D_K = 3 \times 3$ kernels of the papers keep their shape (MNIST-1D would turn $D_K^2$ into $D_K$).
They report accuracy against parameters, FLOPs (`torch.utils.flop_counter` through `_measure`, 2 FLOPs per
multiply-add) and measured CPU latency. `train_variants` and `size_columns` are the shared pieces of that protocol.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations._harness import Supervised

if TYPE_CHECKING:
    from implementations._data import TensorData
    from implementations._harness import RunContext

__all__ = ["conv_bn", "fit_model", "input_shape", "save_tradeoff_plot", "size_columns", "smoke_task", "train_variants"]

#: Batch size of the second, compute-bound latency measurement (batch 1 is dominated by per-layer overhead).
LATENCY_BATCH = 256


def input_shape(cfg: Any) -> tuple[int, int, int]:
    """`(C, H, W)` of one input image for a config with `in_channels` and `image_size`."""
    return (cfg.in_channels, cfg.image_size, cfg.image_size)


def conv_bn(
    c_in: int,
    c_out: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    activation: Callable[[], nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """Conv (no bias, `same` padding) -> BatchNorm -> activation (none when `activation` is None)."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


def smoke_task(entrypoint: Any, batch_size: int = 8, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """A tiny supervised task for the generic smoke test.

    Args:
        entrypoint: An architecture class taking `cfg=`; its module must define `TINY`. A class with its own
            `smoke_task()` is delegated to.
        batch_size: $B$ of the synthetic batch.
        seed: Seeds the initialisation and the batch.

    Returns:
        `(task, x, y)` with `x` of shape `(B, C, H, W)` from `TINY` and labels `y` of shape `(B,)`.
    """
    custom = getattr(entrypoint, "smoke_task", None)
    if callable(custom):
        return custom()
    cfg = sys.modules[entrypoint.__module__].TINY
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    task = Supervised(entrypoint(cfg=cfg))
    x = torch.randn(batch_size, *input_shape(cfg), generator=gen)  # (B, C, H, W)
    y = torch.randint(0, cfg.num_classes, (batch_size,), generator=gen)  # (B,)
    return task, x, y


def fit_model(
    model: nn.Module, data: TensorData, ctx: RunContext, epochs: int, lr: float, batch_size: int, seed: int
) -> float:
    """Train `model` with plain cross-entropy (SGD, cosine schedule) and return its test accuracy in percent."""
    from implementations._harness import evaluate, fit

    fit(
        Supervised(model),
        model.parameters(),
        data,
        epochs,
        lr,
        batch_size,
        ctx.device,
        seed=seed,
        progress=ctx.progress,
    )
    return evaluate(model, data)


def train_variants(
    builders: dict[str, Callable[[], nn.Module]],
    data: TensorData,
    ctx: RunContext,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    after: Callable[[str, int, nn.Module], None] | None = None,
) -> dict[str, list[float]]:
    """Train every variant from scratch for every seed with the same data, epochs and optimiser.

    Each variant starts from `seed_everything(seed)`, so variants that share a layer shape share its
    initialisation. The thread count is the caller's: `kb run` and `kb bench` pin one CPU thread.

    Args:
        builders: `{name: build()}`; `build()` returns a fresh model.
        data: The data set.
        ctx: Run context (`seeds`, `device`, `progress`).
        epochs: Epochs of every run.
        lr: Peak SGD learning rate (cosine schedule, momentum 0.9, weight decay 5e-4).
        batch_size: Batch size.
        after: Called as `after(name, seed, trained_model)` after each run (e.g. to keep the model).

    Returns:
        `{name: [test accuracy per seed]}`.
    """
    from implementations._harness import seed_everything

    acc: dict[str, list[float]] = {name: [] for name in builders}
    for seed in ctx.seeds:
        for name, build in builders.items():
            seed_everything(seed)
            model = build()
            acc[name].append(fit_model(model, data, ctx, epochs, lr, batch_size, seed))
            if after is not None:
                after(name, seed, model)
    return acc


def size_columns(models: dict[str, nn.Module], shape: tuple[int, ...], ctx: RunContext) -> dict[str, dict[str, Any]]:
    """`model_row` columns (params, nonzero, bytes, FLOPs per example) of each model, its CPU latency at batch 1
    (`latency_ms`) and, in `extra`, at batch `LATENCY_BATCH`, where compute rather than per-layer overhead
    dominates. Each latency is the minimum over 3 interleaved rounds of `latency_ms` (a median), since other
    processes on a shared machine only ever add time; the quick profile times one short round."""
    from implementations._measure import latency_ms, model_row

    models = {name: model.to("cpu").eval() for name, model in models.items()}
    cols = {name: model_row(model, shape) for name, model in models.items()}
    run_time, rounds = (0.02, 1) if ctx.profile == "quick" else (0.07, 3)
    best = {name: [math.inf, math.inf] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            for i, batch in enumerate((1, LATENCY_BATCH)):
                best[name][i] = min(best[name][i], latency_ms(model, shape, batch_size=batch, min_run_time=run_time))
    for name, (single, batched) in best.items():
        cols[name].update(latency_ms=single, extra={f"latency_ms_b{LATENCY_BATCH}": batched})
    return cols


def save_tradeoff_plot(rows: list[dict[str, Any]], ctx: RunContext, paper_id: str, title: str = "") -> str:
    """Accuracy (mean +- std over seeds) against FLOPs and against parameters, one labelled point per row.

    Writes `<results_dir>/figures/<paper_id>_tradeoff.png` and returns the path to list in `figures`.
    """
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"teacher": "#7f7f7f", "baseline": "#1f77b4", "method": "#d62728", "ablation": "#ff7f0e"}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, key, label in ((axes[0], "flops", "FLOPs per example"), (axes[1], "params", "parameters")):
        for row in rows:
            acc = row["accuracy"]
            ax.errorbar(row[key], acc["mean"], yerr=acc["std"], fmt="o", color=colors.get(row["role"], "#999"))
            ax.annotate(row["label"], (row[key], acc["mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle(title or paper_id, fontsize=9)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / f"{paper_id}_tradeoff.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return (Path(ctx.results_dir.resolve().name) / "figures" / path.name).as_posix()
