r"""Knowledge Projection for Deep Neural Networks (Zhang, Ning & He, 2017).

Paper: [arXiv:1710.09505](https://arxiv.org/abs/1710.09505) · notes: `papers/kpn_zhang2017.md`

A projection $P$ (a $1 \times 1$ convolution, BN and ReLU) maps the teacher's features $h_t^{(k)}(x)$ at layer $k$
into the feature space of the student's *injection layer* $j$, which splits the student into a lower part
$S_{\le j}$ and an upper part $S_{> j}$. Training runs in two stages:

$$
\text{stage 1:}\quad \mathcal{L}_1 = \mathrm{CE}\Big(y, S_{>j}\big(P(h_t^{(k)}(x))\big)\Big)
    + \lambda \big\lVert S_{\le j}(x) - \mathrm{sg}\big[P(h_t^{(k)}(x))\big] \big\rVert_2^2 ,
$$

$$
\text{stage 2:}\quad \mathcal{L}_2 = \mathrm{CE}\Big(y, S_{>j}\big(S_{\le j}(x)\big)\Big)
    + \lambda \big\lVert S_{\le j}(x) - \mathrm{sg}\big[P(h_t^{(k)}(x))\big] \big\rVert_2^2 ,
$$

($\mathrm{sg}$: stop-gradient; $\lVert\cdot\rVert_2^2$ averaged over elements). In stage 1 the upper layers and the
projection learn the task on top of the projected teacher knowledge while the lower layers learn to produce it;
stage 2 starts from these weights and trains the student's own path jointly.
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

__all__ = ["Config", "KnowledgeProjection", "projection_loss", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; the layer pair is fixed here (the paper selects it adaptively)."""

    teacher_layer: int = 1  # $k$: index into the teacher's `return_features` list
    injection_layer: int = 1  # $j$: index into the student's `return_features` list
    hint_weight: float = 1.0  # $\lambda$ (our choice)


def projection_loss(student_features: Tensor, projected: Tensor) -> Tensor:
    r"""$\mathrm{mean}\big((S_{\le j}(x) - \mathrm{sg}[P(h_t)])^2\big)$; the projection gets no gradient from it.

    Args:
        student_features: Student features at the injection layer, shape `(B, C_s, ...)`.
        projected: Projected teacher features, same shape.
    """
    return F.mse_loss(student_features, projected.detach())


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The modules whose successive outputs are `model(x, return_features=True)[1]` (CNN1d, CNN2d, CifarResNet)."""
    stem = [model.stem] if hasattr(model, "stem") else []
    return stem + list(model.stages)


def _head(model: nn.Module, h: Tensor) -> Tensor:
    """The model's classifier on its last feature map: flatten for CNN1d, global average pool for 2-D nets."""
    return model.head(h.flatten(1) if h.dim() == 3 else h.mean(dim=(2, 3)))


def _channels(block: nn.Module) -> tuple[int, int]:
    """(output channels, spatial dims) of a block, read from its last BatchNorm."""
    bn = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)][-1]
    return bn.num_features, 1 if isinstance(bn, nn.BatchNorm1d) else 2


