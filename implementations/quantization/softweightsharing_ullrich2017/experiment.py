"""The small-scale reproduction of Soft Weight-Sharing (Ullrich et al., 2017): an MLP on sklearn digits retrained under
the Gaussian-mixture prior and snapped, against magnitude pruning + k-means without retraining."""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from implementations._models import build_model
from implementations.quantization._base import quantizable_layers
from implementations.quantization.softweightsharing_ullrich2017 import Config, SoftWeightSharing, retrain, storage_bits

if TYPE_CHECKING:
    from implementations._data import TensorData
    from implementations._harness import RunContext


def _posthoc(model: nn.Module, sparsity: float, clusters: int) -> nn.Module:
    """Deep-Compression-style baseline without retraining: global magnitude pruning to `sparsity`, then k-means with
    `clusters` shared values on the surviving weights."""
    import copy

    from implementations.pruning._base import topk_mask
    from implementations.pruning.deepcompression_han2016 import kmeans_1d

    model = copy.deepcopy(model)
    layers = [layer for _, layer in quantizable_layers(model)]
    with torch.no_grad():
        flat = torch.cat([layer.weight.flatten() for layer in layers])
        keep = topk_mask(flat.abs(), sparsity).bool()
        shared = torch.zeros_like(flat)
        if clusters > 0 and keep.any():
            centroids, assignment = kmeans_1d(flat[keep], clusters)
            shared[keep] = centroids[assignment]
        start = 0
        for layer in layers:
            n = layer.weight.numel()
            layer.weight.copy_(shared[start : start + n].view_as(layer.weight))
            start += n
    return model


def _snap_stats(task: SoftWeightSharing, data: TensorData, dense_bits: int) -> tuple[nn.Module, dict[str, float]]:
    from implementations._harness import evaluate

    snapped = task.quantize()
    bits, values = storage_bits(snapped)
    weights = torch.cat([layer.weight.flatten() for _, layer in quantizable_layers(snapped)])
    return snapped, {
        "acc": evaluate(snapped, data),
        "retrained_acc": evaluate(task, data),
        "rate": dense_bits / bits,
        "values": float(values),
        "nonzero": float(weights.ne(0).float().mean()),
    }


