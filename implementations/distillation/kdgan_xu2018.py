r"""Training Shallow and Thin Networks for Acceleration via Knowledge Distillation with Conditional Adversarial
Networks (Xu, Hsu & Huang, ICLR 2018 workshop).

Paper: [arXiv:1709.00513](https://arxiv.org/abs/1709.00513) · notes: `papers/kdgan_xu2018.md`

The distance between teacher and student outputs is learned instead of fixed. A discriminator $D$ sees a logit
vector $z$ together with the label $y$ it belongs to and tells teacher logits $z_t = T(x)$ (real) from student logits
$z_s = S(x)$ (fake); the student plays the generator, alongside the supervised loss:

$$
\max_D \; \mathbb{E}\big[\log D(z_t \mid y) + \log\big(1 - D(z_s \mid y)\big)\big],
$$

$$
\min_S \; \mathbb{E}\big[-\log D(z_s \mid y)\big] \cdot w_{\mathrm{adv}}
    + w_{\mathrm{ce}}\, \mathrm{CE}(y, z_s) + w_{1}\, \lVert z_s - z_t \rVert_1 ,
$$

with the non-saturating generator loss and an optional $L_1$ term on the logits (the pix2pix recipe for conditional
adversarial networks). Both players are updated on every batch: the discriminator loss uses the student's logits
detached, and the student's adversarial term runs through a copy of $D$'s parameters without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from implementations.distillation._base import Distiller

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["AdversarialKD", "Config", "Discriminator", "discriminator_loss", "generator_loss", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Loss weights and discriminator size (scaled to 10-class toy data)."""

    adversarial_weight: float = 1.0  # $w_{\mathrm{adv}}$
    ce_weight: float = 1.0  # $w_{\mathrm{ce}}$, supervised cross-entropy
    l1_weight: float = 0.0  # $w_1$, optional L1 on the logits
    hidden: int = 64  # width of the discriminator's two hidden layers


