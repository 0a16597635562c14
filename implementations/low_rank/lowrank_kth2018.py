r"""An Investigation of Low-Rank Decomposition for Increasing Inference Speed in Deep Neural Networks With Limited
Training Data (KTH degree project, 2018).

Paper: <https://www.essays.se/essay/46d541dee3/> · notes: `papers/lowrank_kth2018.md`

Each convolution $W \in \mathbb{R}^{N \times C \times k \times k}$ of a trained network is replaced by its Tucker-2
decomposition (truncated HOSVD of the two channel modes),

$$
W_{n c i j} \approx \sum_{r_1 = 1}^{R_1} \sum_{r_2 = 1}^{R_2} G_{r_2 r_1 i j}\, U_{c r_1}\, V_{n r_2},
$$

run as a $1 \times 1$ ($C \to R_1$), a $k \times k$ ($R_1 \to R_2$) and a $1 \times 1$ ($R_2 \to N$) convolution,
which costs $C R_1 + R_1 R_2 k^2 + R_2 N$ instead of $N C k^2$ multiply-adds per output position; linear layers
optionally get a truncated SVD, $W \approx U_r S_r V_r^\top$. The decomposed network is then retrained, and the
essay's point is that the accuracy it recovers depends on how much retraining data there is.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from implementations.low_rank._base import conv_layers, min_latency, replace_module, svd_linear, tucker2_conv

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "low_rank_decompose", "reproduce", "tucker2_ranks"]


@dataclass(frozen=True)
class Config:
    """Decomposition and retraining settings (the essay does not state its ranks; VBMF is the usual choice)."""

    rank_ratio: float = 0.25  # $R_1 / C$ and $R_2 / N$ of every decomposed conv
    decompose_linear: bool = False  # also factorise linear layers by truncated SVD
    linear_rank_ratio: float = 0.5  # $r / \min(C, N)$ for linear layers
    retrain_steps: int = 36  # SGD steps of retraining, whatever the subset size (3 epochs of the full set)
    retrain_lr: float = 0.01  # peak lr of the retraining
    subsets: tuple[int | None, ...] = (50, 200, None)  # retraining-set sizes (None = the whole training set)


def tucker2_ranks(conv: nn.Conv2d, ratio: float) -> tuple[int, int]:
    r"""$(R_1, R_2) = (\max(1, \mathrm{round}(\rho C)), \max(1, \mathrm{round}(\rho N)))$ for `ratio` $\rho$."""
    return max(1, round(ratio * conv.in_channels)), max(1, round(ratio * conv.out_channels))


def low_rank_decompose(model: nn.Module, cfg: Config | None = None) -> nn.Module:
    """Copy of `model` with every spatial conv of >= 2 input channels replaced by its Tucker-2 decomposition
    (and, with `cfg.decompose_linear`, every linear layer by a truncated SVD)."""
    cfg = cfg or Config()
    model = copy.deepcopy(model)
    for name, conv in conv_layers(model):
        replace_module(model, name, tucker2_conv(conv, tucker2_ranks(conv, cfg.rank_ratio)))
    if cfg.decompose_linear:
        for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]:
            rank = max(1, round(cfg.linear_rank_ratio * min(layer.in_features, layer.out_features)))
            replace_module(model, name, svd_linear(layer, rank))
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run lowrank_kth2018`
# ---------------------------------------------------------------------------------------------------------------------

EPOCHS, LR = 8, 0.05  # training of the network to decompose, on the whole training set


@torch.no_grad()
def conv_speedup(original: nn.Module, decomposed: nn.Module, shape: tuple[int, ...], ctx: RunContext) -> float:
    """Summed CPU latency of the original convs over that of their decompositions, each timed alone on its own
    input at batch 256 (the essay times the conv layers)."""
    inputs: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            inputs[name] = tuple(args[0].shape[1:])  # (C, H, W) of the conv's input

        return hook

    hooks = [conv.register_forward_hook(record(name)) for name, conv in conv_layers(original)]
    original.eval()(torch.zeros(1, *shape))
    for hook in hooks:
        hook.remove()
    times: dict[str, float] = {}
    for name, shape_in in inputs.items():  # each layer pair timed interleaved on its own input shape
        pair = {f"0_{name}": original.get_submodule(name), f"1_{name}": decomposed.get_submodule(name)}
        times.update(min_latency(pair, shape_in, 256, ctx))
    before = sum(times[f"0_{name}"] for name in inputs)
    after = sum(times[f"1_{name}"] for name in inputs)
    return before / after


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Train `cnn2d` on all of digits, Tucker-2 decompose its convs, retrain on 50, 200 or all training images
    (the same number of SGD steps for each), and time the network and its conv layers on the CPU."""
    from implementations._data import load_dataset
    from implementations._harness import evaluate, seed_everything
    from implementations._measure import accuracy_stats
    from implementations.low_rank._base import base_cnn, finetune, save_tradeoff_plot, size_columns

    cfg = Config()
    data = load_dataset("digits", n_train=ctx.n_train)
    epochs, steps = ctx.epochs(EPOCHS), max(1, round(cfg.retrain_steps * ctx.epoch_scale))
    sizes = [min(n or data.n_train, data.n_train) for n in cfg.subsets]
    names = ["original", "decomposed", *[f"retrain_n{n}" for n in sizes]]
    acc: dict[str, list[float]] = {name: [] for name in names}
    for seed in ctx.seeds:
        seed_everything(seed)
        base = base_cnn(data.num_classes, data.input_shape)
        acc["original"].append(finetune(base, data, ctx, epochs, LR, seed))
        decomposed = low_rank_decompose(base, cfg)
        acc["decomposed"].append(evaluate(decomposed, data))
        for n in sizes:
            subset, batch = data.subset(n, seed=seed), min(128, n)
            sub_epochs = math.ceil(steps / math.ceil(n / batch))  # the same number of steps for every size
            model = copy.deepcopy(decomposed)
            acc[f"retrain_n{n}"].append(
                finetune(model, subset, ctx, sub_epochs, cfg.retrain_lr, seed, batch_size=batch)
            )

    template = base_cnn(data.num_classes, data.input_shape)
    small = low_rank_decompose(template, cfg)
    cols = size_columns({"original": template, "decomposed": small}, data.input_shape, ctx)
    orig_cols, dec_cols = cols["original"], cols["decomposed"]
    speedup = conv_speedup(template, small, data.input_shape, ctx)
    rows = [dict(name="original", label="Original cnn2d", role="baseline", **orig_cols)]
    rows.append(dict(name="decomposed", label="Tucker-2, no retraining", role="ablation", **dec_cols))
    for n in sizes:
        label, role = (
            (f"Tucker-2 + retrain on all {n}", "method")
            if n == sizes[-1]
            else (f"Tucker-2 + retrain on {n}", "ablation")
        )
        rows.append(dict(name=f"retrain_n{n}", label=label, role=role, **dec_cols))
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
        row["extra"] = {
            **row["extra"],
            "retrain_images": float(row["name"].split("_n")[-1]) if "_n" in row["name"] else 0.0,
        }
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    full, few = f"retrain_n{sizes[-1]}", f"retrain_n{sizes[0]}"
    drop = mean["original"] - mean[full]
    lat_b = orig_cols["extra"]["latency_ms_b256"] / dec_cols["extra"]["latency_ms_b256"]
    curve = "; ".join(f"{n} images: {mean[f'retrain_n{n}']:.2f}%" for n in sizes)
    figure = save_tradeoff_plot(
        rows[2:],
        ctx,
        "lowrank_kth2018",
        "retrain_images",
        "retraining images",
        f"Tucker-2 cnn2d on digits, retrained on subsets ({len(ctx.seeds)} seeds)",
    )
    return {
        "id": "lowrank_kth2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"sklearn digits 8x8, 2-D convs; cnn2d (3x3 convs 32, 64, 128, max-pool, GAP, linear) trained "
            f"{epochs} epochs on the whole training set (SGD momentum 0.9, cosine lr {LR}, batch 128, wd 5e-4); "
            f"its 2nd and 3rd convs Tucker-2 decomposed (truncated HOSVD, ranks {cfg.rank_ratio:g} of the channels); "
            f"retrained for {steps} SGD steps (lr {cfg.retrain_lr}, batch min(128, n)) on seeded subsets of "
            f"{', '.join(map(str, sizes))} training images; CPU latency on 1 thread (conv layers timed alone at "
            "batch 256).",
        },
        "rows": rows,
        "claim": {
            "text": "Low-rank decomposition speeds up the convolutional layers with a small accuracy drop, and how "
            "much accuracy retraining recovers depends on the amount of retraining data.",
            "reproduced": bool(speedup > 1 and drop <= 2.0 and mean[few] < mean[full]),
            "evidence": f"conv layers {speedup:.2f}x faster at batch 256 (whole network {lat_b:.2f}x, FLOPs "
            f"{orig_cols['flops'] / dec_cols['flops']:.1f}x fewer); accuracy {mean['original']:.2f}% -> "
            f"{mean['decomposed']:.2f}% without retraining, then {curve} (criteria: speed-up > 1, drop <= 2 points "
            f"with all data, fewer images worse; drop {drop:.2f}).",
        },
        "answers": [
            {
                "question": "How much fine-tuning data is needed to recover accuracy after low-rank decomposition?",
                "answer": f"With the same {steps} retraining steps, {sizes[0]} images recovered to "
                f"{mean[few]:.2f}% and all {sizes[-1]} to {mean[full]:.2f}% (original {mean['original']:.2f}%); "
                + next(
                    (
                        f"{n} images were enough to come within 1 point."
                        for n in sizes
                        if mean[f"retrain_n{n}"] >= mean["original"] - 1.0
                    ),
                    "no subset came within 1 point.",
                ),
                "evidence": f"no retraining {mean['decomposed']:.2f}%; {curve}.",
            }
        ],
        "figures": [figure],
    }
