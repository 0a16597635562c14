r"""Apprentice: Using Knowledge Distillation Techniques To Improve Low-Precision Network Accuracy (Mishra & Marr, 2018).

Paper: [arXiv:1711.05852](https://arxiv.org/abs/1711.05852) · notes: `papers/apprentice_mishra2018.md`

A full-precision teacher (logits $z^T$, softmax $p^T$) guides a low-precision student, the apprentice (softmax
$p^A$), through the joint loss

$$
\mathcal{L}(x; W_T, W_A) = \alpha\, H\big(y, p^T\big) + \beta\, H\big(y, p^A\big) + \gamma\, H\big(p^T, p^A\big),
$$

where $H$ is the cross-entropy. The student computes with $k_w$-bit weights and $k_a$-bit activations: in the
forward pass each weight tensor is replaced by its quantized value (symmetric, one scale $s_c$ per output channel;
$k_w = 2$ gives ternary weights $\{-s_c, 0, s_c\}$) and each activation entering a layer by

$$
Q_a(a) = \frac{c}{2^{k_a} - 1}\, \operatorname{round}\!\Big(\frac{2^{k_a} - 1}{c}\, \operatorname{clip}(a, 0, c)\Big),
$$

while the straight-through estimator passes the gradients to the full-precision weights. Scheme A trains teacher
and student jointly from scratch, scheme B trains the student from scratch with a trained, frozen teacher (the
$\alpha$ term is then constant), and scheme C starts the student from trained full-precision weights of its own
architecture and fine-tunes it at low precision with the teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation._base import Distiller
from implementations.distillation.kd_hinton2015 import kd_loss
from implementations.quantization._base import fake_quantize, quantizable_layers, quantize_weights, round_ste

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "Apprentice", "apprentice_loss", "low_precision", "quantize_activation", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; the loss weights and the bit widths follow our reading of the paper (Sec. 4-5)."""

    weight_bits: int | None = 2  # $k_w$: 2 = ternary weights; None = full precision
    act_bits: int | None = 4  # $k_a$: 4-bit activations; None = full precision
    act_clip: float = 1.0  # $c$: activations are clipped to $[0, c]$ (WRPN's $[0, 1]$)
    alpha: float = 1.0  # $\alpha$: teacher's hard-label term (only trained in scheme A)
    beta: float = 0.5  # $\beta$: student's hard-label term
    gamma: float = 0.5  # $\gamma$: distillation term
    temperature: float = 1.0  # $T$ of the soft targets; the paper's loss uses plain softmaxes


def quantize_activation(a: Tensor, bits: int, clip: float = 1.0) -> Tensor:
    r"""$Q_a(a) = \frac{c}{2^k - 1} \operatorname{round}(\frac{2^k - 1}{c} \operatorname{clip}(a, 0, c))$ with an STE.

    Args:
        a: Activations (non-negative after a ReLU), any shape.
        bits: $k$, giving the $2^k$ levels $\{0, c/(2^k-1), \dots, c\}$.
        clip: $c > 0$.

    Returns:
        Quantized activations of `a`'s shape; the gradient is 1 inside $[0, c]$ and 0 outside.
    """
    levels = 2**bits - 1
    return clip / levels * round_ste(a.clamp(0.0, clip) * (levels / clip))


def _per_channel(weight: Tensor, bits: int) -> Tensor:
    # one absmax scale per output channel: the flattened weight splits into runs of C_in * k values
    return fake_quantize(weight, bits, group_size=weight[0].numel())


def low_precision(model: nn.Module, weight_bits: int | None, act_bits: int | None, act_clip: float = 1.0) -> nn.Module:
    r"""Make `model` compute with $k_w$-bit weights and $k_a$-bit activations, in place; returns `model`.

    The first and last layers keep full-precision weights (the usual practice of low-precision ResNets); the
    input of every layer but the first (which sees the data) goes through $Q_a$. Weights are fake-quantized by a
    parametrization, so the optimiser updates the full-precision copies.

    Args:
        model: Network with Linear / Conv1d / Conv2d layers.
        weight_bits: $k_w \ge 2$, or None to keep full-precision weights.
        act_bits: $k_a$, or None to keep full-precision activations.
        act_clip: $c$ of $Q_a$.
    """
    layers = [name for name, _ in quantizable_layers(model)]
    if weight_bits is not None:
        quantize_weights(model, lambda _layer: partial(_per_channel, bits=weight_bits), skip=[layers[0], layers[-1]])
    if act_bits is not None:
        for _, layer in quantizable_layers(model, skip=[layers[0]]):
            layer.register_forward_pre_hook(lambda _m, args: (quantize_activation(args[0], act_bits, act_clip),))
    return model


