"""The small-scale reproduction of Hinton, Vinyals & Dean (2015): teacher, student alone and student + KD on
MNIST-1D (CIFAR-100 for `--full`), KD from weak teacher snapshots, and the open-question experiments."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from implementations.distillation._base import CachedTeacher
from implementations.distillation.kd_hinton2015 import KD, Config

if TYPE_CHECKING:
    from implementations._harness import RunContext


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run kd_hinton2015`
# ---------------------------------------------------------------------------------------------------------------------

#: Per-profile setting: MNIST-1D on a CPU for quick/default, CIFAR-100 resnet32x4 -> resnet8x4 (mdistiller) for full.
SETTINGS = {
    "small": dict(dataset="mnist1d", teacher=("cnn1d", 1.0), student=("mlp", 0.25), epochs=30, lr=0.05, batch_size=128),
    "full": dict(
        dataset="cifar100", teacher=("resnet32x4", 1.0), student=("resnet8x4", 1.0), epochs=240, lr=0.05, batch_size=64
    ),
}


#: The registry's wording of the open question the weak-teacher experiment answers (the site matches on it).
OPEN_QUESTION = "Does distillation actually need a good teacher, or is a good soft label enough?"


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher, student alone, student + KD, and KD from early snapshots of the teacher, over `ctx.seeds`.

    The weak teachers are the same teacher run snapshotted after 1/30 and 1/10 of its epochs, which answers the
    open question "does KD need a good teacher?". Returns the results dict (without environment and wall time,
    which the runner adds).
    """
    from implementations._data import augment_crop_flip, load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot

    s = SETTINGS["full" if ctx.profile == "full" else "small"]
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs = ctx.epochs(s["epochs"])
    snapshots = sorted({max(1, epochs // 30), max(1, epochs // 10)})  # teacher epochs of the weak teachers
    augment = augment_crop_flip if data.x_train.dim() == 4 and ctx.profile == "full" else None
    cuda = ctx.device.startswith("cuda")
    train = dict(
        epochs=epochs,
        lr=s["lr"],
        batch_size=s["batch_size"],
        device=ctx.device,
        progress=ctx.progress,
        augment=augment,
        bf16=cuda,
        channels_last=cuda and data.x_train.dim() == 4,
    )

    def new(spec: tuple[str, float]) -> nn.Module:
        return build_model(spec[0], data.num_classes, data.input_shape, width=spec[1])

    acc: dict[str, list[float]] = {}
    for seed in ctx.seeds:
        seed_everything(seed)
        teacher, states = new(s["teacher"]), {}

        def keep(epoch: int, _entry: dict, teacher: nn.Module = teacher, states: dict = states) -> None:
            if epoch in snapshots:
                states[epoch] = copy.deepcopy(teacher.state_dict())

        fit(
            Supervised(teacher),
            teacher.parameters(),
            data,
            seed=seed,
            on_epoch_end=keep,
            extra_state=states,
            checkpoint=ctx.checkpoint(f"seed{seed}_teacher"),
            **train,
        )
        # without augmentation every KD student sees the same inputs: compute each teacher's outputs once
        cached = (lambda t: CachedTeacher(t, data.x_train)) if augment is None else (lambda t: t)  # noqa: E731
        teachers: dict[str, nn.Module | None] = {"student": None, "student_kd": cached(teacher)}
        acc.setdefault("teacher", []).append(evaluate(teacher, data))
        for epoch in snapshots:
            weak = new(s["teacher"]).to(ctx.device)
            weak.load_state_dict(states[epoch])
            acc.setdefault(f"teacher_ep{epoch}", []).append(evaluate(weak, data))
            teachers[f"kd_teacher_ep{epoch}"] = cached(weak)
        for name, teacher_used in teachers.items():
            seed_everything(seed)  # every student starts from the same initialisation
            student = new(s["student"])
            task = Supervised(student) if teacher_used is None else KD(student, teacher_used)
            fit(task, student.parameters(), data, seed=seed, checkpoint=ctx.checkpoint(f"seed{seed}_{name}"), **train)
            acc.setdefault(name, []).append(evaluate(student, data))
        if ctx.profile != "full":  # the open-question experiments (small profile only)
            question_runs(seed, teachers["student_kd"], data, s, train, new, acc)

    cfg = Config()
    kd_extra = {"temperature": cfg.temperature, "alpha": cfg.alpha}
    teacher_cols = model_row(new(s["teacher"]), data.input_shape)
    student_cols = model_row(new(s["student"]), data.input_shape)
    t_name, s_name = f"{s['teacher'][0]} w={s['teacher'][1]:g}", f"{s['student'][0]} w={s['student'][1]:g}"
    rows = [
        dict(name="teacher", label=f"Teacher ({t_name})", role="teacher", **teacher_cols),
        *[
            dict(name=f"teacher_ep{e}", label=f"Teacher after {e} ep", role="ablation", **teacher_cols)
            for e in snapshots
        ],
        dict(name="student", label=f"Student alone ({s_name})", role="baseline", **student_cols),
        dict(name="student_kd", label="Student + KD", role="method", **student_cols, extra=kd_extra),
        *[
            dict(
                name=f"kd_teacher_ep{e}",
                label=f"Student + KD (teacher {e} ep)",
                role="ablation",
                **student_cols,
                extra={**kd_extra, "teacher_epochs": float(e)},
            )
            for e in snapshots
        ],
    ]
    if ctx.profile != "full":
        rows += question_rows(s, student_cols, model_row(new(QUESTIONS["compact"]), data.input_shape), acc)
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    figure = save_accuracy_plot(rows, ctx, "kd_hinton2015", title=f"KD on {data.name} ({len(ctx.seeds)} seeds)")

    weak = [(e, mean[f"teacher_ep{e}"], mean[f"kd_teacher_ep{e}"]) for e in snapshots]
    helped = [w for w in weak if beats(acc[f"kd_teacher_ep{w[0]}"], acc["student"])]  # paired-seed rule
    hurt = [w for w in weak if w not in helped]
    answer = "Partly: " if helped and hurt else ("No: " if helped else "Yes, in this setting: ")
    if helped:
        answer += f"weak teachers ({', '.join(f'{t:.1f}%' for _, t, _ in helped)}) still helped the student"
    if hurt:
        answer += "; " if helped else ""
        answer += f"teachers at {', '.join(f'{t:.1f}%' for _, t, _ in hurt)} gave no gain beyond seed noise, or hurt"
    answer += f" (student alone {mean['student']:.1f}%, fully trained teacher {mean['teacher']:.1f}%)."
    if "kd_smoothed" in acc:  # the entropy-matched label-smoothing control (no teacher knowledge at all)
        ls_word = "beats" if beats(acc["student_kd"], acc["kd_smoothed"]) else "does not beat"
        answer += (
            f" A label-smoothing target of the same entropy as the trained teacher's, with no teacher knowledge, gives "
            f"{mean['kd_smoothed']:.1f}%: the trained teacher {ls_word} it (paired-seed `beats` rule), so "
            + (
                "the teacher's soft labels carry more than a well-shaped smoothing does."
                if ls_word == "beats"
                else "a well-shaped soft label may be enough here."
            )
        )
    evidence = "; ".join(f"teacher after {e} ep ({t:.2f}%) -> student {k:.2f}%" for e, t, k in weak)
    evidence += f"; trained teacher ({mean['teacher']:.2f}%) -> student {mean['student_kd']:.2f}%"
    evidence += f"; no KD {mean['student']:.2f}%."
    if "kd_smoothed" in acc:
        evidence += f" Entropy-matched smoothing (KD's T and weights) {mean['kd_smoothed']:.2f}%."
    return {
        "id": "kd_hinton2015",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"teacher {t_name}, student {s_name}; SGD momentum 0.9, cosine lr {s['lr']}, batch "
            f"{s['batch_size']}, wd 5e-4, same epochs for all; T={cfg.temperature}, alpha={cfg.alpha}; "
            f"weak teachers = the teacher run after {', '.join(map(str, snapshots))} of {epochs} epochs"
            + (
                f"; open-question runs (KD without T^2, entropy-matched smoothing at KD's T and weights, compact "
                f"{QUESTIONS['compact'][0]} w={QUESTIONS['compact'][1]:g} alone/KD for {QUESTIONS['compact_epochs']} "
                f"epochs, MLP alone/KD on a {QUESTIONS['fraction']:.0%} subset for {QUESTIONS['small_epochs']} "
                f"epochs) took {acc['_question_seconds'][0]:.0f} s of the run"
                if "_question_seconds" in acc
                else ""
            ),
        },
        "rows": rows,
        "claim": {
            "text": "A student trained on the teacher's soft targets beats the same student trained on hard "
            "labels alone.",
            "reproduced": beats(acc["student_kd"], acc["student"]),
            "evidence": f"student + KD {mean['student_kd']:.2f}% vs student alone {mean['student']:.2f}% "
            f"(teacher {mean['teacher']:.2f}%), mean over {len(ctx.seeds)} seed(s) on {data.name}.",
        },
        "answers": [{"question": OPEN_QUESTION, "answer": answer, "evidence": evidence}]
        + ([] if ctx.profile == "full" else question_answers(acc, mean)),
        "figures": [figure],
    }


# ---------------------------------------------------------------------------------------------------------------------
# Open-question experiments (small profile): each seed reuses that seed's teacher and the main rows' students
# ---------------------------------------------------------------------------------------------------------------------

#: Settings of the extra runs.
QUESTIONS = dict(
    fraction=0.05,  # share of the training set for the regulariser test (the paper used 3% of its speech data)
    small_epochs=100,  # epochs on that subset (about 200 steps)
    compact=("cnn1d", 0.125),  # a compact net built for the task (convolutions), smaller than the MLP student
    compact_epochs=10,  # its own pair (alone / KD) runs shorter, to fit the CPU budget
)
Q_SIGNAL = "Is the improvement due to distillation itself, or simply to the extra (soft) supervision and more data?"
Q_T2 = "Why scale the soft-target term by T^2, and how should the hard-label and soft-label losses be weighted?"
Q_REG = "Do soft targets act mainly as a regulariser?"
Q_WHY = "Why do soft targets work at all?"
Q_COMPACT = (
    "Is distillation mainly a remedy for over-parameterisation, so that an already well-designed compact network "
    "gains little?"
)


def question_runs(
    seed: int, teacher: nn.Module, data: Any, s: dict, train: dict, new: Any, acc: dict[str, list[float]]
) -> None:
    """One seed's extra students: no $T^2$, entropy-matched smoothing, a compact CNN, and 5% of the data.

    Their wall time is added to `acc["_question_seconds"]`.
    """
    import time
    from dataclasses import replace

    from implementations._harness import Supervised, evaluate, fit, seed_everything

    def run(name: str, spec: tuple[str, float], cfg: Config | None, subset: Any = data, **over: Any) -> None:
        seed_everything(seed)  # same initialisation as the main rows' student of this architecture
        student = new(spec)
        task = Supervised(student) if cfg is None else KD(student, teacher, cfg)
        fit(task, student.parameters(), subset, seed=seed, **{**train, **over})
        acc.setdefault(name, []).append(evaluate(student, data))
        if subset is not data:
            acc.setdefault(f"{name}_train", []).append(evaluate(student, subset, split="train"))

    start = time.perf_counter()
    run("kd_no_t2", s["student"], Config(t_squared=False))
    run("kd_smoothed", s["student"], Config(soft_target="smoothed"))
    run("compact", QUESTIONS["compact"], None, epochs=QUESTIONS["compact_epochs"])
    run("compact_kd", QUESTIONS["compact"], Config(), epochs=QUESTIONS["compact_epochs"])
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(data.n_train, generator=g)[: int(QUESTIONS["fraction"] * data.n_train)]
    small = replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])
    run("small_student", s["student"], None, small, epochs=QUESTIONS["small_epochs"])
    run("small_kd", s["student"], Config(), small, epochs=QUESTIONS["small_epochs"])
    acc.setdefault("_question_seconds", [0.0])[0] += time.perf_counter() - start


