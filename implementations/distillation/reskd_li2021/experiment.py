"""The small-scale reproduction of Li et al. (2021) on MNIST-1D: a KD base student, chains of up to three
res-students, adaptive inference, and two controls (boosting and a FLOPs-matched single student)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from implementations.distillation.reskd_li2021 import Config, ResKD, adaptive_exit, gap_energy, stop_index

if TYPE_CHECKING:
    from implementations._harness import RunContext


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run reskd_li2021`
# ---------------------------------------------------------------------------------------------------------------------

#: MNIST-1D: teacher cnn1d 16-32-32, base student 8-16-16, res-students 4-8-8, matched single student 10-20-20.
SETTINGS = dict(
    dataset="mnist1d",
    n_val=500,
    teacher=(16, 32, 32),
    student=(8, 16, 16),
    res_student=(4, 8, 8),
    matched=(10, 20, 20),
    max_res=3,
    teacher_epochs=8,
    epochs=6,
    lr=0.05,
    batch_size=128,
)
QUESTIONS = (
    "How many res-students are worth adding, and when should the chain stop?",
    "Is this different in kind from boosting or a teacher-assistant chain?",
)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher, KD base student, chains of up to 3 res-students, adaptive inference and two controls.

    The controls are a res-student fitted to the labels only (boosting) and a single KD student with about the
    FLOPs of a two-res-student chain. One teacher serves all seeds; every student is retrained for every seed, each
    for the same number of epochs.
    """
    from dataclasses import replace

    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, count_flops, count_params
    from implementations._models import CNN1d
    from implementations._runner import save_accuracy_plot

    s, cfg = SETTINGS, Config()
    full = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    n_val = min(s["n_val"], full.n_train // 5)
    data = replace(full, x_train=full.x_train[n_val:], y_train=full.y_train[n_val:])  # train on the rest
    x_val, y_val = full.x_train[:n_val], full.y_train[:n_val]  # held out: gap energy for the stopping rule
    epochs = ctx.epochs(s["epochs"])
    train = dict(epochs=epochs, lr=s["lr"], batch_size=s["batch_size"], device=ctx.device, progress=False)
    channels, length = data.input_shape

    def new(widths: tuple[int, ...]) -> nn.Module:
        return CNN1d(channels, length, data.num_classes, widths)

    def flops(widths: tuple[int, ...]) -> int:
        return count_flops(new(widths), torch.zeros(1, *data.input_shape))

    stage_flops = [flops(s["student"]) + k * flops(s["res_student"]) for k in range(s["max_res"] + 1)]
    acc: dict[str, list[float]] = {}
    chosen, adaptive_flops, energies_all, val_acc_all = [], [], [], []
    changed: list[int] = []  # per seed: test predictions where the adaptive exit differs from the chosen chain
    early: list[float] = []  # per seed: % of test inputs that exit before the last chosen stage
    # one teacher for all seeds (trained with the first seed): the seeds vary the students
    seed_everything(ctx.seeds[0])
    teacher = new(s["teacher"])
    teacher_train = {**train, "epochs": ctx.epochs(s["teacher_epochs"])}
    fit(Supervised(teacher), teacher.parameters(), data, seed=ctx.seeds[0], **teacher_train)
    acc["teacher"] = [evaluate(teacher, data)]
    teacher.eval()
    with torch.no_grad():
        teacher_val = teacher(x_val)
    for seed in ctx.seeds:
        seed_everything(seed)
        student = new(s["student"])
        task = ResKD(student, teacher, cfg=cfg)
        fit(task, task.trainable_parameters(), data, seed=seed, **train)
        acc.setdefault("student_kd", []).append(evaluate(task, data))
        init_res = new(s["res_student"]).state_dict()  # R_1 of ResKD and of the boosting control start alike
        for k in range(1, s["max_res"] + 1):
            res = new(s["res_student"])
            if k == 1:
                res.load_state_dict(init_res)
            task.add_res_student(res)
            fit(task, task.trainable_parameters(), data, seed=seed + 100 * k, **train)
            acc.setdefault(f"chain_{k}", []).append(evaluate(task, data))
        task.eval()
        with torch.no_grad():
            val_stages, test_stages = task.stage_logits(x_val), task.stage_logits(data.x_test)  # (S, N, K)
        energies = [gap_energy(teacher_val, z) for z in val_stages]
        k_star = stop_index(energies, cfg.min_decrease)
        chosen.append(k_star)
        energies_all.append(energies)
        val_acc_all.append([100.0 * float((z.argmax(-1) == y_val).float().mean()) for z in val_stages])
        acc.setdefault("reskd", []).append(
            100.0 * float((test_stages[k_star].argmax(-1) == data.y_test).float().mean())
        )
        pred, used = adaptive_exit(test_stages[: k_star + 1], stage_flops[: k_star + 1], cfg.confidence)
        acc.setdefault("reskd_adaptive", []).append(100.0 * float((pred == data.y_test).float().mean()))
        adaptive_flops.append(float(used.mean()))
        final_pred = test_stages[k_star].argmax(-1)  # what the full chosen chain predicts
        changed.append(int((pred != final_pred).sum()))  # predictions the early exit changes
        early.append(100.0 * float((used < stage_flops[k_star]).float().mean()))  # inputs that leave early
        # controls: a res-student fitted to the labels only (boosting), and a single student of matched cost
        boost = ResKD(task.student, teacher, cfg=cfg)
        res = new(s["res_student"])
        res.load_state_dict(init_res)
        boost.add_res_student(res)
        boost.use_teacher = False
        fit(boost, boost.trainable_parameters(), data, seed=seed + 100, **train)
        acc.setdefault("boost_1", []).append(evaluate(boost, data))
        seed_everything(seed)
        matched = ResKD(new(s["matched"]), teacher, cfg=cfg)
        fit(matched, matched.trainable_parameters(), data, seed=seed, **train)
        acc.setdefault("matched_kd", []).append(evaluate(matched, data))
        seed_everything(seed)  # the base student's architecture and initialisation, trained on labels alone
        alone = new(s["student"])
        fit(Supervised(alone), alone.parameters(), data, seed=seed, **train)
        acc.setdefault("student", []).append(evaluate(alone, data))

    def make(name: str, label: str, role: str, model_flops: float, params: float, **extra: float) -> dict[str, Any]:
        return dict(name=name, label=label, role=role, params=round(params), flops=round(model_flops), extra=extra)

    p_student, p_res = count_params(new(s["student"])), count_params(new(s["res_student"]))
    mean_k = sum(chosen) / len(chosen)
    chain_params = p_student + mean_k * p_res
    rows = [
        make("teacher", "Teacher (cnn1d 16-32-32)", "teacher", flops(s["teacher"]), count_params(new(s["teacher"]))),
        make("student", "Base student alone on labels (8-16-16)", "baseline", stage_flops[0], p_student),
        make("student_kd", "Base student S0 (KD, 8-16-16)", "baseline", stage_flops[0], p_student),
        *[make(f"chain_{k}", f"S0 + {k} res-student(s)", "ablation", stage_flops[k], p_student + k * p_res)
          for k in range(1, s["max_res"] + 1)],
        make("reskd", "ResKD (chain chosen by the gap rule)", "method",
             sum(stage_flops[k] for k in chosen) / len(chosen), chain_params, mean_res_students=mean_k),
        make("reskd_adaptive", "ResKD + adaptive inference", "method", sum(adaptive_flops) / len(adaptive_flops),
             chain_params, confidence=cfg.confidence, exited_early_pct=sum(early) / len(early),
             changed_predictions=sum(changed) / len(changed)),
        make("boost_1", "S0 + 1 res-student on labels only", "ablation", stage_flops[1], p_student + p_res),
        make("matched_kd", "Single KD student (10-20-20)", "baseline", flops(s["matched"]),
             count_params(new(s["matched"]))),
    ]  # fmt: skip
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    flops_of = {row["name"]: row["flops"] for row in rows}
    figure = save_accuracy_plot(rows, ctx, "reskd_li2021", title=f"ResKD on {data.name} ({len(ctx.seeds)} seeds)")

    share = 100.0 * flops_of["reskd_adaptive"] / flops_of["teacher"]
    reproduced = beats(acc["reskd_adaptive"], acc["student_kd"]) and flops_of["reskd_adaptive"] < flops_of["teacher"]
    mean_energy = [sum(e[k] for e in energies_all) / len(energies_all) for k in range(s["max_res"] + 1)]
    mean_val = [sum(v[k] for v in val_acc_all) / len(val_acc_all) for k in range(s["max_res"] + 1)]
    best_val = max(range(len(mean_val)), key=lambda k: mean_val[k])
    chain_acc = [mean["student_kd"]] + [mean[f"chain_{k}"] for k in range(1, s["max_res"] + 1)]
    q1 = (
        f"The gap rule kept {mean_k:.1f} res-students on average (per seed: {chosen}); held-out accuracy peaked at "
        f"{best_val} res-student(s), so the two criteria {'agree' if round(mean_k) == best_val else 'disagree'} here."
    )
    q1_evidence = (
        f"held-out gap energy E_0..E_{s['max_res']} = {', '.join(f'{e:.3f}' for e in mean_energy)}; test accuracy of "
        f"S0..S{s['max_res']} = {', '.join(f'{a:.2f}%' for a in chain_acc)}; held-out accuracy "
        f"{', '.join(f'{a:.2f}%' for a in mean_val)} (mean over seeds)."
    )
    teacher_gain, label_gain = mean["chain_1"] - mean["student_kd"], mean["boost_1"] - mean["student_kd"]
    q2 = "The additive form is gradient boosting on logits; what differs is the target. " + (
        "Here the teacher's residual gave a larger gain than fitting the labels alone."
        if teacher_gain > label_gain
        else "Here fitting the labels alone (plain boosting) did as well or better than the teacher's residual."
    )
    return {
        "id": "reskd_li2021",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"{n_val} training examples held out for the gap-energy stopping rule; one teacher cnn1d "
            f"{s['teacher']} ({teacher_train['epochs']} epochs, seed {ctx.seeds[0]}; the seeds vary the students), "
            f"base student {s['student']} distilled with KD (T={cfg.temperature}, alpha={cfg.alpha}) for {epochs} "
            f"epochs, up to {s['max_res']} res-students {s['res_student']} (fixed architecture instead of NAS), each "
            f"trained {epochs} epochs on alpha*MSE(residual) + (1-alpha)*CE with the chain frozen; stop when the "
            f"held-out gap energy shrinks by < {cfg.min_decrease:.0%}; adaptive exit at max softmax >= "
            f"{cfg.confidence}; SGD momentum 0.9, cosine lr {s['lr']}, batch {s['batch_size']}, wd 5e-4. FLOPs per "
            "example; the adaptive row's FLOPs are the test-set average.",
        },
        "rows": rows,
        "claim": {
            "text": "Adding res-students that learn the teacher-student residual improves the distilled student, and "
            "with sample-adaptive inference the chain needs only a fraction of the teacher's FLOPs.",
            "reproduced": reproduced,
            "evidence": f"ResKD adaptive {mean['reskd_adaptive']:.2f}% at {share:.1f}% of the teacher's FLOPs vs base "
            f"student {mean['student_kd']:.2f}% (alone on labels {mean['student']:.2f}%) and teacher "
            f"{mean['teacher']:.2f}%; fixed chain {mean['reskd']:.2f}%; single KD student of similar cost "
            f"{mean['matched_kd']:.2f}%; the adaptive exit sent {sum(early) / len(early):.1f}% of test inputs out "
            f"early and changed {changed} test predictions (per seed) against the full chain, so equal accuracy of "
            f"the two rows means early exits agreed with the chain ({len(ctx.seeds)} seed(s), paired-seed `beats`).",
        },
        "answers": [
            {"question": QUESTIONS[0], "answer": q1, "evidence": q1_evidence},
            {
                "question": QUESTIONS[1],
                "answer": q2,
                "evidence": f"S0 {mean['student_kd']:.2f}% -> +1 res-student on the teacher residual "
                f"{mean['chain_1']:.2f}%, +1 res-student on labels only {mean['boost_1']:.2f}% (same init and "
                "batches).",
            },
        ],
        "figures": [figure],
    }
