r"""Improved Knowledge Distillation via Teacher Assistant (Mirzadeh et al., AAAI 2020).

Paper: [arXiv:1902.03393](https://arxiv.org/abs/1902.03393) · notes: `papers/takd_mirzadeh2020.md`

Each step of the path $\text{teacher} \to \text{TA}_1 \to \dots \to \text{TA}_k \to \text{student}$ is Hinton's KD
from the previous model $z_t$ into the next one $z_s$:

$$
\mathcal{L} = (1 - \lambda)\, \mathcal{H}\big(y, \mathrm{softmax}(z_s)\big)
    + \lambda\, T^2\, \mathrm{KL}\big(\mathrm{softmax}(z_t / T) \,\Vert\, \mathrm{softmax}(z_s / T)\big).
$$

The paper's rule of thumb picks the TA whose accuracy (trained alone) is closest to the midpoint of the teacher's
and the student's, $\tfrac12 (\mathrm{acc}_T + \mathrm{acc}_S)$, rather than the network of middle size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation._base import Distiller
from implementations.distillation.kd_hinton2015 import kd_loss

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["TAKD", "Config", "distill_path", "midpoint_assistant", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of each KD step (the paper tunes them per step with NNI; these are the common defaults)."""

    temperature: float = 4.0  # $T$
    kd_weight: float = 0.9  # $\lambda$


def midpoint_assistant(teacher_accuracy: float, student_accuracy: float, candidates: dict[str, float]) -> str:
    r"""The candidate whose stand-alone accuracy is nearest $\tfrac12(\mathrm{acc}_T + \mathrm{acc}_S)$.

    Args:
        teacher_accuracy: Accuracy of the teacher trained alone.
        student_accuracy: Accuracy of the student trained alone.
        candidates: Name -> accuracy of each TA candidate trained alone.
    """
    target = 0.5 * (teacher_accuracy + student_accuracy)
    return min(candidates, key=lambda name: abs(candidates[name] - target))


class TAKD(Distiller):
    """One KD step of a teacher-assistant path: `teacher` is the previous model on the path (teacher or a TA)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and the weighted `ce` and `kd` terms."""
        logits_s = self.student(x)  # (B, K)
        with torch.no_grad():
            logits_t = self.teacher(x)  # (B, K)
        return logits_s, {
            "ce": (1 - self.cfg.kd_weight) * F.cross_entropy(logits_s, y),
            "kd": self.cfg.kd_weight * kd_loss(logits_s, logits_t, self.cfg.temperature),
        }


