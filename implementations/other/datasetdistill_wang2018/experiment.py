r"""The small-scale reproduction of Dataset Distillation (Wang et al., 2018): 10 distilled MNIST-1D examples against
10 and 100 real ones under the same GD steps, from fixed and random initialisations, plus a small KD experiment on
the teacher question."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from implementations._measure import beats
from implementations.other.datasetdistill_wang2018 import Config, DatasetDistillation, Params, reset_parameters, unroll

if TYPE_CHECKING:
    from implementations._harness import RunContext


SMALL = dict(
    width=0.5, outer_iterations=120, full_epochs=15, lr=0.05, lr_grid=(0.03, 0.1, 0.3, 1.0, 3.0), fresh_inits=5
)

#: The registry's open question that the 10-distilled vs n-real comparison answers, verbatim.
OPEN_QUESTION = "Is it distillation that helps, or simply more (or better) training data?"
#: The registry's other open question, answered by a small knowledge-distillation experiment of this module's own.
TEACHER_QUESTION = "Does knowledge distillation need a good teacher at all, or does a good soft target do the work?"
#: That experiment: cnn1d teacher (its 1-epoch snapshot is the weak teacher), MLP students, T and alpha as in KD.
KD_SETTING = dict(
    teacher_width=0.5, teacher_epochs=10, student_width=0.25, student_epochs=10, temperature=4.0, alpha=0.9
)


class _SoftTargetStudent(nn.Module):
    r"""Student trained on $(1-\alpha)\,\mathrm{CE}(y, p_s) + \alpha\, T^2\, \mathrm{KL}(q \| p_s^{(T)})$ for a soft
    target $q$ given as logits at temperature $T$ by `target(x, y)`; the teacher behind it is held outside the module
    so that it stays frozen and in eval mode."""

    def __init__(self, student: nn.Module, target: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.student, self._target = student, [target]

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        from implementations.distillation.kd_hinton2015 import kd_loss

        logits = self.student(x)  # (B, K)
        with torch.no_grad():
            target_logits = self._target[0](x, y)  # (B, K)
        alpha, temperature = KD_SETTING["alpha"], KD_SETTING["temperature"]
        soft = kd_loss(logits, target_logits, temperature)
        return logits, {"ce": (1 - alpha) * F.cross_entropy(logits, y), "kd": alpha * soft}


def _teacher_quality(data: Any, ctx: RunContext) -> dict[str, list[float]]:
    """Per seed: a strong teacher and its 1-epoch snapshot; MLP students alone, with KD from either, and with label
    smoothing whose true-class probability equals the strong teacher's mean at $T$ (a good soft target that carries
    no teacher knowledge about the other classes). Test accuracies (%) per row name."""
    import copy

    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._models import build_model

    s, acc = KD_SETTING, {}
    k, temperature = data.num_classes, s["temperature"]
    for seed in ctx.seeds:
        seed_everything(seed)
        teacher = build_model("cnn1d", k, data.input_shape, width=s["teacher_width"])
        snapshots: dict[int, dict] = {}
        fit(
            Supervised(teacher),
            teacher.parameters(),
            data,
            ctx.epochs(s["teacher_epochs"]),
            0.05,
            128,
            ctx.device,
            seed=seed,
            progress=False,
            on_epoch_end=lambda epoch, _h, kept=snapshots, net=teacher: kept.setdefault(
                epoch, copy.deepcopy(net.state_dict())
            ),
        )
        teacher = teacher.cpu().eval()
        weak = build_model("cnn1d", k, data.input_shape, width=s["teacher_width"])
        weak.load_state_dict(snapshots[1])
        weak.eval()
        with torch.no_grad():
            p_true = float(F.softmax(teacher(data.x_train) / temperature, -1).gather(1, data.y_train[:, None]).mean())
        eps = min(1.0, (1 - p_true) * k / (k - 1))  # smoothing with the same mean true-class probability

        def smoothed(_x: Tensor, y: Tensor, eps: float = eps) -> Tensor:
            q = torch.full((len(y), k), eps / k).scatter_(1, y[:, None], 1 - eps + eps / k)  # (B, K)
            return temperature * q.log()  # logits whose softmax at T is q

        targets = {
            "kd_alone": None,
            "kd_strong": lambda x, _y, net=teacher: net(x),
            "kd_weak": lambda x, _y, net=weak: net(x),
            "kd_smoothed": smoothed,
        }
        acc.setdefault("kd_teacher", []).append(evaluate(teacher, data))
        acc.setdefault("kd_weak_teacher", []).append(evaluate(weak, data))
        for name, target in targets.items():
            seed_everything(seed)  # every student starts from the same weights
            student = build_model("mlp", k, data.input_shape, width=s["student_width"])
            task = Supervised(student) if target is None else _SoftTargetStudent(student, target)
            epochs = ctx.epochs(s["student_epochs"])
            fit(task, student.parameters(), data, epochs, 0.05, 128, ctx.device, seed=seed, progress=False)
            acc.setdefault(name, []).append(evaluate(student.cpu(), data))
    return acc


def _accuracy(model: nn.Module, params: Params, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return round(100.0 * (functional_call(model, params, (x,)).argmax(-1) == y).float().mean().item(), 2)


def _real_baseline(
    model: nn.Module,
    inits: list[Params],
    x: Tensor,
    y: Tensor,
    val: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    n_steps: int,
    grid: tuple[float, ...],
) -> tuple[float, float]:
    """Real `(x, y)` trained by `n_steps` GD steps at the grid rate best on `val`; mean test accuracy over inits."""

    def run(lr: float, split: tuple[Tensor, Tensor]) -> float:
        lrs = torch.full((n_steps,), lr)
        return sum(_accuracy(model, unroll(model, p, x[None], y, lrs, n_steps, False), *split) for p in inits) / len(
            inits
        )

    best = max(grid, key=lambda lr: run(lr, val))
    return run(best, test), best


def _teacher_answer(acc: dict[str, list[float]], mean: dict[str, float]) -> dict[str, str]:
    """The answer to `TEACHER_QUESTION` from the `_teacher_quality` rows, each comparison by `beats`."""

    def compare(a: str, b: str) -> str:
        return "beats" if beats(acc[a], acc[b]) else "loses to" if beats(acc[b], acc[a]) else "ties (within noise)"

    weak_helps = beats(acc["kd_weak"], acc["kd_alone"])
    teacher_adds = beats(acc["kd_strong"], acc["kd_smoothed"])
    smoothing_helps = beats(acc["kd_smoothed"], acc["kd_alone"])
    if teacher_adds and not weak_helps:
        answer = (
            "It needs a good teacher, at this scale: KD from the trained teacher beats a label-smoothing target with "
            "the same confidence on the true class, so the teacher's soft labels carry more than a well-shaped soft "
            "target; and a teacher snapshotted after one epoch does not help the student"
            + (" (it hurts)." if beats(acc["kd_alone"], acc["kd_weak"]) else ".")
        )
    elif teacher_adds:
        answer = (
            "The teacher's knowledge matters (KD from the trained teacher beats matched label smoothing), but even "
            "a one-epoch teacher helped the student."
        )
    else:
        answer = (
            "A good soft target does most of the work here: KD from the trained teacher does not beat label "
            "smoothing with the same confidence on the true class."
        )
    if smoothing_helps:
        answer += " Smoothing alone also beats labels only."
    return {
        "question": TEACHER_QUESTION,
        "answer": answer + " (Own experiment of this module, not the paper's: dataset distillation does not test it.)",
        "evidence": f"MNIST-1D, MLP student (w={KD_SETTING['student_width']}), T={KD_SETTING['temperature']}, "
        f"alpha={KD_SETTING['alpha']}: labels only {mean['kd_alone']:.2f}%, KD from the teacher "
        f"({mean['kd_teacher']:.2f}%) {mean['kd_strong']:.2f}%, KD from its 1-epoch snapshot "
        f"({mean['kd_weak_teacher']:.2f}%) {mean['kd_weak']:.2f}%, matched label smoothing {mean['kd_smoothed']:.2f}%; "
        f"KD (teacher) {compare('kd_strong', 'kd_smoothed')} smoothing, KD (1-epoch teacher) "
        f"{compare('kd_weak', 'kd_alone')} labels only (seed-paired `beats` rule, {len(acc['kd_alone'])} seeds).",
    }


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """10 distilled examples vs 10 (and 100) random real ones, fixed and random initialisation, over `ctx.seeds`."""
    import copy

    from implementations._data import load_dataset
    from implementations._harness import seed_everything
    from implementations._measure import accuracy_stats
    from implementations._models import build_model
    from implementations.other._base import fit_ce

    s = SMALL
    data = load_dataset("mnist1d", ctx.data_dir, ctx.download, n_train=ctx.n_train)
    k, shape = data.num_classes, data.input_shape
    cfg = Config(outer_iterations=ctx.epochs(s["outer_iterations"]))
    n_steps = cfg.epochs * cfg.steps
    n_distilled = cfg.steps * k * cfg.images_per_class
    test = (data.x_test, data.y_test)
    acc: dict[str, list[float]] = {}
    best_lrs: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        acc.setdefault(name, []).append(value)

    for seed in ctx.seeds:
        seed_everything(seed)
        model = build_model("mlp", k, shape, width=s["width"])  # theta_0 of this seed
        theta0 = {name: p.detach().clone() for name, p in model.named_parameters()}
        # real subsets: n per class at random, validation = other training examples (never the test set)
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(data.n_train, generator=gen)
        picks = {n: torch.cat([order[data.y_train[order] == c][:n] for c in range(k)]) for n in (1, 10)}
        val_idx = order[~torch.isin(order, picks[10])][:1000]
        val = (data.x_train[val_idx], data.y_train[val_idx])
        # fixed, known initialisation
        dd = DatasetDistillation(copy.deepcopy(model), k, shape, cfg)
        dd.distill(data.x_train, data.y_train, seed=seed)
        add("distilled_fixed", _accuracy(model, {k_: v.detach() for k_, v in dd.trained_params().items()}, *test))
        for n, idx in picks.items():
            a, lr = _real_baseline(
                model, [theta0], data.x_train[idx], data.y_train[idx], val, test, n_steps, s["lr_grid"]
            )
            add(f"real{n * k}_fixed", a)
            best_lrs.setdefault(f"real{n * k}_fixed", []).append(lr)
        # random initialisations: distil over p(theta_0), test on fresh draws unseen during distillation
        dd_random = DatasetDistillation(copy.deepcopy(model), k, shape, cfg)
        dd_random.distill(data.x_train, data.y_train, random_init=True, seed=seed)
        fresh = []
        for _ in range(s["fresh_inits"]):
            reset_parameters(model)
            fresh.append({name: p.detach().clone() for name, p in model.named_parameters()})
        scores = []
        for init in fresh:
            params = unroll(
                model, init, dd_random.images, dd_random.labels, dd_random.log_lrs.exp().detach(), cfg.epochs, False
            )
            scores.append(_accuracy(model, params, *test))
        add("distilled_random", sum(scores) / len(scores))
        a, lr = _real_baseline(
            model, fresh, data.x_train[picks[1]], data.y_train[picks[1]], val, test, n_steps, s["lr_grid"]
        )
        add("real10_random", a)
        best_lrs.setdefault("real10_random", []).append(lr)
        # the full training set from the same theta_0 (SGD, many steps): the reference the paper compares with
        model.load_state_dict(theta0)
        add("full_data", fit_ce(model, data, ctx, ctx.epochs(s["full_epochs"]), s["lr"], seed))
    acc.update(_teacher_quality(data, ctx))  # the open question on teachers: its own small KD experiment

    labels = {
        "distilled_fixed": (f"{n_distilled} distilled, fixed init", "method"),
        "real10_fixed": (f"{k} random real, fixed init", "baseline"),
        "real100_fixed": (f"{10 * k} random real, fixed init", "ablation"),
        "distilled_random": (f"{n_distilled} distilled, random inits", "ablation"),
        "real10_random": (f"{k} random real, random inits", "ablation"),
        "full_data": (f"Full training set ({data.n_train}), SGD", "teacher"),
        "kd_teacher": ("KD question: teacher cnn1d w=0.5", "teacher"),
        "kd_weak_teacher": ("KD question: same teacher after 1 epoch", "teacher"),
        "kd_alone": ("KD question: MLP student, labels only", "ablation"),
        "kd_strong": ("KD question: student + KD from the teacher", "ablation"),
        "kd_weak": ("KD question: student + KD from the 1-epoch teacher", "ablation"),
        "kd_smoothed": ("KD question: student + matched label smoothing", "ablation"),
    }
    rows = []
    for name, (label, role) in labels.items():
        row = dict(name=name, label=label, role=role, accuracy=accuracy_stats(acc[name]))
        if name in best_lrs:
            row["extra"] = {"gd_steps": float(n_steps), "best_lr_mean": sum(best_lrs[name]) / len(best_lrs[name])}
        elif name != "full_data":
            row["extra"] = {"gd_steps": float(n_steps)}
        rows.append(row)
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    distilled_wins = beats(acc["distilled_fixed"], acc["real100_fixed"])
    more_real_wins = beats(acc["real100_fixed"], acc["distilled_fixed"])
    from implementations._runner import save_accuracy_plot

    figure = save_accuracy_plot(rows, ctx, "datasetdistill_wang2018", title=f"Dataset distillation, {data.name}")
    return {
        "id": "datasetdistill_wang2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": n_steps,
            "selection": "last",
            "notes": f"MLP width {s['width']} (40-128-128-10); {n_distilled} distilled examples (one per class), "
            f"{n_steps} GD steps with learned per-step rates, {cfg.outer_iterations} Adam steps (lr {cfg.outer_lr}) on "
            f"real batches of {cfg.real_batch}. Real-example baselines take the same {n_steps} full-batch GD steps "
            f"from the same theta_0 at the best rate of {s['lr_grid']} on 1000 held-out training examples. Random-init "
            f"rows: distilled over fresh inits, tested on {s['fresh_inits']} unseen inits. 'epochs' = inner GD steps; "
            f"the full-data row uses SGD for {ctx.epochs(s['full_epochs'])} epochs.",
        },
        "rows": rows,
        "claim": {
            "text": f"From a fixed initialisation, a few GD steps on {n_distilled} distilled examples train the "
            f"network far better than the same steps on {k} random real examples (one per class).",
            "reproduced": beats(acc["distilled_fixed"], acc["real10_fixed"]),
            "evidence": f"distilled {mean['distilled_fixed']:.2f}% vs random real {mean['real10_fixed']:.2f}% "
            f"(full data {mean['full_data']:.2f}%); with random inits {mean['distilled_random']:.2f}% vs "
            f"{mean['real10_random']:.2f}% (means over {len(ctx.seeds)} seeds; reproduced = distilled beats real "
            f"beyond one standard error of the seed-paired difference).",
        },
        "answers": [
            _teacher_answer(acc, mean),
            {
                "question": OPEN_QUESTION,
                "answer": f"Optimising the data itself helps: {n_distilled} distilled examples reach "
                f"{mean['distilled_fixed']:.1f}% against {mean['real10_fixed']:.1f}% for {k} real ones and "
                f"{mean['real100_fixed']:.1f}% for {10 * k} real ones under the same {n_steps} GD steps. "
                + (
                    "Ten times more real data does not match them (beyond seed noise)."
                    if distilled_wins
                    else "Ten times more real data does better (beyond seed noise)."
                    if more_real_wins
                    else "Ten times more real data comes within seed noise of them, so at this scale the distilled "
                    "examples are worth about ten times as many real ones, not clearly more."
                ),
                "evidence": f"fixed init, {n_steps} GD steps: distilled {mean['distilled_fixed']:.2f}%, real {k} "
                f"{mean['real10_fixed']:.2f}%, real {10 * k} {mean['real100_fixed']:.2f}%; full data with SGD "
                f"{mean['full_data']:.2f}%.",
            },
        ],
        "figures": [figure],
    }
