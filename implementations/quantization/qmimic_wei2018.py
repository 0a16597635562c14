r"""Quantization Mimic: Towards Very Tiny CNN for Object Detection (Wei, Pan, Qin, Ouyang & Yan, 2018).

Paper: [arXiv:1805.02152](https://arxiv.org/abs/1805.02152) · notes: `papers/qmimic_wei2018.md`

The feature maps of both networks go through the same uniform quantizer with step $\Delta$ and $2^b$ levels,

$$
Q(a) = \Delta \cdot \operatorname{round}\!\Big(\frac{\operatorname{clip}(a, 0, (2^b - 1)\Delta)}{\Delta}\Big),
$$

with the straight-through estimator in the backward pass. A full-precision teacher is fine-tuned with quantized
activations, then a tiny student whose activations are quantized the same way learns from the labels and from an
L2 mimic loss between the quantized feature maps,

$$
\mathcal{L} = \mathcal{L}_{\mathrm{cls}} + \lambda\, \frac{1}{2N} \sum_{i=1}^{N}
              \big\lVert Q\big(f_t^{(i)}\big) - Q\big(r(f_s^{(i)})\big) \big\rVert_2^2 ,
$$

where $r$ is a $1 \times 1$ convolution that maps the student's channels to the teacher's and $N$ counts the mimicked
locations (the proposals in the paper's detectors, the examples here). Quantizing both sides maps nearby values to
one level, so the student only has to land in the right bin.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._models import CNN1d
from implementations.quantization._base import beats, latency, round_ste

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "QuantReLU", "QuantizationMimic", "mimic_loss", "quantize_activations", "reproduce", "uniform_q"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; the quantizer is fixed for BN-normalised activations."""

    bits: int = 2  # $b$: $2^b$ levels $\{0, \Delta, \dots, (2^b - 1)\Delta\}$
    step: float = 0.538  # $\Delta$: optimal uniform step for a half Gaussian at 2 bits (HWGQ, Cai et al. 2017)
    mimic_weight: float = 1.0  # $\lambda$ per feature entry: the loss is divided by $C_t L$ (our choice)
    quantize_mimic: bool = True  # False: plain mimic of unquantized features (the control)


def uniform_q(a: Tensor, step: float, bits: int) -> Tensor:
    r"""$Q(a) = \Delta\,\operatorname{round}(\operatorname{clip}(a, 0, (2^b - 1)\Delta) / \Delta)$ with an STE.

    The gradient is 1 inside $[0, (2^b - 1)\Delta]$ and 0 outside (the clip's own gradient).

    Args:
        a: Activations, any shape.
        step: $\Delta > 0$.
        bits: $b$.

    Returns:
        Quantized activations, same shape, on the levels $\{0, \Delta, \dots, (2^b-1)\Delta\}$.
    """
    top = (2**bits - 1) * step
    return step * round_ste(a.clamp(0.0, top) / step)


class QuantReLU(nn.Module):
    """ReLU followed by the uniform quantizer: the activation of a network with quantized feature maps."""

    def __init__(self, step: float, bits: int) -> None:
        super().__init__()
        self.step, self.bits = step, bits

    def forward(self, x: Tensor) -> Tensor:
        """$Q(x)$, same shape (negative values go to level 0, as after a ReLU)."""
        return uniform_q(x, self.step, self.bits)


def quantize_activations(model: nn.Module, step: float, bits: int) -> nn.Module:
    """Replace every `nn.ReLU` of `model` by `QuantReLU(step, bits)`, in place; returns `model`."""
    for name, child in model.named_children():
        if isinstance(child, nn.ReLU):
            setattr(model, name, QuantReLU(step, bits))
        else:
            quantize_activations(child, step, bits)
    return model


def mimic_loss(student_feature: Tensor, teacher_feature: Tensor, step: float, bits: int, quantize: bool) -> Tensor:
    r"""$\frac{1}{2N} \sum_i \lVert Q(f_t^{(i)}) - Q(r(f_s^{(i)})) \rVert_2^2$ (without $Q$ when `quantize` is False).

    Args:
        student_feature: Adapted student features $r(f_s)$, `(N, C_t, L)`.
        teacher_feature: Teacher features $f_t$ (detached), `(N, C_t, L)`.
        step: $\Delta$ of the shared quantizer.
        bits: $b$ of the shared quantizer.
        quantize: Apply $Q$ to both sides.

    Returns:
        A scalar tensor.
    """
    if quantize:
        student_feature, teacher_feature = (
            uniform_q(student_feature, step, bits),
            uniform_q(teacher_feature, step, bits),
        )
    return (student_feature - teacher_feature).pow(2).flatten(1).sum(1).mean() / 2