def apprentice_loss(
    student_logits: Tensor, teacher_logits: Tensor, y: Tensor, cfg: Config, train_teacher: bool = False
) -> dict[str, Tensor]:
    r"""The weighted terms of $\alpha H(y, p^T) + \beta H(y, p^A) + \gamma H(p^T, p^A)$.

    $H(p^T, p^A) = \mathrm{KL}(p^T \| p^A) + H(p^T)$, and $H(p^T)$ does not depend on the student, so the
    $\gamma$ term is computed as $T^2\,\mathrm{KL}$ (`kd_loss`), with the same gradient. The teacher's logits are
    detached in it: the teacher learns from the labels only.

    Args:
        student_logits: $z^A$, shape `(B, K)`.
        teacher_logits: $z^T$, shape `(B, K)`.
        y: Labels, shape `(B,)`.
        cfg: Weights $\alpha, \beta, \gamma$ and temperature $T$.
        train_teacher: Add the $\alpha$ term (scheme A); otherwise it is a constant and left out.

    Returns:
        `{"ce": ..., "kd": ...}` plus `"teacher_ce"` when `train_teacher`, each a weighted scalar.
    """
    losses = {
        "ce": cfg.beta * F.cross_entropy(student_logits, y),
        "kd": cfg.gamma * kd_loss(student_logits, teacher_logits.detach(), cfg.temperature),
    }
    if train_teacher:
        losses["teacher_ce"] = cfg.alpha * F.cross_entropy(teacher_logits, y)
    return losses


