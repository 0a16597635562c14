r"""FitNets: Hints for Thin Deep Nets (Romero et al., 2015).

Paper: [arXiv:1412.6550](https://arxiv.org/abs/1412.6550) · notes: `papers/fitnets_romero2015.md`

Training is stage-wise. Stage 1 trains the student's layers up to a *guided* layer $v_g$, plus a convolutional
regressor $r$, to predict the teacher's *hint* layer $u_h$ (Eq. 3):

$$
\mathcal{L}_{HT}(W_{\mathrm{Guided}}, W_r) = \tfrac{1}{2}\,\big\lVert u_h(x; W_{\mathrm{Hint}})
    - r\big(v_g(x; W_{\mathrm{Guided}}); W_r\big) \big\rVert^2 ,
$$

where $r$ is a convolution with kernel size $k = n_g - n_h + 1$ per spatial axis, so that its output has the hint's
spatial size. Stage 2 trains the whole student with KD (Eq. 2), with $\lambda$ annealed linearly:

$$
\mathcal{L}_{KD}(W_S) = \mathcal{H}(y, P_S) + \lambda\, \mathcal{H}\big(P_T^{\tau}, P_S^{\tau}\big).
$$
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

__all__ = ["Config", "FitNet", "hint_loss", "make_regressor", "reproduce", "soft_cross_entropy"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; the KD settings are those of the FitNets baseline in Yim et al. (2017)."""

    hint_layer: int = 1  # index of the teacher feature used as hint $u_h$ (the middle stage)
    guided_layer: int = 1  # index of the student feature used as guided layer $v_g$ (the middle stage)
    temperature: float = 3.0  # softening $\tau$ of stage 2
    kd_weight_start: float = 4.0  # $\lambda$ at the start of stage 2
    kd_weight_end: float = 1.0  # $\lambda$ at the end of stage 2 (linear decay)


def hint_loss(regressed: Tensor, hint: Tensor) -> Tensor:
    r"""$\tfrac12 \lVert u_h - r(v_g) \rVert^2$ summed over features, averaged over the batch.

    Args:
        regressed: Regressor output $r(v_g)$, shape `(B, C_h, *S_h)`.
        hint: Teacher hint $u_h$, same shape.

    Returns:
        A scalar tensor.
    """
    return 0.5 * (hint - regressed).pow(2).flatten(1).sum(dim=1).mean()


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    r"""$\mathcal{H}(P_T^{\tau}, P_S^{\tau}) = -\sum_k P_{T,k}^{\tau} \log P_{S,k}^{\tau}$, averaged over the batch.

    Args:
        student_logits: Student logits, shape `(B, K)`.
        teacher_logits: Teacher logits, shape `(B, K)`.
        temperature: $\tau$.
    """
    p_t = F.softmax(teacher_logits / temperature, dim=-1)  # (B, K)
    return -(p_t * F.log_softmax(student_logits / temperature, dim=-1)).sum(dim=-1).mean()


def make_regressor(guided_shape: tuple[int, ...], hint_shape: tuple[int, ...]) -> nn.Module:
    r"""Convolutional regressor $r$ from a `(C_g, *S_g)` guided feature to a `(C_h, *S_h)` hint, $k = n_g - n_h + 1$.

    Raises:
        ValueError: The guided layer is spatially smaller than the hint (no valid kernel exists).
    """
    kernel = tuple(g - h + 1 for g, h in zip(guided_shape[1:], hint_shape[1:], strict=True))
    if any(k < 1 for k in kernel):
        raise ValueError(f"guided feature {guided_shape} is smaller than the hint {hint_shape}")
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[len(kernel)]
    return conv(guided_shape[0], hint_shape[0], kernel)