class QuantizationMimic(nn.Module):
    r"""Quantized tiny student + $1\times1$ adapter, trained on CE and the mimic loss to a frozen teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Config()
        self.student = quantize_activations(student, self.cfg.step, self.cfg.bits)
        self.teacher = teacher
        self.adapter = None
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
            c_s = [m for m in student.modules() if isinstance(m, nn.Conv1d)][-1].out_channels
            c_t = [m for m in teacher.modules() if isinstance(m, nn.Conv1d)][-1].out_channels
            self.adapter = nn.Conv1d(c_s, c_t, 1)  # $r$

    def train(self, mode: bool = True) -> QuantizationMimic:
        """The teacher always stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Student logits `(B, K)`."""
        return self.student(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)`, `{"ce"}` and, with a teacher, the weighted `mimic` term on the last stage."""
        logits, features = self.student(x, return_features=True)
        losses = {"ce": F.cross_entropy(logits, y)}
        if self.teacher is not None:
            with torch.no_grad():
                _, teacher_features = self.teacher(x, return_features=True)
            cfg = self.cfg
            adapted = self.adapter(features[-1])  # $r(f_s)$, (B, C_t, L)
            mimic = mimic_loss(adapted, teacher_features[-1], cfg.step, cfg.bits, cfg.quantize_mimic)
            # lambda is per entry: divide by C_t * L so the term is a per-entry mean, comparable to the CE
            losses["mimic"] = cfg.mimic_weight / adapted[0].numel() * mimic
        return logits, losses

    @classmethod
    def smoke_task(cls, batch_size: int = 8, seed: int = 0) -> tuple[QuantizationMimic, Tensor, Tensor]:
        """A 2-4-4 student mimicking a quantized 8-16-16 teacher on MNIST-1D-shaped inputs."""
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        teacher = quantize_activations(CNN1d(1, 40, 10, (8, 16, 16)), Config().step, Config().bits)
        task = cls(CNN1d(1, 40, 10, (2, 4, 4)), teacher)
        x = torch.randn(batch_size, 1, 40, generator=gen)  # (B, 1, 40)
        y = torch.randint(0, 10, (batch_size,), generator=gen)  # (B,)
        return task, x, y


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run qmimic_wei2018`
# ---------------------------------------------------------------------------------------------------------------------

#: MNIST-1D classification stands in for detection; the student has 1/8 of the standard cnn1d's (32-64-64) channels.
SETTINGS = dict(
    dataset="mnist1d",
    teacher=(16, 32, 32),
    student=(4, 8, 8),
    teacher_epochs=8,
    finetune_epochs=2,
    epochs=8,
    lr=0.05,
    batch_size=128,
)
QUESTION = "Why should quantizing the teacher's features make them easier to imitate?"


@torch.no_grad()
def bin_agreement(task: QuantizationMimic, x: Tensor) -> float:
    r"""Percent of last-stage feature entries where $Q(r(f_s)) = Q(f_t)$ (the student hit the teacher's bin)."""
    task.eval()
    cfg = task.cfg
    _, features = task.student(x, return_features=True)
    _, teacher_features = task.teacher(x, return_features=True)
    student_bins = uniform_q(task.adapter(features[-1]), cfg.step, cfg.bits)
    teacher_bins = uniform_q(teacher_features[-1], cfg.step, cfg.bits)
    return 100.0 * float((student_bins - teacher_bins).abs().lt(cfg.step / 2).float().mean())


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """One FP teacher and its quantized fine-tune; quantized students alone, with plain mimic, with Q-mimic."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, model_row
    from implementations._runner import save_accuracy_plot

    s, cfg = SETTINGS, Config()
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs, teacher_epochs, finetune_epochs = (
        ctx.epochs(s[k]) for k in ("epochs", "teacher_epochs", "finetune_epochs")
    )
    train = dict(lr=s["lr"], batch_size=s["batch_size"], device=ctx.device, progress=False)
    channels, length = data.input_shape

    def new(widths: tuple[int, ...]) -> CNN1d:
        return CNN1d(channels, length, data.num_classes, widths)

    # one teacher for all seeds (trained with the first seed): the seeds vary the students
    seed_everything(ctx.seeds[0])
    teacher = new(s["teacher"])
    fit(Supervised(teacher), teacher.parameters(), data, epochs=teacher_epochs, seed=ctx.seeds[0], **train)
    # step (2) of the pipeline: fine-tune the teacher with quantized feature maps
    teacher_q = quantize_activations(copy.deepcopy(teacher), cfg.step, cfg.bits)
    fit(Supervised(teacher_q), teacher_q.parameters(), data, epochs=finetune_epochs, seed=ctx.seeds[0], **train)
    acc: dict[str, list[float]] = {"teacher_fp": [evaluate(teacher, data)], "teacher_q": [evaluate(teacher_q, data)]}
    kept: dict[str, nn.Module] = {"teacher_fp": teacher, "teacher_q": teacher_q}  # first seed's models, for timing
    variants = {  # name: (student widths, teacher to mimic, config)
        "q_student": (s["student"], None, cfg),
        "q_mimic_fp": (s["student"], teacher, Config(quantize_mimic=False)),
        "qmimic": (s["student"], teacher_q, cfg),
    }
    agreement: dict[str, list[float]] = {}
    for seed in ctx.seeds:
        seed_everything(seed)
        init = new(s["student"]).state_dict()  # every student starts from the same weights
        for name, (widths, source, variant) in variants.items():
            student = new(widths)
            student.load_state_dict(init)
            torch.manual_seed(seed)  # same adapter initialisation for both mimic variants
            task = QuantizationMimic(student, source, variant)
            fit(task, [p for p in task.parameters() if p.requires_grad], data, epochs=epochs, seed=seed, **train)
            acc.setdefault(name, []).append(evaluate(task, data))
            kept.setdefault(name, task.student)  # what is deployed: the student with quantized ReLUs, no adapter
            if source is not None:
                agreement.setdefault(name, []).append(bin_agreement(task, data.x_test))

    def cols(name: str) -> dict[str, Any]:
        # `bits` and `bytes` describe the weights, which stay fp32 in this paper (bits = 32, dense fp32 bytes); the
        # activation bit width goes in extra. Latency: batch 1 on the CPU, the activation quantizer simulated in fp32.
        row = model_row(kept[name], data.input_shape)
        return {**row, "bits": 32.0, "latency_ms": latency(kept[name], data.input_shape, ctx.profile)}

    q_extra = {"activation_bits": float(cfg.bits), "step": cfg.step}
    fp_extra = {"activation_bits": 32.0}
    tag = "-".join(map(str, s["student"]))
    rows = [
        dict(name="teacher_fp", label="Teacher, FP (16-32-32)", role="teacher", **cols("teacher_fp"), extra=fp_extra),
        dict(
            name="teacher_q",
            label=f"Teacher, {cfg.bits}-bit features, fp32 weights",
            role="teacher",
            **cols("teacher_q"),
            extra=q_extra,
        ),
        dict(
            name="q_student",
            label=f"Student {tag}, {cfg.bits}-bit features, labels only",
            role="baseline",
            **cols("q_student"),
            extra=q_extra,
        ),
        dict(
            name="q_mimic_fp", label="+ plain mimic (FP features)", role="ablation", **cols("q_mimic_fp"), extra=q_extra
        ),
        dict(
            name="qmimic",
            label="+ quantization mimic",
            role="method",
            **cols("qmimic"),
            extra={**q_extra, "mimic_weight": cfg.mimic_weight},
        ),
    ]
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    figure = save_accuracy_plot(rows, ctx, "qmimic_wei2018", title=f"Quantization Mimic on {data.name}")
    easier = beats(acc["qmimic"], acc["q_mimic_fp"])
    reproduced = beats(acc["qmimic"], acc["q_student"]) and easier
    hit = {k: sum(v) / len(v) for k, v in agreement.items()}
    answer = (
        f"At our scale quantized targets {'were' if easier else 'were not'} the easier ones to use: mimicking them "
        f"{'beat' if easier else 'did not beat'} mimicking full-precision features, and the student put "
        f"{hit['qmimic']:.0f}% of its adapted feature entries in the teacher's bin (vs {hit['q_mimic_fp']:.0f}% for "
        f"the plain mimic, counted with the same quantizer)."
    )
    return {
        "id": "qmimic_wei2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"classification on MNIST-1D stands in for detection (no detection heads or proposals; the mimic "
            f"covers the whole last feature map). One teacher cnn1d {s['teacher']} (seed {ctx.seeds[0]}, "
            f"{teacher_epochs} epochs), fine-tuned {finetune_epochs} epochs with {cfg.bits}-bit uniform feature maps "
            f"(step {cfg.step}); the seeds vary the students (cnn1d {s['student']}, same "
            f"initialisation, {epochs} epochs each); activations quantized, weights full precision; "
            f"mimic weight {cfg.mimic_weight} per feature entry, 1x1 conv adapter; SGD momentum 0.9, cosine lr "
            f"{s['lr']}, batch {s['batch_size']}, wd 5e-4. Size columns: `bits` is the weight bit width (32: the "
            f"paper quantizes feature maps, not weights), `bytes` the dense fp32 parameter storage, "
            f"extra.activation_bits the feature-map bit width; latency at batch 1 on one CPU thread (first seed's "
            f"models; the activation quantizer is simulated in fp32, so it shows no int speed-up).",
        },
        "rows": rows,
        "claim": {
            "text": "A very tiny network with quantized feature maps learns better by mimicking the quantized feature "
            "maps of a quantized teacher than from labels alone or by mimicking full-precision features.",
            "reproduced": reproduced,
            "evidence": f"student {tag} ({cfg.bits}-bit features): quantization mimic {mean['qmimic']:.2f}% vs labels "
            f"only {mean['q_student']:.2f}% and plain mimic {mean['q_mimic_fp']:.2f}% (quantized teacher "
            f"{mean['teacher_q']:.2f}%; {len(ctx.seeds)} seed(s); 'better' = paired mean difference above one "
            "standard error, against both).",
        },
        "answers": [
            {
                "question": QUESTION,
                "answer": answer,
                "evidence": f"{tag}: quantization mimic {mean['qmimic']:.2f}%, plain mimic {mean['q_mimic_fp']:.2f}%, "
                f"no mimic {mean['q_student']:.2f}%; bin agreement on the test set {hit['qmimic']:.1f}% vs "
                f"{hit['q_mimic_fp']:.1f}%.",
            }
        ],
        "figures": [figure],
    }