class Apprentice(Distiller):
    """A low-precision student distilled from a full-precision teacher; `joint=True` trains both (scheme A)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None, joint: bool = False):
        super().__init__(student, teacher)
        self.cfg = cfg or Config()
        self.joint = joint
        low_precision(self.student, self.cfg.weight_bits, self.cfg.act_bits, self.cfg.act_clip)
        if joint:
            self.teacher.requires_grad_(True)

    def train(self, mode: bool = True) -> Apprentice:
        """The teacher follows `mode` in scheme A and stays in eval mode otherwise."""
        super().train(mode)
        if self.joint:
            self.teacher.train(mode)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's parameters, plus the teacher's in scheme A."""
        return [p for p in self.parameters() if p.requires_grad] if self.joint else super().trainable_parameters()

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and the weighted `ce`, `kd` (and, in scheme A, `teacher_ce`) terms."""
        logits_s = self.student(x)  # (B, K)
        with torch.set_grad_enabled(self.joint and torch.is_grad_enabled()):
            logits_t = self.teacher(x)  # (B, K)
        return logits_s, apprentice_loss(logits_s, logits_t, y, self.cfg, train_teacher=self.joint)


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run apprentice_mishra2018`
# ---------------------------------------------------------------------------------------------------------------------

#: MNIST-1D stands in for ImageNet. `act_clip` is 3, not WRPN's 1: our BN-normalised activations have unit scale, and
#: in a pilot (cnn1d w=0.5, 8 epochs, no teacher) 4-bit activations clipped at 1 cost 28 points, clipped at 3 one point.
SETTINGS = dict(
    dataset="mnist1d",
    teacher=("cnn1d", 0.5),
    student=("cnn1d", 0.25),
    epochs=6,
    teacher_epochs=18,
    lr=0.1,
    finetune_lr=0.02,
    batch=256,
    act_clip=3.0,
)
#: The registry's open questions, verbatim (the site matches on them).
QUESTIONS = (
    "Which of the three schemes gives the best low-precision student?",
    "Is the gain specific to low precision, or is it the usual distillation gain that a full-precision student of "
    "the same architecture would also get?",
)
#: Row name -> (label, role, weight bits); FP rows have 32-bit weights, the low-precision ones 4-bit activations.
ROWS = {
    "teacher": ("Teacher, FP (trained once, longer)", "teacher", 32),
    "fp": ("Student FP, labels only", "ablation", 32),
    "fp_kd": ("Student FP + distillation", "ablation", 32),
    "w4_ptq": ("W4A4: FP student quantized, no training", "ablation", 4),
    "w2_ptq": ("W2A4: FP student quantized, no training", "ablation", 2),
    "w2_scratch": ("W2A4 student, labels only", "baseline", 2),
    "w2_a": ("W2A4, scheme A (joint)", "method", 2),
    "w2_b": ("W2A4, scheme B (trained teacher)", "method", 2),
    "w2_c_nokd": ("W2A4, FP init, fine-tuned on labels", "baseline", 2),
    "w2_c": ("W2A4, scheme C (FP init + distillation)", "method", 2),
}


def _bytes(model: nn.Module, weight_bits: int) -> int:
    r"""$\lceil k_w P_Q / 8 \rceil + 4 S + 4 (P - P_Q)$: quantized layers at $k_w$ bits, one fp32 scale per channel."""
    from implementations._measure import count_params, quantized_bytes

    if weight_bits >= 32:
        return 4 * count_params(model)
    quantized = [m.weight for _, m in quantizable_layers(model)[1:-1]]
    n_q, n_scales = sum(w.numel() for w in quantized), sum(w.shape[0] for w in quantized)
    return quantized_bytes(n_q, weight_bits, num_scales=n_scales) + 4 * (count_params(model) - n_q)


def _plot(rows: list[dict[str, Any]], ctx: RunContext) -> str:
    """Accuracy against student bytes (weight bits annotated), with and without distillation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {row["name"]: row for row in rows}
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    series = [
        ("trained on labels only", ["w2_scratch", "fp"], "o-", "#1f77b4"),
        ("trained with distillation (B)", ["w2_b", "fp_kd"], "s-", "#d62728"),
        ("scheme A", ["w2_a"], "^", "#ff7f0e"),
        ("scheme C", ["w2_c"], "D", "#2ca02c"),
        ("FP init, fine-tuned on labels", ["w2_c_nokd"], "v", "#9467bd"),
        ("FP student quantized to W4, W2, no training", ["w2_ptq", "w4_ptq", "fp"], "x:", "#7f7f7f"),
    ]
    for i, (label, names, style, color) in enumerate(series):
        xs, ys, es = ([by[n][k] for n in names] for k in ("bytes", "mean", "std"))
        xs = [x * (1 + 0.03 * (i - 2.5)) if by[n]["bits"] == 2 else x for x, n in zip(xs, names, strict=True)]  # jitter
        ax.errorbar(xs, ys, yerr=es, fmt=style, color=color, label=label, capsize=3, markersize=5)
    ax.axhline(by["teacher"]["mean"], color="k", ls="--", lw=1, label="FP teacher")
    ax.set(xscale="log", xlabel="student size in bytes (W2 < W4 < FP weights; log scale)", ylabel="test accuracy (%)")
    ax.set_title("Apprentice on MNIST-1D: W2A4 = ternary weights, 4-bit activations", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = ctx.results_dir / "figures" / "apprentice_mishra2018_bits.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"{ctx.results_dir.resolve().name}/figures/{path.name}"


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """FP teacher and student; W2A4 students without distillation and with schemes A, B, C, at equal epochs.

    Every student starts from the same seeded initialisation (scheme C and its control from the FP student trained
    from it). The FP student quantized without training gives the W4 / W2 points of the accuracy-vs-bits plot.
    """
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, model_row
    from implementations._models import build_model
    from implementations.quantization._base import beats

    s = SETTINGS
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs = ctx.epochs(s["epochs"])
    train = dict(epochs=epochs, batch_size=s["batch"], device=ctx.device, progress=ctx.progress)

    def new(spec: tuple[str, float], state: dict | None = None) -> nn.Module:
        model = build_model(spec[0], data.num_classes, data.input_shape, width=spec[1])
        if state is not None:
            model.load_state_dict(state)
        return model

    def run(task: nn.Module, seed: int, lr: float = s["lr"]) -> float:
        params = task.trainable_parameters() if isinstance(task, Distiller) else task.parameters()
        fit(task, params, data, lr=lr, seed=seed, **train)
        return evaluate(task, data)

    acc: dict[str, list[float]] = {name: [] for name in ROWS}
    cfg = Config(act_clip=s["act_clip"])  # W2A4
    # schemes B and C use a trained teacher: one, trained longer, for all seeds (the seeds vary the students)
    seed_everything(ctx.seeds[0])
    teacher, teacher_epochs = new(s["teacher"]), ctx.epochs(s["teacher_epochs"])
    teacher_train = {**train, "epochs": teacher_epochs}
    fit(Supervised(teacher), teacher.parameters(), data, lr=s["lr"], seed=ctx.seeds[0], **teacher_train)
    acc["teacher"] = [evaluate(teacher, data)]
    joint_teacher = []
    for seed in ctx.seeds:
        seed_everything(seed)
        init = new(s["student"]).state_dict()  # every student starts here
        # scheme A: a teacher and the student, both from scratch, trained together for the students' epochs
        joint = Apprentice(new(s["student"], init), new(s["teacher"]), cfg, joint=True)
        acc["w2_a"].append(run(joint, seed))
        joint_teacher.append(evaluate(joint.teacher, data))
        fp = new(s["student"], init)
        acc["fp"].append(run(Supervised(fp), seed))
        fp_state = fp.state_dict()
        acc["fp_kd"].append(run(Apprentice(new(s["student"], init), teacher, Config(None, None)), seed))
        for bits in (4, 2):
            low = low_precision(new(s["student"], fp_state), bits, cfg.act_bits, cfg.act_clip)
            acc[f"w{bits}_ptq"].append(evaluate(low, data))
        acc["w2_scratch"].append(run(Supervised(low_precision(new(s["student"], init), 2, 4, cfg.act_clip)), seed))
        acc["w2_b"].append(run(Apprentice(new(s["student"], init), teacher, cfg), seed))
        # scheme C and its control: start from the trained FP student, fine-tune at low precision
        acc["w2_c"].append(run(Apprentice(new(s["student"], fp_state), teacher, cfg), seed, s["finetune_lr"]))
        control = Supervised(low_precision(new(s["student"], fp_state), 2, 4, cfg.act_clip))
        acc["w2_c_nokd"].append(run(control, seed, s["finetune_lr"]))

    rows = []
    for name, (label, role, bits) in ROWS.items():
        spec = s["teacher"] if name == "teacher" else s["student"]
        cols = model_row(new(spec), data.input_shape)
        cols.update(bytes=_bytes(new(spec), bits), bits=float(bits))
        extra = {"activation_bits": float(cfg.act_bits if bits < 32 else 32), "model": f"{spec[0]} w={spec[1]:g}"}
        if name == "w2_a":
            extra["joint_teacher_accuracy"] = round(sum(joint_teacher) / len(joint_teacher), 2)
        if name == "teacher":
            extra["epochs"] = float(teacher_epochs)
        rows.append(dict(name=name, label=label, role=role, **cols, extra=extra, accuracy=accuracy_stats(acc[name])))
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    figure = _plot([{**r, "mean": r["accuracy"]["mean"], "std": r["accuracy"]["std"]} for r in rows], ctx)

    noise = "beyond one paired standard error" if len(ctx.seeds) > 1 else "in direction (one seed)"
    checks = {"A": ("w2_a", "w2_scratch"), "B": ("w2_b", "w2_scratch"), "C": ("w2_c", "w2_c_nokd")}
    won = {k: beats(acc[m], acc[b]) for k, (m, b) in checks.items()}
    ranked = sorted("ABC", key=lambda k: mean[checks[k][0]], reverse=True)
    clear = beats(acc[checks[ranked[0]][0]], acc[checks[ranked[1]][0]])
    gain = {
        b: [x - y for x, y in zip(acc[m], acc[r], strict=True)]
        for b, m, r in ((32, "fp_kd", "fp"), (2, "w2_b", "w2_scratch"))
    }
    g = {b: sum(v) / len(v) for b, v in gain.items()}
    specific = beats(gain[2], gain[32])
    return {
        "id": "apprentice_mishra2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"teacher {s['teacher'][0]} w={s['teacher'][1]:g}, student {s['student'][0]} "
            f"w={s['student'][1]:g}; every run {epochs} epochs, SGD momentum 0.9, cosine lr {s['lr']} from scratch "
            f"and {s['finetune_lr']} for the fine-tuning runs (scheme C and its control), batch {s['batch']}, wd "
            f"5e-4. Low precision: {cfg.weight_bits}-bit weights (per-channel absmax, i.e. ternary) and "
            f"{cfg.act_bits}-bit activations clipped to [0, {cfg.act_clip:g}], first and last layer weights FP, "
            f"STE. Loss weights alpha={cfg.alpha}, beta={cfg.beta}, gamma={cfg.gamma}, T={cfg.temperature:g}. The "
            f"teacher of B, C and FP+KD is trained once (seed {ctx.seeds[0]}, {teacher_epochs} epochs); scheme A "
            f"trains its own teacher jointly with the student for {epochs} epochs; scheme C starts from the FP "
            "student row's weights.",
        },
        "rows": rows,
        "claim": {
            "text": "Distillation from a full-precision teacher makes a low-precision (ternary-weight, 4-bit "
            "activation) student more accurate than the same student trained without it, in each of the three "
            "schemes, at equal low-precision epochs.",
            "reproduced": all(won.values()),
            "evidence": f"W2A4: scheme A {mean['w2_a']:.2f}% and B {mean['w2_b']:.2f}% vs labels only from scratch "
            f"{mean['w2_scratch']:.2f}%; scheme C {mean['w2_c']:.2f}% vs FP init fine-tuned on labels "
            f"{mean['w2_c_nokd']:.2f}%. Better {noise}: "
            + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in won.items())
            + f" ({len(ctx.seeds)} seed(s); FP student {mean['fp']:.2f}%, teacher {mean['teacher']:.2f}%).",
        },
        "answers": [
            {
                "question": QUESTIONS[0],
                "answer": f"Scheme {ranked[0]} gave the most accurate W2A4 student at equal epochs"
                + (f", ahead of scheme {ranked[1]} {noise}" if clear else f", but not clearly ahead of {ranked[1]}")
                + f"; the notes' pick (C) {'agrees' if ranked[0] == 'C' else 'does not match'} at our scale"
                + (
                    ", and C beat FP-init fine-tuning without a teacher, so the teacher added to the FP init."
                    if won["C"]
                    else ", but C did not beat FP-init fine-tuning without a teacher (the gain is the init)."
                ),
                "evidence": ", ".join(f"scheme {k} {mean[checks[k][0]]:.2f}%" for k in "ABC")
                + f"; labels only from scratch {mean['w2_scratch']:.2f}%, FP init fine-tuned on labels "
                f"{mean['w2_c_nokd']:.2f}%, FP student quantized without training {mean['w2_ptq']:.2f}%.",
            },
            {
                "question": QUESTIONS[1],
                "answer": ("Specific to low precision at our scale" if specific else "Not at our scale")
                + f": distillation from scratch changed the FP student by {g[32]:+.2f} points and the W2A4 student by "
                f"{g[2]:+.2f}, so the low-precision student gained {'more' if specific else 'no more'} ({noise}).",
                "evidence": "accuracy gain of distillation from scratch (same init and epochs): FP student "
                f"{g[32]:+.2f} points (per seed " + ", ".join(f"{v:+.1f}" for v in gain[32]) + f"), W2A4 student "
                f"{g[2]:+.2f} (per seed " + ", ".join(f"{v:+.1f}" for v in gain[2]) + ").",
            },
        ],
        "figures": [figure],
    }
