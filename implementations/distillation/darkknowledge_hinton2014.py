r"""Dark Knowledge (Hinton, TTIC lecture, 2014): learning a class that is missing from the transfer set.

Talk: [slides](https://www.ttic.edu/dl/dark14.pdf) · notes: `papers/darkknowledge_hinton2014.md`

The talk's signature demonstration: a teacher is trained on all $K$ classes; the student is distilled on a transfer
set $\mathcal{D}_{\setminus c}$ from which every example of one class $c$ has been removed. It learns only from the
teacher's temperature-softened outputs

$$
q_i = \frac{\exp(z^{t}_i / T)}{\sum_j \exp(z^{t}_j / T)}, \qquad
\mathcal{L} = T^2 \sum_{x \in \mathcal{D}_{\setminus c}} \sum_{i=1}^{K} q_i(x) \log \frac{q_i(x)}{p_i(x)} ,
$$

where $p$ is the student's softmax at the same $T$. The probabilities $q_c(x)$ that the teacher gives to the absent
class on *other* classes' inputs (a 5 that looks a bit like a 3) are the "dark knowledge" the student must learn
class $c$ from. Because $c$ is never the answer in $\mathcal{D}_{\setminus c}$, the student's bias for $c$ ends up
too low, and the talk raises it by "an appropriate amount" $\delta$. We pick $\delta$ without any label of $c$:
the smallest shift at which the student predicts $c$ as often as the teacher does on unlabelled inputs. With
margins $m(x) = \max_{j \ne c} z^{s}_j(x) - z^{s}_c(x)$, $x$ is predicted as $c$ iff $m(x) < \delta$, so $\delta$ is
the $r$-quantile of $m$ for the target rate $r$.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation._base import Distiller

if TYPE_CHECKING:
    from implementations._data import TensorData
    from implementations._harness import RunContext

__all__ = [
    "Config",
    "OmittedClassTransfer",
    "bias_shift_for_rate",
    "omitted_class_loss",
    "reproduce",
    "soft_targets",
    "transfer_set",
]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the omitted-class demonstration (MNIST in the talk; MNIST-1D here)."""

    omitted_class: int = 3  # $c$: the talk omits the digit 3
    temperature: float = 8.0  # $T$ (high, so the small $q_c$ become visible)
    min_prob: float = 0.0  # ablation: teacher probabilities below this are zeroed and the rest renormalised


def transfer_set(data: TensorData, omitted_class: int) -> TensorData:
    """The training split without any example of `omitted_class` (the test split is kept whole)."""
    keep = data.y_train != omitted_class
    return replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])


