r"""Be Your Own Teacher: Improve the Performance of CNNs via Self Distillation (Zhang et al., 2019).

Paper: [arXiv:1905.08094](https://arxiv.org/abs/1905.08094) · notes: `papers/byot_zhang2019.md`

The network is cut into $C$ sections; every section $i < C$ gets an adaptation block and a classifier with softmax
output $q^i$ and adapted feature $F_i$, and the network's own last classifier $q^C$ (on $F_C$) is the teacher. With
$q^i_\tau = \mathrm{softmax}(z_i / \tau)$ all classifiers train together on

$$
\mathcal{L} = \mathrm{CE}(q^C, y) + \sum_{i=1}^{C-1} \Big[ (1-\alpha)\, \mathrm{CE}(q^i, y)
  + \alpha\, \tau^2\, \mathrm{KL}\big(q^C_\tau \,\|\, q^i_\tau\big)
  + \lambda\, \lVert F_i - F_C \rVert_2^2 \Big],
$$

the deepest outputs $q^C$ and $F_C$ being held fixed as targets. At test time the deepest classifier is the plain
network (no extra cost); the shallow classifiers are early exits.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import Tensor, nn

from implementations.self_distillation._base import MultiExit, soft_kl

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["BYOT", "Config", "byot_loss", "hint_loss", "reproduce", "select_hint_weight"]


@dataclass(frozen=True)
class Config:
    r"""Hyperparameters as our notes record them for the CIFAR setting (not checked against the paper or its code).

    $\lambda$ multiplies a per-example *summed* squared distance, so its useful size depends on the feature scale;
    the reproduction chooses it on held-out training data (`select_hint_weight`) and keeps 0.03 as an ablation.
    """

    temperature: float = 3.0  # $\tau$
    alpha: float = 0.3  # $\alpha$: KL weight; shallow CE gets $1 - \alpha$
    hint_weight: float = 0.03  # $\lambda$ (unverified CIFAR value)


def hint_loss(feature: Tensor, target: Tensor) -> Tensor:
    r"""$\lVert F_i - F_C \rVert_2^2$ per example (sum over channels and positions), averaged over the batch."""
    return (feature - target).pow(2).flatten(1).sum(1).mean()


def byot_loss(
    logits: Sequence[Tensor], features: Sequence[Tensor], y: Tensor, cfg: Config, hint_weight: float | None = None
) -> dict[str, Tensor]:
    r"""The BYOT terms, shallow exits $i = 0 \dots C-2$ and the deepest classifier.

    Args:
        logits: $z_1, \dots, z_C$, each `(B, K)`, shallow to deep.
        features: $F_1', \dots, F_{C-1}', F_C$, each of the deepest feature's shape `(B, C_C, *S)`.
        y: Labels, `(B,)`.
        cfg: $\tau$, $\alpha$, $\lambda$.
        hint_weight: Overrides $\lambda$ (a schedule, as in MSD).

    Returns:
        `{"ce_deep", "ce{i}", "kl{i}", "hint{i}"}`, already weighted; zero-weight terms are left out.
    """
    weight = cfg.hint_weight if hint_weight is None else hint_weight
    teacher, target = logits[-1].detach(), features[-1].detach()  # the deepest classifier is the teacher
    losses = {"ce_deep": F.cross_entropy(logits[-1], y)}
    for i, (z, f) in enumerate(zip(logits[:-1], features[:-1], strict=True)):
        losses[f"ce{i}"] = (1 - cfg.alpha) * F.cross_entropy(z, y)
        if cfg.alpha > 0:
            losses[f"kl{i}"] = cfg.alpha * soft_kl(z, teacher, cfg.temperature)
        if weight > 0:
            losses[f"hint{i}"] = weight * hint_loss(f, target)
    return losses


class BYOT(MultiExit):
    """Self distillation from the deepest classifier into classifiers on every earlier stage."""

    def __init__(self, backbone: nn.Module, in_shape: Sequence[int], cfg: Config | None = None) -> None:
        super().__init__(backbone, in_shape)
        self.cfg = cfg or Config()

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Deepest logits `(B, K)` and the BYOT terms."""
        logits, features = self.exit_outputs(x)
        return logits[-1], byot_loss(logits, features, y, self.cfg)


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run byot_zhang2019`
# ---------------------------------------------------------------------------------------------------------------------

SETTINGS = dict(
    dataset="mnist1d",
    n_train=2000,
    model=("cnn1d", 0.5),
    epochs=5,
    lr=0.1,
    batch_size=128,
    hint_weights=(0.03, 0.003, 0.0003),  # candidates for $\lambda$, chosen on held-out training data
    held_out=0.2,  # fraction of the training set held out for that choice
)
QUESTION = (
    "Which of the three loss terms (label cross-entropy, KL to the deepest head, feature hint) carries most "
    "of the gain?"
)
Q_DECAY = (
    "MSD (Luan et al.) differs from this method mainly by decaying the feature-loss weight with a cosine schedule; "
    "does a fixed hint weight really hurt late in training?"
)


def select_hint_weight(
    data: Any, new_backbone: Any, candidates: Sequence[float], cfg: Config, train: dict[str, Any], held_out: float
) -> tuple[float, dict[float, float]]:
    r"""Choose $\lambda$ by the deepest classifier's accuracy on a held-out part of the *training* set (seed 0).

    Returns:
        The chosen $\lambda$ and `{lambda: held-out accuracy (%)}`. The test set is never used.
    """
    import torch

    from implementations._harness import evaluate, fit, seed_everything

    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(data.n_train, generator=g)
    n_val = int(held_out * data.n_train)
    val_idx, fit_idx = perm[:n_val], perm[n_val:]
    split = replace(
        data,
        x_train=data.x_train[fit_idx],
        y_train=data.y_train[fit_idx],
        x_test=data.x_train[val_idx],
        y_test=data.y_train[val_idx],
    )
    scores = {}
    for weight in candidates:
        seed_everything(0)
        task = BYOT(new_backbone(), data.input_shape, replace(cfg, hint_weight=weight))
        fit(task, task.parameters(), split, seed=0, **train)
        scores[weight] = evaluate(task, split)
    return max(candidates, key=lambda w: scores[w]), scores


def exit_accuracies(task: MultiExit, data: Any) -> list[float]:
    """Test accuracy (%) of every exit, shallow to deep."""
    import torch

    task.eval()
    correct = None
    with torch.no_grad():
        x, y = data.x_test.to(next(task.parameters()).device), data.y_test.to(next(task.parameters()).device)
        logits, _ = task.exit_outputs(x)
        correct = [(z.argmax(-1) == y).float().mean().item() * 100 for z in logits]
    return correct


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Plain network vs. BYOT, and BYOT with one or two of its terms switched off, over `ctx.seeds`."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot
    from implementations.self_distillation.msd_luan2019 import MSD
    from implementations.self_distillation.msd_luan2019 import Config as MSDConfig

    s = SETTINGS
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train or s["n_train"])
    epochs = ctx.epochs(s["epochs"])
    train = dict(epochs=epochs, lr=s["lr"], batch_size=s["batch_size"], device=ctx.device, progress=ctx.progress)

    def new() -> nn.Module:
        return build_model(s["model"][0], data.num_classes, data.input_shape, width=s["model"][1])

    paper_cfg = Config()
    chosen, held_out_acc = select_hint_weight(data, new, s["hint_weights"], paper_cfg, train, s["held_out"])
    cfg = replace(paper_cfg, hint_weight=chosen)
    variants = {
        "byot": cfg,
        "exits_ce": replace(cfg, alpha=0.0, hint_weight=0.0),  # deep supervision: labels only
        "exits_ce_kl": replace(cfg, hint_weight=0.0),
        "exits_ce_hint": replace(cfg, alpha=0.0),
        "byot_lambda003": paper_cfg,  # the unrescaled CIFAR value
    }
    steps = epochs * -(-data.n_train // s["batch_size"])
    decay_cfg = MSDConfig(cfg.temperature, cfg.alpha, chosen, total_steps=steps)  # cosine-decayed lambda (MSD)

    acc: dict[str, list[float]] = {}
    exits: dict[str, list[list[float]]] = {}
    for seed in ctx.seeds:
        seed_everything(seed)
        init = new()  # every variant's backbone starts from these weights
        plain = copy.deepcopy(init)
        fit(Supervised(plain), plain.parameters(), data, seed=seed, **train)
        acc.setdefault("plain", []).append(evaluate(plain, data))
        tasks = {name: (lambda b, v=v: BYOT(b, data.input_shape, v)) for name, v in variants.items()}
        tasks["byot_decay"] = lambda b: MSD(b, data.input_shape, decay_cfg)
        for name, build in tasks.items():
            seed_everything(seed)  # same initial exits too
            task = build(copy.deepcopy(init))
            fit(task, task.parameters(), data, seed=seed, **train)
            acc.setdefault(name, []).append(evaluate(task, data))
            exits.setdefault(name, []).append(exit_accuracies(task, data))

    cols = model_row(new(), data.input_shape)
    m_name = f"{s['model'][0]} w={s['model'][1]:g}"
    labels = {
        "byot": "BYOT (CE + KL + hint)",
        "exits_ce": "Exits, CE only",
        "exits_ce_kl": "Exits, CE + KL",
        "exits_ce_hint": "Exits, CE + hint",
        "byot_lambda003": "BYOT, lambda=0.03 (unrescaled)",
        "byot_decay": "BYOT, cosine-decayed lambda",
    }
    rows = [dict(name="plain", label=f"Plain network ({m_name})", role="baseline", **cols)]
    for name in labels:
        per_exit = [sum(e[k] for e in exits[name]) / len(exits[name]) for k in range(len(exits[name][0]))]
        extra: dict[str, float | str] = {f"exit{k + 1}_acc": a for k, a in enumerate(per_exit[:-1])}
        rows.append(
            dict(
                name=name,
                label=labels[name],
                role="method" if name == "byot" else "ablation",
                **cols,
                extra={
                    **extra,
                    "exit_params_train_only": float(
                        sum(p.numel() for p in BYOT(new(), data.input_shape).exits.parameters())
                    ),
                },
            )
        )
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    std = {row["name"]: row["accuracy"]["std"] for row in rows}
    figure = save_accuracy_plot(rows, ctx, "byot_zhang2019", title=f"BYOT on {data.name} ({len(ctx.seeds)} seeds)")

    gains = {name: mean[name] - mean["plain"] for name in labels}

    def effect(a: str, b: str) -> str:
        """`beats` verdict of row `a` against row `b` (paired by seed)."""
        return "helps" if beats(acc[a], acc[b]) else ("hurts" if beats(acc[b], acc[a]) else "is within noise")

    ce = gains["exits_ce"]  # exits trained on labels only
    kl, hint = gains["exits_ce_kl"] - ce, gains["exits_ce_hint"] - ce  # what each imitation term adds to that
    parts = {
        "the label CE on the exits (deep supervision)": (ce, effect("exits_ce", "plain")),
        "the KL to the deepest head": (kl, effect("exits_ce_kl", "exits_ce")),
        "the feature hint": (hint, effect("exits_ce_hint", "exits_ce")),
    }
    helping = {k: v for k, v in parts.items() if v[1] == "helps"}
    if helping:
        top = max(helping, key=lambda k: helping[k][0])
        answer = f"At this scale {top} carries most of it ({parts[top][0]:+.2f} points on the deepest classifier)"
    else:
        answer = "No term helps the deepest classifier beyond seed noise at this scale"
    answer += " (" + "; ".join(f"{k} {v[1]}, {v[0]:+.2f}" for k, v in parts.items()) + ")"
    answer += f"; the full BYOT loss with lambda={chosen:g} {effect('byot', 'plain')} ({gains['byot']:+.2f})."
    decay = effect("byot_decay", "byot")
    decay_answer = (
        {
            "helps": "Yes: decaying beats fixed",
            "hurts": "No: fixed beats decaying",
            "is within noise": "Not measurably: neither beats the other",
        }[decay]
        + f" at this scale: a cosine-decayed lambda (from {chosen:g}) changed the deepest classifier by "
        f"{mean['byot_decay'] - mean['byot']:+.2f} points against the constant one (paired over "
        f"{len(ctx.seeds)} seeds, `beats` rule)."
    )
    selection = ", ".join(f"{w:g}: {a:.1f}%" for w, a in held_out_acc.items())
    return {
        "id": "byot_zhang2019",
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
            f"order; tau={cfg.temperature}, alpha={cfg.alpha}; lambda={chosen:g} chosen by the deepest classifier's "
            f"accuracy on {s['held_out']:.0%} of the training set held out (seed 0; {selection}), the unverified "
            "CIFAR value 0.03 kept as an ablation; byot_decay = same lambda cosine-decayed to 0 (MSD's schedule); "
            "accuracy = deepest "
            "classifier (the deployed network); exit accuracies in extra.",
        },
        "rows": rows,
        "claim": {
            "text": "Training a network with self distillation from its deepest classifier into classifiers on its "
            "earlier stages makes the (unchanged) deepest classifier more accurate than normal training.",
            "reproduced": beats(acc["byot"], acc["plain"]),
            "evidence": f"BYOT (lambda={chosen:g}, chosen on held-out training data) deepest classifier "
            f"{mean['byot']:.2f}% vs plain {mean['plain']:.2f}%; with the unverified lambda=0.03 "
            f"{mean['byot_lambda003']:.2f}% (mean over {len(ctx.seeds)} seed(s), {data.name}; a win needs the paired "
            "mean gain to exceed one standard error).",
        },
        "answers": [
            {
                "question": QUESTION,
                "answer": answer,
                "evidence": "gain of the deepest classifier over the plain network: "
                + ", ".join(f"{labels[n]} {g:+.2f}" for n, g in gains.items())
                + f" points; contribution of each term: exit CE {ce:+.2f}, KL {kl:+.2f}, hint {hint:+.2f}.",
            },
            {
                "question": Q_DECAY,
                "answer": decay_answer,
                "evidence": f"deepest classifier: constant lambda={chosen:g} {mean['byot']:.2f} +- "
                f"{std['byot']:.2f}%, cosine-decayed {mean['byot_decay']:.2f} +- {std['byot_decay']:.2f}%, "
                f"exits CE only {mean['exits_ce']:.2f}%; this module's own runs.",
            },
        ],
        "figures": [figure],
    }
