"""The small-scale reproduction of Subclass Distillation (Müller et al., 2020): MNIST-1D as a two-class task
whose digits are the hidden subclasses; teachers with and without the auxiliary loss, students alone, with class KD
and with subclass KD."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from implementations.distillation.subclass_muller2020 import Config, SubclassDistillation, _SubclassTeacher

if TYPE_CHECKING:
    from implementations._harness import RunContext


#: MNIST-1D as a binary task (digits 0-4 vs 5-9, "MNIST-1D-2x5"); the student learns from a limited transfer set.
SETTING = dict(
    dataset="mnist1d", teacher=("cnn1d", 0.5), student=("cnn1d", 0.25), transfer=1000, teacher_epochs=8, epochs=12
)


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
