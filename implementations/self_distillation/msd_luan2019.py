r"""MSD: Multi-Self-Distillation Learning via Multi-classifiers within Deep Neural Networks (Luan et al., 2019).

Paper: [arXiv:1911.09418](https://arxiv.org/abs/1911.09418) · notes: `papers/msd_luan2019.md`

Classifiers $f_1, \dots, f_C$ at increasing depth of one network learn from each other: each shallow classifier
$k$ fits the labels, imitates the softened output of the deepest classifier, and pulls its adapted feature $F_k$
towards the deepest feature $\bar F = F_C$. The one change MSD makes to the Be-Your-Own-Teacher loss (see
`byot_zhang2019`) is that the feature-imitation weight decays over the $T$ training steps,

$$
\mathcal{L}_k(t) = (1-\alpha)\,\mathrm{CE}(p_k, y) + \alpha\,\tau^2\,\mathrm{KL}\big(\bar p^{\tau} \,\|\,
p_k^{\tau}\big) + \lambda(t)\, \lVert F_k - \bar F \rVert_2^2,
\qquad
\lambda(t) = \frac{\lambda_0}{2}\Big(1 + \cos\frac{\pi t}{T}\Big),
$$

because strong feature imitation is said to help early and to hurt the network's own accuracy late in training.
The sampling-based branch augmentation of the paper is not implemented.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations.self_distillation._base import MultiExit
from implementations.self_distillation.byot_zhang2019 import SETTINGS as BYOT_SETTINGS
from implementations.self_distillation.byot_zhang2019 import Config as BYOTConfig
from implementations.self_distillation.byot_zhang2019 import byot_loss, exit_accuracies, select_hint_weight

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["MSD", "Config", "cosine_weight", "reproduce"]


@dataclass(frozen=True)
class Config:
    r"""Hyperparameters; the KL and hint settings are BYOT's so the two methods differ only in $\lambda(t)$."""

    temperature: float = 3.0  # $\tau$
    alpha: float = 0.3  # $\alpha$
    hint_weight: float = 0.03  # $\lambda_0$, the feature weight at $t = 0$
    total_steps: int = 1000  # $T$, length of the cosine decay (set it to the run's number of steps)
    anneal: bool = True  # False: constant $\lambda_0$ (= BYOT)


def cosine_weight(step: int, total_steps: int, initial: float) -> float:
    r"""$\lambda(t) = \frac{\lambda_0}{2}(1 + \cos(\pi \min(t, T) / T))$: $\lambda_0$ at $t = 0$, 0 at $t \ge T$."""
    t = min(step, total_steps) / max(1, total_steps)
    return 0.5 * initial * (1 + math.cos(math.pi * t))


