r"""Subclass Distillation (Müller, Kornblith & Hinton, 2020).

Paper: [arXiv:2002.03936](https://arxiv.org/abs/2002.03936) · notes: `papers/subclass_muller2020.md`

The teacher has $s$ subclass logits $z_{c,j}$ per class and is trained on class labels only; a class's
probability is the sum of its subclass probabilities, i.e. its logit is a log-sum-exp:

$$
z_c = \log \sum_{j=1}^{s} \exp(z_{c,j}), \qquad P(c \mid x) = \mathrm{softmax}(z)_c .
$$

Nothing in the class loss decides how mass is split inside a class, so an auxiliary loss makes different examples
use different subclasses: the subclass logits are normalised over the batch, $v_{n,k} = (z_{n,k} - \mu_k)/\sigma_k$,
and each example must be recognisable from its own vector among the $N$ of the batch,

$$
\mathcal{L}_{\mathrm{aux}} = -\frac{1}{N} \sum_{n=1}^{N}
    \log \frac{\exp(v_n^\top v_n / T_a)}{\sum_{m=1}^{N} \exp(v_n^\top v_m / T_a)} .
$$

The student has the same $C s$ outputs and is distilled on the subclass distribution at temperature $T$,
$\alpha\, T^2\, \mathrm{KL}(p_t^{(T)} \Vert p_s^{(T)}) + (1 - \alpha)\, \mathrm{CE}(y, \mathrm{softmax}(z_{s,c}))$.
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

__all__ = ["Config", "SubclassDistillation", "auxiliary_loss", "class_logits", "expand_head", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters (our choices where the paper's values were not checked)."""

    subclasses: int = 5  # $s$ per class (CIFAR-2x5 hides 5 classes in each super-class)
    num_classes: int | None = None  # $C$; None = the width of the student's original head
    aux_weight: float = 0.1  # $\beta$ (ours): at init the aux term is ~ln N, the class CE ~ln C
    aux_temperature: float = 1.0  # $T_a$
    temperature: float = 4.0  # $T$ of the subclass distillation
    alpha: float = 0.9  # weight of the distillation term


