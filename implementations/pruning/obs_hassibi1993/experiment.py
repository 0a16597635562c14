"""The small-scale reproduction of Optimal Brain Surgeon (Hassibi & Stork, 1993): magnitude, OBD and OBS pruning
without retraining of one trained digits MLP, with ablations that separate the choice of weight from the OBS update."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from implementations.pruning.obs_hassibi1993 import OBS, Config, gauss_newton_hessian, obd_saliency, obs_prune

if TYPE_CHECKING:
    from implementations._harness import RunContext


def _train_stats(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Training cross-entropy and training error (%) of `model`."""
    with torch.no_grad():
        logits = model(x)
    return float(F.cross_entropy(logits, y)), 100.0 * float((logits.argmax(-1) != y).float().mean())


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Magnitude, OBD and OBS pruning without retraining of the same trained MLP on digits, over `ctx.seeds`.

    Weights are deleted on a grid of sparsities; the headline compares how many weights each criterion removes
    before the training error rises by more than `tolerance` points (the paper's "more weights for the same
    error"). Two ablations separate selection from correction: OBS selection without the weight update, and OBD
    selection followed by the OBS update.
    """
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, interleaved_latency, model_row
    from implementations._models import MLP

    cfg = Config()
    data = load_dataset("digits", n_train=ctx.n_train)
    epochs = ctx.epochs(cfg.epochs)
    hidden = cfg.hidden if ctx.profile != "quick" else cfg.hidden // 2  # quick: a 4x smaller Hessian
    grid = [round(0.5 + 0.025 * i, 3) for i in range(19)]  # 50%, 52.5%, ..., 95% of the weights deleted
    report = (0.8, 0.9)
    variants = {  # name -> (label, role, selection, update)
        "magnitude": ("Magnitude", "baseline", "magnitude", False),
        "obd": ("OBD (diagonal H, no update)", "baseline", "obd", False),
        "obs": ("OBS (full H^-1 + update)", "method", "obs", True),
        "obs_noupdate": ("OBS selection, no update", "ablation", "obs", False),
        "obd_update": ("OBD selection + OBS update", "ablation", "obd", True),
    }
    stats: dict[tuple[str, float], list[tuple[float, float, float]]] = {}  # (ce, train err, test acc)
    reach: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    kept_models: dict[str, nn.Module] = {}  # the last seed's pruned nets at the reported sparsities, for sizes

    def new_mlp() -> MLP:
        return MLP(64, data.num_classes, hidden=(hidden,))

    for seed in ctx.seeds:
        seed_everything(seed)
        model = new_mlp()
        fit(Supervised(model), model.parameters(), data, epochs, lr=0.1, batch_size=64, seed=seed, progress=False)
        dense = (*_train_stats(model, data.x_train, data.y_train), evaluate(model, data))
        kept_models["dense"] = model
        stats.setdefault(("dense", 0.0), []).append(dense)
        prunable = OBS(model, cfg).prunable()
        n_weights = int(prunable.sum())
        counts = [int(s * n_weights) for s in grid]
        flat = parameters_to_vector(model.parameters()).detach().double()
        started = time.perf_counter()
        hessian = gauss_newton_hessian(model, data.x_train, cfg.damping)
        seconds["hessian"] = seconds.get("hessian", 0.0) + time.perf_counter() - started
        for name, (_, _, selection, update) in variants.items():
            started = time.perf_counter()
            if selection == "magnitude":  # one-shot global magnitude = sequential without update
                order = torch.where(prunable, flat.abs(), torch.full_like(flat, torch.inf)).argsort()
                snaps = [flat.clone().index_fill_(0, order[:c], 0.0) for c in counts]
            elif selection == "obd" and not update:  # no update: the OBD ranking never changes
                order = torch.where(prunable, obd_saliency(flat, hessian.diagonal()), torch.inf).argsort()
                snaps = [flat.clone().index_fill_(0, order[:c], 0.0) for c in counts]
            else:
                snaps = obs_prune(flat, hessian, prunable, counts, selection, update)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
            best, admissible = 0.0, True
            for s, snap in zip(grid, snaps, strict=True):
                pruned = new_mlp()
                vector_to_parameters(snap.float(), pruned.parameters())
                ce, err = _train_stats(pruned, data.x_train, data.y_train)
                stats.setdefault((name, s), []).append((ce, err, evaluate(pruned, data)))
                if s in report:
                    kept_models[f"{name}_s{round(100 * s)}"] = pruned
                admissible = admissible and err <= dense[1] + cfg.tolerance  # stop at the first miss
                best = s if admissible else best
            reach.setdefault(name, []).append(best)

    def mean(key: tuple[str, float], i: int) -> float:
        return sum(v[i] for v in stats[key]) / len(stats[key])

    mean_reach = {k: sum(v) / len(v) for k, v in reach.items()}
    obs_wins = beats(reach["obs"], reach["obd"]) and beats(reach["obs"], reach["magnitude"])  # paired by seed
    # bytes follow _measure.model_row: min(dense fp32, fp32 value + int32 index per non-zero); the pruned nets
    # still run dense kernels, so their latency is the dense net's (measured, interleaved, to show it)
    size = {name: model_row(m, data.input_shape) for name, m in kept_models.items()}
    for name, ms in interleaved_latency(kept_models, data.input_shape, rounds=3).items():
        size[name]["latency_ms"] = ms
    dense_cols = size["dense"]
    rows = [
        dict(
            name="dense",
            label=f"Dense MLP 64-{hidden}-10",
            role="baseline",
            **dense_cols,
            accuracy=accuracy_stats([v[2] for v in stats[("dense", 0.0)]]),
            extra={"train_ce": mean(("dense", 0.0), 0), "train_error": mean(("dense", 0.0), 1)},
        )
    ]
    for s in report:
        for name, (label, role, _, _) in variants.items():
            rows.append(
                dict(
                    name=f"{name}_s{round(100 * s)}",
                    label=f"{label}, {100 * s:.0f}% deleted",
                    role=role,
                    **size[f"{name}_s{round(100 * s)}"],
                    accuracy=accuracy_stats([v[2] for v in stats[(name, s)]]),
                    extra={
                        "sparsity": s,
                        "train_ce": mean((name, s), 0),
                        "train_error": mean((name, s), 1),
                        "max_sparsity_within_tolerance": mean_reach[name],
                        "prune_seconds": seconds[name] / len(ctx.seeds),
                    },
                )
            )
    figure = _plot(ctx, grid, variants, {k: mean(k, 0) for k in stats}, {k: mean(k, 2) for k in stats})

    reach_txt = ", ".join(f"{name} {100 * mean_reach[name]:.1f}%" for name in variants)
    at = "; ".join(
        f"{100 * s:.0f}% deleted: train CE OBS {mean(('obs', s), 0):.3f} / OBD {mean(('obd', s), 0):.3f} / "
        f"magnitude {mean(('magnitude', s), 0):.3f}, test acc {mean(('obs', s), 2):.1f} / "
        f"{mean(('obd', s), 2):.1f} / {mean(('magnitude', s), 2):.1f}%"
        for s in report
    )
    s80, s90 = report
    sel_gain = {s: mean(("obd_update", s), 0) - mean(("obs", s), 0) for s in report}
    upd_gain = {s: mean(("obs_noupdate", s), 0) - mean(("obs", s), 0) for s in report}
    update_first = [s for s in report if upd_gain[s] > sel_gain[s]]
    if len(update_first) == len(report):
        update_verdict = "Yes, at both sparsities"
    elif not update_first:
        update_verdict = "No, at neither sparsity"
    else:
        update_verdict = (
            "It depends on the sparsity: yes at "
            + " and ".join(f"{100 * s:.0f}%" for s in update_first)
            + ", no at "
            + " and ".join(f"{100 * s:.0f}%" for s in report if s not in update_first)
        )
    cost = (seconds["hessian"] + seconds["obs"]) / max(1e-9, seconds["hessian"] + seconds["obd"])
    return {
        "id": "obs_hassibi1993",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"MLP 64-{hidden}-10 trained {epochs} epochs (SGD lr 0.1, batch 64, wd 5e-4), then pruned "
            f"without retraining on a grid of 50-95% of the {n_weights} weights (biases are never deleted but "
            f"are corrected by the OBS update); Gauss-Newton Hessian of the training CE over all training "
            f"examples, damping {cfg.damping}, computed once at the trained weights and conditioned after "
            f"each deletion; 'within tolerance' = training error at most {cfg.tolerance} points above the "
            f"dense net's; size columns are _measure.model_row of the last seed's pruned nets (bytes = min(dense "
            f"fp32, fp32 value + int32 index per non-zero)); latency: batch 1, fastest of 3 interleaved rounds, "
            f"dense kernels (unstructured zeros do not speed them up); 1 CPU thread.",
        },
        "rows": rows,
        "claim": {
            "text": "For the same training error, OBS deletes more weights than OBD or magnitude pruning.",
            "reproduced": obs_wins,
            "evidence": f"Largest fraction of weights deleted with training error within {cfg.tolerance} point "
            f"of the dense net (mean over {len(ctx.seeds)} seed(s), no retraining): {reach_txt}; OBS "
            f"{'beats' if obs_wins else 'does not beat'} both beyond seed noise (paired-seed rule). {at}.",
        },
        "answers": [
            {
                "question": "Is the full inverse Hessian worth its cost compared with a diagonal (OBD) or "
                "magnitude criterion on a modern-sized network?",
                "answer": f"At this toy size ({dense_cols['params']} parameters) "
                + ("it pays" if obs_wins else "it does not pay beyond seed noise")
                + f": OBS deletes {100 * mean_reach['obs']:.1f}% of the weights within tolerance vs "
                f"{100 * mean_reach['obd']:.1f}% (OBD) and {100 * mean_reach['magnitude']:.1f}% (magnitude), for "
                f"{cost:.0f}x OBD's time"
                + (
                    f"; far past that point ({100 * s90:.0f}% deleted) its accumulated corrections leave a higher "
                    "training CE than OBD's, as the quadratic model no longer holds"
                    if mean(("obs", s90), 0) > mean(("obd", s90), 0)
                    else ""
                )
                + "; the P x P inverse is what rules it out for modern networks without block approximations.",
                "evidence": at + f"; seconds per seed: Hessian {seconds['hessian'] / len(ctx.seeds):.2f}, "
                f"OBS deletion loop {seconds['obs'] / len(ctx.seeds):.2f}, OBD ranking "
                f"{seconds['obd'] / len(ctx.seeds):.4f}.",
            },
            {
                "question": "Does the weight-update step after each deletion matter more than the choice of "
                "which weight to delete?",
                "answer": update_verdict
                + ": removing the update from OBS raises the training CE by "
                + ", ".join(f"{upd_gain[s]:.3f} at {100 * s:.0f}% deleted" for s in report)
                + ", while choosing the weights by OBD instead of OBS (keeping the update) raises it by "
                + ", ".join(f"{sel_gain[s]:.3f} at {100 * s:.0f}%" for s in report)
                + " (a negative value means the change lowers it).",
                "evidence": "; ".join(
                    f"{100 * s:.0f}%: OBS {mean(('obs', s), 0):.3f}, OBS without update "
                    f"{mean(('obs_noupdate', s), 0):.3f}, OBD + update {mean(('obd_update', s), 0):.3f}, OBD "
                    f"{mean(('obd', s), 0):.3f}"
                    for s in report
                )
                + f" (training CE, mean over seeds); weights deleted within tolerance: {reach_txt}.",
            },
        ],
        "figures": [figure],
    }


def _plot(ctx: RunContext, sparsities: list[float], variants: dict, loss: dict, acc: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, (label, *_rest) in variants.items():
        style = "-o" if name in ("obs", "obd", "magnitude") else "--."
        axes[0].plot([100 * s for s in sparsities], [loss[(name, s)] for s in sparsities], style, label=label)
        axes[1].plot([100 * s for s in sparsities], [acc[(name, s)] for s in sparsities], style, label=label)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("training cross-entropy")
    axes[1].set_ylabel("test accuracy (%)")
    for ax in axes:
        ax.set_xlabel("weights deleted (%)")
    axes[1].legend(fontsize=7)
    fig.suptitle("OBS vs OBD vs magnitude, no retraining (digits MLP)", fontsize=9)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / "obs_hassibi1993_sparsity.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"{ctx.results_dir.resolve().name}/figures/{path.name}"
