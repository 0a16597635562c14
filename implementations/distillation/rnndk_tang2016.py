r"""Recurrent Neural Network Training with Dark Knowledge Transfer (Tang, Wang & Zhang, 2016).

Paper: [arXiv:1505.04630](https://arxiv.org/abs/1505.04630) · notes: `papers/rnndk_tang2016.md`

A feed-forward DNN teacher, easy to train, provides "dark knowledge" (its softened posteriors $p_T^{(T)}$) to an
RNN student $p_S$, a model class that is stronger but hard to train on limited data. The student learns from the
hard labels $y$ and the soft targets together,

$$
\mathcal{L} = (1 - \lambda)\,\mathrm{CE}\big(y, p_S\big)
    + \lambda\, T^2\, \mathrm{CE}\big(p_T^{(T)}, p_S^{(T)}\big), \qquad
p^{(T)}_k = \frac{\exp(z_k / T)}{\sum_j \exp(z_j / T)},
$$

which the paper reads as *regularisation* (the soft targets say which classes are confusable). Its second reading is
*pre-training*: train on the soft targets alone ($\lambda = 1$) first, then on the hard labels ($\lambda = 0$).
For $T = 1$ the loss is the cross-entropy with interpolated targets $(1 - \lambda)\,y + \lambda\,p_T$.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation._base import Distiller

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "RNNDarkKnowledge", "SequenceLSTM", "dark_knowledge_loss", "reproduce", "smoothing_for_entropy"]


@dataclass(frozen=True)
class Config:
    """Weights of the soft and hard targets (chosen from a small pilot, T in {1, 2}; see the notes)."""

    temperature: float = 2.0  # $T$
    soft_weight: float = 0.5  # $\lambda$; 1 = soft targets only (the pre-training phase), 0 = labels only


def dark_knowledge_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float, soft_weight: float
) -> dict[str, Tensor]:
    r"""The two weighted terms $(1-\lambda)\,\mathrm{CE}(y, p_S)$ and $\lambda T^2\,\mathrm{CE}(p_T^{(T)}, p_S^{(T)})$.

    Args:
        student_logits: $z_S$, shape `(B, K)`.
        teacher_logits: $z_T$, shape `(B, K)`.
        labels: $y$, shape `(B,)`.
        temperature: $T$.
        soft_weight: $\lambda \in [0, 1]$.

    Returns:
        `{"hard": ..., "soft": ...}`, scalars averaged over the batch.
    """
    teacher_probs = F.softmax(teacher_logits / temperature, dim=-1)  # (B, K)
    soft_ce = -(teacher_probs * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1).mean()
    return {
        "hard": (1 - soft_weight) * F.cross_entropy(student_logits, labels),
        "soft": soft_weight * temperature**2 * soft_ce,
    }


def smoothing_for_entropy(entropy: float, num_classes: int) -> float:
    r"""Label-smoothing $\epsilon$ whose target $(1-\epsilon)\,\mathrm{onehot} + \epsilon / K$ has entropy `entropy`.

    The entropy $H(\epsilon)$ of that target grows monotonically on $[0, 1 - 1/K]$ from 0 to $\log K$, so bisection
    finds the unique root.

    Args:
        entropy: Target entropy in nats, in $[0, \log K]$.
        num_classes: $K$.
    """

    def target_entropy(eps: float) -> float:
        top, rest = 1 - eps + eps / num_classes, eps / num_classes
        return -(top * math.log(top) + (num_classes - 1) * rest * math.log(rest)) if eps > 0 else 0.0

    low, high = 0.0, 1.0 - 1.0 / num_classes
    for _ in range(60):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if target_entropy(mid) < entropy else (low, mid)
    return 0.5 * (low + high)


class SequenceLSTM(nn.Module):
    """LSTM that reads a signal `(B, C, L)` as $L / s$ steps of $C s$ values and classifies its last hidden state."""

    def __init__(self, in_channels: int, num_classes: int, step: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.step = step  # $s$, samples per time step
        self.lstm = nn.LSTM(in_channels * step, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`."""
        b, c, length = x.shape
        seq = x.view(b, c, length // self.step, self.step).permute(0, 2, 1, 3).reshape(b, length // self.step, -1)
        _, (h, _) = self.lstm(seq)  # (1, B, H)
        return self.head(h[-1])


class RNNDarkKnowledge(Distiller):
    """RNN student trained on hard labels plus a feed-forward teacher's soft targets.

    A float `y` of shape `(B, K + 1)` carries the teacher's logits computed once offline in its first $K$ columns
    and the label in the last (the teacher is fixed); integer `y` runs the teacher on `x`.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and the weighted `hard` and `soft` terms."""
        logits_s = self.student(x)  # (B, K)
        if y.is_floating_point():
            logits_t, labels = y[:, :-1], y[:, -1].long()  # (B, K), (B,)
        else:
            with torch.no_grad():
                logits_t, labels = self.teacher(x), y
        losses = dark_knowledge_loss(logits_s, logits_t, labels, self.cfg.temperature, self.cfg.soft_weight)
        return logits_s, losses


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run rnndk_tang2016`
# ---------------------------------------------------------------------------------------------------------------------

SMALL = dict(dataset="mnist1d", n_train=1000, teacher=("cnn1d", 0.5), teacher_epochs=15,
             epochs=40, lr=2e-2, batch_size=128, step=4, hidden=64)  # fmt: skip


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """LSTM student on a limited MNIST-1D subset: labels, dark knowledge (mixed / pre-training), label smoothing."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot

    s, cfg = SMALL, Config()
    n_train = min(s["n_train"], ctx.n_train or s["n_train"])
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=n_train)
    epochs = ctx.epochs(s["epochs"])
    train = dict(batch_size=s["batch_size"], device=ctx.device, progress=False, optimizer="adamw")
    k = data.num_classes

    # A feed-forward teacher (seed 0), trained on the same limited subset; its logits are computed once.
    seed_everything(0)
    teacher = build_model(s["teacher"][0], k, data.input_shape, width=s["teacher"][1])
    fit(Supervised(teacher), teacher.parameters(), data, epochs=ctx.epochs(s["teacher_epochs"]), lr=2e-2,
        weight_decay=0.05, **train)  # fmt: skip
    teacher.to("cpu").eval()
    with torch.no_grad():
        packed = replace(data, y_train=torch.cat([teacher(data.x_train), data.y_train[:, None].float()], 1))

    # Label smoothing with the mean entropy of the mixed targets (1 - lambda) y + lambda p_T^(T): regularisation only.
    q = F.softmax(packed.y_train[:, :-1] / cfg.temperature, -1)
    mixed = (1 - cfg.soft_weight) * F.one_hot(data.y_train, k) + cfg.soft_weight * q  # (N, K)
    entropy = float(-(mixed * mixed.clamp_min(1e-12).log()).sum(-1).mean())
    epsilon = smoothing_for_entropy(entropy, k)

    def student() -> SequenceLSTM:
        return SequenceLSTM(data.input_shape[0], k, s["step"], s["hidden"])

    acc: dict[str, list[float]] = {}
    for seed in ctx.seeds:
        runs = {  # name -> list of (task factory, training data, epochs) phases
            "labels": [(lambda m: Supervised(m), data, epochs)],
            "dk_mixed": [(lambda m: RNNDarkKnowledge(m, teacher, cfg), packed, epochs)],
            "dk_pretrain": [
                (lambda m: RNNDarkKnowledge(m, teacher, replace(cfg, soft_weight=1.0)), packed, epochs // 2),
                (lambda m: Supervised(m), data, epochs - epochs // 2),
            ],
            "label_smoothing": [(lambda m: Supervised(m, label_smoothing=epsilon), data, epochs)],
        }
        for name, phases in runs.items():
            seed_everything(seed)  # every student starts from the same initialisation
            net = student()
            for make_task, train_data, n_epochs in phases:
                fit(make_task(net), net.parameters(), train_data, epochs=max(1, n_epochs), lr=s["lr"], seed=seed,
                    weight_decay=0.0, **train)  # fmt: skip
            acc.setdefault(name, []).append(evaluate(net, data))
            acc.setdefault(f"{name}__train", []).append(evaluate(net, data, split="train"))

    n = len(ctx.seeds)
    acc["teacher"] = [evaluate(teacher, data)]  # one shared teacher: a single value
    s_cols = model_row(student(), data.input_shape)
    dk = {"temperature": cfg.temperature, "soft_weight": cfg.soft_weight}
    spec = [
        ("teacher", "Teacher: feed-forward cnn1d w=0.25", "teacher", model_row(teacher, data.input_shape), {}),
        ("labels", "LSTM, hard labels", "baseline", s_cols, {}),
        ("dk_mixed", "LSTM, dark knowledge + labels", "method", s_cols, dk),
        ("dk_pretrain", "LSTM, soft targets then labels", "ablation", s_cols, dk),
        ("label_smoothing", f"LSTM, label smoothing eps={epsilon:.2f}", "ablation", s_cols, {"epsilon": epsilon}),
    ]
    rows = []
    for name, label, role, cols, extra in spec:
        if f"{name}__train" in acc:
            extra = {**extra, "train_accuracy": sum(acc[f"{name}__train"]) / n}
        rows.append(dict(name=name, label=label, role=role, accuracy=accuracy_stats(acc[name]), **cols, extra=extra))
    m = {r["name"]: r["accuracy"]["mean"] for r in rows}
    figure = save_accuracy_plot(rows, ctx, "rnndk_tang2016", title=f"LSTM with dark knowledge, {data.n_train} examples")

    gains = {key: m[key] - m["labels"] for key in ("dk_mixed", "dk_pretrain", "label_smoothing")}
    view = "regularisation" if gains["dk_mixed"] >= gains["dk_pretrain"] else "pre-training"
    extra_info = max(gains["dk_mixed"], gains["dk_pretrain"]) > gains["label_smoothing"]
    answer = (
        f"At our scale the numbers lean to the {view} reading: soft + hard targets throughout give "
        f"{gains['dk_mixed']:+.1f} points over labels alone, soft-then-hard pre-training {gains['dk_pretrain']:+.1f}, "
        f"and label smoothing of the same target entropy {gains['label_smoothing']:+.1f}, so "
        + ("the teacher adds more than generic target softening" if extra_info
           else "generic target softening does as well as the teacher")
        + f". The feed-forward teacher is the weaker model class but, trained on the same {data.n_train} examples, "
        f"it is the more accurate model here ({m['teacher']:.1f}% vs {m['labels']:.1f}% for the LSTM alone)."
    )  # fmt: skip
    spread = max(r["accuracy"]["std"] for r in rows if r["name"] != "teacher")
    if n > 1:
        answer += f" Seed-to-seed std is up to {spread:.1f} points, so differences below that are not conclusive."
    return {
        "id": "rnndk_tang2016",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"limited data: {data.n_train} MNIST-1D training examples; student LSTM (hidden {s['hidden']}) "
            f"reading {s['step']} samples per step; teachers trained once (seed 0) on the same subset; AdamW lr "
            f"{s['lr']}, batch {s['batch_size']}, no weight decay, cosine, {epochs} epochs for every student (the "
            f"pre-training run: {epochs // 2} soft-only then {epochs - epochs // 2} hard-only, the schedule "
            f"restarting); T={cfg.temperature:g}, lambda={cfg.soft_weight:g}; label smoothing eps matched to the "
            f"mean entropy {entropy:.2f} nats of the mixed targets.",
        },
        "rows": rows,
        "claim": {
            "text": "An RNN trained on limited data with a feed-forward teacher's soft targets plus the hard labels "
            "generalises better than the same RNN trained on the hard labels alone.",
            "reproduced": beats(acc["dk_mixed"], acc["labels"]),
            "evidence": f"LSTM + dark knowledge {m['dk_mixed']:.2f}% vs LSTM alone {m['labels']:.2f}% (feed-forward "
            f"teacher {m['teacher']:.2f}%); soft-then-hard {m['dk_pretrain']:.2f}%; mean over {n} seed(s).",
        },
        "answers": [
            {
                "question": "Why does a weaker teacher help a stronger student, and is this regularisation or "
                "pre-training?",
                "answer": answer,
                "evidence": "; ".join(f"{r['name']} {r['accuracy']['mean']:.2f}%" for r in rows),
            }
        ],
        "figures": [figure],
    }