def question_rows(s: dict, student_cols: dict, compact_cols: dict, acc: dict[str, list[float]]) -> list[dict]:
    """Result rows of `question_runs` (accuracy is filled in by the caller)."""
    c_name = f"{QUESTIONS['compact'][0]} w={QUESTIONS['compact'][1]:g}"
    pct = f"{QUESTIONS['fraction']:.0%}"

    def gap(name: str) -> dict[str, float]:
        train_acc = sum(acc[f"{name}_train"]) / len(acc[f"{name}_train"])
        test_acc = sum(acc[name]) / len(acc[name])
        return {"train_acc": train_acc, "train_test_gap": train_acc - test_acc}

    return [
        dict(name="kd_no_t2", label="Student + KD without T^2", role="ablation", **student_cols),
        dict(name="kd_smoothed", label="Student + entropy-matched smoothing", role="ablation", **student_cols),
        dict(
            name="compact",
            label=f"Compact CNN alone ({c_name}, {QUESTIONS['compact_epochs']} ep)",
            role="ablation",
            **compact_cols,
        ),
        dict(
            name="compact_kd",
            label=f"Compact CNN + KD ({QUESTIONS['compact_epochs']} ep)",
            role="ablation",
            **compact_cols,
        ),
        dict(
            name="small_student",
            label=f"Student alone, {pct} of data",
            role="ablation",
            **student_cols,
            extra=gap("small_student"),
        ),
        dict(
            name="small_kd",
            label=f"Student + KD, {pct} of data",
            role="ablation",
            **student_cols,
            extra=gap("small_kd"),
        ),
    ]


