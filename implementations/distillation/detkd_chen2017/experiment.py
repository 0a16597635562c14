"""The small-scale reproduction of Chen et al. (2017) on a toy 1-D detection task: the student detector alone,
with each of the three additions, with all three, and with a poor teacher's boxes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation.detkd_chen2017 import (
    Config,
    DetectionKD,
    Detector1d,
    detection_accuracy,
    make_signals,
)

if TYPE_CHECKING:
    from implementations._harness import RunContext


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run detkd_chen2017`
# ---------------------------------------------------------------------------------------------------------------------

#: Toy 1-D detection: one MNIST-1D digit, rescaled to a width of 24-40 samples, pasted at a random place in a
#: 64-sample noisy signal with a distractor fragment of another digit; 8 anchors (stride 8), 10 classes + background.
SMALL = dict(
    length=64,
    stride=8,
    n_train=3000,
    n_test=1000,
    teacher=(16, 32, 32),
    student=(8, 16, 16),
    teacher_epochs=15,
    epochs=8,
    lr=1e-2,
    poor_box_noise=0.5,
)
OPEN_QUESTION = (
    "Which of the three additions (weighted soft loss, bounded regression, hint with adaptation layer) carries most "
    "of the gain, and does the bounded loss matter when the teacher's boxes are poor?"
)


class _Supervised(nn.Module):
    """Detector trained on its targets alone: CE over all anchors + smooth-L1 on the positive ones."""

    def __init__(self, model: nn.Module, box_dims: int = 2) -> None:
        super().__init__()
        self.model, self.r = model, box_dims

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.model(x)
        classes = y[..., 0].long().flatten()
        positive = classes > 0
        reg = out[..., -self.r :].reshape(-1, self.r)[positive]
        target = y[..., 1:].reshape(-1, self.r)[positive]
        return out, {
            "cls_hard": F.cross_entropy(out[..., : -self.r].reshape(len(classes), -1), classes),
            "reg": F.smooth_l1_loss(reg, target, reduction="sum") / max(1, len(target)),
        }


class _NoisyBoxes(nn.Module):
    """A teacher whose box outputs are corrupted by Gaussian noise (a poor box regressor, same classifier)."""

    def __init__(self, teacher: nn.Module, std: float, box_dims: int = 2) -> None:
        super().__init__()
        self.teacher, self.std, self.r = teacher, std, box_dims

    def forward(self, x: Tensor, return_features: bool = False):
        out, features = self.teacher(x, return_features=True)
        out = torch.cat(
            [out[..., : -self.r], out[..., -self.r :] + self.std * torch.randn_like(out[..., -self.r :])], -1
        )
        return (out, features) if return_features else out


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher and student detectors; the student alone, with each addition, with all three, and with a poor teacher."""
    from dataclasses import replace

    from implementations._data import load_dataset
    from implementations._harness import fit, seed_everything
    from implementations._measure import accuracy_stats, beats, count_flops, count_params, versus
    from implementations._runner import save_accuracy_plot

    s = SMALL
    digits = load_dataset("mnist1d")
    gen = torch.Generator().manual_seed(0)
    n_train = ctx.n_train or s["n_train"]
    x_tr, y_tr, _, _ = make_signals(digits.x_train, digits.y_train, n_train, gen, s["length"], s["stride"])
    x_te, _, boxes_te, labels_te = make_signals(digits.x_test, digits.y_test, s["n_test"], gen, s["length"])
    data = replace(digits, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=labels_te, input_shape=(1, s["length"]))
    epochs = ctx.epochs(s["epochs"])
    train = dict(batch_size=128, device="cpu", progress=False, optimizer="adamw", weight_decay=1e-4, lr=s["lr"])
    off = Config(use_soft=False, use_bounded=False, use_hint=False)
    variants = {  # name -> (config, poor teacher boxes?)
        "student": (None, False),
        "hint": (replace(off, use_hint=True), False),
        "soft": (replace(off, use_soft=True), False),
        "bounded": (replace(off, use_bounded=True), False),
        "full": (Config(), False),
        "poor_bounded": (replace(off, use_bounded=True), True),
        "poor_imitation": (replace(off, imitate_boxes=True), True),
    }

    def score(model: nn.Module) -> float:
        return detection_accuracy(model, x_te, boxes_te, labels_te, s["stride"])

    seed_everything(0)  # one teacher shared by every student and seed
    teacher = Detector1d(10, s["teacher"])
    fit(_Supervised(teacher), teacher.parameters(), data, epochs=ctx.epochs(s["teacher_epochs"]), **train)
    teacher.eval().requires_grad_(False)
    acc: dict[str, list[float]] = {"teacher": [score(teacher)]}  # one shared teacher: a single value
    for seed in ctx.seeds:
        for name, (cfg, poor) in variants.items():
            seed_everything(seed)  # same student initialisation for every variant
            student = Detector1d(10, s["student"])
            if cfg is None:
                task: nn.Module = _Supervised(student)
            else:
                used = _NoisyBoxes(teacher, s["poor_box_noise"]) if poor else teacher
                task = DetectionKD(student, used, cfg, in_shape=(1, s["length"]))
            params = [p for n, p in task.named_parameters() if not n.startswith("teacher.")]
            fit(task, params, data, epochs=epochs, seed=seed, **train)
            acc.setdefault(name, []).append(score(student))

    def size(channels: tuple[int, ...]) -> dict[str, int]:
        model = Detector1d(10, channels)
        return {"params": count_params(model), "flops": count_flops(model, torch.zeros(1, 1, s["length"]))}

    spec = [
        ("teacher", f"Teacher detector {s['teacher']}", "teacher", size(s["teacher"])),
        ("student", f"Student detector {s['student']} alone", "baseline", size(s["student"])),
        ("hint", "+ hint (adaptation layer)", "ablation", size(s["student"])),
        ("soft", "+ weighted soft CE", "ablation", size(s["student"])),
        ("bounded", "+ teacher-bounded regression", "ablation", size(s["student"])),
        ("full", "+ all three (the paper's recipe)", "method", size(s["student"])),
        ("poor_bounded", "poor teacher boxes: bounded regression", "ablation", size(s["student"])),
        ("poor_imitation", "poor teacher boxes: direct L2 imitation", "ablation", size(s["student"])),
    ]
    rows = [dict(name=n, label=lb, role=r, accuracy=accuracy_stats(acc[n]), **c) for n, lb, r, c in spec]
    m = {r["name"]: r["accuracy"]["mean"] for r in rows}
    figure = save_accuracy_plot(rows, ctx, "detkd_chen2017", title="Detection KD on 1-D MNIST-1D signals")
    gains = {k: m[k] - m["student"] for k in ("hint", "soft", "bounded")}
    names = {"hint": "the hint", "soft": "the weighted soft loss", "bounded": "the bounded regression"}

    def cmp(a: str, b: str) -> str:
        """`a` against `b` by the paired-seed `beats` rule."""
        return versus(acc[a], acc[b])

    helping = [k for k in gains if beats(acc[k], acc["student"])]
    top = max(helping, key=gains.get) if helping else None
    answer = (
        f"At our scale {names[top]} carries the largest single gain that beats seed noise ({gains[top]:+.1f} points)"
        if top
        else "At our scale no single addition beats the student alone beyond seed noise"
    )
    answer += (
        " ("
        + ", ".join(f"{names[k]} {cmp(k, 'student')} the student alone, {g:+.1f}" for k, g in gains.items())
        + f"; all three {cmp('full', 'student')} it, {m['full'] - m['student']:+.1f})."
        + f" With poor teacher boxes the bounded loss {cmp('poor_bounded', 'poor_imitation')} direct imitation "
        f"({m['poor_bounded']:.1f}% vs {m['poor_imitation']:.1f}%); all comparisons paired over "
        f"{len(ctx.seeds)} seeds."
    )
    evidence = "; ".join(f"{r['label']}: {r['accuracy']['mean']:.2f}%" for r in rows)
    return {
        "id": "detkd_chen2017",
        "protocol": {
            "dataset": "1-D detection built from MNIST-1D digits",
            "n_train": n_train,
            "n_test": s["n_test"],
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"signals of {s['length']} samples, one digit rescaled to width 24-40 at a random place, "
            f"N(0, 0.3^2) noise and a 12-sample distractor fragment; {s['length'] // s['stride']} anchors (stride "
            f"{s['stride']}), 10 classes + background, box = (centre offset, log width); 'accuracy' = % of test "
            "signals whose top foreground anchor has the right class and IoU >= 0.5. One teacher "
            f"{s['teacher']} (seed 0, {ctx.epochs(s['teacher_epochs'])} epochs), students {s['student']} for "
            f"{epochs} epochs; AdamW lr {s['lr']}, wd 1e-4, batch 128, cosine; mu=0.5, w_0=1.5, T=1, lambda=1, "
            f"nu=0.5, m=0, gamma=0.5; poor teacher = its box outputs plus N(0, {s['poor_box_noise']}^2) noise. "
            "Every row (ablations included) uses every seed; comparisons use the paired-seed `beats` rule.",
        },
        "rows": rows,
        "claim": {
            "text": "Distilling a compact detector with the weighted soft loss, teacher-bounded regression and hints "
            "makes it more accurate than training it alone.",
            "reproduced": beats(acc["full"], acc["student"]),
            "evidence": f"student + all three {m['full']:.2f}% vs student alone {m['student']:.2f}% (teacher "
            f"{m['teacher']:.2f}%), mean over {len(ctx.seeds)} seed(s).",
        },
        "answers": [{"question": OPEN_QUESTION, "answer": answer, "evidence": evidence}],
        "figures": [figure],
    }
