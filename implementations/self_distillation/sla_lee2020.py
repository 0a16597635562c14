r"""Self-supervised Label Augmentation via Input Transformations (Lee, Hwang & Shin, 2020).

Paper: [arXiv:1910.05872](https://arxiv.org/abs/1910.05872) · notes: `papers/sla_lee2020.md`

With $N$ classes and transformations $t_1 = \mathrm{id}, t_2, \dots, t_M$ (here the rotations by $0°, 90°, 180°,
270°$), one joint classifier with logits $z_{ij}$ over the $N \times M$ labels (class $i$, transformation $j$) is
trained on every transformed copy, instead of asking a classifier to be invariant to the $t_j$:

$$
\mathcal{L}_{\mathrm{SLA}}(x, y) = \frac{1}{M} \sum_{j=1}^{M} \mathrm{CE}\big(\sigma(z(t_j(x))),\ (y, j)\big).
$$

Aggregated inference averages, over the $M$ copies, the logits of each copy's own transformation,
$P_{\mathrm{agg}}(i \mid x) = \mathrm{softmax}_i(s)$ with $s_i = \frac{1}{M}\sum_j z_{ij}(t_j(x))$, at $M$ forward
passes. Self-distillation trains an ordinary $N$-way head $v$ on the same features towards the aggregate, so one
pass keeps most of its accuracy:

$$
\mathcal{L}_{\mathrm{SLA+SD}} = \mathcal{L}_{\mathrm{SLA}}(x, y) + D_{\mathrm{KL}}\big(P_{\mathrm{agg}}(\cdot \mid x)
  \,\|\, \sigma(v(x))\big) + \beta\, \mathrm{CE}\big(\sigma(v(x)), y\big),
$$

with $P_{\mathrm{agg}}$ held fixed in the KL term.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.self_distillation._base import SelfDistiller, feature_shapes, soft_kl

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["SLA", "Config", "aggregate", "joint_labels", "rotations", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; rotation is the paper's default transformation."""

    num_transforms: int = 4  # $M$: rotations by 0, 90, 180, 270 degrees
    self_distill: bool = True  # train the single-pass head $v$ (SLA+SD); False: joint classifier only
    beta: float = 1.0  # $\beta$, weight of the head's label loss
    temperature: float = 1.0  # of the KL to the aggregate


def rotations(x: Tensor, num_transforms: int = 4) -> Tensor:
    """The transformed copies $t_j(x)$ stacked along the batch: rotations by $90° j$, shape `(M * B, C, H, W)`."""
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotations need square images (B, C, H, W), got {tuple(x.shape)}")
    return torch.cat([torch.rot90(x, j, dims=(-2, -1)) for j in range(num_transforms)])


def joint_labels(y: Tensor, num_transforms: int) -> Tensor:
    r"""Joint label $(y, j) \mapsto y M + j$ for every copy, in the order of `rotations`, shape `(M * B,)`."""
    return torch.cat([y * num_transforms + j for j in range(num_transforms)])