class Discriminator(nn.Module):
    r"""$D(z \mid y)$: an MLP on a logit vector concatenated with the one-hot label, returning a real/fake logit."""

    def __init__(self, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(
            nn.Linear(2 * num_classes, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Real/fake logits `(B,)` for logit vectors `(B, K)` conditioned on labels `(B,)`."""
        condition = F.one_hot(labels, self.num_classes).to(logits.dtype)  # (B, K)
        return self.net(torch.cat([logits, condition], dim=1)).squeeze(1)


def discriminator_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    r"""$-\log D(z_t) - \log(1 - D(z_s))$ with $D = \sigma(\text{score})$, averaged over the batch."""
    return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()


def generator_loss(fake_scores: Tensor) -> Tensor:
    r"""Non-saturating generator loss $-\log D(z_s) = \mathrm{softplus}(-\text{score})$, averaged over the batch."""
    return F.softplus(-fake_scores).mean()


class AdversarialKD(Distiller):
    """Student trained against a label-conditional discriminator on logits, plus CE (and optionally L1)."""

    def __init__(
        self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None, num_classes: int | None = None
    ) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()
        if num_classes is None:
            head = [m for m in teacher.modules() if isinstance(m, nn.Linear)][-1]
            num_classes = head.out_features
        self.discriminator = Discriminator(num_classes, self.cfg.hidden)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and `{"disc", "adv", "ce"[, "l1"]}`; `disc` only reaches the discriminator."""
        logits_s = self.student(x)  # (B, K)
        with torch.no_grad():
            logits_t = self.teacher(x)  # (B, K)
        # Discriminator step: teacher logits are real, detached student logits are fake.
        disc = discriminator_loss(self.discriminator(logits_t, y), self.discriminator(logits_s.detach(), y))
        # Student step: the same D with its parameters detached, so this term only moves the student.
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        fake_scores = functional_call(self.discriminator, frozen, (logits_s, y))
        losses = {
            "disc": disc,
            "adv": self.cfg.adversarial_weight * generator_loss(fake_scores),
            "ce": self.cfg.ce_weight * F.cross_entropy(logits_s, y),
        }
        if self.cfg.l1_weight > 0:
            losses["l1"] = self.cfg.l1_weight * (logits_s - logits_t).abs().sum(1).mean()
        return logits_s, losses


class _LogitDistance(Distiller):
    """Baseline: CE plus a fixed distance on the logits, `l2` (mean squared) or `l1`."""

    def __init__(self, student: nn.Module, teacher: nn.Module, kind: str = "l2", weight: float = 1.0) -> None:
        super().__init__(student, teacher)
        self.kind, self.weight = kind, weight

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits_s = self.student(x)
        with torch.no_grad():
            logits_t = self.teacher(x)
        diff = logits_s - logits_t
        distance = diff.pow(2).sum(1).mean() if self.kind == "l2" else diff.abs().sum(1).mean()
        return logits_s, {"ce": F.cross_entropy(logits_s, y), self.kind: self.weight * distance}


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run kdgan_xu2018`
# ---------------------------------------------------------------------------------------------------------------------

#: sklearn digits on a CPU: MLP teacher 64-256-256-10; thin students 64-8-8-10 and 64-32-32-10. Each loss's own
#: hyperparameter is tuned once, for the thinner student and seed 0, on a held-out fifth of the training set.
SMALL = dict(
    dataset="digits",
    teacher_width=1.0,
    widths=(1 / 32, 1 / 8),
    teacher_epochs=40,
    epochs=25,
    lr=3e-3,
    grid={"kd": (2.0, 4.0, 8.0), "l2": (0.01, 0.1, 1.0), "adv": (0.03, 0.1, 0.3)},
)
OPEN_QUESTION = (
    "Does a learned adversarial loss beat a plain L2 or KL distance on logits once both are tuned, or is its benefit "
    "confined to very small students?"
)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher; thin students of two widths trained on labels, KD, L2 on logits, and the adversarial loss."""
    from dataclasses import replace

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
    train = dict(batch_size=128, device="cpu", progress=False)

    def new(width: float) -> nn.Module:
        return build_model("mlp", data.num_classes, data.input_shape, width=width)

    seed_everything(0)  # one teacher shared by every student and seed
    teacher = new(s["teacher_width"])
    fit(Supervised(teacher), teacher.parameters(), data, epochs=ctx.epochs(s["teacher_epochs"]), lr=0.05, **train)
    teacher.eval().requires_grad_(False)

    def make(variant: str, student: nn.Module, value: float) -> nn.Module:
        if variant == "labels":
            return Supervised(student)
        if variant == "kd":
            return KD(student, teacher, KDConfig(temperature=value))
        if variant == "l2":
            return _LogitDistance(student, teacher, "l2", value)
        return AdversarialKD(student, teacher, replace(cfg, adversarial_weight=value), data.num_classes)

    def run(variant: str, width: float, value: float, seed: int, train_data: Any) -> float:
        seed_everything(seed)  # same student initialisation for every loss
        student = new(width)
        task = make(variant, student, value)
        params = task.trainable_parameters() if isinstance(task, Distiller) else student.parameters()
        fit(task, params, train_data, epochs=epochs, lr=s["lr"], seed=seed, optimizer="adamw", weight_decay=0, **train)
        return evaluate(student, train_data)

    # Tune each loss's hyperparameter on a held-out fifth of the training set (thin student, seed 0).
    n_fit = data.n_train * 4 // 5
    tune = replace(
        data,
        x_train=data.x_train[:n_fit],
        y_train=data.y_train[:n_fit],
        x_test=data.x_train[n_fit:],
        y_test=data.y_train[n_fit:],
    )
    best = {"labels": 0.0}
    for variant, values in s["grid"].items():
        scores = [run(variant, s["widths"][0], v, 0, tune) for v in values]
        best[variant] = values[max(range(len(values)), key=scores.__getitem__)]
    acc: dict[str, list[float]] = {"teacher": [evaluate(teacher, data)]}  # one shared teacher: a single value
    for seed in ctx.seeds:
        for width in s["widths"]:
            for variant, value in best.items():
                acc.setdefault(f"{variant}_w{round(256 * width)}", []).append(run(variant, width, value, seed, data))

    labels = {
        "labels": "labels only",
        "kd": f"KD (T={best['kd']:g})",
        "l2": f"CE + {best['l2']:g} L2 on logits",
        "adv": f"CE + {best['adv']:g} adversarial",
    }
    roles = {"labels": "baseline", "kd": "baseline", "l2": "ablation", "adv": "method"}
    rows = [dict(name="teacher", label="Teacher MLP 64-256-256-10", role="teacher", **model_row(teacher, (1, 8, 8)))]
    for width in s["widths"]:
        h = round(256 * width)
        cols = model_row(new(width), data.input_shape)
        for variant in best:
            role = roles[variant] if width == s["widths"][0] else "ablation"
            rows.append(dict(name=f"{variant}_w{h}", label=f"64-{h}-{h}: {labels[variant]}", role=role, **cols))
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    m = {r["name"]: r["accuracy"]["mean"] for r in rows}
    figure = save_accuracy_plot(rows, ctx, "kdgan_xu2018", title=f"Adversarial KD on {data.name}")

    tiny, small = (round(256 * w) for w in s["widths"])
    gap = {h: m[f"adv_w{h}"] - max(m[f"kd_w{h}"], m[f"l2_w{h}"]) for h in (tiny, small)}
    answer = (
        f"With each loss's weight or temperature tuned on held-out data, the adversarial loss is "
        f"{abs(gap[tiny]):.1f} points {'above' if gap[tiny] > 0 else 'below'} the better fixed distance for the "
        f"{tiny}-unit student and {abs(gap[small]):.1f} points {'above' if gap[small] > 0 else 'below'} it for the "
        f"{small}-unit student"
        + (", so its edge is larger for the smaller student." if gap[tiny] > gap[small] else ".")
    )
    evidence = (
        "; ".join(
            f"{h} units: adv {m[f'adv_w{h}']:.2f}%, KD {m[f'kd_w{h}']:.2f}%, L2 {m[f'l2_w{h}']:.2f}%, labels "
            f"{m[f'labels_w{h}']:.2f}%"
            for h in (tiny, small)
        )
        + f"; tuned on validation: {', '.join(f'{k}={v:g}' for k, v in best.items() if k != 'labels')}."
    )
    return {
        "id": "kdgan_xu2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"one MLP teacher (seed 0, SGD lr 0.05, {ctx.epochs(s['teacher_epochs'])} epochs); students "
            f"MLP 64-{tiny}-{tiny}-10 and 64-{small}-{small}-10, AdamW lr {s['lr']} (student and discriminator "
            f"together), cosine, batch 128, no weight decay, same epochs and seeds for every loss; discriminator MLP "
            f"(2K-{cfg.hidden}-{cfg.hidden}-1) on [logits, one-hot label], one D and one S update per batch, "
            f"w_ce={cfg.ce_weight}, w_l1={cfg.l1_weight}; KD alpha=0.9; KD temperature, L2 weight and adversarial "
            f"weight picked from {s['grid']} on a held-out fifth of the training set (thin student, seed 0).",
        },
        "rows": rows,
        "claim": {
            "text": "For a small student, the adversarially learned loss plus supervision beats training on labels "
            "alone and beats plain KD.",
            "reproduced": beats(acc[f"adv_w{tiny}"], acc[f"labels_w{tiny}"])
            and beats(acc[f"adv_w{tiny}"], acc[f"kd_w{tiny}"]),
            "evidence": f"{tiny}-unit student: adversarial {m[f'adv_w{tiny}']:.2f}% vs labels "
            f"{m[f'labels_w{tiny}']:.2f}% and KD {m[f'kd_w{tiny}']:.2f}% (teacher {m['teacher']:.2f}%), mean over "
            f"{len(ctx.seeds)} seed(s).",
        },
        "answers": [{"question": OPEN_QUESTION, "answer": answer, "evidence": evidence}],
        "figures": [figure],
    }