#: (tau, mixture lr, initial sigma) around the defaults, for the sensitivity question
GRID = (
    (0.005, 5e-4, 0.02),
    (0.5, 5e-4, 0.02),
    (0.05, 5e-3, 0.02),
    (0.05, 5e-4, 0.01),
    (0.05, 5e-4, 0.05),
)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Pretrain an MLP on digits, retrain it under the mixture prior, snap the weights; compare with magnitude pruning
    + k-means at the same sparsity and number of values; time the prior; probe tau and the mixture learning rate."""
    from dataclasses import replace

    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, interleaved_latency, model_row

    cfg = Config()
    data = load_dataset("digits", n_train=ctx.n_train)
    epochs, retrain_epochs, width = ctx.epochs(30), ctx.epochs(30), 0.25
    acc: dict[str, list[float]] = {}
    stats: dict[str, list[float]] = {}
    grid: dict[tuple[float, float, float], dict[str, float]] = {}
    kept: dict[str, nn.Module] = {}  # first seed's model of every row, for its own latency
    for seed in ctx.seeds:
        seed_everything(seed)
        model = build_model("mlp", data.num_classes, data.input_shape, width=width)
        fit(Supervised(model), model.parameters(), data, epochs, lr=0.05, seed=seed, progress=False)
        acc.setdefault("pretrained", []).append(evaluate(model, data))
        dense_bits = 32 * sum(p.numel() for p in model.parameters())
        pretrained = {k: v.clone() for k, v in model.state_dict().items()}
        runs = [("sws", cfg), ("plain", replace(cfg, tau=0.0))]
        if seed == ctx.seeds[0]:  # overhead timing and sensitivity grid on the first seed only
            runs += [
                (f"grid{i}", replace(cfg, tau=t, mixture_lr=m, init_sigma=sd)) for i, (t, m, sd) in enumerate(GRID)
            ]
        for name, run_cfg in runs:
            model.load_state_dict(pretrained)
            seed_everything(seed)
            task = SoftWeightSharing(model, data.n_train, run_cfg)
            seconds = retrain(task, data, retrain_epochs, seed)
            if name == "plain":
                stats.setdefault("sec_plain", []).append(seconds)
                continue
            snapped, result = _snap_stats(task, data, dense_bits)
            if name != "sws":
                grid[(run_cfg.tau, run_cfg.mixture_lr, run_cfg.init_sigma)] = result
                continue
            for key, value in {**result, "sec": seconds}.items():
                stats.setdefault(key, []).append(value)
            acc.setdefault("sws", []).append(result["acc"])
            acc.setdefault("sws_unsnapped", []).append(result["retrained_acc"])
            kept.setdefault("sws", snapped)
            kept.setdefault("sws_unsnapped", copy.deepcopy(model))
            model.load_state_dict(pretrained)  # the same budget without retraining
            kept.setdefault("pretrained", copy.deepcopy(model))
            baseline = _posthoc(model, 1.0 - result["nonzero"], int(result["values"]))
            kept.setdefault("posthoc", baseline)
            acc.setdefault("posthoc", []).append(evaluate(baseline, data))
            stats.setdefault("posthoc_rate", []).append(dense_bits / storage_bits(baseline)[0])
        model.load_state_dict(pretrained)

    shape = data.input_shape
    # each row's own model, batch 1, best of interleaved rounds; all run dense fp32 kernels (the zeros and
    # shared values are not exploited by the CPU kernels)
    lat = dict.fromkeys(kept) if ctx.profile == "quick" else interleaved_latency(kept, shape, rounds=3)
    dense_cols = {**model_row(kept["pretrained"], shape), "latency_ms": lat["pretrained"]}
    mean = {k: sum(v) / len(v) for k, v in {**acc, **stats}.items()}
    sws_cols = {**model_row(kept["sws"], shape), "latency_ms": lat["sws"]}
    sws_cols.update(bytes=math.ceil(dense_cols["bytes"] / mean["rate"]), bits=32 / mean["rate"])
    base_cols = {**model_row(kept["posthoc"], shape), "latency_ms": lat["posthoc"]}
    base_cols.update(bytes=math.ceil(dense_cols["bytes"] / mean["posthoc_rate"]), bits=32 / mean["posthoc_rate"])
    unsnapped_cols = {**model_row(kept["sws_unsnapped"], shape), "latency_ms": lat["sws_unsnapped"]}
    extra = {"compression": mean["rate"], "values": mean["values"], "nonzero_share": mean["nonzero"]}
    rows = [
        dict(name="pretrained", label="Pretrained MLP (fp32)", role="baseline", **dense_cols),
        dict(name="sws", label="Soft weight-sharing, snapped", role="method", **sws_cols, extra=extra),
        dict(name="sws_unsnapped", label="Soft weight-sharing, before snapping", role="ablation", **unsnapped_cols),
        dict(
            name="posthoc",
            label="Magnitude prune + k-means, same budget",
            role="baseline",
            **base_cols,
            extra={"compression": mean["posthoc_rate"]},
        ),
    ]
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    return _result(ctx, data, rows, mean, grid, epochs, retrain_epochs, width)


def _result(
    ctx: RunContext,
    data: TensorData,
    rows: list[dict],
    mean: dict[str, float],
    grid: dict[tuple[float, float], dict[str, float]],
    epochs: int,
    retrain_epochs: int,
    width: float,
) -> dict[str, Any]:
    """The results dict: claim, answers to the two open questions, figure."""
    from implementations._runner import save_accuracy_plot

    cfg = Config()
    loss = mean["pretrained"] - mean["sws"]
    reproduced = mean["rate"] >= 10.0 and loss <= 1.0
    figure = save_accuracy_plot(rows, ctx, "softweightsharing_ullrich2017", title="Soft weight-sharing on digits")
    good = [key for key, r in grid.items() if r["acc"] >= mean["pretrained"] - 2.0 and r["rate"] >= 10.0]
    described = "; ".join(
        f"tau={t:g}, mixture lr={m:g}, sigma0={sd:g}: {r['acc']:.1f}%, {r['rate']:.1f}x, {r['values']:.0f} values, "
        f"{100 * r['nonzero']:.1f}% non-zero"
        for (t, m, sd), r in grid.items()
    )
    overhead = mean["sec"] / mean["sec_plain"]
    (w_tau, w_lr, w_sigma), worst = min(grid.items(), key=lambda kv: kv[1]["acc"])
    worst_knob = (
        f"tau={w_tau:g}"
        if w_tau != cfg.tau
        else f"mixture lr={w_lr:g}"
        if w_lr != cfg.mixture_lr
        else f"sigma0={w_sigma:g}"
    )
    return {
        "id": "softweightsharing_ullrich2017",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": retrain_epochs,
            "selection": "last",
            "notes": f"MLP 64-64-64-10 (width {width}) pretrained {epochs} epochs (SGD lr 0.05, wd 5e-4), then "
            f"retrained {retrain_epochs} epochs with Adam (weights lr {cfg.lr}, mixture lr {cfg.mixture_lr}) under "
            f"the prior: {cfg.components} components, pi_0={cfg.pi_zero}, tau={cfg.tau}, sigma init "
            f"{cfg.init_sigma} floored at {cfg.min_sigma} (no Gamma hyper-priors; log-variance and mixing lr "
            f"{cfg.variance_lr}), on all Linear weights (biases "
            f"fp32). Components with symmetric KL < {cfg.merge_kl} merged, weights snapped to the most responsible "
            f"mean. Compression = 32-bit dense size / Deep Compression sparse format without Huffman (5-bit "
            f"relative indices, ceil(log2(K+1))-bit codes, one fp32 codebook). Post-hoc baseline: global magnitude "
            f"pruning to the same non-zero share + k-means with as many values, no retraining. Grid on seed "
            f"{ctx.seeds[0]} only.",
        },
        "rows": rows,
        "claim": {
            "text": "Retraining under a learned Gaussian-mixture prior with a zero component prunes and quantizes "
            "the network in one run: over an order of magnitude of compression (here >= 10x) for at most 1 point "
            "of accuracy.",
            "reproduced": reproduced,
            "evidence": f"compression {mean['rate']:.1f}x ({100 * mean['nonzero']:.1f}% non-zero weights, "
            f"{mean['values']:.0f} shared values), accuracy {mean['sws']:.2f}% vs pretrained {mean['pretrained']:.2f}% "
            f"(before snapping {mean['sws_unsnapped']:.2f}%); magnitude pruning + k-means at the same budget without "
            f"retraining: {mean['posthoc']:.2f}% ({mean['posthoc_rate']:.1f}x).",
        },
        "answers": [
            {
                "question": "Can the method be made cheap enough for large networks, given that the authors report "
                "it is too slow for VGG-sized models?",
                "answer": f"The prior costs O(I (J+1)) per step on top of the forward/backward pass; on our "
                f"9k-weight MLP a retraining epoch with the prior took {overhead:.1f}x as long as without it. The "
                "extra cost scales with weights x components, not with the data, so for large networks one would "
                "evaluate the prior on a subsample of the weights or every few steps (not tried here).",
                "evidence": f"seconds per retraining epoch: {mean['sec']:.3f} with the prior ({cfg.components} "
                f"components), {mean['sec_plain']:.3f} without (Adam, batch 128, 1 thread).",
            },
            {
                "question": "How sensitive is the result to its many hyperparameters (13 were tuned with Bayesian "
                "optimisation)?",
                "answer": ("Quite sensitive" if len(good) < len(grid) else "Not very sensitive")
                + f": {len(good)} of {len(grid)} single-knob changes around our setting stayed within 2 points of "
                f"the pretrained accuracy at >= 10x compression; the largest swing came from {worst_knob} "
                f"({worst['acc']:.1f}%, {worst['rate']:.1f}x), and the compression rate itself moved between "
                f"{min(r['rate'] for r in grid.values()):.1f}x and {max(r['rate'] for r in grid.values()):.1f}x.",
                "evidence": described + f"; default (tau={cfg.tau}, mixture lr={cfg.mixture_lr}): "
                f"{mean['sws']:.1f}%, {mean['rate']:.1f}x.",
            },
        ],
        "figures": [figure],
    }