def aggregate(joint_logits: Tensor, num_transforms: int) -> Tensor:
    r"""$s_i = \frac{1}{M} \sum_j z_{ij}(t_j(x))$ from the joint logits of all copies.

    Args:
        joint_logits: Logits of the $M$ copies stacked as in `rotations`, shape `(M * B, N * M)`.
        num_transforms: $M$.

    Returns:
        Aggregated class logits $s$, shape `(B, N)`.
    """
    m = num_transforms
    z = joint_logits.view(m, -1, joint_logits.shape[-1] // m, m)  # (M copies, B, N, M transforms)
    own = torch.stack([z[j, :, :, j] for j in range(m)])  # (M, B, N): copy j read at its own transformation
    return own.mean(0)


class SLA(SelfDistiller):
    r"""Backbone + joint $(N \cdot M)$-way head; the backbone's own head is the self-distilled $v$."""

    def __init__(self, backbone: nn.Module, in_shape: Sequence[int], cfg: Config | None = None) -> None:
        super().__init__(backbone, in_shape)
        self.cfg = cfg or Config()
        last = feature_shapes(backbone, in_shape)[-1]
        numel = 1
        for d in last:
            numel *= d
        self.flatten = backbone.head.in_features == numel  # pool the last features the way the backbone does
        self.num_classes = backbone.head.out_features
        self.joint_head = nn.Linear(backbone.head.in_features, self.num_classes * self.cfg.num_transforms)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Single-pass head logits $v(x)$ `(B', N)` and joint logits `(B', N * M)`."""
        logits_v, features = self.backbone(x, return_features=True)
        h = features[-1]
        pooled = h.flatten(1) if self.flatten else h.flatten(2).mean(-1)
        return logits_v, self.joint_head(pooled)

    def single_logits(self, x: Tensor) -> Tensor:
        """SLA+SI: joint logits of the untransformed input at $j = 1$ (identity), `(B, N)`."""
        m = self.cfg.num_transforms
        return self._heads(x)[1].view(x.shape[0], self.num_classes, m)[:, :, 0]

    def aggregated_logits(self, x: Tensor) -> Tensor:
        """SLA+AG: aggregated logits $s$ over the $M$ rotations, `(B, N)` ($M$ forward passes)."""
        return aggregate(self._heads(rotations(x, self.cfg.num_transforms))[1], self.cfg.num_transforms)

    def forward(self, x: Tensor) -> Tensor:
        """Deployed single-pass logits `(B, N)`: the self-distilled head, or SLA+SI without it."""
        return self.backbone(x) if self.cfg.self_distill else self.single_logits(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Deployed logits `(B, N)` and `{"sla"[, "sd_kl", "sd_ce"]}`."""
        cfg, batch = self.cfg, x.shape[0]
        logits_v, joint = self._heads(rotations(x, cfg.num_transforms))  # (M*B, N), (M*B, N*M)
        losses = {"sla": F.cross_entropy(joint, joint_labels(y, cfg.num_transforms))}
        if not cfg.self_distill:
            return joint[:batch].view(batch, self.num_classes, -1)[:, :, 0], losses
        head = logits_v[:batch]  # $v(x)$ on the untransformed copy
        target = aggregate(joint, cfg.num_transforms).detach()  # (B, N), $P_{agg}$ held fixed
        losses["sd_kl"] = soft_kl(head, target, cfg.temperature)
        losses["sd_ce"] = cfg.beta * F.cross_entropy(head, y)
        return head, losses


class RotationAugmented(nn.Module):
    """Baseline "DA": the plain classifier trained on all $M$ rotations with the *same* label (invariance)."""

    def __init__(self, model: nn.Module, num_transforms: int = 4) -> None:
        super().__init__()
        self.model, self.num_transforms = model, num_transforms

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, N)` of the untransformed input."""
        return self.model(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits of the untransformed copy and `{"ce": CE over all copies}`."""
        logits = self.model(rotations(x, self.num_transforms))  # (M*B, N)
        return logits[: x.shape[0]], {"ce": F.cross_entropy(logits, y.repeat(self.num_transforms))}


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run sla_lee2020`
# ---------------------------------------------------------------------------------------------------------------------