class FitNet(Distiller):
    """Hint-based training (`stage = "hint"`), then KD with a linearly annealed weight (`stage = "kd"`).

    The regressor is built from the feature shapes of a probe input of shape `in_shape`, or, when `in_shape` is
    None, on the first call of `forward_train` (create the task with `in_shape` before building an optimiser).
    In the hint stage, only the student's layers up to the guided layer and the regressor receive gradients.
    """

    def __init__(
        self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None, in_shape: tuple[int, ...] | None = None
    ) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()
        self.stage = "hint"
        self.anneal_steps: int | None = None  # set to the number of stage-2 steps to anneal lambda over them
        self.kd_steps = 0
        self.regressor: nn.Module | None = None
        if in_shape is not None:
            with torch.no_grad():
                self._build(torch.zeros(2, *in_shape))

    def _build(self, x: Tensor) -> None:
        was_training = self.student.training
        self.student.eval()
        _, feats_s = self.student(x, return_features=True)
        _, feats_t = self.teacher(x, return_features=True)
        self.student.train(was_training)
        guided, hint = feats_s[self.cfg.guided_layer], feats_t[self.cfg.hint_layer]
        self.regressor = make_regressor(tuple(guided.shape[1:]), tuple(hint.shape[1:])).to(x.device)

    def kd_weight(self) -> float:
        r"""$\lambda$ after `kd_steps` stage-2 steps: linear from `kd_weight_start` to `kd_weight_end`."""
        if not self.anneal_steps:
            return self.cfg.kd_weight_start
        progress = min(1.0, self.kd_steps / self.anneal_steps)
        return self.cfg.kd_weight_start + progress * (self.cfg.kd_weight_end - self.cfg.kd_weight_start)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and `{"hint"}` (stage 1) or `{"ce", "kd"}` (stage 2)."""
        if self.regressor is None:
            with torch.no_grad():
                self._build(x)
        logits_s, feats_s = self.student(x, return_features=True)
        with torch.no_grad():
            logits_t, feats_t = self.teacher(x, return_features=True)
        if self.stage == "hint":
            regressed = self.regressor(feats_s[self.cfg.guided_layer])  # (B, C_h, *S_h)
            return logits_s, {"hint": hint_loss(regressed, feats_t[self.cfg.hint_layer])}
        weight = self.kd_weight()
        if self.training:
            self.kd_steps += 1
        kd = soft_cross_entropy(logits_s, logits_t, self.cfg.temperature)
        return logits_s, {"ce": F.cross_entropy(logits_s, y), "kd": weight * kd}


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run fitnets_romero2015`
# ---------------------------------------------------------------------------------------------------------------------

#: MNIST-1D: a wide 3-conv teacher and a 4-times thinner, deeper 4-conv student (both from `_models.CNN1d`).
SMALL = dict(
    dataset="mnist1d",
    teacher_channels=(16, 32, 32),
    student_channels=(8, 16, 16, 16),
    teacher_epochs=10,
    hint_epochs=2,
    epochs=8,
    lr=1e-2,
    batch_size=256,
)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Student alone, KD, and FitNets with the hint pair at three depths, over `ctx.seeds`."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row
    from implementations._models import CNN1d
    from implementations._runner import save_accuracy_plot

    s = SMALL
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    c_in, length = data.input_shape
    hint_epochs, epochs = ctx.epochs(s["hint_epochs"]), ctx.epochs(s["epochs"])
    train = dict(lr=s["lr"], batch_size=s["batch_size"], device=ctx.device, progress=False, optimizer="adamw")
    steps_per_epoch = -(-data.n_train // s["batch_size"])

    def new_student() -> nn.Module:
        return CNN1d(c_in, length, data.num_classes, s["student_channels"])

    seed_everything(0)  # one teacher shared by every student and seed
    teacher = CNN1d(c_in, length, data.num_classes, s["teacher_channels"])
    fit(Supervised(teacher), teacher.parameters(), data, epochs=ctx.epochs(s["teacher_epochs"]), **train)

    pairs = {"fitnet_shallow": 0, "fitnet": 1, "fitnet_deep": 2}  # hint = guided = stage index
    acc: dict[str, list[float]] = {"teacher": [evaluate(teacher, data)]}  # one shared teacher: a single value
    train_acc: dict[str, list[float]] = {}
    for seed in ctx.seeds:
        for name in ["student", "student_kd", *pairs]:
            seed_everything(seed)  # every student starts from the same initialisation
            student = new_student()
            if name == "student":  # baselines get the hint stage's epochs too: equal total epochs
                fit(Supervised(student), student.parameters(), data, epochs=hint_epochs + epochs, seed=seed, **train)
            else:
                layer = pairs.get(name, 1)
                task = FitNet(student, teacher, Config(hint_layer=layer, guided_layer=layer), data.input_shape)
                if name == "student_kd":
                    task.stage = "kd"
                    task.anneal_steps = (hint_epochs + epochs) * steps_per_epoch
                    fit(task, task.trainable_parameters(), data, epochs=hint_epochs + epochs, seed=seed, **train)
                else:
                    fit(task, task.trainable_parameters(), data, epochs=hint_epochs, seed=seed, **train)
                    task.stage, task.anneal_steps = "kd", epochs * steps_per_epoch
                    fit(task, student.parameters(), data, epochs=epochs, seed=seed, **train)
            acc.setdefault(name, []).append(evaluate(student, data))
            train_acc.setdefault(name, []).append(evaluate(student, data, split="train"))

    t_cols, s_cols = model_row(teacher, data.input_shape), model_row(new_student(), data.input_shape)
    depth = len(s["student_channels"])
    rows = [
        dict(name="teacher", label=f"Teacher (3 conv, {s['teacher_channels']})", role="teacher", **t_cols),
        dict(name="student", label="Thin deep student alone", role="baseline", **s_cols),
        dict(name="student_kd", label="Student + KD", role="baseline", **s_cols),
        *[
            dict(
                name=name,
                label=f"FitNet, hint pair at stage {layer + 1}/{depth}" + (" (middle)" if name == "fitnet" else ""),
                role="method" if name == "fitnet" else "ablation",
                **s_cols,
                extra={"guided_layer": float(layer), "hint_layer": float(layer)},
            )
            for name, layer in pairs.items()
        ],
    ]
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
        if row["name"] in train_acc:
            row["extra"] = {**row.get("extra", {}), "train_accuracy": accuracy_stats(train_acc[row["name"]])["mean"]}
    m = {row["name"]: row["accuracy"]["mean"] for row in rows}
    tr = {k: accuracy_stats(v)["mean"] for k, v in train_acc.items()}
    figure = save_accuracy_plot(rows, ctx, "fitnets_romero2015", title=f"FitNets on {data.name}")

    best, worst = max(pairs, key=m.get), min(pairs, key=m.get)
    a1 = (
        f"At our scale the pair at stage {pairs[best] + 1} of {depth} worked best ({m[best]:.1f}%); "
        + ("the middle pair, as in the paper, was the best choice." if best == "fitnet" else "not the middle pair.")
        + (
            " The deepest pair was the worst, consistent with over-regularisation."
            if worst == "fitnet_deep"
            else " The deepest pair was not the worst."
        )
    )
    ev1 = ", ".join(f"pair at stage {layer + 1}: {m[n]:.2f}%" for n, layer in pairs.items())
    ev1 += f"; KD alone {m['student_kd']:.2f}%"
    d_test, d_train = m["fitnet"] - m["student_kd"], tr["fitnet"] - tr["student_kd"]
    if d_train > 0 and d_test > 0:
        a2 = "Here it acted mainly as an optimisation aid: hint pre-training raised training accuracy and test accuracy"
    elif d_test > 0:
        a2 = "Here it acted as a regulariser: test accuracy rose although training accuracy did not"
    else:
        a2 = "Neither at our scale: hint pre-training did not improve test accuracy over KD"
    a2 += f" (vs KD alone: train {d_train:+.1f}, test {d_test:+.1f} points)."
    ev2 = (
        f"train/test accuracy: KD {tr['student_kd']:.2f}/{m['student_kd']:.2f}%, hints+KD {tr['fitnet']:.2f}/"
        f"{m['fitnet']:.2f}%, student alone {tr['student']:.2f}/{m['student']:.2f}%"
    )
    return {
        "id": "fitnets_romero2015",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": hint_epochs + epochs,
            "selection": "last",
            "notes": f"teacher CNN1d {s['teacher_channels']} (seed 0) shared by all students; student CNN1d "
            f"{s['student_channels']}; FitNets: {hint_epochs} hint epochs (1x1 conv regressor, same lengths) then "
            f"{epochs} KD epochs (tau={Config().temperature}, lambda {Config().kd_weight_start}->"
            f"{Config().kd_weight_end}); baselines train {hint_epochs + epochs} epochs; AdamW lr {s['lr']}, batch "
            f"{s['batch_size']}, cosine per stage",
        },
        "rows": rows,
        "claim": {
            "text": "Hint pre-training followed by KD trains a thin, deeper student better than KD alone or plain "
            "training of the same student.",
            "reproduced": beats(acc["fitnet"], acc["student_kd"]) and beats(acc["fitnet"], acc["student"]),
            "evidence": f"FitNet {m['fitnet']:.2f}% vs KD {m['student_kd']:.2f}% vs alone {m['student']:.2f}% "
            f"(teacher {m['teacher']:.2f}%), mean over {len(ctx.seeds)} seed(s) on {data.name}.",
        },
        "answers": [
            {
                "question": "How should the hint and guided layers be chosen, given that a deep guided layer "
                "over-regularises the student?",
                "answer": a1,
                "evidence": ev1,
            },
            {
                "question": "Is hint-based pre-training mainly an optimisation aid (a better starting point) or a "
                "regulariser?",
                "answer": a2,
                "evidence": ev2,
            },
        ],
        "figures": [figure],
    }