def class_logits(subclass_logits: Tensor, subclasses: int) -> Tensor:
    r"""$z_c = \log\sum_j \exp(z_{c,j})$; subclass $(c, j)$ is column $c s + j$.

    Args:
        subclass_logits: Shape `(B, C * s)`.
        subclasses: $s$.

    Returns:
        Class logits, shape `(B, C)`.
    """
    b, width = subclass_logits.shape
    return subclass_logits.view(b, width // subclasses, subclasses).logsumexp(dim=-1)


def auxiliary_loss(subclass_logits: Tensor, temperature: float = 1.0, eps: float = 1e-5) -> Tensor:
    r"""$\mathcal{L}_{\mathrm{aux}}$: cross-entropy of picking $n$ out of $\mathrm{softmax}_m(v_n^\top v_m / T_a)$.

    The logits are normalised per subclass over the batch before the dot products, so the loss rewards examples
    whose subclass-logit patterns differ, whatever the class.

    Args:
        subclass_logits: Shape `(N, C * s)`, $N \ge 2$.
        temperature: $T_a$.
        eps: Added to the batch standard deviation.

    Returns:
        A scalar tensor.
    """
    mean = subclass_logits.mean(dim=0, keepdim=True)  # $\mu_k$, (1, Cs)
    std = subclass_logits.std(dim=0, keepdim=True, unbiased=False)  # $\sigma_k$, (1, Cs)
    v = (subclass_logits - mean) / (std + eps)  # (N, Cs)
    similarity = v @ v.T / temperature  # (N, N)
    return F.cross_entropy(similarity, torch.arange(len(v), device=v.device))


def expand_head(model: nn.Module, factor: int) -> nn.Module:
    """Replace `model.head` (a `Linear(d, C)`) by a freshly initialised `Linear(d, C * factor)`, in place."""
    head = model.head
    model.head = nn.Linear(head.in_features, head.out_features * factor, bias=head.bias is not None)
    return model


class SubclassDistillation(Distiller):
    """Distil the teacher's $C s$ subclass probabilities into a student with $C s$ outputs.

    A model whose head has $C$ outputs gets an expanded $C s$ head (fresh weights); one with $C s$ outputs is used
    as is. `forward(x)` returns the student's class logits `(B, C)`, so `evaluate()` scores classes.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None) -> None:
        self.cfg = cfg or Config()
        s = self.cfg.subclasses
        self.num_classes = self.cfg.num_classes or student.head.out_features
        for model in (student, teacher):
            if model.head.out_features == self.num_classes:
                expand_head(model, s)
            elif model.head.out_features != self.num_classes * s:
                raise ValueError(f"head has {model.head.out_features} outputs, expected {self.num_classes} or C*s")
        super().__init__(student, teacher)

    def forward(self, x: Tensor) -> Tensor:
        """Student class logits `(B, C)`."""
        return class_logits(self.student(x), self.cfg.subclasses)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student class logits `(B, C)`, and the weighted `kd` (subclass) and `ce` (class) terms."""
        cfg = self.cfg
        student = self.student(x)  # (B, C s)
        with torch.no_grad():
            teacher = self.teacher(x)  # (B, C s)
        log_p_s = F.log_softmax(student / cfg.temperature, dim=-1)
        log_p_t = F.log_softmax(teacher / cfg.temperature, dim=-1)
        kd = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * cfg.temperature**2
        logits = class_logits(student, cfg.subclasses)  # (B, C)
        return logits, {"kd": cfg.alpha * kd, "ce": (1 - cfg.alpha) * F.cross_entropy(logits, y)}


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run subclass_muller2020`
# ---------------------------------------------------------------------------------------------------------------------

#: MNIST-1D as a binary task (digits 0-4 vs 5-9, "MNIST-1D-2x5"); the student learns from a limited transfer set.
SETTING = dict(
    dataset="mnist1d", teacher=("cnn1d", 0.5), student=("cnn1d", 0.25), transfer=1000, teacher_epochs=8, epochs=12
)


class _SubclassTeacher(nn.Module):
    r"""The teacher's task: class cross-entropy through the log-sum-exp, plus $\beta\,\mathcal{L}_{\mathrm{aux}}$."""

    def __init__(self, model: nn.Module, cfg: Config) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, x: Tensor) -> Tensor:
        return class_logits(self.model(x), self.cfg.subclasses)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        subclass = self.model(x)  # (B, C s)
        logits = class_logits(subclass, self.cfg.subclasses)
        losses = {"ce": F.cross_entropy(logits, y)}
        if self.cfg.aux_weight > 0:
            losses["aux"] = self.cfg.aux_weight * auxiliary_loss(subclass, self.cfg.aux_temperature)
        return logits, losses


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teachers with and without the auxiliary loss; students alone, with class KD and with subclass KD."""
    from dataclasses import replace

    from sklearn.metrics import adjusted_rand_score

    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot
    from implementations.distillation.kd_hinton2015 import KD
    from implementations.distillation.kd_hinton2015 import Config as KDConfig

    s, cfg = SETTING, Config(num_classes=2)
    digits = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    groups = digits.num_classes // cfg.num_classes  # 5 hidden digits per super-class
    data = replace(digits, y_train=digits.y_train // groups, y_test=digits.y_test // groups, num_classes=2)
    n_transfer = max(10, round(s["transfer"] * data.n_train / 4000))
    transfer = replace(data, x_train=data.x_train[:n_transfer], y_train=data.y_train[:n_transfer])
    epochs, teacher_epochs = ctx.epochs(s["epochs"]), ctx.epochs(s["teacher_epochs"])
    train = dict(lr=0.05, device=ctx.device, progress=ctx.progress)
    kd_cfg = KDConfig(temperature=cfg.temperature, alpha=cfg.alpha)

    def new(spec: tuple[str, float], outputs: int, seed: int) -> nn.Module:
        seed_everything(seed)
        return build_model(spec[0], outputs, data.input_shape, width=spec[1])

    acc: dict[str, list[float]] = {}
    stats: dict[str, list[float]] = {}
    for seed in ctx.seeds:
        teachers = {}
        for name, weight in (("teacher", cfg.aux_weight), ("teacher_no_aux", 0.0)):
            task = _SubclassTeacher(
                new(s["teacher"], cfg.num_classes * cfg.subclasses, seed), replace(cfg, aux_weight=weight)
            )
            fit(task, task.parameters(), data, epochs=teacher_epochs, batch_size=128, seed=seed, **train)
            acc.setdefault(name, []).append(evaluate(task, data))
            with torch.no_grad():
                assignment = task.model.eval()(data.x_test.to(ctx.device)).argmax(dim=-1).cpu()  # invented subclass
            usage = torch.bincount(assignment, minlength=cfg.num_classes * cfg.subclasses).float() / len(assignment)
            entropy = -(usage * usage.clamp_min(1e-12).log()).sum() / torch.log(torch.tensor(float(len(usage))))
            stats.setdefault(f"{name}_ari", []).append(adjusted_rand_score(digits.y_test.numpy(), assignment.numpy()))
            stats.setdefault(f"{name}_entropy", []).append(float(entropy))
            teachers[name] = task
        students: dict[str, tuple[nn.Module, nn.Module]] = {}
        model = new(s["student"], cfg.num_classes, seed)
        students["student"] = (model, Supervised(model))
        model = new(s["student"], cfg.num_classes, seed)
        students["student_kd"] = (model, KD(model, teachers["teacher"], kd_cfg))
        for name, teacher in (("student_subclass", "teacher"), ("student_subclass_no_aux", "teacher_no_aux")):
            model = new(s["student"], cfg.num_classes, seed)
            students[name] = (model, SubclassDistillation(model, teachers[teacher].model, cfg))
        for name, (model, task) in students.items():
            fit(task, model.parameters(), transfer, epochs=epochs, batch_size=64, seed=seed, **train)
            acc.setdefault(name, []).append(evaluate(task, data))

    t_name, s_name = (f"{m[0]} w={m[1]:g}" for m in (s["teacher"], s["student"]))
    t_cols = model_row(build_model(s["teacher"][0], 10, data.input_shape, s["teacher"][1]), data.input_shape)
    s_cols = model_row(build_model(s["student"][0], 2, data.input_shape, s["student"][1]), data.input_shape)
    sub_cols = model_row(build_model(s["student"][0], 10, data.input_shape, s["student"][1]), data.input_shape)
    mean_stats = {k: sum(v) / len(v) for k, v in stats.items()}
    rows = [
        dict(
            name="teacher",
            label=f"Teacher ({t_name}, 2x{cfg.subclasses}) + aux",
            role="teacher",
            **t_cols,
            extra={"ari": mean_stats["teacher_ari"], "usage_entropy": mean_stats["teacher_entropy"]},
        ),
        dict(
            name="teacher_no_aux",
            label="Teacher without aux loss",
            role="ablation",
            **t_cols,
            extra={"ari": mean_stats["teacher_no_aux_ari"], "usage_entropy": mean_stats["teacher_no_aux_entropy"]},
        ),
        dict(name="student", label=f"Student alone ({s_name})", role="baseline", **s_cols),
        dict(name="student_kd", label="Student + 2-class KD", role="ablation", **s_cols),
        dict(name="student_subclass", label="Student + subclass KD", role="method", **sub_cols),
        dict(name="student_subclass_no_aux", label="Subclass KD, teacher w/o aux", role="ablation", **sub_cols),
    ]
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    figure = save_accuracy_plot(rows, ctx, "subclass_muller2020", title=f"Subclass distillation, {data.name} 2x5")
    m = mean_stats
    students_text = (
        f"student alone {mean['student']:.2f}%, 2-class KD {mean['student_kd']:.2f}%, subclass KD "
        f"{mean['student_subclass']:.2f}% (teacher without aux: {mean['student_subclass_no_aux']:.2f}%)"
    )
    return {
        "id": "subclass_muller2020",
        "protocol": {
            "dataset": f"{data.name} 2x5 (digits 0-4 vs 5-9)",
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"binary labels only; teachers {t_name} with 2x{cfg.subclasses} subclass logits trained "
            f"{teacher_epochs} epochs on all {data.n_train} examples (aux weight {cfg.aux_weight}, T_a "
            f"{cfg.aux_temperature}, or 0); students {s_name} trained {epochs} epochs on a {n_transfer}-example "
            f"transfer set; KD and subclass KD with T={cfg.temperature}, alpha={cfg.alpha}; SGD momentum 0.9, "
            "cosine lr 0.05; ARI and usage entropy of the teacher's argmax subclass on the test set.",
        },
        "rows": rows,
        "claim": {
            "text": "On a binary task, distilling the teacher's invented subclass probabilities beats ordinary "
            "distillation of the two class probabilities.",
            "reproduced": beats(acc["student_subclass"], acc["student_kd"]),
            "evidence": students_text + f", mean of {len(ctx.seeds)} seed(s).",
        },
        "answers": [
            {
                "question": "How are the subclasses created?",
                "answer": "Nobody defines them: the teacher has s logits per class, trained only through the "
                "log-sum-exp class loss, and the auxiliary loss is meant to spread the examples over them. The "
                f"invented subclasses matched the hidden digits with an adjusted Rand index of {m['teacher_ari']:.2f} "
                f"(without the auxiliary loss {m['teacher_no_aux_ari']:.2f}).",
                "evidence": f"ARI between the teacher's argmax subclass and the digit on the test set: "
                f"{m['teacher_ari']:.3f} with aux, {m['teacher_no_aux_ari']:.3f} without (0 = chance, 1 = identical).",
            },
            {
                "question": "What does the auxiliary loss do?",
                "answer": "It is meant to stop the teacher from collapsing each class onto one subclass, by "
                "rewarding examples whose batch-normalised subclass logits differ. At our scale it "
                + ("spread" if m["teacher_entropy"] > m["teacher_no_aux_entropy"] else "did not spread")
                + f" the examples over more subclasses (usage entropy {m['teacher_entropy']:.2f} with it vs "
                f"{m['teacher_no_aux_entropy']:.2f} without; 1 = all used equally) and the subclass-distilled "
                + ("student gained" if mean["student_subclass"] > mean["student_subclass_no_aux"] else "student lost")
                + f" {abs(mean['student_subclass'] - mean['student_subclass_no_aux']):.2f} points.",
                "evidence": students_text + ".",
            },
        ],
        "figures": [figure],
    }