SETTINGS = dict(dataset="digits", n_train=None, model=("mlp", 0.5), epochs=20, lr=0.05, batch_size=64)
Q_INVARIANCE = "Why would forcing invariance to an augmentation hurt, when augmentation usually helps?"
Q_KEPT = "How much of the aggregated-inference gain does the single-pass self-distilled head keep?"


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Plain classifier, rotation augmentation (DA), SLA (single / aggregated) and SLA+SD on sklearn digits."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row, versus
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot

    s = SETTINGS
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train or s["n_train"])
    epochs = ctx.epochs(s["epochs"])
    train = dict(epochs=epochs, lr=s["lr"], batch_size=s["batch_size"], device=ctx.device, progress=ctx.progress)
    m = Config().num_transforms

    def new() -> nn.Module:
        return build_model(s["model"][0], data.num_classes, data.input_shape, width=s["model"][1])

    class _Call(nn.Module):  # evaluate() needs a module: expose one prediction method of a task
        def __init__(self, task: SLA, method: str) -> None:
            super().__init__()
            self.task, self.method = task, method

        def forward(self, x: Tensor) -> Tensor:
            return getattr(self.task, self.method)(x)

    acc: dict[str, list[float]] = {}
    confused: dict[str, list[float]] = {}  # test 6s called 9 plus 9s called 6

    def record(name: str, model: nn.Module) -> None:
        acc.setdefault(name, []).append(evaluate(model, data))
        model.eval()
        with torch.no_grad():
            pred = model(data.x_test.to(ctx.device)).argmax(-1).cpu()
        y = data.y_test
        confused.setdefault(name, []).append(float(((y == 6) & (pred == 9)).sum() + ((y == 9) & (pred == 6)).sum()))

    for seed in ctx.seeds:
        seed_everything(seed)
        init = new()  # every variant's backbone starts from these weights
        plain = copy.deepcopy(init)
        fit(Supervised(plain), plain.parameters(), data, seed=seed, **train)
        record("baseline", plain)
        da = RotationAugmented(copy.deepcopy(init), m)
        fit(da, da.parameters(), data, seed=seed, **train)
        record("da", da)
        for name, cfg in (("sla", Config(self_distill=False)), ("sla_sd", Config())):
            seed_everything(seed)  # same initial joint head in both
            task = SLA(copy.deepcopy(init), data.input_shape, cfg)
            fit(task, task.parameters(), data, seed=seed, **train)
            record(f"{name}_ag", _Call(task, "aggregated_logits"))
            record("sla_si" if name == "sla" else "sla_sd", task)

    cols = model_row(new(), data.input_shape)
    agg_cols = {**cols, "flops": cols["flops"] * m}  # M forward passes (the joint head's extra cost is ignored)
    m_name = f"{s['model'][0]} w={s['model'][1]:g}"
    rows = [
        dict(name="baseline", label=f"Plain ({m_name})", role="baseline", **cols),
        dict(name="da", label="Rotation aug., shared label (DA)", role="baseline", **cols),
        dict(name="sla_si", label="SLA, single pass (SI)", role="ablation", **cols),
        dict(name="sla_ag", label=f"SLA, aggregated ({m} passes)", role="method", **agg_cols),
        dict(name="sla_sd", label="SLA+SD head, single pass", role="method", **cols),
        dict(name="sla_sd_ag", label="SLA+SD model, aggregated", role="ablation", **agg_cols),
    ]
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
        row["extra"] = {"confused_6_9": sum(confused[row["name"]]) / len(confused[row["name"]])}
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    six_nine = {row["name"]: row["extra"]["confused_6_9"] for row in rows}
    figure = save_accuracy_plot(rows, ctx, "sla_lee2020", title=f"SLA on {data.name} ({len(ctx.seeds)} seeds)")

    reproduced = beats(acc["sla_ag"], acc["baseline"]) and beats(acc["sla_sd"], acc["baseline"])
    da_drop = mean["da"] - mean["baseline"]
    invariance = (
        f"Here forced invariance {'hurt' if da_drop < 0 else 'did not hurt'} ({da_drop:+.2f} points vs the plain "
        f"classifier) and {'raised' if six_nine['da'] > six_nine['baseline'] else 'did not raise'} the 6/9 confusions; "
        "a rotated 6 is a 9, so one label for all rotations asks the classifier to merge two classes, which the "
        "joint (class, rotation) label avoids."
    )
    ag_gain, sd_gain = mean["sla_sd_ag"] - mean["baseline"], mean["sla_sd"] - mean["baseline"]

    def cmp(a: str, b: str) -> str:
        """`a` against `b` by the paired-seed `beats` rule, with the mean difference."""
        return versus(acc[a], acc[b], digits=2)

    if beats(acc["sla_sd_ag"], acc["baseline"]):
        kept = (
            f"About {100 * sd_gain / ag_gain:.0f}% of it: the single-pass head gains {sd_gain:+.2f} points over the "
            f"plain classifier where aggregation over {m} passes of the same model gains {ag_gain:+.2f}."
        )
    else:
        kept = (
            f"There is no aggregated gain to keep at this scale: the aggregated model {cmp('sla_sd_ag', 'baseline')} "
            f"the plain classifier. Against it, the single-pass self-distilled head {cmp('sla_sd', 'sla_sd_ag')}, so "
            + (
                "dropping aggregation costs nothing here: the single pass is more accurate, at 1/" + f"{m} of the cost."
                if beats(acc["sla_sd"], acc["sla_sd_ag"])
                else "the head loses part of the aggregated accuracy."
                if beats(acc["sla_sd_ag"], acc["sla_sd"])
                else "the head matches the aggregated accuracy within noise, at 1/" + f"{m} of the cost."
            )
        )
    return {
        "id": "sla_lee2020",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"{epochs * -(-data.n_train // s['batch_size'])} SGD steps per network; "
            f"backbone {m_name}; transformations = rotations by 0/90/180/270 degrees (exact on 8x8 digits); "
            f"every variant starts from the same backbone weights and sees the same batches (DA and SLA see all "
            f"{m} rotations of each example); SGD momentum 0.9, cosine lr {s['lr']}, batch {s['batch_size']}, wd "
            "5e-4; SLA+SD: beta=1, T=1; FLOPs of aggregated rows = M x backbone.",
        },
        "rows": rows,
        "claim": {
            "text": "Training on joint (class, rotation) labels and aggregating over the rotations (SLA+AG), or its "
            "single-pass self-distilled head (SLA+SD), is more accurate than the plain classifier.",
            "reproduced": reproduced,
            "evidence": f"SLA+AG {mean['sla_ag']:.2f}%, SLA+SD {mean['sla_sd']:.2f}% vs plain {mean['baseline']:.2f}% "
            f"(DA {mean['da']:.2f}%, SLA single pass {mean['sla_si']:.2f}%; mean over {len(ctx.seeds)} seed(s), "
            f"{data.name}).",
        },
        "answers": [
            {
                "question": Q_INVARIANCE,
                "answer": invariance,
                "evidence": f"accuracy: plain {mean['baseline']:.2f}%, DA {mean['da']:.2f}%, "
                f"SLA+AG {mean['sla_ag']:.2f}%;"
                f" test 6<->9 confusions per run: plain {six_nine['baseline']:.1f}, DA {six_nine['da']:.1f}, SLA+AG "
                f"{six_nine['sla_ag']:.1f}.",
            },
            {
                "question": Q_KEPT,
                "answer": kept,
                "evidence": f"SLA+SD model: head {mean['sla_sd']:.2f}%, aggregated {mean['sla_sd_ag']:.2f}%; plain "
                f"{mean['baseline']:.2f}%.",
            },
        ],
        "figures": [figure],
    }
