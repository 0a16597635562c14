r"""Do Deep Nets Really Need to be Deep? (Ba & Caruana, 2014).

Paper: [arXiv:1312.6184](https://arxiv.org/abs/1312.6184) · notes: `papers/mimic_ba2014.md`

A shallow *mimic* net $g(x; W, \beta)$ with one hidden layer is trained without labels to regress the logits
$z = f_T(x)$ that a deep teacher assigns to the inputs of a transfer set $\{x^{(t)}\}_{t=1}^{N}$:

$$
\mathcal{L}(W, \beta) = \frac{1}{2N} \sum_{t=1}^{N} \big\lVert g(x^{(t)}; W, \beta) - z^{(t)} \big\rVert_2^2 .
$$

To speed up learning of the wide hidden layer, the input-to-hidden matrix is factored through a linear
bottleneck, $W = U V$ with $V \in \mathbb{R}^{k \times D}$, $U \in \mathbb{R}^{H \times k}$, $k \ll H$:

$$
g(x) = \beta\, \mathrm{ReLU}(U V x + b).
$$
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations.distillation._base import Distiller

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "Mimic", "mimic_loss", "reproduce", "shallow_mimic_net"]


@dataclass(frozen=True)
class Config:
    """Shape of the shallow mimic net (the paper's TIMIT nets use $H$ = 8k to 400k, $k$ = 250)."""

    hidden: int = 512  # $H$, width of the single hidden layer (scaled down for MNIST-1D)
    bottleneck: int = 32  # $k$, rank of the linear factorisation $W = UV$; 0 disables it


def mimic_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    r"""Logit regression $\frac{1}{2B}\sum_{t} \lVert g(x^{(t)}) - z^{(t)} \rVert_2^2$ over a batch.

    Args:
        student_logits: Student logits $g(x)$, shape `(B, K)`.
        teacher_logits: Teacher logits $z$ (before the softmax), shape `(B, K)`.

    Returns:
        A scalar tensor.
    """
    return 0.5 * (student_logits - teacher_logits).pow(2).sum(dim=-1).mean()


def shallow_mimic_net(in_features: int, num_classes: int, cfg: Config | None = None) -> nn.Sequential:
    r"""One-hidden-layer net $x \mapsto \beta\,\mathrm{ReLU}(U V x + b)$ (with the bottleneck $V$ when $k > 0$).

    Args:
        in_features: Input dimension $D$ (inputs are flattened).
        num_classes: Number of classes $K$.
        cfg: Hidden width $H$ and bottleneck rank $k$.

    Returns:
        The network; its forward takes `(B, ...)` inputs and returns `(B, K)` logits.
    """
    cfg = cfg or Config()
    if cfg.bottleneck > 0:
        # Sec. 2.3: the linear layer V adds no non-linearity, it only re-parameterises W = U V.
        layers = [nn.Linear(in_features, cfg.bottleneck, bias=False), nn.Linear(cfg.bottleneck, cfg.hidden)]
    else:
        layers = [nn.Linear(in_features, cfg.hidden)]
    return nn.Sequential(nn.Flatten(), *layers, nn.ReLU(), nn.Linear(cfg.hidden, num_classes))


class Mimic(Distiller):
    """Label-free logit regression of the student onto the teacher.

    `forward_train(x, y)` ignores integer labels and asks the teacher for its logits; when `y` is a float tensor
    of shape `(B, K)` it is taken as the teacher's logits computed offline, which is how the paper labels its
    transfer set once before training the mimic net.
    """

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and `{"mimic": mimic_loss}`."""
        logits_s = self.student(x)  # (B, K)
        if y.is_floating_point() and y.shape == logits_s.shape:
            logits_t = y  # (B, K), labelled offline
        else:
            with torch.no_grad():
                logits_t = self.teacher(x)  # (B, K)
        return logits_s, {"mimic": mimic_loss(logits_s, logits_t)}


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run mimic_ba2014`
# ---------------------------------------------------------------------------------------------------------------------

#: MNIST-1D on a CPU: a 3-layer conv teacher, one-hidden-layer students, an augmented unlabelled transfer set.
SMALL = dict(
    dataset="mnist1d",
    teacher=("cnn1d", 1.0),
    teacher_epochs=12,
    epochs=20,
    lr=2e-2,
    batch_size=256,
    copies=1,
    max_shift=3,
    noise=0.2,
    temperature=4.0,
)


def _perturbed(x: Tensor, max_shift: int, noise: float, gen: torch.Generator) -> Tensor:
    """Unlabelled look-alike inputs: a random circular shift of each signal plus Gaussian noise, `(N, C, L)`."""
    n, length = x.shape[0], x.shape[-1]
    shift = torch.randint(-max_shift, max_shift + 1, (n, 1, 1), generator=gen)
    index = (torch.arange(length).view(1, 1, -1) - shift) % length  # (N, 1, L)
    shifted = torch.gather(x, -1, index.expand_as(x))
    return shifted + noise * torch.randn(x.shape, generator=gen)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher, then one shallow student trained five ways, over `ctx.seeds`; returns the results dict."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot
    from implementations.distillation.kd_hinton2015 import KD
    from implementations.distillation.kd_hinton2015 import Config as KDConfig

    s, cfg = SMALL, Config()
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs = ctx.epochs(s["epochs"])
    train = dict(lr=s["lr"], batch_size=s["batch_size"], device=ctx.device, progress=False, optimizer="adamw")
    in_features = int(torch.tensor(data.input_shape).prod())

    # One teacher (seed 0) shared by every student and seed.
    seed_everything(0)
    teacher = build_model(s["teacher"][0], data.num_classes, data.input_shape, width=s["teacher"][1])
    fit(
        Supervised(teacher),
        teacher.parameters(),
        data,
        epochs=ctx.epochs(s["teacher_epochs"]),
        weight_decay=0.05,
        **train,
    )
    teacher.to("cpu").eval()

    # The transfer set: the training inputs plus `copies` perturbed versions, labelled once by the teacher.
    gen = torch.Generator().manual_seed(1234)
    x_extra = torch.cat([_perturbed(data.x_train, s["max_shift"], s["noise"], gen) for _ in range(s["copies"])])
    x_transfer = torch.cat([data.x_train, x_extra])  # (N (1 + copies), C, L)
    with torch.no_grad():
        z_train, z_transfer = teacher(data.x_train), teacher(x_transfer)  # (N, K), (N (1 + copies), K)
    y_aug = data.y_train.repeat(1 + s["copies"])
    variants = {  # name -> (task builder, training data)
        "student_ce": (lambda m: Supervised(m), data),
        "student_ce_augmented": (lambda m: Supervised(m), replace(data, x_train=x_transfer, y_train=y_aug)),
        "student_mimic": (lambda m: Mimic(m, teacher), replace(data, y_train=z_train)),
        "student_mimic_transfer": (lambda m: Mimic(m, teacher), replace(data, x_train=x_transfer, y_train=z_transfer)),
        "student_kd": (lambda m: KD(m, teacher, KDConfig(temperature=s["temperature"], alpha=1.0)), data),
    }
    acc: dict[str, list[float]] = {"teacher": [evaluate(teacher, data)]}  # one shared teacher: a single value
    for seed in ctx.seeds:
        for name, (make_task, train_data) in variants.items():
            seed_everything(seed)  # every student starts from the same initialisation
            student = shallow_mimic_net(in_features, data.num_classes, cfg)
            fit(
                make_task(student),
                student.parameters(),
                train_data,
                epochs=epochs,
                seed=seed,
                weight_decay=0.0,
                **train,
            )
            acc.setdefault(name, []).append(evaluate(student, data))

    t_cols = model_row(teacher, data.input_shape)
    s_cols = model_row(shallow_mimic_net(in_features, data.num_classes, cfg), data.input_shape)
    n_transfer = len(x_transfer)
    rows = [
        dict(name="teacher", label="Teacher (cnn1d, 3 conv layers; one run)", role="teacher", **t_cols),
        dict(name="student_ce", label="Shallow net, labels", role="baseline", **s_cols),
        dict(
            name="student_ce_augmented",
            label="Shallow net, labels + augmented",
            role="ablation",
            **s_cols,
            extra={"n_train_examples": float(n_transfer)},
        ),
        dict(name="student_mimic", label="Mimic, train set only", role="ablation", **s_cols),
        dict(
            name="student_mimic_transfer",
            label="Mimic, transfer set",
            role="method",
            **s_cols,
            extra={"n_train_examples": float(n_transfer)},
        ),
        dict(
            name="student_kd",
            label=f"KD soft targets (T={s['temperature']:g})",
            role="ablation",
            **s_cols,
            extra={"temperature": s["temperature"]},
        ),
    ]
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    m = {row["name"]: row["accuracy"]["mean"] for row in rows}
    figure = save_accuracy_plot(rows, ctx, "mimic_ba2014", title=f"Mimic learning on {data.name}")

    # Teacher logits vs labels at equal inputs, and extra inputs vs none at equal targets (2x2 design).
    regression_gain = 0.5 * (
        m["student_mimic"] - m["student_ce"] + m["student_mimic_transfer"] - m["student_ce_augmented"]
    )
    data_gain = 0.5 * (m["student_mimic_transfer"] - m["student_mimic"] + m["student_ce_augmented"] - m["student_ce"])
    if data_gain > max(regression_gain, 0.0):
        a1 = "Mostly the transfer set at our scale"
    elif regression_gain > 0.0:
        a1 = "Mostly the logit regression at our scale"
    else:
        a1 = "Neither helped at our scale"
    a1 += (
        f": at equal inputs, regressing the teacher's logits instead of fitting labels changes accuracy by "
        f"{regression_gain:+.1f} points on average, while adding the perturbed inputs changes it by {data_gain:+.1f} "
        "points whichever targets are used."
    )
    ev1 = (
        f"labels {m['student_ce']:.2f}%, labels+augmented {m['student_ce_augmented']:.2f}%, mimic on train set "
        f"{m['student_mimic']:.2f}%, mimic on transfer set ({n_transfer} inputs) {m['student_mimic_transfer']:.2f}%"
    )
    kd_better, mimic_better = (
        beats(acc["student_kd"], acc["student_mimic"]),
        beats(acc["student_mimic"], acc["student_kd"]),
    )
    a2 = (
        f"{'No' if kd_better else 'Yes' if mimic_better else 'Inconclusive'} for this one-hidden-layer student: "
        f"soft-target KD at T={s['temperature']:g} "
        f"{'beats' if kd_better else 'loses to' if mimic_better else 'is within noise of'} L2 logit regression on "
        "identical inputs (paired-seed `beats` rule) "
        f"({m['student_kd']:.1f}% vs {m['student_mimic']:.1f}%)."
    )
    ev2 = f"KD (alpha=1, no labels) {m['student_kd']:.2f}% vs mimic {m['student_mimic']:.2f}%, same epochs and seeds"
    return {
        "id": "mimic_ba2014",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"one cnn1d teacher (seed 0, {ctx.epochs(s['teacher_epochs'])} epochs) shared by all students; "
            f"student: one hidden layer H={cfg.hidden} with linear bottleneck k={cfg.bottleneck}; AdamW lr {s['lr']}, "
            f"batch {s['batch_size']}, cosine, same epochs for every student; transfer set = training inputs + "
            f"{s['copies']} copies shifted by up to {s['max_shift']} and with N(0, {s['noise']}^2) noise, labelled "
            "offline by the teacher; mimic and KD students never see labels",
        },
        "rows": rows,
        "claim": {
            "text": "A shallow net trained to regress a deep teacher's logits on a transfer set is more accurate "
            "than the same shallow net trained on the labels (judged here against labels on the same transfer "
            "inputs, so that the extra inputs alone cannot explain a win).",
            "reproduced": beats(acc["student_mimic_transfer"], acc["student_ce_augmented"]),
            "evidence": f"judged against the control that sees the same inputs: mimic on transfer set "
            f"{m['student_mimic_transfer']:.2f}% vs labels on the same augmented inputs "
            f"{m['student_ce_augmented']:.2f}% (paired-seed `beats`: "
            f"{'win' if beats(acc['student_mimic_transfer'], acc['student_ce_augmented']) else 'no win'}); against "
            f"labels on the original inputs only {m['student_ce']:.2f}% (the paper's comparison, which mixes in the "
            f"extra inputs: {'win' if beats(acc['student_mimic_transfer'], acc['student_ce']) else 'no win'}); "
            f"teacher {m['teacher']:.2f}%; {len(ctx.seeds)} seed(s) on {data.name}.",
        },
        "answers": [
            {
                "question": "Is the mimic gain a property of logit regression, or mostly of the large unlabelled "
                "transfer set the teacher labels?",
                "answer": a1,
                "evidence": ev1,
            },
            {
                "question": "Does regressing logits beat matching temperature-softened probabilities (KD) for small "
                "students?",
                "answer": a2,
                "evidence": ev2,
            },
        ],
        "figures": [figure],
    }
