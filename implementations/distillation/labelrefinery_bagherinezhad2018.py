r"""Label Refinery: Improving ImageNet Classification through Label Progression (Bagherinezhad et al., 2018).

Paper: [arXiv:1805.02641](https://arxiv.org/abs/1805.02641) · notes: `papers/labelrefinery_bagherinezhad2018.md`

A chain of models $f_0, f_1, f_2, \dots$ relabels the training set step by step. $f_0$ learns from the one-hot
ground truth; model $f_k$ learns from the softmax output of the previous model $f_{k-1}$ (the *refinery*),
computed on the very same augmented crop $\tilde x$ that $f_k$ sees, so the label follows what the crop shows:

$$
\mathcal{L}_k = \frac{1}{B} \sum_{b=1}^{B} D_{\mathrm{KL}}\big(f_{k-1}(\tilde x_b) \,\Vert\, f_k(\tilde x_b)\big)
             = -\frac{1}{B} \sum_{b=1}^{B} \sum_{i=1}^{K} f_{k-1}(\tilde x_b)_i \log f_k(\tilde x_b)_i + \text{const},
\qquad k = 1, 2, \dots
$$

The refinery need not share the architecture of the model it trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation._base import Distiller

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "LabelRefinery", "random_crop_1d", "refinery_loss", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; the paper trains on the refined labels only."""

    ground_truth_weight: float = 0.0  # weight of an extra CE(y, f_k) term; 0 in the paper (Sec. 3)
    rounds: int = 3  # refinement steps $k = 1..3$ after $f_0$ (the paper reports a few rounds, Table 2)
    max_shift: int = 4  # random-crop offset in samples, our stand-in for ImageNet's random crops


def refinery_loss(student_logits: Tensor, refinery_logits: Tensor) -> Tensor:
    r"""$\frac{1}{B}\sum_b D_{\mathrm{KL}}(\mathrm{softmax}(r_b) \,\Vert\, \mathrm{softmax}(z_b))$.

    Args:
        student_logits: Logits $z$ of the model being trained, shape `(B, K)`.
        refinery_logits: Logits $r$ of the refinery on the same inputs, shape `(B, K)`.

    Returns:
        A scalar tensor; its gradient w.r.t. $z_b$ is $(\mathrm{softmax}(z_b) - \mathrm{softmax}(r_b)) / B$.
    """
    log_p_student = F.log_softmax(student_logits, dim=-1)  # (B, K)
    log_p_refinery = F.log_softmax(refinery_logits, dim=-1)  # (B, K)
    return F.kl_div(log_p_student, log_p_refinery, reduction="batchmean", log_target=True)