class KnowledgeProjection(Distiller):
    """Project teacher layer $k$ into student layer $j$; `stage` = 1, 2, or 0 (one-stage joint: all terms)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None, stage: int = 1) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()
        self.stage = stage
        c_t, dims = _channels(_blocks(teacher)[self.cfg.teacher_layer])
        c_s, _ = _channels(_blocks(student)[self.cfg.injection_layer])
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.projection = nn.Sequential(conv(c_t, c_s, 1, bias=False), bn(c_s), nn.ReLU())  # $P$

    def lower(self, x: Tensor) -> Tensor:
        r"""$S_{\le j}(x)$."""
        h = x if x.dim() > 2 else x.unsqueeze(1)
        for block in _blocks(self.student)[: self.cfg.injection_layer + 1]:
            h = block(h)
        return h

    def upper(self, h: Tensor) -> Tensor:
        r"""$S_{>j}(h)$: the remaining blocks and the head, logits `(B, K)`."""
        for block in _blocks(self.student)[self.cfg.injection_layer + 1 :]:
            h = block(h)
        return _head(self.student, h)

    def project(self, x: Tensor, size: torch.Size) -> Tensor:
        r"""$P(h_t^{(k)}(x))$, average-pooled to the injection layer's length (or height, width) `size` if needed."""
        with torch.no_grad():
            h_t = self.teacher(x, return_features=True)[1][self.cfg.teacher_layer]  # (B, C_t, ...)
        projected = self.projection(h_t)  # (B, C_s, ...)
        if projected.shape[2:] != size:
            pool = F.adaptive_avg_pool1d if projected.dim() == 3 else F.adaptive_avg_pool2d
            projected = pool(projected, size)
        return projected

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits `(B, K)` of the route trained in this stage and its weighted terms."""
        low = self.lower(x)  # (B, C_s, ...)
        projected = self.project(x, low.shape[2:])  # (B, C_s, ...)
        losses = {"projection": self.cfg.hint_weight * projection_loss(low, projected)}
        logits = None
        if self.stage in (1, 0):
            logits = self.upper(projected)  # the upper layers learn on top of the teacher's projected knowledge
            losses["ce_projected"] = F.cross_entropy(logits, y)
        if self.stage in (2, 0):
            logits = self.upper(low)  # the student's own path
            losses["ce"] = F.cross_entropy(logits, y)
        return logits, losses


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run kpn_zhang2017`
# ---------------------------------------------------------------------------------------------------------------------

#: Teacher trained on the whole training set; thin students see only `label_counts` labelled examples.
SETTING = dict(
    dataset="mnist1d",
    teacher=("cnn1d", 0.5),
    student=("cnn1d", 0.25),
    label_counts=((200, 64), (1000, 128)),  # (labelled examples, batch size)
    teacher_epochs=8,
    epochs=24,
    lr=0.05,
)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Labels only vs one-stage joint vs two-stage KPN, with 5% and 25% of the labels."""
    from dataclasses import replace

    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot

    s, cfg = SETTING, Config()
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs, teacher_epochs = ctx.epochs(s["epochs"]), ctx.epochs(s["teacher_epochs"])
    counts = [max(data.num_classes, round(c * data.n_train / 4000)) for c, _ in s["label_counts"]]
    batch = dict(zip(counts, (b for _, b in s["label_counts"]), strict=True))
    train = dict(lr=s["lr"], device=ctx.device, progress=ctx.progress)

    def new(spec: tuple[str, float], seed: int) -> nn.Module:
        seed_everything(seed)
        return build_model(spec[0], data.num_classes, data.input_shape, width=spec[1])

    acc: dict[str, list[float]] = {}
    for seed in ctx.seeds:
        teacher = new(s["teacher"], seed)
        fit(Supervised(teacher), teacher.parameters(), data, epochs=teacher_epochs, batch_size=128, seed=seed, **train)
        acc.setdefault("teacher", []).append(evaluate(teacher, data))
        for n in counts:
            few = replace(data, x_train=data.x_train[:n], y_train=data.y_train[:n])  # a seeded random subset
            student = new(s["student"], seed)
            fit(Supervised(student), student.parameters(), few, epochs=epochs, batch_size=batch[n], seed=seed, **train)
            acc.setdefault(f"labels_only_{n}", []).append(evaluate(student, data))

            student = new(s["student"], seed)
            task = KnowledgeProjection(student, teacher, cfg, stage=0)
            fit(task, task.trainable_parameters(), few, epochs=epochs, batch_size=batch[n], seed=seed, **train)
            acc.setdefault(f"one_stage_{n}", []).append(evaluate(student, data))

            student = new(s["student"], seed)
            task = KnowledgeProjection(student, teacher, cfg, stage=1)
            fit(task, task.trainable_parameters(), few, epochs=epochs // 2, batch_size=batch[n], seed=seed, **train)
            task.stage = 2
            fit(
                task,
                task.trainable_parameters(),
                few,
                epochs=epochs - epochs // 2,
                batch_size=batch[n],
                seed=seed,
                **train,
            )
            acc.setdefault(f"kpn_{n}", []).append(evaluate(student, data))

    t_name, s_name = (f"{m[0]} w={m[1]:g}" for m in (s["teacher"], s["student"]))
    t_cols, s_cols = (
        model_row(build_model(m[0], data.num_classes, data.input_shape, m[1]), data.input_shape)
        for m in (s["teacher"], s["student"])
    )
    rows = [dict(name="teacher", label=f"Teacher ({t_name}), all {data.n_train} labels", role="teacher", **t_cols)]
    for i, n in enumerate(counts):
        rows += [
            dict(name=f"labels_only_{n}", label=f"{s_name}, {n} labels", role="baseline", **s_cols),
            dict(name=f"one_stage_{n}", label=f"One-stage joint, {n} labels", role="ablation", **s_cols),
            dict(name=f"kpn_{n}", label=f"KPN two-stage, {n} labels", role="ablation" if i else "method", **s_cols),
        ]
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    figure = save_accuracy_plot(rows, ctx, "kpn_zhang2017", title=f"Knowledge projection on {data.name}")

    few_n, many_n = counts
    gain = {n: mean[f"kpn_{n}"] - mean[f"labels_only_{n}"] for n in counts}
    schedule = mean[f"kpn_{few_n}"] - mean[f"one_stage_{few_n}"]
    summary = "; ".join(
        f"{n} labels: labels only {mean[f'labels_only_{n}']:.2f}%, one-stage {mean[f'one_stage_{n}']:.2f}%, "
        f"two-stage {mean[f'kpn_{n}']:.2f}%"
        for n in counts
    )
    return {
        "id": "kpn_zhang2017",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"teacher {t_name} trained {teacher_epochs} epochs on all {data.n_train} labelled examples (our "
            f"stand-in for pre-training on a large data set); students {s_name} see {' or '.join(map(str, counts))} "
            f"labelled examples for {epochs} epochs (two-stage: {epochs // 2} + {epochs - epochs // 2}); projection "
            f"= 1x1 conv+BN+ReLU from teacher stage {cfg.teacher_layer} to student stage {cfg.injection_layer} "
            f"(fixed, not searched), lambda={cfg.hint_weight}; SGD momentum 0.9, cosine lr {s['lr']}, batch "
            f"{' / '.join(str(batch[n]) for n in counts)} (teacher 128).",
        },
        "rows": rows,
        "claim": {
            "text": "With few labels, a thin student trained with knowledge projection from a teacher pre-trained on "
            "more data beats the same student trained on the labels alone.",
            "reproduced": beats(acc[f"kpn_{few_n}"], acc[f"labels_only_{few_n}"]),
            "evidence": f"{few_n} labels: KPN {mean[f'kpn_{few_n}']:.2f}% vs labels only "
            f"{mean[f'labels_only_{few_n}']:.2f}% (teacher {mean['teacher']:.2f}%), mean of {len(ctx.seeds)} seed(s).",
        },
        "answers": [
            {
                "question": "Does the two-stage schedule (projection-guided stage, then joint fine-tuning) matter, or "
                "would a single joint loss from the start, as in FitNets-style hint training, do as well?",
                "answer": f"With {few_n} labels the two-stage schedule scored {schedule:+.2f} points against the same "
                "terms applied jointly from the start, so at our scale "
                + ("the schedule mattered." if schedule > 0 else "the single joint loss did as well or better."),
                "evidence": summary + ".",
            },
            {
                "question": "How much of the gain comes from the limited-label regime, i.e. would the projection still "
                "help when the target task has plenty of labelled data?",
                "answer": f"The gain over labels only was {gain[few_n]:+.2f} points with {few_n} labels and "
                f"{gain[many_n]:+.2f} with {many_n} labels, so the projection "
                + (
                    "helps most when labels are scarce."
                    if gain[few_n] > gain[many_n]
                    else "did not fade with more labels."
                ),
                "evidence": summary + ".",
            },
        ],
        "figures": [figure],
    }
