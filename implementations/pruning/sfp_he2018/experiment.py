"""The small-scale reproduction of soft filter pruning (He et al., 2018): a 1-D CNN on MNIST-1D pruned from
scratch with soft and hard filter pruning, against the unpruned net."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from implementations.pruning.sfp_he2018 import Config, SoftFilterPruning

if TYPE_CHECKING:
    from implementations._harness import RunContext


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Soft vs hard filter pruning from scratch of a 1-D CNN on MNIST-1D, against the unpruned net."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, cpu_time_ms, interleaved_latency, model_row
    from implementations._models import build_model

    cfg = Config()
    data = load_dataset("mnist1d", n_train=ctx.n_train)
    epochs, width = ctx.epochs(15), 0.5
    train = dict(lr=0.05, batch_size=128, progress=False)
    acc: dict[str, list[float]] = {}
    revived: dict[str, list[float]] = {}
    models: dict[str, nn.Module] = {}
    for seed in ctx.seeds:
        results = {}
        for name in ("dense", "sfp", "sfp_raw", "hard"):
            seed_everything(seed)  # the three runs start from the same initialisation
            model = build_model("cnn1d", data.num_classes, data.input_shape, width=width)
            if name == "dense":
                fit(Supervised(model), model.parameters(), data, epochs, seed=seed, **train)
                results[name] = model
                continue
            score = "raw" if name == "sfp_raw" else cfg.score
            task = SoftFilterPruning(model, Config(rate=cfg.rate, p=cfg.p, hard=name == "hard", score=score))
            fit(
                task,
                task.parameters(),
                data,
                epochs,
                seed=seed,
                on_epoch_end=lambda e, h, t=task: t.prune_epoch(),
                **train,
            )
            results[name] = task.pruned()
            acc.setdefault(f"{name}_masked", []).append(evaluate(task, data))  # zero filters, BN shift kept
            if name in ("sfp", "sfp_raw"):
                revived.setdefault(name, []).append(sum(task.revived) / max(1, len(task.revived)))
        for name, model in results.items():
            acc.setdefault(name, []).append(evaluate(model, data))
            models.setdefault(name, model)

    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    pair = {name: models[name] for name in ("dense", "sfp")}
    cols = {name: model_row(model, data.input_shape) for name, model in pair.items()}
    for name, ms in interleaved_latency(pair, data.input_shape).items():
        cols[name]["latency_ms"] = ms
    batch = {name: cpu_time_ms(model, data.input_shape, batch_size=256) for name, model in pair.items()}
    for name in ("sfp_raw", "hard"):  # same thinned architecture
        cols[name], batch[name] = cols["sfp"], batch["sfp"]
    channels = [stage[0].out_channels for stage in models["sfp"].stages]
    specs = {
        "dense": (f"Unpruned 1-D CNN (width {width})", "baseline"),
        "sfp": (f"Soft filter pruning, {100 * cfg.rate:.0f}% per layer (BN-folded filter norm)", "method"),
        "sfp_raw": (f"Soft filter pruning, {100 * cfg.rate:.0f}% per layer (raw conv norm)", "ablation"),
        "hard": (f"Hard filter pruning, {100 * cfg.rate:.0f}% per layer", "baseline"),
    }
    rows = [
        dict(
            name=name,
            label=label,
            role=role,
            accuracy=accuracy_stats(acc[name]),
            **cols[name],
            extra={
                "cpu_ms_batch256": batch[name],
                "flops_reduction": 1 - cols[name]["flops"] / cols["dense"]["flops"],
                **({"accuracy_before_removal": mean[f"{name}_masked"]} if name != "dense" else {}),
            },
        )
        for name, (label, role) in specs.items()
    ]
    figure = _plot(ctx, rows)

    cut = 1 - cols["sfp"]["flops"] / cols["dense"]["flops"]
    speed = batch["dense"] / batch["sfp"]
    reproduced = mean["sfp"] >= mean["dense"] - 1.0 and beats(acc["sfp"], acc["hard"])
    revived_mean = {k: sum(v) / len(v) for k, v in revived.items()}
    return {
        "id": "sfp_he2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"cnn1d (width {width}, BatchNorm) trained from scratch {epochs} epochs (SGD lr 0.05, batch "
            f"128, wd 5e-4, cosine) for all three runs, same initialisation per seed; pruning at the end of "
            f"every epoch at rate {cfg.rate} per conv layer (L2 norm of the filter with its BatchNorm folded in, "
            f"|gamma|/sqrt(running_var+eps)*||F||; the ablation sfp_raw scores the raw conv weight as in Eq. 2, "
            f"which BatchNorm makes meaningless for regrown filters); hard pruning masks the zeroed "
            f"filters for good (it zeroes the same filters from epoch 1 on); after training, zero filters and "
            f"their BN scale/shift are removed (channels {channels}), accuracy is that of the thinner model. "
            f"Latency (batch 1, wall clock, _measure.latency_ms) is the fastest of 5 interleaved rounds; "
            f"cpu_ms_batch256 is the thread CPU time per batch-256 forward pass (robust on a shared machine); "
            f"1 thread, first seed's models.",
        },
        "rows": rows,
        "claim": {
            "text": "Soft filter pruning removes a large share of the FLOPs with accuracy close to the unpruned "
            "network (here within 1 point), and better than hard pruning at the same rate (beyond seed noise: "
            "mean paired gain above one standard error).",
            "reproduced": reproduced,
            "evidence": f"FLOPs -{100 * cut:.1f}%, batch-256 CPU time per forward pass {speed:.2f}x lower; "
            f"accuracy SFP {mean['sfp']:.2f}%, hard {mean['hard']:.2f}%, unpruned {mean['dense']:.2f}% (mean over "
            f"{len(ctx.seeds)} seed(s)); SFP beats hard beyond seed noise: {beats(acc['sfp'], acc['hard'])}. "
            f"Scoring the raw conv norm instead (sfp_raw, Eq. 2 verbatim with BatchNorm) gives "
            f"{mean['sfp_raw']:.2f}%.",
        },
        "answers": [
            {
                "question": "Is letting pruned filters regrow the real source of the gain, or would hard pruning "
                "with the same per-epoch schedule do as well?",
                "answer": f"Regrowth does happen (on average {revived_mean['sfp']:.1f} zeroed filters "
                f"re-enter the kept set per epoch) and soft pruning ends "
                + (
                    f"{mean['sfp'] - mean['hard']:.2f} points above"
                    if mean["sfp"] > mean["hard"]
                    else f"{mean['hard'] - mean['sfp']:.2f} points below"
                )
                + " hard pruning with the same schedule"
                + (
                    ", a gain beyond seed noise."
                    if beats(acc["sfp"], acc["hard"])
                    else ", within seed noise: at this scale regrowth does not buy accuracy."
                    if mean["sfp"] > mean["hard"]
                    else ": at this scale regrowth does not help, hard pruning does as well or better."
                ),
                "evidence": f"SFP {mean['sfp']:.2f}% vs hard {mean['hard']:.2f}% (unpruned {mean['dense']:.2f}%); "
                f"before removing the zero filters (BN shift still active): SFP {mean['sfp_masked']:.2f}%, hard "
                f"{mean['hard_masked']:.2f}%; raw-norm SFP {mean['sfp_raw']:.2f}% ({revived_mean['sfp_raw']:.1f} "
                f"filters revived per epoch); {len(ctx.seeds)} seed(s).",
            }
        ],
        "figures": [figure],
    }


def _plot(ctx: RunContext, rows: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.3))
    names = [row["name"] for row in rows]
    axes[0].bar(
        names,
        [row["accuracy"]["mean"] for row in rows],
        yerr=[row["accuracy"]["std"] for row in rows],
        color=["#1f77b4", "#d62728", "#9467bd", "#ff7f0e"],
        capsize=4,
    )
    axes[0].set_ylim(min(row["accuracy"]["mean"] for row in rows) - 5, 100)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].bar(
        names, [row["extra"]["cpu_ms_batch256"] for row in rows], color=["#1f77b4", "#d62728", "#9467bd", "#ff7f0e"]
    )
    axes[1].set_ylabel("CPU time per batch of 256 (ms)")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("Soft vs hard filter pruning on MNIST-1D", fontsize=9)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / "sfp_he2018_accuracy_latency.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"{ctx.results_dir.resolve().name}/figures/{path.name}"