def distill_path(
    teacher: nn.Module,
    path: Sequence[Callable[[], nn.Module]],
    train: Callable[[nn.Module], None],
    cfg: Config | None = None,
) -> list[nn.Module]:
    """Distil along `teacher -> path[0]() -> path[1]() -> ...`, each model trained by `train(TAKD(model, prev))`.

    Args:
        teacher: The trained teacher.
        path: Builders of the TAs and, last, of the student.
        train: Trains one task in place (e.g. a closure around `_harness.fit`).
        cfg: KD settings of every step.

    Returns:
        The trained models of the path, student last.
    """
    trained, previous = [], teacher
    for build in path:
        model = build()
        train(TAKD(model, previous, cfg))
        trained.append(model)
        previous = model
    return trained


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run takd_mirzadeh2020`
# ---------------------------------------------------------------------------------------------------------------------

#: MNIST-1D: a chain of width-scaled CNN1d; widths are multiples of the teacher's (32, 64, 64).
SMALL = dict(dataset="mnist1d", teacher=1.0, assistants=(0.5, 0.25), student=0.125, epochs=10, lr=1e-2, batch_size=256)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Student alone, direct KD, KD through each single TA and through the two-TA chain, over `ctx.seeds`."""
    return _reproduce(ctx)


def _tag(width: float) -> str:
    return f"{width:g}".replace(".", "p")  # row names allow [a-z0-9_] only


def _reproduce(ctx: RunContext) -> dict[str, Any]:
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot

    s = SMALL
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs = ctx.epochs(s["epochs"])
    opts = dict(lr=s["lr"], batch_size=s["batch_size"], device=ctx.device, progress=False, optimizer="adamw")

    def net(width: float) -> nn.Module:
        return build_model("cnn1d", data.num_classes, data.input_shape, width=width)

    def trainer(seed: int) -> Callable[[nn.Module], None]:
        def train(task: nn.Module) -> None:
            params = task.trainable_parameters() if isinstance(task, Distiller) else task.parameters()
            fit(task, params, data, epochs=epochs, seed=seed, **opts)

        return train

    # Shared (seed 0): the teacher, each TA trained alone (for the midpoint rule) and distilled from the teacher,
    # and the second TA distilled from the first (the two-TA chain).
    seed_everything(0)
    teacher = net(s["teacher"])
    trainer(0)(Supervised(teacher))
    big_ta, small_ta = s["assistants"]
    alone, assistants = {}, {}
    for width in s["assistants"]:
        seed_everything(0)
        model = net(width)
        trainer(0)(Supervised(model))
        alone[width] = evaluate(model, data)
        seed_everything(0)
        assistants[(width,)] = distill_path(teacher, [lambda w=width: net(w)], trainer(0))[-1]
    seed_everything(0)
    assistants[(big_ta, small_ta)] = distill_path(assistants[(big_ta,)], [lambda: net(small_ta)], trainer(0))[-1]

    paths = {"student_kd": (), **{f"student_ta{_tag(w)}": (w,) for w in s["assistants"]}}
    paths[f"student_ta{_tag(big_ta)}_ta{_tag(small_ta)}"] = (big_ta, small_ta)
    acc: dict[str, list[float]] = {"teacher": [evaluate(teacher, data)]}  # one shared teacher: a single value
    for width in s["assistants"]:
        acc[f"ta{_tag(width)}_alone"] = [alone[width]]  # one run per TA, shared by all seeds
    for seed in ctx.seeds:
        seed_everything(seed)
        student = net(s["student"])
        trainer(seed)(Supervised(student))
        acc.setdefault("student", []).append(evaluate(student, data))
        for name, path in paths.items():
            seed_everything(seed)  # every student starts from the same initialisation
            previous = assistants[path] if path else teacher
            student = distill_path(previous, [lambda: net(s["student"])], trainer(seed))[-1]
            acc.setdefault(name, []).append(evaluate(student, data))

    m = {name: accuracy_stats(values)["mean"] for name, values in acc.items()}
    width_of = {f"student_ta{_tag(w)}": w for w in s["assistants"]}
    rule_name = midpoint_assistant(m["teacher"], m["student"], {name: alone[w] for name, w in width_of.items()})
    rule = width_of[rule_name]
    cols = {w: model_row(net(w), data.input_shape) for w in (s["teacher"], *s["assistants"], s["student"])}
    cost = {"student": 1, "student_kd": 2, f"student_ta{_tag(big_ta)}": 3, f"student_ta{_tag(small_ta)}": 3}
    cost[f"student_ta{_tag(big_ta)}_ta{_tag(small_ta)}"] = 4
    rows = [
        dict(name="teacher", label=f"Teacher cnn1d w={s['teacher']:g}", role="teacher", **cols[s["teacher"]]),
        *[
            dict(name=f"ta{_tag(w)}_alone", label=f"TA w={w:g} alone", role="ablation", **cols[w])
            for w in s["assistants"]
        ],
        dict(name="student", label=f"Student w={s['student']:g} alone", role="baseline", **cols[s["student"]]),
        dict(name="student_kd", label="Student, direct KD", role="baseline", **cols[s["student"]]),
        *[
            dict(
                name=name,
                label="Student via TA " + " -> ".join(f"w={w:g}" for w in path),
                role="method" if name == rule_name else "ablation",
                **cols[s["student"]],
                extra={"assistants": float(len(path)), "trainings_on_path": float(cost[name])},
            )
            for name, path in paths.items()
            if path
        ],
    ]
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    figure = save_accuracy_plot(rows, ctx, "takd_mirzadeh2020", title=f"Teacher assistants on {data.name}")

    paired = ", ".join(f"{b - a:+.1f}" for a, b in zip(acc["student_kd"], acc[rule_name], strict=True))
    single = {name: m[name] for name, path in paths.items() if len(path) == 1}
    best = max(single, key=single.get)
    midpoint = 0.5 * (m["teacher"] + m["student"])
    a1 = (
        f"The accuracy-midpoint rule ({midpoint:.1f}%) picks the TA of width {rule:g} (alone "
        f"{alone[rule]:.1f}%); the best single TA in our sweep was width {width_of[best]:g} "
        f"({m[best]:.1f}% for the student), so the rule "
        + ("picked the best TA here." if best == rule_name else "did not pick the best TA here.")
    )
    ev1 = "; ".join(
        f"TA w={w:g}: alone {alone[w]:.2f}%, student via it {m[f'student_ta{_tag(w)}']:.2f}%" for w in alone
    )
    ev1 += f"; teacher {m['teacher']:.2f}%, student alone {m['student']:.2f}%, direct KD {m['student_kd']:.2f}%"
    chain = f"student_ta{_tag(big_ta)}_ta{_tag(small_ta)}"
    by_count = {0: m["student_kd"], 1: m[best], 2: m[chain]}
    a2 = (
        f"At our scale {max(by_count, key=by_count.get)} TA(s) gave the best student: 0 TAs "
        f"{by_count[0]:.1f}%, best single TA {by_count[1]:.1f}%, two TAs {by_count[2]:.1f}%; each extra TA costs one "
        "more full training run."
    )
    ev2 = (
        f"direct KD {m['student_kd']:.2f}% (2 trainings), via TA w={width_of[best]:g} {m[best]:.2f}% "
        f"(3), via TAs {big_ta:g} -> {small_ta:g} {m[chain]:.2f}% (4)"
    )
    return {
        "id": "takd_mirzadeh2020",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"cnn1d of widths {s['teacher']:g} (teacher), {', '.join(f'{w:g}' for w in s['assistants'])} "
            f"(TAs), {s['student']:g} (student); teacher and TAs trained once (seed 0) and shared, students over the "
            f"seeds; every step KD with T={Config().temperature:g}, lambda={Config().kd_weight:g}; AdamW lr "
            f"{s['lr']}, batch {s['batch_size']}, cosine, {epochs} epochs per training",
        },
        "rows": rows,
        "claim": {
            "text": "Distilling through a teacher assistant of intermediate size gives a better small student than "
            "distilling directly from the large teacher.",
            "reproduced": beats(acc[rule_name], acc["student_kd"]),
            "evidence": f"via the TA the midpoint rule picks (w={rule:g}) {m[rule_name]:.2f}% vs direct KD "
            f"{m['student_kd']:.2f}% (per-seed differences {paired}; student alone {m['student']:.2f}%, teacher "
            f"{m['teacher']:.2f}%), mean over {len(ctx.seeds)} seed(s) on {data.name}.",
        },
        "answers": [
            {"question": "How should the teacher assistant be chosen?", "answer": a1, "evidence": ev1},
            {"question": "How many teacher assistants should be used?", "answer": a2, "evidence": ev2},
        ],
        "figures": [figure],
    }