class MSD(MultiExit):
    """Multi-exit self distillation with a cosine-annealed feature-imitation weight."""

    def __init__(self, backbone: nn.Module, in_shape: Sequence[int], cfg: Config | None = None) -> None:
        super().__init__(backbone, in_shape)
        self.cfg = cfg or Config()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # $t$

    def hint_weight(self) -> float:
        r"""$\lambda(t)$ at the current step."""
        cfg = self.cfg
        return cosine_weight(int(self.step), cfg.total_steps, cfg.hint_weight) if cfg.anneal else cfg.hint_weight

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        r"""Deepest logits `(B, K)` and the MSD terms at the current $\lambda(t)$."""
        logits, features = self.exit_outputs(x)
        cfg = self.cfg
        terms = BYOTConfig(temperature=cfg.temperature, alpha=cfg.alpha, hint_weight=cfg.hint_weight)
        losses = byot_loss(logits, features, y, terms, hint_weight=self.hint_weight())
        if self.training:
            self.step += 1
        return logits[-1], losses


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run msd_luan2019`
# ---------------------------------------------------------------------------------------------------------------------

SETTINGS = dict(dataset="mnist1d", n_train=2000, model=("cnn1d", 0.5), epochs=6, lr=0.1, batch_size=128)
Q_SAME = "Is MSD more than Be Your Own Teacher with a decaying feature-loss weight?"
Q_LATE = "Does a large feature-imitation weight late in training really hurt accuracy?"


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Plain network, naive multi-exit training, BYOT (constant weight) and MSD (cosine weight), same protocol."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot

    s = SETTINGS
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train or s["n_train"])
    epochs = ctx.epochs(s["epochs"])
    train = dict(epochs=epochs, lr=s["lr"], batch_size=s["batch_size"], device=ctx.device, progress=ctx.progress)

    def new() -> nn.Module:
        return build_model(s["model"][0], data.num_classes, data.input_shape, width=s["model"][1])

    paper_cfg = Config(total_steps=epochs * -(-data.n_train // s["batch_size"]))
    # lambda_0 multiplies a summed squared distance whose size depends on the features: choose it as BYOT's
    # reproduction does, on held-out training data, and keep the unverified CIFAR value 0.03 as an ablation
    chosen, held_out_acc = select_hint_weight(
        data, new, BYOT_SETTINGS["hint_weights"], BYOTConfig(), train, BYOT_SETTINGS["held_out"]
    )
    cfg = replace(paper_cfg, hint_weight=chosen)
    variants = {
        "exits_ce": replace(cfg, alpha=0.0, hint_weight=0.0),  # naive multi-exit training
        "byot": replace(cfg, anneal=False),
        "msd": cfg,
        "msd_lambda003": paper_cfg,
    }

    acc: dict[str, list[float]] = {}
    exits: dict[str, list[list[float]]] = {}
    for seed in ctx.seeds:
        seed_everything(seed)
        init = new()
        plain = copy.deepcopy(init)
        fit(Supervised(plain), plain.parameters(), data, seed=seed, **train)
        acc.setdefault("plain", []).append(evaluate(plain, data))
        for name, variant in variants.items():
            seed_everything(seed)  # same initial exits in every variant
            task = MSD(copy.deepcopy(init), data.input_shape, variant)
            fit(task, task.parameters(), data, seed=seed, **train)
            acc.setdefault(name, []).append(evaluate(task, data))
            exits.setdefault(name, []).append(exit_accuracies(task, data))

    cols = model_row(new(), data.input_shape)
    m_name = f"{s['model'][0]} w={s['model'][1]:g}"
    labels = {
        "exits_ce": "Multi-exit, CE only",
        "byot": "BYOT (constant lambda)",
        "msd": "MSD (cosine lambda)",
        "msd_lambda003": "MSD, lambda0=0.03 (unrescaled)",
    }
    per_exit = {n: [sum(e[k] for e in exits[n]) / len(exits[n]) for k in range(len(exits[n][0]))] for n in variants}
    rows = [dict(name="plain", label=f"Plain network ({m_name})", role="baseline", **cols)]
    for name in variants:
        role = {"msd": "method", "exits_ce": "baseline"}.get(name, "ablation")
        extra = {f"exit{k + 1}_acc": a for k, a in enumerate(per_exit[name][:-1])}
        rows.append(dict(name=name, label=labels[name], role=role, **cols, extra=extra))
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    std = {row["name"]: row["accuracy"]["std"] for row in rows}
    figure = save_accuracy_plot(rows, ctx, "msd_luan2019", title=f"MSD vs BYOT on {data.name}")

    n_exits = len(per_exit["msd"])

    def exit_values(name: str, k: int) -> list[float]:
        return [e[k] for e in exits[name]]  # per-seed accuracy of exit k

    every_exit = all(beats(exit_values("msd", k), exit_values("exits_ce", k)) for k in range(n_exits))
    reproduced = every_exit and beats(acc["msd"], acc["plain"])
    diff = mean["msd"] - mean["byot"]
    msd_wins, byot_wins = beats(acc["msd"], acc["byot"]), beats(acc["byot"], acc["msd"])
    verdict = "beats" if msd_wins else ("loses to" if byot_wins else "is within seed noise of")
    same = (
        ("Not measurably at this scale" if not msd_wins else "Yes, at this scale")
        + f": MSD {verdict} BYOT on the deepest classifier ({diff:+.2f} points, paired over {len(ctx.seeds)} "
        "seeds); in this implementation the cosine decay is the only difference."
    )
    if msd_wins or byot_wins:
        late = f"{'Yes' if msd_wins else 'No'}: decaying the weight {verdict} the constant weight ({diff:+.2f} points)."
    else:
        late = (
            "Not measurably at this scale: decaying the weight changed the deepest classifier by "
            f"{diff:+.2f} points, within seed noise."
        )
    hint_cost = mean["exits_ce"] - mean["byot"]  # what the KL + hint terms cost against labels-only exits
    if beats(acc["exits_ce"], acc["byot"]):
        late += (
            f" The imitation terms cost {hint_cost:.2f} points against label-only exits whether or not the "
            "feature weight decays, so here the harm is not specific to late training."
        )
    exit_text = "; ".join(
        f"exit {k + 1}: MSD {per_exit['msd'][k]:.2f}% vs CE-only {per_exit['exits_ce'][k]:.2f}% vs BYOT "
        f"{per_exit['byot'][k]:.2f}%"
        for k in range(n_exits)
    )
    return {
        "id": "msd_luan2019",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"{epochs * -(-data.n_train // s['batch_size'])} SGD steps per network; "
            f"backbone {m_name} (3 stages) with exits on stages 1-2; all variants start from the same "
            f"weights; SGD momentum 0.9, cosine lr {s['lr']}, batch {s['batch_size']}, wd 5e-4, same epochs and batch "
            f"order; tau={cfg.temperature}, alpha={cfg.alpha}, lambda0={chosen:g} chosen by BYOT's held-out rule "
            f"({', '.join(f'{w:g}: {a:.1f}%' for w, a in held_out_acc.items())} on 20% of the training set, "
            "seed 0), 0.03 kept as an ablation, cosine over "
            f"{cfg.total_steps} steps; accuracy = deepest classifier; exit accuracies in extra; no branch "
            "augmentation.",
        },
        "rows": rows,
        "claim": {
            "text": "Multi-self-distillation makes every classifier of a multi-exit network more accurate than naive "
            "multi-exit training, and the final classifier more accurate than the plain network.",
            "reproduced": reproduced,
            "evidence": f"{exit_text}; deepest: MSD {mean['msd']:.2f}% vs plain {mean['plain']:.2f}% vs CE-only exits "
            f"{mean['exits_ce']:.2f}%; MSD with the unverified lambda0=0.03 {mean['msd_lambda003']:.2f}% (mean over "
            f"{len(ctx.seeds)} seed(s), {data.name}; wins judged per exit with the paired-seed `beats` rule).",
        },
        "answers": [
            {
                "question": Q_SAME,
                "answer": same,
                "evidence": f"deepest classifier: MSD {mean['msd']:.2f} +- {std['msd']:.2f}%, "
                f"BYOT {mean['byot']:.2f} +- "
                f"{std['byot']:.2f}%; {exit_text}.",
            },
            {
                "question": Q_LATE,
                "answer": late,
                "evidence": f"constant lambda={chosen:g}: {mean['byot']:.2f}%; cosine-decayed from the same "
                f"value: {mean['msd']:.2f}%; no hint or KL (CE-only exits): {mean['exits_ce']:.2f}%.",
            },
        ],
        "figures": [figure],
    }
