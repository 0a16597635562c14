"""The small-scale reproduction of Towards the Limit of Network Quantization (Choi et al., 2017): k-means,
Hessian-weighted k-means (Fisher and Adam) and uniform quantization of all weights of a CNN for MNIST-1D, clustered
jointly."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._harness import epoch_generator
from implementations.quantization._base import beats
from implementations.quantization.hessianquant_choi2017 import (
    Config,
    _assign,
    fisher_diagonal,
    hessian_weighted_kmeans,
    index_entropy,
)

if TYPE_CHECKING:
    from implementations._data import TensorData
    from implementations._harness import RunContext


SETTING = dict(dataset="mnist1d", model="cnn1d", width=0.5, epochs=10, lr=2e-3, batch_size=128, clusters=(4, 8, 16, 32))


def _train_adam(model: nn.Module, data: TensorData, epochs: int, lr: float, batch: int, seed: int) -> torch.optim.Adam:
    """Plain Adam training (the harness' `fit` does not expose the optimizer, whose state we need)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(data.n_train, generator=epoch_generator(seed, epoch))
        for start in range(0, data.n_train, batch):
            idx = order[start : start + batch]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return opt


def _quantized_copy(model: nn.Module, names: list[str], flat_hat: Tensor) -> nn.Module:
    import copy

    out = copy.deepcopy(model)
    params, start = dict(out.named_parameters()), 0
    with torch.no_grad():
        for name in names:
            p = params[name]
            p.copy_(flat_hat[start : start + p.numel()].view_as(p))
            start += p.numel()
    return out


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Train once per seed; quantize all weight matrices jointly with k-means, HW k-means (Fisher, Adam) and uniform."""
    from implementations._data import load_dataset
    from implementations._harness import evaluate, seed_everything
    from implementations._measure import accuracy_stats, count_flops, count_params, interleaved_latency, quantized_bytes
    from implementations._models import build_model

    s, cfg = SETTING, Config()
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs = ctx.epochs(s["epochs"])
    methods = ("uniform", "kmeans", "hw_fisher", "hw_adam")
    acc: dict[str, list[float]] = {}
    entropy: dict[str, list[float]] = {}
    correlation: list[float] = []
    kept: dict[str, nn.Module] = {}
    for seed in ctx.seeds:
        seed_everything(seed)
        model = build_model(s["model"], data.num_classes, data.input_shape, width=s["width"])
        opt = _train_adam(model, data, epochs, s["lr"], s["batch_size"], seed)
        acc.setdefault("fp", []).append(evaluate(model, data))
        kept.setdefault("fp", model)
        names = [n for n, p in model.named_parameters() if p.dim() > 1]  # weight matrices; biases stay fp32
        params = dict(model.named_parameters())
        flat = torch.cat([params[n].detach().reshape(-1) for n in names])  # (N,)
        n_fisher = min(cfg.fisher_examples, data.n_train)
        fisher = fisher_diagonal(model, data.x_train[:n_fisher], data.y_train[:n_fisher])
        curvature = {
            "hw_fisher": torch.cat([fisher[n].reshape(-1) for n in names]),
            # the paper's proxy: square root of Adam's second moment, the raw exp_avg_sq (not bias-corrected: the
            # correction 1 / (1 - beta2^t) is one scalar for all weights, and HW k-means is invariant to scaling h)
            "hw_adam": torch.cat([opt.state[params[n]]["exp_avg_sq"].sqrt().reshape(-1) for n in names]),
        }
        correlation.append(_spearman(curvature["hw_fisher"], curvature["hw_adam"]))
        for k in s["clusters"]:
            for method in methods:
                if method == "uniform":
                    levels = torch.linspace(float(flat.min()), float(flat.max()), k)
                    assignment = _assign(flat, levels)
                    flat_hat = levels[assignment]
                else:
                    flat_hat, _, assignment = hessian_weighted_kmeans(flat, curvature.get(method), k, cfg.iterations)
                key = f"{method}_k{k}"
                quantized = _quantized_copy(model, names, flat_hat)
                acc.setdefault(key, []).append(evaluate(quantized, data))
                kept.setdefault(key, quantized)  # first seed's model, for timing
                entropy.setdefault(key, []).append(index_entropy(assignment, k))

    reference = build_model(s["model"], data.num_classes, data.input_shape, width=s["width"])
    n_weights = sum(p.numel() for p in reference.parameters() if p.dim() > 1)
    n_other = count_params(reference) - n_weights
    flops = count_flops(reference, torch.zeros(1, *data.input_shape))
    # every model's own batch-1 latency, best of interleaved rounds (robust to other jobs on a shared CPU)
    lat = dict.fromkeys(kept) if ctx.profile == "quick" else interleaved_latency(kept, data.input_shape, rounds=3)
    labels = {
        "uniform": "Uniform",
        "kmeans": "k-means",
        "hw_fisher": "HW k-means (Fisher)",
        "hw_adam": "HW k-means (sqrt Adam v)",
    }
    roles = {"uniform": "ablation", "kmeans": "baseline", "hw_fisher": "method", "hw_adam": "ablation"}
    rows = [
        dict(
            name="fp",
            label="Full precision",
            role="baseline",
            accuracy=accuracy_stats(acc["fp"]),
            params=count_params(reference),
            bytes=4 * count_params(reference),
            flops=flops,
            bits=32.0,
            latency_ms=lat["fp"],
        )
    ]
    for k in s["clusters"]:
        bits = math.ceil(math.log2(k))
        for method in methods:
            key = f"{method}_k{k}"
            rows.append(
                dict(
                    name=key,
                    label=f"{labels[method]}, k={k}",
                    role=roles[method],
                    accuracy=accuracy_stats(acc[key]),
                    params=count_params(reference),
                    bytes=quantized_bytes(n_weights, bits, num_scales=k) + 4 * n_other,
                    flops=flops,
                    bits=float(bits),
                    latency_ms=lat[key],
                    extra={"clusters": float(k), "index_entropy_bits": sum(entropy[key]) / len(entropy[key])},
                )
            )
    mean = {r["name"]: r["accuracy"]["mean"] for r in rows}
    figure = _plot(mean, s["clusters"], methods, labels, ctx)
    wins = [k for k in s["clusters"] if beats(acc[f"hw_fisher_k{k}"], acc[f"kmeans_k{k}"])]
    per_k = "; ".join(
        f"k={k}: HW (Fisher) {mean[f'hw_fisher_k{k}']:.2f}%, HW (Adam) {mean[f'hw_adam_k{k}']:.2f}%, k-means "
        f"{mean[f'kmeans_k{k}']:.2f}%, uniform {mean[f'uniform_k{k}']:.2f}%"
        for k in s["clusters"]
    )
    adam_vs_fisher = [mean[f"hw_adam_k{k}"] - mean[f"hw_fisher_k{k}"] for k in s["clusters"]]
    adam_vs_kmeans = [mean[f"hw_adam_k{k}"] - mean[f"kmeans_k{k}"] for k in s["clusters"]]
    adam_wins = [k for k in s["clusters"] if beats(acc[f"hw_adam_k{k}"], acc[f"kmeans_k{k}"])]
    adam_losses = [k for k in s["clusters"] if beats(acc[f"kmeans_k{k}"], acc[f"hw_adam_k{k}"])]
    adam_answer = (
        "Yes"
        if len(adam_wins) == len(s["clusters"])
        else f"Partly (better at k in {adam_wins}, worse at k in {adam_losses or 'none'})"
        if adam_wins
        else f"No (worse at k in {adam_losses})"
        if adam_losses
        else "Inconclusive at this scale"
    )
    rho = sum(correlation) / len(correlation)
    return {
        "id": "hessianquant_choi2017",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"{s['model']} width {s['width']} trained with Adam (lr {s['lr']}, batch {s['batch_size']}); all "
            f"weight matrices clustered jointly into k shared values, biases fp32, no fine-tuning; Fisher diagonal "
            f"from per-example gradients on {min(cfg.fisher_examples, data.n_train)} training examples; Adam proxy "
            f"= sqrt of the final exp_avg_sq; same trained network for every quantizer; bytes = ceil(log2 k)-bit "
            f"indices + k fp32 centers + fp32 biases (entropy coding not applied); latency: each row's own first-seed "
            f"model at batch 1 on one CPU thread, best of 3 interleaved rounds; the shared weights are decoded to a "
            f"dense fp32 model, so it matches the fp32 latency up to noise.",
        },
        "rows": rows,
        "claim": {
            "text": "Hessian-weighted k-means loses less accuracy than plain k-means for the same number of clusters.",
            "reproduced": len(wins) == len(s["clusters"]),
            "evidence": f"{per_k} (full precision {mean['fp']:.2f}%, mean over {len(ctx.seeds)} seed(s)); HW "
            f"(Fisher) beats k-means beyond one standard error of the paired difference at k in {wins or 'none'}.",
        },
        "answers": [
            {
                "question": "At our scale, does Hessian weighting beat plain k-means weight sharing for the same "
                "number of clusters?",
                "answer": ("Yes" if len(wins) == len(s["clusters"]) else "Partly" if wins else "No")
                + f": with the Fisher diagonal it was better at {len(wins)} of {len(s['clusters'])} cluster counts.",
                "evidence": per_k + ".",
            },
            {
                "question": "Is the second-moment estimate kept by Adam a usable stand-in for the Hessian diagonal?",
                "answer": f"{adam_answer}: HW k-means weighted by sqrt(v) from Adam beat plain k-means beyond one "
                f"standard error of the paired difference at {len(adam_wins)} of {len(s['clusters'])} cluster counts. "
                f"sqrt(v) has Spearman correlation {rho:.2f} with the Fisher diagonal; HW k-means with it differs "
                f"from the Fisher version by {', '.join(f'{d:+.2f}' for d in adam_vs_fisher)} points and from plain "
                f"k-means by {', '.join(f'{d:+.2f}' for d in adam_vs_kmeans)} points (means) at k = "
                f"{list(s['clusters'])}.",
                "evidence": per_k + ".",
            },
        ],
        "figures": [figure],
    }


def _spearman(a: Tensor, b: Tensor) -> float:
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def _plot(mean: dict[str, float], clusters: tuple, methods: tuple, labels: dict, ctx: RunContext) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    for method, style in zip(methods, ("s:", "o--", "D-", "^-"), strict=True):
        ax.plot(clusters, [mean[f"{method}_k{k}"] for k in clusters], style, label=labels[method])
    ax.axhline(mean["fp"], color="#7f7f7f", linestyle=":", label="full precision")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(clusters), [str(k) for k in clusters])
    ax.set_xlabel("clusters k (all layers jointly)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / "hessianquant_choi2017_clusters.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"{ctx.results_dir.resolve().name}/figures/{path.name}"
