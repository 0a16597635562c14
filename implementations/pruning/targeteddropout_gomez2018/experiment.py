"""The small-scale reproduction of targeted dropout (Gomez et al., 2018): an MLP on digits trained plainly, with
untargeted weight dropout and with targeted dropout, then pruned post hoc by magnitude over a range of rates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from implementations._models import build_model
from implementations.pruning.targeteddropout_gomez2018 import Config, TargetedDropout, magnitude_prune

if TYPE_CHECKING:
    from implementations._harness import RunContext

RATES = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)  # post-hoc pruning rates of the accuracy curve


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """MLP on digits trained plainly, with untargeted weight dropout, and with targeted dropout; then pruned."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, interleaved_latency, model_row, sparse_bytes
    from implementations.quantization._base import beats

    cfg = Config()
    data = load_dataset("digits", n_train=ctx.n_train)
    epochs, width = ctx.epochs(30), 0.5
    variants = {  # name -> (Config or None, pruning mode)
        "plain": (None, "weight"),
        "dropconnect": (Config(gamma=1.0, alpha=cfg.alpha * cfg.gamma), "weight"),
        "targeted": (cfg, "weight"),
        "plain_unit": (None, "unit"),
        "targeted_unit": (Config(gamma=cfg.gamma, alpha=cfg.alpha, mode="unit"), "unit"),
    }
    curves: dict[str, dict[float, list[float]]] = {name: {r: [] for r in RATES} for name in variants}
    pruned_models: dict[str, nn.Module] = {}
    for seed in ctx.seeds:
        trained: dict[str, nn.Module] = {}
        for name, (td_cfg, mode) in variants.items():
            if name == "plain_unit":  # the same plain network, pruned by units
                model = trained["plain"]
            else:
                seed_everything(seed)  # identical initialisation for every variant
                model = build_model("mlp", data.num_classes, data.input_shape, width=width)
                task = Supervised(model) if td_cfg is None else TargetedDropout(model, td_cfg)
                fit(task, task.parameters(), data, epochs, lr=0.05, seed=seed, progress=False, device=ctx.device)
                model = model if td_cfg is None else task.plain_model()
                trained[name] = model
            for rate in RATES:
                pruned = magnitude_prune(model, rate, mode)
                curves[name][rate].append(evaluate(pruned, data))
                if rate == cfg.gamma:
                    pruned_models.setdefault(name, pruned)

    # Size columns from the first seed's networks: dense, weight-pruned (dense shapes), unit-pruned (thinner)
    shape = data.input_shape
    size_models = {
        "dense": trained["plain"],
        "weight": pruned_models["targeted"],
        "unit": pruned_models["targeted_unit"],
    }
    latency = interleaved_latency(size_models, shape, rounds=2 if ctx.profile == "quick" else 5)
    size = {kind: {**model_row(m, shape), "latency_ms": latency[kind]} for kind, m in size_models.items()}
    labels = {
        "plain": ("No dropout", "baseline"),
        "dropconnect": (f"Untargeted weight dropout (rate {cfg.alpha * cfg.gamma:g})", "ablation"),
        "targeted": (f"Targeted dropout (gamma={cfg.gamma:g}, alpha={cfg.alpha:g})", "method"),
        "plain_unit": ("No dropout, unit pruning", "ablation"),
        "targeted_unit": ("Targeted unit dropout, unit pruning", "ablation"),
    }
    g = cfg.gamma
    rows = []
    for name, (label, role) in labels.items():
        if name != "plain_unit":  # the same trained network as "plain"
            dense = dict(accuracy=accuracy_stats(curves[name][0.0]), **size["dense"])
            rows.append(dict(name=f"{name}_dense", label=f"{label}, unpruned", role=role, **dense))
        kind = variants[name][1]
        extra = {f"acc_at_{round(100 * r)}": sum(v) / len(v) for r, v in curves[name].items()}
        extra["sparse_bytes"] = float(sparse_bytes(size_models[kind]))
        pruned = dict(accuracy=accuracy_stats(curves[name][g]), **size[kind], extra=extra)
        rows.append(dict(name=f"{name}_pruned", label=f"{label}, pruned {100 * g:.0f}%", role=role, **pruned))
    mean = {name: {r: sum(v) / len(v) for r, v in c.items()} for name, c in curves.items()}
    drop = {name: mean[name][0.0] - mean[name][g] for name in variants}
    figure = _plot(ctx, mean, labels)
    reproduced = beats(curves["targeted"][g], curves["plain"][g]) and drop["targeted"] < drop["plain"]
    targeting_helps = beats(curves["targeted"][g], curves["dropconnect"][g])
    return {
        "id": "targeteddropout_gomez2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"MLP 64-128-128-10 (width {width}), SGD momentum 0.9, cosine lr 0.05, batch 128, wd 5e-4, "
            f"{epochs} epochs, same initialisation per seed for every variant. Dropout on the weights of all "
            f"linear layers; untargeted weight dropout drops every weight with probability alpha*gamma (same "
            f"expected number of dropped weights). After training, each unit's smallest-|w| fraction (or the "
            f"lowest-norm hidden units, removed physically, for unit pruning) is removed in every layer, no "
            f"retraining; rates {list(RATES)}. Size columns: first seed's networks; latency = fastest of interleaved "
            f"rounds of _measure.latency_ms (batch 1, 1 thread). Weight-pruned rows keep dense shapes (storage as "
            f"sparse_bytes in extra); unit-pruned rows are physically thinner.",
        },
        "rows": rows,
        "claim": {
            "text": f"Training with targeted dropout makes the network robust to post-hoc magnitude pruning at the "
            f"targeted rate: pruned {100 * g:.0f}% it keeps more accuracy (and loses less) than the same network "
            f"trained without dropout.",
            "reproduced": reproduced,
            "evidence": f"pruned {100 * g:.0f}% of each unit's weights: targeted {mean['targeted'][g]:.2f}% (drop "
            f"{drop['targeted']:.2f} points) vs no dropout {mean['plain'][g]:.2f}% (drop {drop['plain']:.2f}); at 90%: "
            f"{mean['targeted'][0.9]:.2f}% vs {mean['plain'][0.9]:.2f}%; unit pruning {100 * g:.0f}%: "
            f"{mean['targeted_unit'][g]:.2f}% vs {mean['plain_unit'][g]:.2f}% (mean over {len(ctx.seeds)} seed(s)).",
        },
        "answers": [
            {
                "question": 'The notes link a news article calling it "pruning-like" dropout; how much of the gain '
                "over plain dropout followed by magnitude pruning comes from targeting the low-magnitude set rather "
                "than from dropout itself?",
                "answer": (
                    "Most of it comes from the targeting"
                    if targeting_helps
                    and mean["targeted"][g] - mean["dropconnect"][g] > 0.5 * (mean["targeted"][g] - mean["plain"][g])
                    else "Targeting is not what helps here"
                    if not targeting_helps
                    else "Part of it comes from the targeting"
                )
                + f": pruned {100 * g:.0f}%, untargeted weight dropout with the same expected drop count reaches "
                f"{mean['dropconnect'][g]:.1f}%, targeted dropout {mean['targeted'][g]:.1f}%, no dropout "
                f"{mean['plain'][g]:.1f}%.",
                "evidence": f"unpruned: plain {mean['plain'][0.0]:.2f}%, untargeted {mean['dropconnect'][0.0]:.2f}%, "
                f"targeted {mean['targeted'][0.0]:.2f}%; pruned {100 * g:.0f}%: {mean['plain'][g]:.2f}% / "
                f"{mean['dropconnect'][g]:.2f}% / {mean['targeted'][g]:.2f}%; pruned 90%: {mean['plain'][0.9]:.2f}% / "
                f"{mean['dropconnect'][0.9]:.2f}% / {mean['targeted'][0.9]:.2f}%.",
            }
        ],
        "figures": [figure],
    }


def _plot(ctx: RunContext, mean: dict[str, dict[float, float]], labels: dict[str, tuple[str, str]]) -> str:
    """Accuracy against the post-hoc pruning rate, one line per training variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, curve in mean.items():
        style = "--" if name.endswith("unit") else "-"
        ax.plot([100 * r for r in curve], list(curve.values()), style, marker="o", ms=3, label=labels[name][0])
    ax.axvline(100 * Config().gamma, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("pruned fraction per layer (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Targeted dropout: accuracy after post-hoc magnitude pruning (digits)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / "targeteddropout_gomez2018_pruning.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"{ctx.results_dir.resolve().name}/figures/{path.name}"
