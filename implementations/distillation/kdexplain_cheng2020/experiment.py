"""The small-scale reproduction of Cheng et al. (2020) on MNIST-1D: a KD student and its from-scratch twin
(same initialisation and batches), their visual concepts counted at every epoch, and a sweep over the entropy
threshold and the layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from implementations.distillation.kdexplain_cheng2020 import (
    Config,
    KnowledgeQuantifier,
    concept_mask,
    learning_distance,
    mnist1d_foreground,
    stability,
    weight_path,
)

if TYPE_CHECKING:
    from implementations._harness import RunContext


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run kdexplain_cheng2020`
# ---------------------------------------------------------------------------------------------------------------------

#: MNIST-1D: positions are the "pixels", the digit template's support is the foreground.
SETTINGS = dict(
    dataset="mnist1d", teacher=(16, 32, 32), student=(8, 16, 16), teacher_epochs=8, epochs=8, lr=0.05,
    batch_size=128, n_images=32, margins=(0.25, 0.5, 1.0),
)  # fmt: skip
QUESTIONS = (
    "Why does knowledge distillation work better than learning from raw labels?",
    "Do the concept counts depend on the choice of layer and the entropy threshold, and would they carry over to "
    "non-image inputs?",
)


def _metrics(entropy: Tensor, foreground: Tensor, path: Tensor, margin: float) -> dict[str, float]:
    """Hypothesis metrics of one network from its per-epoch entropies `(E, B, n)` and weight path `(E + 1,)`."""
    concepts = concept_mask(entropy, foreground, margin)  # (E, B, n)
    n_fg, n_bg = (concepts & foreground).sum(-1), (concepts & ~foreground).sum(-1)  # (E, B)
    total = (n_fg[-1] + n_bg[-1]).float()
    ratio = torch.where(total > 0, n_fg[-1] / total.clamp_min(1), torch.full_like(total, float("nan")))
    distance = learning_distance(path, n_fg)
    return {
        "n_fg": float(n_fg[-1].float().mean()),
        "n_bg": float(n_bg[-1].float().mean()),
        "ratio": float(ratio.nanmean()),
        "d_mean": float(distance.mean()),
        "d_std": float(distance.std()),
        "rho": float(stability(concepts & foreground).nanmean()),
    }


def _plot_curves(curves: dict[str, Tensor], ctx: RunContext) -> str:
    """Mean number of foreground concepts after each epoch, per training scheme."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, label in (("baseline", "from scratch"), ("kd", "KD student")):
        ax.plot(range(1, len(curves[name]) + 1), curves[name].tolist(), "o-", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("foreground concepts per signal")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / "kdexplain_cheng2020_concepts.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"{ctx.results_dir.resolve().name}/figures/{path.name}"


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """A KD student and its from-scratch twin (same init and batches), their concepts at every epoch, and a sweep."""
    import copy
    from dataclasses import replace

    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, count_flops, count_params
    from implementations._models import CNN1d
    from implementations._runner import save_accuracy_plot
    from implementations.distillation.kd_hinton2015 import KD

    s, cfg = SETTINGS, Config()
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    foreground = torch.as_tensor(mnist1d_foreground()[1][: s["n_images"]])  # (B, n): test images analysed
    x = data.x_test[: s["n_images"]]  # (B, 1, 40)
    epochs = ctx.epochs(s["epochs"])
    train = dict(lr=s["lr"], batch_size=s["batch_size"], device=ctx.device, progress=False)

    def new(widths: tuple[int, ...]) -> CNN1d:
        return CNN1d(data.input_shape[0], data.input_shape[1], data.num_classes, widths)

    seed_everything(ctx.seeds[0])  # one teacher for all seeds; the seeds vary the students
    teacher = new(s["teacher"])
    fit(Supervised(teacher), teacher.parameters(), data, epochs=ctx.epochs(s["teacher_epochs"]), **train)
    acc: dict[str, list[float]] = {"teacher": [evaluate(teacher, data)]}
    metrics: dict[str, list[dict[str, float]]] = {}
    curves: dict[str, list[Tensor]] = {}
    for seed in ctx.seeds:
        seed_everything(seed)
        init = copy.deepcopy(new(s["student"]).state_dict())
        for name in ("baseline", "kd"):
            student = new(s["student"])
            student.load_state_dict(init)
            states = [copy.deepcopy(init)]
            task = Supervised(student) if name == "baseline" else KD(student, teacher)

            def keep(_epoch: int, _entry: dict, student: nn.Module = student, states: list = states) -> None:
                states.append(copy.deepcopy(student.state_dict()))

            fit(task, student.parameters(), data, epochs=epochs, seed=seed, on_epoch_end=keep, **train)
            acc.setdefault(name, []).append(evaluate(student, data))
            snapshots = []
            for state in states[1:]:
                net = new(s["student"])
                net.load_state_dict(state)
                snapshots.append(net)
            torch.manual_seed(seed)  # the same noise draws for both networks
            entropy = KnowledgeQuantifier(*snapshots, cfg=cfg).quantify(x)  # (E, B, n)
            path = weight_path(states)
            for margin in s["margins"]:
                metrics.setdefault(f"{name}_b{margin:g}", []).append(_metrics(entropy, foreground, path, margin))
            fg_concepts = concept_mask(entropy, foreground, cfg.margin) & foreground  # (E, B, n)
            curves.setdefault(name, []).append(fg_concepts.sum(-1).float().mean(-1))  # N_fg per epoch, (E,)
            torch.manual_seed(seed)
            middle = KnowledgeQuantifier(snapshots[-1], cfg=replace(cfg, layer=1)).quantify(x)  # second conv stage
            metrics.setdefault(f"{name}_layer1", []).append(_metrics(middle, foreground, path[-2:], cfg.margin))

    def avg(key: str, metric: str) -> float:
        return float(np.nanmean([m[metric] for m in metrics[key]]))

    x1 = torch.zeros(1, *data.input_shape)
    student_cols = {"params": count_params(new(s["student"])), "flops": count_flops(new(s["student"]), x1)}
    b = f"b{cfg.margin:g}"
    names = ("n_fg", "n_bg", "ratio", "d_mean", "d_std", "rho")
    rows = [
        dict(name="teacher", label="Teacher (cnn1d 16-32-32)", role="teacher", params=count_params(new(s["teacher"])),
             flops=count_flops(new(s["teacher"]), x1)),
        dict(name="baseline", label="Student from scratch (8-16-16)", role="baseline", **student_cols,
             extra={k: avg(f"baseline_{b}", k) for k in names}),
        dict(name="kd", label="Student by KD (8-16-16)", role="method", **student_cols,
             extra={k: avg(f"kd_{b}", k) for k in names}),
    ]  # fmt: skip
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    figures = [
        save_accuracy_plot(rows, ctx, "kdexplain_cheng2020", title=f"KD vs scratch on {data.name}"),
        _plot_curves({k: torch.stack(v).mean(0) for k, v in curves.items()}, ctx),
    ]

    kd, base = rows[2]["extra"], rows[1]["extra"]
    h1 = kd["n_fg"] > base["n_fg"] and kd["ratio"] > base["ratio"]
    h2 = kd["d_mean"] < base["d_mean"] and kd["d_std"] < base["d_std"]
    h3 = kd["rho"] > base["rho"]
    verdict = {True: "holds", False: "fails"}
    table = "; ".join(f"{k} KD {kd[k]:.3f} vs scratch {base[k]:.3f}" for k in names)
    sweep = []
    for key in [f"b{m:g}" for m in s["margins"]] + ["layer1"]:
        kd_fg, base_fg = avg(f"kd_{key}", "n_fg"), avg(f"baseline_{key}", "n_fg")
        sweep.append((key, kd_fg, base_fg))
    flips = len({k > b_ for _, k, b_ in sweep}) > 1
    return {
        "id": "kdexplain_cheng2020",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"one teacher cnn1d {s['teacher']} (seed {ctx.seeds[0]}); per seed a student cnn1d {s['student']} "
            f"trained by Hinton KD (T=4, alpha=0.9) and its from-scratch twin from the same initial weights and "
            f"batches, {epochs} epochs; concepts measured on the first {s['n_images']} test signals (positions = "
            f"pixels, foreground = the digit template's support from the regenerated MNIST-1D) at the last conv "
            f"stage after every epoch; lambda={cfg.lam}, b={cfg.margin} nats, sigma <= {cfg.sigma_max}, {cfg.steps} "
            f"Adam steps (lr {cfg.lr}), {cfg.samples} noise draws per step; SGD momentum 0.9, cosine lr {s['lr']}.",
        },
        "rows": rows,
        "claim": {
            "text": "A student trained by distillation encodes more foreground (task-relevant) concepts with a higher "
            "foreground ratio (H1), learns them faster and more simultaneously (smaller D_mean and D_std, H2), and "
            "optimizes more stably (larger rho, H3) than the same network trained from raw labels.",
            "reproduced": h1 and h2 and h3,
            "evidence": f"H1 {verdict[h1]}, H2 {verdict[h2]}, H3 {verdict[h3]} at b={cfg.margin}: {table} (mean over "
            f"{len(ctx.seeds)} seed(s) and {s['n_images']} signals); accuracy KD {mean['kd']:.2f}% vs scratch "
            f"{mean['baseline']:.2f}%.",
        },
        "answers": [
            {
                "question": QUESTIONS[0],
                "answer": f"On MNIST-1D the paper's explanation is only partly visible: hypothesis 1 {verdict[h1]}, "
                f"hypothesis 2 {verdict[h2]} and hypothesis 3 {verdict[h3]} for a KD student that is "
                f"{mean['kd'] - mean['baseline']:+.2f} points more accurate than its from-scratch twin."
                if not (h1 and h2 and h3)
                else "On MNIST-1D all three of the paper's hypotheses hold in direction for the KD student.",
                "evidence": table,
            },
            {
                "question": QUESTIONS[1],
                "answer": "Yes: which student has more foreground concepts flips with the threshold b or the layer, "
                "so the counts are fragile at this scale; the measure itself runs unchanged on 1-D signals (a "
                "non-image input)."
                if flips
                else "The KD-vs-scratch ranking of foreground concepts was the same for every threshold and both "
                "layers tried, and the measure runs unchanged on 1-D signals (a non-image input).",
                "evidence": "; ".join(f"{key}: N_fg KD {k:.2f} vs scratch {b_:.2f}" for key, k, b_ in sweep),
            },
        ],
        "figures": figures,
    }
