"""The small-scale reproduction of Quantization Mimic (Wei et al., 2018): quantized students on MNIST-1D trained alone,
with plain mimic of full-precision features and with Q-mimic of a quantized teacher."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations._models import CNN1d
from implementations.quantization._base import beats, latency
from implementations.quantization.qmimic_wei2018 import Config, QuantizationMimic, quantize_activations, uniform_q

if TYPE_CHECKING:
    from implementations._harness import RunContext


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