def soft_targets(teacher_logits: Tensor, temperature: float, min_prob: float = 0.0) -> Tensor:
    r"""Teacher probabilities $q^{(T)}$; entries below `min_prob` set to 0 and each row renormalised.

    Args:
        teacher_logits: $z^t$, shape `(B, K)`.
        temperature: $T$.
        min_prob: Threshold below which the "dark" probabilities are removed (0 keeps them all).

    Returns:
        Rows summing to 1, shape `(B, K)`.
    """
    probs = F.softmax(teacher_logits / temperature, dim=-1)  # (B, K)
    if min_prob > 0:
        # The largest entry is always at least 1/K, so a row never becomes all zero for min_prob < 1/K.
        probs = torch.where(probs < min_prob, torch.zeros_like(probs), probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def omitted_class_loss(student_logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
    r"""$T^2\,\mathrm{KL}(q \,\|\, p^{(T)})$ averaged over the batch, for soft targets `targets` $= q$.

    Args:
        student_logits: $z^s$, shape `(B, K)`.
        targets: Target distribution $q$ (e.g. from `soft_targets`), shape `(B, K)`.
        temperature: $T$.

    Returns:
        A scalar tensor (0 when the student's tempered softmax equals $q$).
    """
    log_p = F.log_softmax(student_logits / temperature, dim=-1)  # (B, K)
    return F.kl_div(log_p, targets, reduction="batchmean") * temperature**2


def bias_shift_for_rate(student_logits: Tensor, cls: int, rate: float) -> float:
    r"""Smallest $\delta$ such that adding $\delta$ to logit `cls` makes a fraction `rate` of rows predict `cls`.

    Row $b$ predicts `cls` after the shift iff its margin $m_b = \max_{j \ne c} z_{bj} - z_{bc}$ is below $\delta$;
    $\delta$ is set just above the $\lceil r B \rceil$-th smallest margin (never negative: the correction only raises
    the bias).

    Args:
        student_logits: Student logits on unlabelled inputs, shape `(B, K)`.
        cls: The class $c$ whose bias is raised.
        rate: Target fraction $r \in [0, 1]$ of rows predicted as $c$.

    Returns:
        The shift $\delta \ge 0$.
    """
    others = student_logits.clone()
    others[:, cls] = float("-inf")
    margins = (others.max(dim=-1).values - student_logits[:, cls]).sort().values  # (B,), ascending
    k = int(round(rate * len(margins)))
    if k == 0:
        return 0.0
    return max(0.0, float(margins[k - 1]) + 1e-4)


class OmittedClassTransfer(Distiller):
    r"""Soft-target distillation on a transfer set without class $c$, plus a bias shift $\delta$ for $c$ at test time.

    `forward(x)` returns the student's logits with $\delta$ added to logit $c$ (`bias_shift`, 0 until
    `calibrate` is called), so `evaluate(task, data)` scores the corrected student. In `forward_train`, a float `y`
    of shape `(B, K)` is taken as the teacher's logits computed once offline (the teacher is fixed), else the
    teacher is run on `x`; integer labels are never used.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()
        self.register_buffer("bias_shift", torch.zeros(()))  # $\delta$

    def forward(self, x: Tensor) -> Tensor:
        r"""Student logits `(B, K)` with $\delta$ added to class $c$."""
        logits = self.student(x)  # (B, K)
        shift = torch.zeros_like(logits[0])
        shift[self.cfg.omitted_class] = self.bias_shift
        return logits + shift

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and `{"soft": T^2 KL}`; the labels are not used (soft targets only)."""
        logits_s = self.student(x)  # (B, K)
        with torch.no_grad():
            offline = y.is_floating_point() and y.shape == logits_s.shape
            logits_t = y if offline else self.teacher(x)  # (B, K)
            targets = soft_targets(logits_t, self.cfg.temperature, self.cfg.min_prob)  # (B, K)
        return logits_s, {"soft": omitted_class_loss(logits_s, targets, self.cfg.temperature)}

    @torch.no_grad()
    def calibrate(self, x_unlabelled: Tensor) -> float:
        r"""Set $\delta$ so the student predicts $c$ on `x_unlabelled` as often as the teacher does; returns it."""
        was_training = self.training
        self.eval()
        c = self.cfg.omitted_class
        rate = float((self.teacher(x_unlabelled).argmax(-1) == c).float().mean())
        self.bias_shift.fill_(bias_shift_for_rate(self.student(x_unlabelled), c, rate))
        self.train(was_training)
        return float(self.bias_shift)


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run darkknowledge_hinton2014`
# ---------------------------------------------------------------------------------------------------------------------

SMALL = dict(dataset="mnist1d", teacher=("cnn1d", 1.0), student=("cnn1d", 0.5), teacher_epochs=10, epochs=10,
             lr=2e-2, batch_size=256, min_prob=0.05)  # fmt: skip


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher on all classes; students on the transfer set without class 3; over `ctx.seeds`."""
    return _reproduce(ctx)


def _class_accuracy(model: nn.Module, x: Tensor, y: Tensor, cls: int) -> float:
    with torch.no_grad():
        pred = model(x[y == cls]).argmax(-1)
    return 100.0 * float((pred == cls).float().mean())


def _reproduce(ctx: RunContext) -> dict[str, Any]:
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot

    s, cfg = SMALL, Config()
    c = cfg.omitted_class
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    transfer = transfer_set(data, c)
    epochs = ctx.epochs(s["epochs"])
    train = dict(lr=s["lr"], batch_size=s["batch_size"], device=ctx.device, progress=False, optimizer="adamw")

    def new(spec: tuple[str, float]) -> nn.Module:
        return build_model(spec[0], data.num_classes, data.input_shape, width=spec[1])

    # One teacher (seed 0) on all classes, shared by every student and seed.
    seed_everything(0)
    teacher = new(s["teacher"])
    fit(Supervised(teacher), teacher.parameters(), data, epochs=ctx.epochs(s["teacher_epochs"]), weight_decay=0.05,
        **train)  # fmt: skip
    teacher.to("cpu").eval()
    x_test, y_test = data.x_test, data.y_test
    with torch.no_grad():
        soft_transfer = replace(transfer, y_train=teacher(transfer.x_train))  # (N, K): labelled once, offline
    acc: dict[str, list[float]] = {"teacher": [evaluate(teacher, data)]}  # one shared teacher: a single value
    omitted: dict[str, list[float]] = {
        "teacher": [_class_accuracy(teacher, x_test, y_test, c)]
    }  # one shared teacher: a single value
    shifts: dict[str, list[float]] = {}
    variants = {"labels": None, "kd_raw": cfg, "kd_corrected": cfg, "kd_no_dark": replace(cfg, min_prob=s["min_prob"])}
    for seed in ctx.seeds:
        trained: dict[Config, OmittedClassTransfer] = {}
        for name, variant in variants.items():
            if variant in trained:  # kd_raw and kd_corrected are the same trained student, scored twice
                task = trained[variant]
            else:
                seed_everything(seed)  # every student starts from the same initialisation
                student = new(s["student"])
                task = Supervised(student) if variant is None else OmittedClassTransfer(student, teacher, variant)
                train_data = transfer if variant is None else soft_transfer
                fit(task, student.parameters(), train_data, epochs=epochs, seed=seed, weight_decay=0.05, **train)
                task.to("cpu")
                if variant is not None:
                    trained[variant] = task
            if isinstance(task, OmittedClassTransfer):
                task.bias_shift.zero_()
                if name != "kd_raw":
                    # delta from unlabelled training inputs of all classes: no label of class c is used.
                    shifts.setdefault(name, []).append(task.calibrate(data.x_train))
            acc.setdefault(name, []).append(evaluate(task, data))
            omitted.setdefault(name, []).append(_class_accuracy(task, x_test, y_test, c))

    t_cols = model_row(teacher, data.input_shape)
    s_cols = model_row(new(s["student"]), data.input_shape)
    labels = {
        "teacher": ("Teacher, all classes (cnn1d)", "teacher"),
        "labels": (f"Student, hard labels, no {c}s", "baseline"),
        "kd_raw": (f"Student, soft targets, no {c}s", "ablation"),
        "kd_corrected": (f"Student, soft targets, no {c}s, bias +delta", "method"),
        "kd_no_dark": (f"Same, q < {s['min_prob']:g} removed, bias +delta", "ablation"),
    }
    rows = []
    for name, (label, role) in labels.items():
        extra: dict[str, float | str] = {f"class_{c}_accuracy": sum(omitted[name]) / len(omitted[name])}
        if name in shifts:
            extra["bias_shift"] = sum(shifts[name]) / len(shifts[name])
        if name.startswith("kd"):
            extra["temperature"] = cfg.temperature
        cols = t_cols if name == "teacher" else s_cols
        rows.append(dict(name=name, label=label, role=role, accuracy=accuracy_stats(acc[name]), **cols, extra=extra))
    m = {r["name"]: r["accuracy"]["mean"] for r in rows}
    o = {r["name"]: r["extra"][f"class_{c}_accuracy"] for r in rows}
    figure = save_accuracy_plot(rows, ctx, "darkknowledge_hinton2014", title=f"Omitted class {c} on {data.name}")
    reproduced = o["kd_corrected"] > 50.0 and beats(omitted["kd_corrected"], omitted["labels"])
    return {
        "id": "darkknowledge_hinton2014",
        "protocol": {
            "dataset": data.name,
            "n_train": transfer.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"transfer set = MNIST-1D training split without class {c} ({transfer.n_train} of "
            f"{data.n_train}); one cnn1d teacher (seed 0) trained on all classes; student cnn1d width 0.5; AdamW "
            f"lr {s['lr']}, batch {s['batch_size']}, wd 0.05, cosine, same epochs for every student; soft-target "
            f"students use T={cfg.temperature:g} and no labels; delta = smallest bias shift at which the student "
            f"predicts class {c} on the unlabelled training inputs as often as the teacher does. Accuracy is over "
            f"all test classes; extra.class_{c}_accuracy is on the test examples of class {c} only.",
        },
        "rows": rows,
        "claim": {
            "text": f"A student distilled on a transfer set that contains no example of one class (here {c}) still "
            "recognises most test examples of that class once that class's output bias is raised.",
            "reproduced": reproduced,
            "evidence": f"class-{c} test accuracy: soft targets + bias shift {o['kd_corrected']:.1f}% (overall "
            f"{m['kd_corrected']:.1f}%), soft targets without shift {o['kd_raw']:.1f}%, hard labels "
            f"{o['labels']:.1f}%, teacher {o['teacher']:.1f}%; with the teacher's probabilities below "
            f"{s['min_prob']:g} removed {o['kd_no_dark']:.1f}%; mean over {len(ctx.seeds)} seed(s).",
        },
        "figures": [figure],
    }