def question_answers(acc: dict[str, list[float]], mean: dict[str, float]) -> list[dict[str, str]]:
    """Answers from the paired-seed `beats` rule on the extra rows."""
    from implementations._measure import beats, versus

    def cmp(a: str, b: str) -> str:
        return versus(acc[a], acc[b], digits=1)

    kd_vs_ls = beats(acc["student_kd"], acc["kd_smoothed"])
    ls_vs_alone = beats(acc["kd_smoothed"], acc["student"])
    signal = (
        ("Distillation itself, at this scale: " if kd_vs_ls else "Not shown at this scale: ")
        + f"KD {cmp('student_kd', 'kd_smoothed')} a label-smoothing target of the same entropy per example (the "
        f"extra soft supervision without the teacher's class similarities), which itself "
        f"{cmp('kd_smoothed', 'student')} the student alone. The transfer set is the training set, so 'more data' "
        "was not tested."
    )
    no_t2 = cmp("student_kd", "kd_no_t2")
    t2 = (
        f"With T=4 and weights 0.9/0.1, keeping T^2 {no_t2} dropping it. Without T^2 the soft term's gradients are "
        "16 times smaller, so the hard-label term dominates; this shows the scaling matters at a fixed mixing "
        "weight, but we did not sweep the weight or T to see whether the best weight drifts."
    )
    train_acc = {n: sum(acc[f"{n}_train"]) / len(acc[f"{n}_train"]) for n in ("small_student", "small_kd")}
    gaps = {n: train_acc[n] - mean[n] for n in train_acc}
    test_win = beats(acc["small_kd"], acc["small_student"])
    smaller_gap = gaps["small_kd"] < gaps["small_student"] - 1.0  # at least one point less overfitting
    reg = (
        (
            "Yes, at this scale: "
            if test_win and smaller_gap
            else "Only partly at this scale: "
            if test_win
            else "Not shown at this scale: "
        )
        + f"on {QUESTIONS['fraction']:.0%} of the training data KD {cmp('small_kd', 'small_student')} hard labels, "
        f"with a train-test gap of {gaps['small_kd']:.1f} points against {gaps['small_student']:.1f}"
        + (
            "; both students fit their small training set, so soft targets raised test accuracy without "
            "closing the gap."
            if test_win and not smaller_gap
            else "."
        )
    )
    why = (
        f"Soft targets carry more than their entropy here: KD {cmp('student_kd', 'kd_smoothed')} entropy-matched "
        "label smoothing, so the relative probabilities of the wrong classes matter"
        if kd_vs_ls
        else f"We cannot separate the two intuitions here: KD {cmp('student_kd', 'kd_smoothed')} entropy-matched label "
        "smoothing, so the wrong-class structure is not shown to add to the higher entropy"
    ) + (", and smoothing alone also helps." if ls_vs_alone else ".")
    gain_mlp, gain_cnn = mean["student_kd"] - mean["student"], mean["compact_kd"] - mean["compact"]
    compact = (
        f"KD {cmp('student_kd', 'student')} the MLP student alone, and {cmp('compact_kd', 'compact')} the compact "
        f"CNN ({QUESTIONS['compact'][0]} w={QUESTIONS['compact'][1]:g}, fewer parameters, built for the task)"
        + (
            ": the well-designed compact net gains less."
            if gain_cnn < gain_mlp
            else ": the compact net gains at least as much, so KD is not only a remedy for a poorly designed student."
        )
        + " This tests design, not over-parameterisation of a large net; pruning and quantisation were not tested."
    )
    ev = {
        Q_SIGNAL: f"student {mean['student']:.2f}%, KD {mean['student_kd']:.2f}%, entropy-matched smoothing "
        f"{mean['kd_smoothed']:.2f}%",
        Q_T2: f"KD with T^2 {mean['student_kd']:.2f}%, without {mean['kd_no_t2']:.2f}%, student alone "
        f"{mean['student']:.2f}%",
        Q_REG: f"{QUESTIONS['fraction']:.0%} subset: hard labels test {mean['small_student']:.2f}% / train "
        f"{train_acc['small_student']:.2f}%, KD test {mean['small_kd']:.2f}% / train {train_acc['small_kd']:.2f}%",
        Q_WHY: f"KD {mean['student_kd']:.2f}%, entropy-matched smoothing {mean['kd_smoothed']:.2f}%, student alone "
        f"{mean['student']:.2f}%",
        Q_COMPACT: f"MLP student {mean['student']:.2f}% -> KD {mean['student_kd']:.2f}% ({gain_mlp:+.2f}); compact CNN "
        f"{mean['compact']:.2f}% -> KD {mean['compact_kd']:.2f}% ({gain_cnn:+.2f})",
    }
    texts = {Q_SIGNAL: signal, Q_T2: t2, Q_REG: reg, Q_WHY: why, Q_COMPACT: compact}
    return [
        {"question": q, "answer": texts[q], "evidence": ev[q] + " (paired over seeds, `beats` rule)."} for q in texts
    ]
