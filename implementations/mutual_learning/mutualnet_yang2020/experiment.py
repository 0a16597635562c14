r"""The small-scale reproduction of MutualNet (Yang et al., 2020): a width-and-resolution slimmable 1-D CNN against
US-Net (the same sandwich rule and distillation at one resolution) on the accuracy-FLOPs trade-off on MNIST-1D."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from implementations.mutual_learning.mutualnet_yang2020 import (
    Config,
    MutualNet,
    SlimmableCNN1d,
    SubNetwork,
    calibrate_bn,
)

if TYPE_CHECKING:
    from implementations._harness import RunContext


SETTINGS = dict(
    dataset="mnist1d", n_val=500, channels=(16, 32, 32), widths=(0.25, 0.5, 0.75, 1.0), epochs=12, lr=0.1,
    batch_size=256,
)  # fmt: skip
QUESTION = "Does pairing smaller widths with lower resolutions matter, or would random width alone (as in US-Net) give the same gains?"  # noqa: E501


def _tag(width: float) -> str:
    """Row-name part of a width: 0.25 -> `w25`."""
    return f"w{round(100 * width)}"


def _plot(points: dict[str, list[tuple[float, float]]], ctx: RunContext) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    styles = {"US-Net (width only)": "o-", "MutualNet (best config per budget)": "s-", "MutualNet configs": "x"}
    for label, pts in points.items():
        ax.plot([p[0] / 1e3 for p in pts], [p[1] for p in pts], styles[label], label=label, alpha=0.8)
    ax.set_xlabel("kFLOPs per example")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / "mutualnet_yang2020_flops.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"{ctx.results_dir.resolve().name}/figures/{path.name}"


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """MutualNet vs US-Net (same sandwich rule and distillation, one resolution) on the accuracy-FLOPs trade-off."""
    from dataclasses import replace

    from implementations._data import load_dataset
    from implementations._harness import evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, count_flops, count_params

    s, cfg = SETTINGS, Config()
    full = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    n_val = min(s["n_val"], full.n_train // 5)
    data = replace(full, x_train=full.x_train[n_val:], y_train=full.y_train[n_val:])
    val = replace(full, x_test=full.x_train[:n_val], y_test=full.y_train[:n_val])  # held out: picks the configs
    epochs = ctx.epochs(s["epochs"])
    train = dict(epochs=epochs, lr=s["lr"], batch_size=s["batch_size"], device=ctx.device, progress=False)
    x_cal = data.x_train[:500]
    methods = {"mutualnet": cfg, "usnet": replace(cfg, resolutions=cfg.resolutions[:1])}
    probe = SlimmableCNN1d(data.input_shape[0], data.num_classes, s["channels"])
    configs = [(w, r) for w in s["widths"] for r in cfg.resolutions]
    flops = {c: count_flops(SubNetwork(probe, *c), torch.zeros(1, *data.input_shape)) for c in configs}
    budgets = {w: flops[(w, cfg.resolutions[0])] for w in s["widths"]}
    acc: dict[str, list[float]] = {}
    chosen: dict[float, list[tuple[float, int]]] = {w: [] for w in s["widths"]}
    grid: dict[tuple[float, int], list[float]] = {c: [] for c in configs}
    for seed in ctx.seeds:
        seed_everything(seed)
        init = SlimmableCNN1d(data.input_shape[0], data.num_classes, s["channels"]).state_dict()
        for name, method_cfg in methods.items():
            net = SlimmableCNN1d(data.input_shape[0], data.num_classes, s["channels"])
            net.load_state_dict(init)  # both methods start from the same weights and see the same batches
            task = MutualNet(net, method_cfg)
            seed_everything(seed)  # same sampled widths and resolutions where the two methods agree
            fit(task, task.parameters(), data, seed=seed, **train)
            val_acc, test_acc = {}, {}
            for c in configs if name == "mutualnet" else [(w, cfg.resolutions[0]) for w in s["widths"]]:
                sub = SubNetwork(net, *c)
                calibrate_bn(sub, x_cal)
                val_acc[c], test_acc[c] = evaluate(sub, val), evaluate(sub, data)
            for w in s["widths"]:
                acc.setdefault(f"{name}_{_tag(w)}_r{cfg.resolutions[0]}", []).append(test_acc[(w, cfg.resolutions[0])])
            if name == "mutualnet":
                for c in configs:
                    grid[c].append(test_acc[c])
                for w, budget in budgets.items():  # the most accurate config on held-out data within the budget
                    best = max((c for c in configs if flops[c] <= budget), key=lambda c: val_acc[c])
                    chosen[w].append(best)
                    acc.setdefault(f"mutualnet_budget_{_tag(w)}", []).append(test_acc[best])

    params = count_params(probe)
    r0 = cfg.resolutions[0]
    rows = []
    for w in s["widths"]:
        picks = ", ".join(f"{cw:g}x@{cr}" for cw, cr in chosen[w])
        rows += [
            dict(name=f"usnet_{_tag(w)}_r{r0}", label=f"US-Net {w:g}x", role="baseline", params=params,
                 flops=budgets[w]),
            dict(name=f"mutualnet_budget_{_tag(w)}", label=f"MutualNet, budget of {w:g}x", role="method",
                 params=params, flops=round(sum(flops[c] for c in chosen[w]) / len(chosen[w])),
                 extra={"chosen_configs": picks}),
            dict(name=f"mutualnet_{_tag(w)}_r{r0}", label=f"MutualNet {w:g}x at {r0} points", role="ablation",
                 params=params, flops=budgets[w]),
        ]  # fmt: skip
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    gains = {w: mean[f"mutualnet_budget_{_tag(w)}"] - mean[f"usnet_{_tag(w)}_r{r0}"] for w in s["widths"]}
    same_config = {w: mean[f"mutualnet_{_tag(w)}_r{r0}"] - mean[f"usnet_{_tag(w)}_r{r0}"] for w in s["widths"]}
    mean_gain = sum(gains.values()) / len(gains)
    figure = _plot(
        {
            "US-Net (width only)": [(budgets[w], mean[f"usnet_{_tag(w)}_r{r0}"]) for w in s["widths"]],
            "MutualNet (best config per budget)": [
                (mean_flops, mean[f"mutualnet_budget_{_tag(w)}"])
                for w in s["widths"]
                for mean_flops in [sum(flops[c] for c in chosen[w]) / len(chosen[w])]
            ],
            "MutualNet configs": [(flops[c], sum(v) / len(v)) for c, v in grid.items()],
        },
        ctx,
    )
    per_budget = "; ".join(f"{w:g}x: {gains[w]:+.2f}" for w in s["widths"])
    same = sum(same_config.values()) / len(same_config)
    answer = (
        f"At our scale adding resolutions to the sampled widths {'helped' if mean_gain > 0 else 'did not help'}: "
        f"over the four FLOPs budgets MutualNet was {mean_gain:+.2f} points vs US-Net on average. Of this, "
        f"{same:+.2f} points are measured at the same configurations as US-Net (full resolution), and the remaining "
        f"{mean_gain - same:+.2f} come from choosing lower resolutions at deployment."
    )
    return {
        "id": "mutualnet_yang2020",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"switchable cnn1d {s['channels']} (adaptive pooling to 5 positions), widths "
            f"[{cfg.min_width}, 1]; sandwich rule with {cfg.num_sampled} sub-networks per step and in-place "
            "distillation (T = 1); "
            f"MutualNet resamples the 40-point signal to {list(cfg.resolutions)} points, US-Net always uses 40; same "
            f"initial weights, epochs and batches; BN statistics recomputed on 500 training examples per "
            f"configuration; {n_val} training examples held out to choose MutualNet's configuration per FLOPs budget "
            f"(budget = the US-Net width's FLOPs); SGD momentum 0.9, cosine lr {s['lr']}, batch {s['batch_size']}.",
        },
        "rows": rows,
        "claim": {
            "text": "Training width-switchable sub-networks on different input resolutions (MutualNet) gives a better "
            "accuracy-FLOPs trade-off than training them at one resolution (US-Net).",
            "reproduced": beats(  # per-seed accuracy averaged over widths, paired by seed
                [sum(v) / len(v) for v in zip(*(acc[f"mutualnet_budget_{_tag(w)}"] for w in s["widths"]), strict=True)],
                [sum(v) / len(v) for v in zip(*(acc[f"usnet_{_tag(w)}_r{r0}"] for w in s["widths"]), strict=True)],
            ),
            "evidence": f"MutualNet minus US-Net test accuracy at the budgets of widths {per_budget} (mean "
            f"{mean_gain:+.2f}); full network: MutualNet {mean[f'mutualnet_w100_r{r0}']:.2f}% vs US-Net "
            f"{mean[f'usnet_w100_r{r0}']:.2f}% ({len(ctx.seeds)} seed(s)).",
        },
        "answers": [{"question": QUESTION, "answer": answer, "evidence": f"gain per budget: {per_budget}."}],
        "figures": [figure],
    }
