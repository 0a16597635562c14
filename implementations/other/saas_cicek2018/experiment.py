r"""The small-scale reproduction of SaaS (Cicek et al., 2018): speed-as-a-supervisor against supervised-only training
and pseudo-labelling on MNIST-1D with 20 labels per class, plus a check of its premise under label corruption."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations.other.saas_cicek2018 import Config, SaaS

if TYPE_CHECKING:
    from implementations._data import TensorData
    from implementations._harness import RunContext


SMALL = dict(labelled_per_class=20, epochs=15, lr=0.05, batch_size=128, width=0.5)
#: Premise check (the open question): label corruption rates, examples, epochs (long enough to memorise), lr.
PREMISE = dict(corruption=(0.0, 0.25, 0.5, 0.75), n=500, epochs=100, lr=0.1)

#: The registry's open question, verbatim.
OPEN_QUESTION = (
    "Does training speed stay a reliable proxy for label quality once the network can memorise any labelling?"
)


def _split(data: TensorData, per_class: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of a class-balanced labelled subset and of the rest (unlabelled)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(data.n_train, generator=gen)
    labelled = torch.cat([order[data.y_train[order] == c][:per_class] for c in range(data.num_classes)])
    mask = torch.ones(data.n_train, dtype=torch.bool)
    mask[labelled] = False
    return labelled, order[mask[order]]


def _speed_vs_noise(data: TensorData, ctx: RunContext, build: Any) -> dict[float, tuple[float, float, float]]:
    """Premise check: early loss, final loss and final train accuracy against the fraction of corrupted labels."""
    from implementations._harness import evaluate, fit, seed_everything
    from implementations.other._base import Supervised

    p = PREMISE
    subset = data.subset(p["n"], seed=0)
    out = {}
    for rate in p["corruption"]:
        gen = torch.Generator().manual_seed(1)
        y = subset.y_train.clone()
        flip = torch.rand(len(y), generator=gen) < rate
        y[flip] = (y[flip] + torch.randint(1, data.num_classes, (int(flip.sum()),), generator=gen)) % data.num_classes
        noisy = replace(subset, y_train=y)
        seed_everything(0)
        model = build()
        fit_args = dict(device=ctx.device, seed=0, progress=False, weight_decay=0.0)
        history = fit(Supervised(model), model.parameters(), noisy, p["epochs"], p["lr"], 128, **fit_args).history
        early = sum(h["loss"] for h in history[:2]) / 2  # mean loss over the first 2 epochs: a short run
        out[rate] = (early, history[-1]["loss"], evaluate(model, noisy, split="train"))
    return out


def _premise_answer(premise: dict[float, tuple[float, float, float]]) -> dict[str, str]:
    """The open-question entry from the corruption experiment (early vs final training loss)."""
    rates = sorted(premise)
    early, final = [premise[r][0] for r in rates], [premise[r][1] for r in rates]

    def ordered(values: list[float]) -> bool:
        return all(a < b for a, b in zip(values, values[1:], strict=False))

    def spread(values: list[float]) -> float:
        return values[-1] - values[0]  # loss at the highest corruption minus loss with clean labels

    fits = min(premise[r][2] for r in rates)
    memorised = fits >= 99.0
    lead = "Only early in training" if memorised and spread(final) < spread(early) else "Here through the whole run"
    answer = (
        f"{lead}: the loss over the first 2 epochs "
        f"{'rises with' if ordered(early) else 'is not ordered by'} the fraction of wrong labels; after "
        f"{PREMISE['epochs']} epochs the network {'fits every labelling' if memorised else 'still fits only'} "
        f"({fits:.0f}% training accuracy at worst), and the final loss is "
        f"{'still ordered' if ordered(final) else 'no longer ordered'}; the loss gap between clean and most "
        f"corrupted labels is {spread(final):.3f} at the end against {spread(early):.3f} early. "
        + ("Speed must be read from a short run, as SaaS does, before memorisation sets in." if memorised else "")
    )
    evidence = "; ".join(
        f"{r:.0%} wrong: first-2-epoch loss {premise[r][0]:.3f}, final loss {premise[r][1]:.3f}, train acc "
        f"{premise[r][2]:.1f}%"
        for r in rates
    )
    return {
        "question": OPEN_QUESTION,
        "answer": answer,
        "evidence": evidence
        + f" (MLP, {PREMISE['n']} MNIST-1D examples, SGD lr {PREMISE['lr']}, no weight decay, seed 0).",
    }


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """SaaS vs supervised-only and pseudo-labelling on MNIST-1D with 20 labels per class, over `ctx.seeds`."""
    from implementations._data import load_dataset
    from implementations._harness import seed_everything
    from implementations._measure import accuracy_stats, beats
    from implementations._models import build_model
    from implementations.other._base import fit_ce

    s = SMALL
    data = load_dataset("mnist1d", ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs = ctx.epochs(s["epochs"])
    cfg = Config(outer_iterations=max(2, ctx.epochs(Config.outer_iterations)))

    def build() -> nn.Module:
        return build_model("mlp", data.num_classes, data.input_shape, width=s["width"])

    acc: dict[str, list[float]] = {k: [] for k in ("supervised", "pseudo_label", "saas", "all_labels")}
    label_acc: dict[str, list[float]] = {"pseudo_label": [], "saas": []}
    for seed in ctx.seeds:
        lab, unl = _split(data, s["labelled_per_class"] if ctx.n_train is None else 5, seed)
        n_all = data.n_train
        labelled_only = replace(data, x_train=data.x_train[lab], y_train=data.y_train[lab])
        # supervised only: the same number of SGD steps as a run over all training inputs
        steps_ratio = -(-n_all // s["batch_size"]) / -(-len(lab) // s["batch_size"])
        seed_everything(seed)
        sup = build()
        acc["supervised"].append(fit_ce(sup, labelled_only, ctx, round(epochs * steps_ratio), s["lr"], seed))
        with torch.no_grad():
            pseudo = sup.eval()(data.x_train[unl]).argmax(-1)  # (N_u,)
        # SaaS phase 1: the posterior of the unlabelled examples, from w_0 of this seed
        seed_everything(seed)
        saas = SaaS(build(), len(unl), data.num_classes, cfg)
        x_all = torch.cat([data.x_train[lab], data.x_train[unl]])
        y_all = torch.cat([data.y_train[lab], -1 - torch.arange(len(unl))])
        inferred = saas.estimate(x_all, y_all, seed=seed).argmax(-1)  # (N_u,)
        truth = data.y_train[unl]
        label_acc["pseudo_label"].append(100.0 * (pseudo == truth).float().mean().item())
        label_acc["saas"].append(100.0 * (inferred == truth).float().mean().item())
        # phase 2 (shared by the label sources): train from scratch on labelled + inferred labels
        for name, labels in (("pseudo_label", pseudo), ("saas", inferred), ("all_labels", truth)):
            train = replace(data, x_train=x_all, y_train=torch.cat([data.y_train[lab], labels]))
            seed_everything(seed)
            acc[name].append(fit_ce(build(), train, ctx, epochs, s["lr"], seed))

    premise = _speed_vs_noise(data, ctx, build) if ctx.profile != "quick" else {}
    n_lab = len(lab)
    rows = [
        dict(name="supervised", label=f"Supervised only ({n_lab} labels)", role="baseline"),
        dict(name="pseudo_label", label="Pseudo-labelling (one round)", role="baseline"),
        dict(name="saas", label="SaaS (speed-inferred labels)", role="method"),
        dict(name="all_labels", label="All labels (upper bound)", role="ablation"),
    ]
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
        if row["name"] in label_acc:
            row["extra"] = {"unlabelled_label_accuracy": sum(label_acc[row["name"]]) / len(ctx.seeds)}
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    answers = [_premise_answer(premise)] if premise else []
    figure = _save_plot(rows, premise, ctx)
    return {
        "id": "saas_cicek2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"{n_lab} labelled examples (class-balanced, per seed), the other {data.n_train - n_lab} training "
            f"inputs unlabelled; MLP width {s['width']}. SaaS: {cfg.outer_iterations} short runs of "
            f"{cfg.inner_epochs} epoch(s) from the same w_0 (SGD lr {cfg.inner_lr}), posterior step "
            f"{cfg.posterior_lr}; "
            f"then every label source (pseudo-labels of the supervised model, SaaS argmax, true labels) trains a fresh "
            f"MLP for {epochs} epochs on all inputs. Supervised only gets the same number of SGD steps. SGD momentum "
            f"0.9, cosine lr {s['lr']}, wd 5e-4.",
        },
        "rows": rows,
        "claim": {
            "text": "Inferring the unknown labels by maximising the speed of a short training run, then training on "
            "them, beats training on the labelled data alone and plain pseudo-labelling.",
            "reproduced": beats(acc["saas"], acc["supervised"]) and beats(acc["saas"], acc["pseudo_label"]),
            "evidence": f"test accuracy: SaaS {mean['saas']:.2f}%, pseudo-labelling {mean['pseudo_label']:.2f}%, "
            f"supervised only {mean['supervised']:.2f}%, all labels {mean['all_labels']:.2f}%; accuracy of the "
            f"inferred unlabelled labels: SaaS {rows[2]['extra']['unlabelled_label_accuracy']:.1f}%, pseudo-labels "
            f"{rows[1]['extra']['unlabelled_label_accuracy']:.1f}% (means over {len(ctx.seeds)} seeds; a win must "
            "exceed one standard error of the paired per-seed difference).",
        },
        "answers": answers,
        "figures": [figure],
    }


def _save_plot(rows: list[dict], premise: dict[float, tuple[float, float, float]], ctx: RunContext) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from implementations.other._base import figure_path

    fig, axes = plt.subplots(1, 2 if premise else 1, figsize=(9 if premise else 4.5, 3.5), squeeze=False)
    ax = axes[0, 0]
    for i, row in enumerate(rows):
        ax.bar(
            i,
            row["accuracy"]["mean"],
            yerr=row["accuracy"]["std"],
            capsize=4,
            color="#d62728" if row["role"] == "method" else "#1f77b4",
        )
    ax.set_xticks(range(len(rows)), [row["label"] for row in rows], rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    if premise:
        rates = sorted(premise)
        axes[0, 1].plot([100 * r for r in rates], [premise[r][0] for r in rates], "o-", label="first 2 epochs")
        axes[0, 1].plot([100 * r for r in rates], [premise[r][1] for r in rates], "s--", label="last epoch")
        axes[0, 1].set_xlabel("wrong labels (%)")
        axes[0, 1].set_ylabel("mean training loss")
        axes[0, 1].legend(fontsize=7)
        axes[0, 1].set_title("premise: wrong labels are learned more slowly", fontsize=9)
    fig.tight_layout()
    path, rel = figure_path(ctx, "saas_cicek2018", "accuracy")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return rel
