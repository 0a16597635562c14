r"""The small-scale reproduction of constraint-aware compression (Chen et al., 2018): random search against constrained
Bayesian optimisation with a fixed, linear, exponential or the notes' cooling of the constraint, at 0.2x FLOPs on a
trained 1-D CNN on MNIST-1D."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from implementations.automl.constraintaware_chen2018 import Config, ConstraintAwareCompression, cooling_schedule

QUESTION_COOLING = "Does a gradually tightened constraint (cooling) beat imposing the final constraint from the start?"
QUESTION_FORM = (
    "The notes give the exponential cooling function as g_t = c + e^(t/T), which does not reach the target c at "
    "t = T; what is the paper's exact form?"
)
CHANNELS = (16, 32, 64, 64)  # the trained 4-stage 1-D CNN that every search compresses
METHODS = {  # name: (label, role, method, cooling)
    "random": ("Random search", "baseline", "random", "none"),
    "bo_fixed": ("Constrained BO, final constraint from the start", "ablation", "bo", "none"),
    "bo_linear": ("Constrained BO, linear cooling", "method", "bo", "linear"),
    "bo_exp": ("Constrained BO, exponential cooling (reaches c)", "method", "bo", "exponential"),
    "bo_notes": ("Constrained BO, notes' g_t = c + e^(t/T)", "ablation", "bo", "notes"),
}


def reproduce(ctx: Any) -> dict[str, Any]:
    """Random search and constrained BO (fixed / linear / exponential / notes' cooling) at 0.2x FLOPs, per seed."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, interleaved_latency, model_row
    from implementations._models import CNN1d
    from implementations.automl._base import finetune

    cfg = Config()
    if ctx.profile == "quick":
        cfg = replace(cfg, iterations=8, n_init=4, candidates=100, cooling_steps=3)
    data = load_dataset("mnist1d", n_train=ctx.n_train)
    epochs, n_val, ft_epochs = ctx.epochs(10), data.n_train // 4, ctx.epochs(2)
    acc: dict[str, list[float]] = {}
    before: dict[str, list[float]] = {}  # test accuracy of the chosen configuration before fine-tuning
    val: dict[str, list[float]] = {}
    found: dict[str, list[list[int]]] = {}
    feasible_frac: dict[str, list[float]] = {}
    models: dict[str, Any] = {}
    for seed in ctx.seeds:
        order = torch.randperm(data.n_train, generator=torch.Generator().manual_seed(seed))
        val_idx, train_idx = order[:n_val], order[n_val:]
        part = replace(data, x_train=data.x_train[train_idx], y_train=data.y_train[train_idx])
        seed_everything(seed)
        base = CNN1d(1, data.input_shape[-1], data.num_classes, channels=CHANNELS)
        fit(Supervised(base), base.parameters(), part, epochs, lr=0.1, seed=seed, progress=False)
        acc.setdefault("unpruned", []).append(evaluate(base, data))
        models.setdefault("unpruned", base)
        for name, (_, _, method, cooling) in METHODS.items():
            search = ConstraintAwareCompression(
                base, data.x_train[val_idx], data.y_train[val_idx], part.x_train[:512], replace(cfg, cooling=cooling)
            )
            best = search.search(np.random.default_rng(seed), method)
            keep = best["keep"] if best else [max(1, math.ceil(cfg.lbound * c)) for c in CHANNELS]
            pruned = search.pruner(keep)
            before.setdefault(name, []).append(evaluate(pruned, data))
            seed_everything(seed)
            finetune(pruned, part, ft_epochs, lr=0.02, seed=seed, device=ctx.device)
            acc.setdefault(name, []).append(evaluate(pruned, data))
            val.setdefault(name, []).append(best["accuracy"] if best else 0.0)
            found.setdefault(name, []).append(keep)
            feasible_frac.setdefault(name, []).append(
                sum(h["cost"] <= cfg.flops_ratio for h in search.history) / len(search.history)
            )
            models.setdefault(name, pruned)

    size = {k: model_row(m, data.input_shape) for k, m in models.items()}
    if ctx.profile != "quick":
        for k, ms in interleaved_latency(models, data.input_shape, rounds=3).items():
            size[k]["latency_ms"] = ms
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    mval = {k: sum(v) / len(v) for k, v in val.items()}
    rows = [
        dict(
            name="unpruned",
            label=f"Unpruned 1-D CNN {list(CHANNELS)}",
            role="baseline",
            accuracy=accuracy_stats(acc["unpruned"]),
            **size["unpruned"],
        )
    ]
    for name, (label, role, _, _) in METHODS.items():
        extra = {
            "search_val_accuracy": mval[name],
            "accuracy_before_finetune": sum(before[name]) / len(before[name]),
            "feasible_fraction_of_evaluations": sum(feasible_frac[name]) / len(feasible_frac[name]),
            "flops_ratio_seed0": size[name]["flops"] / size["unpruned"]["flops"],
            "channels_all_seeds": "; ".join(str(k) for k in found[name]),
        }
        rows.append(
            dict(name=name, label=label, role=role, accuracy=accuracy_stats(acc[name]), **size[name], extra=extra)
        )
    from implementations.architecture._base import save_tradeoff_plot

    figure = save_tradeoff_plot(rows, ctx, "constraintaware_chen2018", title="Constraint-aware BO at 0.2x FLOPs")
    cooled = ("bo_linear", "bo_exp")
    vs_fixed = [mval[c] - mval["bo_fixed"] for c in cooled]
    if all(beats(val[c], val["bo_fixed"]) for c in cooled):
        verdict = "Yes at this scale (both schedules beat fixed-constraint BO beyond seed noise)"
    elif all(beats(val["bo_fixed"], val[c]) for c in cooled):
        verdict = "No at this scale (fixed-constraint BO beats both schedules beyond seed noise)"
    else:
        verdict = (
            "Not supported by the evidence at this scale: cooled and fixed-constraint BO are within seed noise of "
            "each other (or the two schedules disagree), so the gain over random search comes from the BO itself"
        )
    bo_wins = {k: beats(val[k], val["random"]) for k in ("bo_fixed", "bo_linear", "bo_exp")}
    ft_wins = {k: beats(acc[k], acc["random"]) for k in ("bo_fixed", "bo_linear", "bo_exp")}
    g_end = cooling_schedule(cfg.cooling_steps, replace(cfg, cooling="notes"), 1.0, cfg.flops_ratio)
    return {
        "id": "constraintaware_chen2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"Per seed: CNN1d {list(CHANNELS)} trained {epochs} epochs (SGD lr 0.1 cosine) on 3/4 of the "
            f"training set; theta = per-layer channel preserve ratios in [{cfg.lbound}, 1]; an evaluation prunes "
            f"(weight-magnitude channels, least-squares refit of the next layer, no fine-tuning) and scores the "
            f"held-out 1/4; constraint FLOPs <= {cfg.flops_ratio:g}x. Every method gets {cfg.iterations} "
            f"evaluations (BO: {cfg.n_init} random, then GP-EI x P(feasible) over {cfg.candidates} random "
            f"candidates; Matern-5/2 ARD GPs on accuracy and log FLOPs ratio, kernel refit every "
            f"{cfg.refit_every}); cooling from p0 = 1 to c over {cfg.cooling_steps} iterations (exponential: "
            f"lambda {cfg.decay}). The best feasible configuration is then fine-tuned {ft_epochs} epochs (SGD lr 0.02 "
            f"cosine, automl._base.finetune); accuracy = test accuracy after fine-tuning (before: in extra). "
            f"Size columns: seed 0's models; latency batch 1, fastest of 3 interleaved rounds.",
        },
        "rows": rows,
        "claim": {
            "text": "Constrained Bayesian optimisation finds a compressed network that meets the resource "
            "constraint with higher accuracy than random search with the same number of evaluations (here: BO "
            "with the paper's linear cooling, held-out accuracy of the best configuration, paired over seeds, "
            "gain above one standard error). Whether the cooling itself helps is a separate open question below.",
            "reproduced": bo_wins["bo_linear"],
            "evidence": f"best feasible held-out accuracy (mean of {len(ctx.seeds)} seeds): BO linear cooling "
            f"{mval['bo_linear']:.2f}, exponential {mval['bo_exp']:.2f}, no cooling {mval['bo_fixed']:.2f}, random "
            f"search {mval['random']:.2f}; beats random beyond seed noise: "
            + ", ".join(f"{k} {v}" for k, v in bo_wins.items())
            + f". Test accuracy after {ft_epochs} fine-tuning epochs: linear {mean['bo_linear']:.2f}, exponential "
            f"{mean['bo_exp']:.2f}, no cooling {mean['bo_fixed']:.2f}, random {mean['random']:.2f} (unpruned "
            f"{mean['unpruned']:.2f}); beats random after fine-tuning: "
            + ", ".join(f"{k} {v}" for k, v in ft_wins.items())
            + ".",
        },
        "answers": [
            {
                "question": QUESTION_COOLING,
                "answer": f"{verdict}: under the final constraint, linear cooling ends {vs_fixed[0]:+.2f} and "
                f"exponential cooling {vs_fixed[1]:+.2f} points of held-out accuracy from BO that imposes the final "
                f"constraint from the start ({mval['bo_fixed']:.2f}%).",
                "evidence": f"linear {mval['bo_linear']:.2f} (test {mean['bo_linear']:.2f}), exponential "
                f"{mval['bo_exp']:.2f} (test {mean['bo_exp']:.2f}), fixed {mval['bo_fixed']:.2f} (test "
                f"{mean['bo_fixed']:.2f}); share of evaluations feasible under c: "
                + ", ".join(f"{k} {sum(v) / len(v):.2f}" for k, v in feasible_frac.items())
                + f" ({len(ctx.seeds)} seeds).",
            },
            {
                "question": QUESTION_FORM,
                "answer": "We could not check the paper's exact formula offline. As written, g_t = c + e^(t/T) starts "
                "at c + 1 and grows, so in units of the uncompressed value it never constrains the search; a form "
                "that starts at p_0 and reaches c exactly at t = T is the normalised decay g_t = c + (p_0 - c)"
                "(e^(-lambda t/T) - e^(-lambda)) / (1 - e^(-lambda)), which this module uses.",
                "evidence": f"with c = {cfg.flops_ratio:g}, the notes' form gives g_T = {g_end:.2f} (> 1 = the "
                f"unpruned FLOPs); BO with it: held-out {mval['bo_notes']:.2f}, test {mean['bo_notes']:.2f}, "
                f"feasible evaluations {sum(feasible_frac['bo_notes']) / len(feasible_frac['bo_notes']):.2f}; with "
                f"the normalised exponential: {mval['bo_exp']:.2f} / {mean['bo_exp']:.2f} / "
                f"{sum(feasible_frac['bo_exp']) / len(feasible_frac['bo_exp']):.2f}.",
            },
        ],
        "figures": [figure],
    }