def random_crop_1d(x: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Shift every sequence by its own offset $o \in [-s, s]$ along the last axis, filling with zeros.

    Args:
        x: Inputs, shape `(B, C, L)`.
        max_shift: Largest offset $s$.
        generator: CPU generator for the offsets.

    Returns:
        Shifted inputs `(B, C, L)`: `out[b, :, t] = x[b, :, t - o_b]` where $0 \le t - o_b < L$, else 0.
    """
    b, _, length = x.shape
    offsets = torch.randint(-max_shift, max_shift + 1, (b,), generator=generator).to(x.device)  # (B,)
    source = torch.arange(length, device=x.device)[None, :] - offsets[:, None]  # (B, L)
    valid = (source >= 0) & (source < length)  # (B, L)
    gathered = x.gather(2, source.clamp(0, length - 1)[:, None, :].expand_as(x))  # (B, C, L)
    return gathered * valid[:, None, :]


class LabelRefinery(Distiller):
    """Train `student` ($f_k$) on the soft labels of a frozen refinery `teacher` ($f_{k-1}$) on the same crop."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and `{"refined": KL}` (plus `"ce"` when `ground_truth_weight > 0`)."""
        logits = self.student(x)  # (B, K)
        with torch.no_grad():
            refined = self.teacher(x)  # (B, K): labels computed on this very crop, on the fly
        losses = {"refined": (1 - self.cfg.ground_truth_weight) * refinery_loss(logits, refined)}
        if self.cfg.ground_truth_weight > 0:
            losses["ce"] = self.cfg.ground_truth_weight * F.cross_entropy(logits, y)
        return logits, losses


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run labelrefinery_bagherinezhad2018`
# ---------------------------------------------------------------------------------------------------------------------

#: Chain model, a second architecture for the cross-architecture question, and the training recipe.
SETTING = dict(dataset="mnist1d", model=("cnn1d", 0.25), other=("mlp", 0.5), epochs=12, lr=0.05, batch_size=128)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    r"""Chain $f_0 \to f_3$ of a small CNN on MNIST-1D, plus an MLP refined by itself and by the CNN's $f_0$."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row
    from implementations._models import build_model

    s, cfg = SETTING, Config()
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs = ctx.epochs(s["epochs"])

    def crop(x: Tensor, gen: torch.Generator) -> Tensor:
        return random_crop_1d(x, cfg.max_shift, gen)

    train = dict(epochs=epochs, lr=s["lr"], batch_size=s["batch_size"], device=ctx.device, progress=ctx.progress)

    def new(spec: tuple[str, float], seed: int) -> nn.Module:
        seed_everything(seed)  # every model of a seed starts from the same initialisation
        return build_model(spec[0], data.num_classes, data.input_shape, width=spec[1])

    def run(model: nn.Module, refinery: nn.Module | None, seed: int) -> float:
        task = Supervised(model) if refinery is None else LabelRefinery(model, refinery, cfg)
        fit(task, model.parameters(), data, seed=seed, augment=crop, **train)
        return evaluate(model, data)

    acc: dict[str, list[float]] = {}
    for seed in ctx.seeds:
        chain = [new(s["model"], seed)]
        acc.setdefault("round0", []).append(run(chain[0], None, seed))
        for k in range(1, cfg.rounds + 1):
            chain.append(new(s["model"], seed))
            acc.setdefault(f"round{k}", []).append(run(chain[k], chain[k - 1], seed))
        other_gt = new(s["other"], seed)
        acc.setdefault("other_round0", []).append(run(other_gt, None, seed))
        acc.setdefault("other_self", []).append(run(new(s["other"], seed), other_gt, seed))
        acc.setdefault("other_by_cnn", []).append(run(new(s["other"], seed), chain[0], seed))

    m_name, o_name = f"{s['model'][0]} w={s['model'][1]:g}", f"{s['other'][0]} w={s['other'][1]:g}"
    m_cols = model_row(build_model(s["model"][0], data.num_classes, data.input_shape, s["model"][1]), data.input_shape)
    o_cols = model_row(build_model(s["other"][0], data.num_classes, data.input_shape, s["other"][1]), data.input_shape)
    rows = [dict(name="round0", label=f"f0: {m_name}, ground truth", role="baseline", **m_cols)]
    rows += [
        dict(name=f"round{k}", label=f"f{k}: refined by f{k - 1}", role="method" if k == 1 else "ablation", **m_cols)
        for k in range(1, cfg.rounds + 1)
    ]
    rows += [
        dict(name="other_round0", label=f"{o_name}, ground truth", role="ablation", **o_cols),
        dict(name="other_self", label=f"{o_name} refined by {o_name} f0", role="ablation", **o_cols),
        dict(name="other_by_cnn", label=f"{o_name} refined by {m_name} f0", role="ablation", **o_cols),
    ]
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    figure = _plot(rows, cfg.rounds, ctx, m_name, o_name)

    curve = [mean[f"round{k}"] for k in range(cfg.rounds + 1)]
    best = max(range(cfg.rounds + 1), key=lambda k: curve[k])
    gains = ", ".join(f"f{k}-f{k - 1} {curve[k] - curve[k - 1]:+.2f}" for k in range(1, cfg.rounds + 1))
    verdict = "beat" if mean["other_by_cnn"] > mean["other_self"] else "did not beat"
    answer = (
        f"At our scale the best model of the chain is f{best} (round-to-round changes {gains} points), and a "
        f"refinery of another architecture ({m_name} f0 for an {o_name}) {verdict} self-refinement "
        f"({mean['other_by_cnn'] - mean['other_self']:+.2f} points) and "
        + ("beat" if mean["other_by_cnn"] > mean["other_round0"] else "did not beat")
        + f" the {o_name} trained on ground truth ({mean['other_by_cnn'] - mean['other_round0']:+.2f} points)."
    )
    chain = "; ".join(f"f{k} {c:.2f}%" for k, c in enumerate(curve))
    evidence = chain + (
        f"; {o_name}: ground truth {mean['other_round0']:.2f}%, self-refined {mean['other_self']:.2f}%, "
        f"refined by {m_name} f0 {mean['other_by_cnn']:.2f}%."
    )
    return {
        "id": "labelrefinery_bagherinezhad2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"chain of {cfg.rounds + 1} {m_name} models, each trained {epochs} epochs from the same seeded "
            f"init; labels of f_k are f_(k-1)'s softmax on the same random crop (shift <= {cfg.max_shift}, zero "
            f"fill), KL loss only; every model, including f0, sees the same crops; SGD momentum 0.9, cosine lr "
            f"{s['lr']}, batch {s['batch_size']}, wd 5e-4.",
        },
        "rows": rows,
        "claim": {
            "text": "A model trained on the refined labels of a previous model (f1) beats the same model trained on "
            "the ground-truth labels (f0).",
            "reproduced": beats(acc["round1"], acc["round0"]),
            "evidence": f"f1 {mean['round1']:.2f}% vs f0 {mean['round0']:.2f}% ({m_name}, mean over "
            f"{len(ctx.seeds)} seed(s) on {data.name}); whole chain: {chain}.",
        },
        "answers": [
            {
                "question": "How many refinement rounds help before the gains level off, and does the refinery have "
                "to be the same architecture as the model it trains?",
                "answer": answer,
                "evidence": evidence,
            }
        ],
        "figures": [figure],
    }


def _plot(rows: list[dict[str, Any]], rounds: int, ctx: RunContext, m_name: str, o_name: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {row["name"]: row["accuracy"] for row in rows}
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ks = list(range(rounds + 1))
    ax.errorbar(
        ks,
        [by_name[f"round{k}"]["mean"] for k in ks],
        [by_name[f"round{k}"]["std"] for k in ks],
        marker="o",
        capsize=3,
        label=f"{m_name} chain",
    )
    for name, marker, label in (
        ("other_self", "s", f"{o_name} self-refined"),
        ("other_by_cnn", "^", f"{o_name} refined by {m_name} f0"),
    ):
        ax.errorbar([1], [by_name[name]["mean"]], [by_name[name]["std"]], marker=marker, capsize=3, label=label)
    ax.errorbar(
        [0],
        [by_name["other_round0"]["mean"]],
        [by_name["other_round0"]["std"]],
        marker="x",
        capsize=3,
        label=f"{o_name} ground truth",
    )
    ax.set_xticks(ks, [f"f{k}" for k in ks])
    ax.set_xlabel("refinement round")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / "labelrefinery_bagherinezhad2018_rounds.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"{ctx.results_dir.resolve().name}/figures/{path.name}"
