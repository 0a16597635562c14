"""The small-scale reproduction of Luo et al. (2016) on digit-pair "identities": one compact student trained on
labels, soft labels, all top neurons, and random, discriminative and selected subsets of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation._base import Distiller
from implementations.distillation.mobileid_luo2016 import (
    Config,
    NeuronSelectionKD,
    fisher_scores,
    select_neurons,
    selection_energy,
    top_hidden,
)

if TYPE_CHECKING:
    from implementations._harness import RunContext


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run mobileid_luo2016`
# ---------------------------------------------------------------------------------------------------------------------

#: A many-class stand-in for face identities: an "identity" is a pair of sklearn digits side by side (100 classes,
#: each the combination of two attributes). MLP teacher 128-128-128-100 (128 top neurons), MLP student 128-32-32
#: (a 16-unit student lost most of its ReLUs to the regression gradients early in training, seed-dependently).
SMALL = dict(
    n_pairs=3000, n_test_pairs=2000, teacher_width=0.5, student_width=1 / 8, teacher_epochs=30, epochs=16, lr=5e-3
)


def digit_pairs(n_train: int, n_test: int, seed: int = 0) -> Any:
    """`TensorData` of two random digits side by side, `(N, 1, 8, 16)`, labelled `10 a + b` (100 classes)."""
    from dataclasses import replace

    from implementations._data import load_dataset

    digits = load_dataset("digits")
    gen = torch.Generator().manual_seed(seed)

    def pairs(x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
        a, b = torch.randint(0, len(y), (2, n), generator=gen)
        return torch.cat([x[a], x[b]], dim=-1), 10 * y[a] + y[b]

    x_train, y_train = pairs(digits.x_train, digits.y_train, n_train)
    x_test, y_test = pairs(digits.x_test, digits.y_test, n_test)
    return replace(
        digits,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=100,
        input_shape=(1, 8, 16),
        name="digit pairs (100 classes)",
    )


QUESTIONS = (
    "Why do soft labels fail to converge for compact face students, and would neuron targets help in other many-class "
    "problems?",
    "How much does the graph-based neuron selection add over simply regressing all top-layer neurons?",
)


def _refit_readout(task: NeuronSelectionKD, data: Any, steps: int = 200) -> None:
    """Fit the linear readout afresh on the trained student's frozen predicted neurons (full batch, Adam).

    The paper likewise fits its verification model on the final features; the student is not changed.
    """
    task.eval()
    with torch.no_grad():
        features = task.regressor(top_hidden(task.student, data.x_train))  # (N, k)
    opt = torch.optim.Adam(task.readout.parameters(), lr=0.01)
    for _ in range(steps):
        loss = F.cross_entropy(task.readout(features), data.y_train)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher; one compact student trained on labels, soft labels, all neurons, random and selected neurons."""
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, count_params
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot
    from implementations.distillation.kd_hinton2015 import KD

    s, cfg = SMALL, Config()
    data = digit_pairs(ctx.n_train or s["n_pairs"], s["n_test_pairs"])
    epochs = ctx.epochs(s["epochs"])
    train = dict(batch_size=128, device="cpu", progress=False)

    def new(width: float) -> nn.Module:
        return build_model("mlp", data.num_classes, data.input_shape, width=width)

    seed_everything(0)  # one teacher shared by every student and seed
    teacher = new(s["teacher_width"])
    fit(Supervised(teacher), teacher.parameters(), data, epochs=ctx.epochs(s["teacher_epochs"]), lr=0.1, **train)
    teacher.eval().requires_grad_(False)
    with torch.no_grad():
        h_train = top_hidden(teacher, data.x_train)  # (N, H)
    k = cfg.num_selected
    selected = select_neurons(h_train, data.y_train, k, cfg.correlation_weight)
    unary = fisher_scores(h_train, data.y_train)
    correlation = torch.nan_to_num(torch.corrcoef(h_train.T), nan=0.0)
    top_fisher = unary.argsort(descending=True)[:k]  # the unary term alone (lambda = 0)

    acc: dict[str, list[float]] = {"teacher": [evaluate(teacher, data)]}  # one shared teacher: a single value
    curves: dict[str, list[float]] = {}  # test accuracy after a quarter of the epochs
    early = max(1, epochs // 4)
    sizes: dict[str, int] = {"teacher": count_params(teacher)}
    tasks = ("student_labels", "student_kd", "neurons_all", "neurons_random", "neurons_fisher", "neurons_selected")
    for seed in ctx.seeds:
        subsets = {
            "neurons_all": None,
            "neurons_random": torch.randperm(h_train.shape[1], generator=torch.Generator().manual_seed(seed))[:k],
            "neurons_fisher": top_fisher,
            "neurons_selected": selected,
        }
        for name in tasks:
            seed_everything(seed)  # same student initialisation for every variant
            student = new(s["student_width"])
            if name == "student_labels":
                task: nn.Module = Supervised(student)
            elif name == "student_kd":
                task = KD(student, teacher)
            else:
                task = NeuronSelectionKD(student, teacher, cfg, subsets[name], in_shape=data.input_shape)
            params = task.trainable_parameters() if isinstance(task, Distiller) else student.parameters()

            def at_early(epoch: int, _entry: dict, task: nn.Module = task, name: str = name) -> None:
                if epoch == early and name in ("student_kd", "neurons_selected"):
                    curves.setdefault(name, []).append(evaluate(task, data))

            fit(
                task,
                params,
                data,
                epochs=epochs,
                lr=s["lr"],
                seed=seed,
                optimizer="adamw",
                weight_decay=0.0,
                on_epoch_end=at_early,
                **train,
            )
            if isinstance(task, NeuronSelectionKD):
                _refit_readout(task, data)
            acc.setdefault(name, []).append(evaluate(task, data))
            # Deployed size: the student, plus the regression layer and readout for the neuron students.
            sizes[name] = count_params(task) - (count_params(teacher) if isinstance(task, Distiller) else 0)

    energy = {
        name: float(selection_energy(idx, unary / unary.max(), correlation, cfg.correlation_weight))
        for name, idx in (("neurons_fisher", top_fisher), ("neurons_selected", selected))
    }
    labels = {
        "teacher": ("Teacher MLP 128-128-128-100", "teacher"),
        "student_labels": ("Student on labels", "baseline"),
        "student_kd": ("Student + KD (soft labels)", "baseline"),
        "neurons_all": (f"Regress all {h_train.shape[1]} top neurons", "ablation"),
        "neurons_random": (f"Regress {k} random neurons", "ablation"),
        "neurons_fisher": (f"Regress {k} most discriminative neurons", "ablation"),
        "neurons_selected": (f"Regress {k} selected neurons", "method"),
    }
    rows = []
    for name, (label, role) in labels.items():
        extra = {"selection_energy": energy[name]} if name in energy else {}
        rows.append(
            dict(name=name, label=label, role=role, accuracy=accuracy_stats(acc[name]), params=sizes[name], extra=extra)
        )
    m = {r["name"]: r["accuracy"]["mean"] for r in rows}
    figure = save_accuracy_plot(rows, ctx, "mobileid_luo2016", title=f"Neuron distillation on {data.name}")

    curve = {n: sum(c) / len(c) for n, c in curves.items()}
    faster = curve["neurons_selected"] > curve["student_kd"]
    kd_ok = m["student_kd"] > m["student_labels"]
    a1 = (
        f"Soft labels {'did not fail' if kd_ok else 'did not help'} here ({data.num_classes} classes: KD "
        f"{m['student_kd']:.1f}% vs labels {m['student_labels']:.1f}%); selected-neuron targets "
        f"{'trained' if faster else 'did not train'} the student faster ({curve['neurons_selected']:.1f}% vs "
        f"{curve['student_kd']:.1f}% after {early} of {epochs} epochs), and at the end regressing all top neurons gave "
        f"{m['neurons_all']:.1f}% and the selected ones {m['neurons_selected']:.1f}%."
    )
    gain_all, gain_random = m["neurons_selected"] - m["neurons_all"], m["neurons_selected"] - m["neurons_random"]
    a2 = (
        f"At our scale selecting {k} of {h_train.shape[1]} neurons changes accuracy by {gain_all:+.1f} points against "
        f"regressing all of them and by {gain_random:+.1f} points against a random subset of the same size."
    )
    ev2 = (
        f"all {m['neurons_all']:.2f}%, random {m['neurons_random']:.2f}%, top-Fisher only {m['neurons_fisher']:.2f}%, "
        f"selected (Fisher - correlation) {m['neurons_selected']:.2f}%; energies {energy['neurons_fisher']:.2f} "
        f"(top-Fisher) vs {energy['neurons_selected']:.2f} (greedy)."
    )
    return {
        "id": "mobileid_luo2016",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"one MLP teacher (seed 0, SGD lr 0.1, {ctx.epochs(s['teacher_epochs'])} epochs); students "
            f"MLP 128-32-32 body, AdamW lr {s['lr']} cosine, batch 128, no weight decay, same epochs and seeds; neuron "
            f"students see labels only through a linear readout on detached predictions; KD T=4, alpha=0.9; greedy "
            f"selection of k={k} with lambda={cfg.correlation_weight}; classification accuracy stands in for LFW "
            "verification.",
        },
        "rows": rows,
        "claim": {
            "text": "A compact student that regresses selected top-layer neurons of the teacher is more accurate than "
            "the same student trained on hard labels or on soft labels.",
            "reproduced": beats(acc["neurons_selected"], acc["student_labels"])
            and beats(acc["neurons_selected"], acc["student_kd"]),
            "evidence": f"selected neurons {m['neurons_selected']:.2f}% vs labels {m['student_labels']:.2f}% and KD "
            f"{m['student_kd']:.2f}% (teacher {m['teacher']:.2f}%), mean over {len(ctx.seeds)} seed(s).",
        },
        "answers": [
            {
                "question": QUESTIONS[0],
                "answer": a1,
                "evidence": f"test accuracy after {early} epoch(s): KD "
                f"{curve['student_kd']:.2f}%, selected neurons {curve['neurons_selected']:.2f}%.",
            },
            {"question": QUESTIONS[1], "answer": a2, "evidence": ev2},
        ],
        "figures": [figure],
    }
