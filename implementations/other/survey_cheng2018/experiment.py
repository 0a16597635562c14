r"""The small-scale illustration of the survey of Cheng et al. (2018): one method per compression family on the same
trained MLP on MNIST-1D, plus two combinations, in one table and an accuracy-vs-bytes (Pareto) plot."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from implementations.other.survey_cheng2018 import Config, SurveyComparison, low_rank_mlp, pareto_front

if TYPE_CHECKING:
    from implementations._harness import RunContext


SMALL = dict(epochs=10, lr=0.05, batch_size=128)

#: The registry's open question, verbatim.
OPEN_QUESTION = "Which of the four families combine well, and which compete for the same redundancy?"


def _linear_counts(model: nn.Module) -> tuple[int, int, int, int]:
    """(weights, non-zero weights, biases, layers) of the `nn.Linear` layers."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    weights = sum(m.weight.numel() for m in layers)
    nonzero = sum(int(torch.count_nonzero(m.weight.detach())) for m in layers)
    biases = sum(m.bias.numel() for m in layers if m.bias is not None)
    return weights, nonzero, biases, len(layers)


def _storage(model: nn.Module, bits: int, sparse: bool) -> int:
    """Bytes: `bits`-bit weights (dense, or non-zeros with 32-bit indices), fp32 biases, a fp32 scale per int layer."""
    weights, nonzero, biases, layers = _linear_counts(model)
    values = nonzero * (bits + 32) if sparse else weights * bits
    return (values + 7) // 8 + 4 * biases + (4 * layers if bits < 32 else 0)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """One method per family on the same trained MLP, plus two combinations, in one table and a Pareto plot."""
    from torch.nn.utils import prune

    from implementations._data import load_dataset
    from implementations._harness import evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, count_flops, latency_ms
    from implementations.distillation.kd_hinton2015 import KD
    from implementations.distillation.kd_hinton2015 import Config as KDConfig
    from implementations.other._base import fit_ce
    from implementations.other.cs231n_han2017 import magnitude_prune
    from implementations.quantization._base import int8_kernels, int8_ptq

    s, cfg = SMALL, Config()
    data = load_dataset("mnist1d", ctx.data_dir, ctx.download, n_train=ctx.n_train)
    k = data.num_classes
    epochs, tune = ctx.epochs(s["epochs"]), ctx.epochs(cfg.finetune_epochs)

    def pruned_copy(model: nn.Module, sparsity: float, seed: int) -> nn.Module:
        out = magnitude_prune(copy.deepcopy(model), sparsity)
        fit_ce(out, data, ctx, tune, s["lr"] / 5, seed, s["batch_size"])
        for module in out.modules():
            if isinstance(module, nn.Linear) and prune.is_pruned(module):
                prune.remove(module, "weight")
        return out

    acc: dict[str, list[float]] = {}
    kept: dict[str, nn.Module] = {}
    for seed in ctx.seeds:
        variants: dict[str, nn.Module] = {}
        seed_everything(seed)
        base = SurveyComparison.baseline(k)
        fit_ce(base, data, ctx, epochs, s["lr"], seed, s["batch_size"])
        variants["baseline"] = base
        variants["pruning"] = pruned_copy(base, cfg.sparsity, seed)
        low_rank = low_rank_mlp(base, cfg.rank)
        fit_ce(low_rank, data, ctx, tune, s["lr"] / 5, seed, s["batch_size"])
        variants["low_rank"] = low_rank
        # int8 calibration: a seeded draw of 256 training inputs (labels unused)
        calibration = data.x_train[torch.randperm(data.n_train, generator=torch.Generator().manual_seed(seed))[:256]]
        variants["int8"] = int8_ptq(base, calibration)[0]
        seed_everything(seed)
        student = SurveyComparison.baseline(k, cfg.student_width)
        alone = copy.deepcopy(student)
        kd = KD(student, copy.deepcopy(base), KDConfig(temperature=cfg.temperature, alpha=cfg.alpha))
        fit(kd, student.parameters(), data, epochs, s["lr"], s["batch_size"], ctx.device, seed=seed, progress=False)
        variants["distillation"] = student
        fit_ce(alone, data, ctx, epochs, s["lr"], seed, s["batch_size"])
        variants["student_alone"] = alone
        # combinations for the open question: different redundancy (values vs bits), same redundancy (weights)
        variants["pruning_int8"] = int8_ptq(variants["pruning"], calibration)[0]
        variants["pruning_50"] = pruned_copy(base, 0.5, seed)
        variants["low_rank_pruning"] = pruned_copy(low_rank, 0.5, seed)
        variants["distillation_int8"] = int8_ptq(student, calibration)[0]
        with int8_kernels():  # the quantized CPU kernels have no deterministic mode
            for name, model in variants.items():
                acc.setdefault(name, []).append(evaluate(model, data))
        if not kept:
            kept = variants

    spec = {  # name -> (label, role, float source for counting, bits, sparse)
        "baseline": ("Baseline MLP 256-256 (fp32)", "baseline", "baseline", 32, False),
        "pruning": (f"Pruning {cfg.sparsity:.0%} + retrain", "method", "pruning", 32, True),
        "low_rank": (f"Low-rank SVD r={cfg.rank} + fine-tune", "method", "low_rank", 32, False),
        "int8": ("Quantisation: static int8 PTQ", "method", "baseline", 8, False),
        "distillation": (f"KD into MLP x{cfg.student_width}", "method", "distillation", 32, False),
        "student_alone": (f"MLP x{cfg.student_width} without KD", "ablation", "student_alone", 32, False),
        "pruning_int8": (f"Pruning {cfg.sparsity:.0%} + int8", "ablation", "pruning", 8, True),
        "pruning_50": ("Pruning 50% + retrain", "ablation", "pruning_50", 32, True),
        "low_rank_pruning": ("Low-rank + pruning 50%", "ablation", "low_rank_pruning", 32, True),
        "distillation_int8": ("KD student + int8", "ablation", "distillation", 8, False),
    }
    rows = []
    for name, (label, role, source, bits, sparse) in spec.items():
        src = kept[source]
        weights, nonzero, biases, _ = _linear_counts(src)
        flops = 2 * nonzero if sparse else count_flops(src, torch.zeros(1, *data.input_shape))
        with int8_kernels():
            latency = latency_ms(kept[name], data.input_shape, min_run_time=0.05)
        rows.append(
            dict(
                name=name,
                label=label,
                role=role,
                accuracy=accuracy_stats(acc[name]),
                params=weights + biases,
                nonzero_params=nonzero + biases,
                bytes=_storage(src, bits, sparse),
                flops=flops,
                latency_ms=latency,
                bits=float(bits),
            )
        )
    by = {r["name"]: r for r in rows}
    mean = {n: r["accuracy"]["mean"] for n, r in by.items()}
    drop = {n: mean["baseline"] - mean[n] for n in mean}
    ratio = {n: by["baseline"]["bytes"] / r["bytes"] for n, r in by.items()}
    families = ["pruning", "low_rank", "int8", "distillation"]
    for r in rows:
        r["extra"] = {"compression_x": ratio[r["name"]], "accuracy_drop_points": drop[r["name"]]}
    ok = {f: ratio[f] >= 3 and drop[f] <= 2.0 for f in families}
    front = pareto_front([(r["bytes"], r["accuracy"]["mean"]) for r in rows])
    figure = _plot(rows, front, ctx)

    def stacks(combo: str, a: str, b: str) -> str:
        verdict = "stack" if drop[combo] <= drop[a] + drop[b] + 0.5 else "interfere"
        return (
            f"{spec[a][0]} and {spec[b][0]} {verdict} (drop {drop[combo]:+.2f} points vs {drop[a]:+.2f} and "
            f"{drop[b]:+.2f} alone; {ratio[a]:.1f}x and {ratio[b]:.1f}x alone, {ratio[combo]:.1f}x together)"
        )

    combos = [
        ("pruning_int8", "pruning", "int8"),
        ("distillation_int8", "distillation", "int8"),
        ("low_rank_pruning", "low_rank", "pruning_50"),
    ]
    return {
        "id": "survey_cheng2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"Illustration of the survey's taxonomy, not a reproduction of its tables. MLP 40-256-256-10 "
            f"(SGD momentum 0.9, cosine lr {s['lr']}, batch {s['batch_size']}, wd 5e-4); pruning and low-rank "
            f"retrain {tune} epochs at lr {s['lr'] / 5}; int8 = static post-training quantization (torch.ao FX "
            "graph mode, per-channel int8 weights, uint8 activations calibrated on 256 training inputs) without "
            f"retraining; the KD student trains as long as the baseline (T={cfg.temperature}, alpha={cfg.alpha}). "
            "bytes: dense values, or non-zeros with 32-bit indices, plus fp32 biases; flops: non-zero MACs x 2 for "
            "sparse rows; latency at batch 1 on one CPU thread, dense kernels (int8 kernels for the int8 rows; "
            "seed-0 models).",
        },
        "rows": rows,
        "claim": {
            "text": "Each family (pruning, low-rank factorisation, quantisation, distillation) compresses the model "
            "several-fold at a small accuracy cost.",
            "reproduced": all(ok.values()),
            "evidence": "; ".join(f"{f}: {ratio[f]:.1f}x smaller, {drop[f]:+.2f} points lost" for f in families)
            + f" (baseline {mean['baseline']:.2f}%, means over {len(ctx.seeds)} seeds). Criterion: at least 3x "
            "smaller and at most 2 points lost, for every family. Pareto front: "
            + ", ".join(rows[i]["label"] for i in front)
            + ".",
        },
        "answers": [
            {
                "question": OPEN_QUESTION,
                "answer": "; ".join(stacks(*c) for c in combos)
                + ". Accuracy losses within half a point of their sum count as stacking; sizes are with 32-bit "
                "indices, so pruning only saves bytes at high sparsity.",
                "evidence": ", ".join(f"{r['label']}: {r['accuracy']['mean']:.2f}%, {r['bytes']} B" for r in rows)
                + f"; KD vs the same student alone: {mean['distillation']:.2f}% vs {mean['student_alone']:.2f}%.",
            }
        ],
        "figures": [figure],
    }


def _plot(rows: list[dict], front: list[int], ctx: RunContext) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from implementations.other._base import figure_path

    colors = {"baseline": "#1f77b4", "method": "#d62728", "ablation": "#ff7f0e"}
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.errorbar(
            r["bytes"] / 1024,
            r["accuracy"]["mean"],
            yerr=r["accuracy"]["std"],
            fmt="o",
            color=colors.get(r["role"], "#999"),
            capsize=3,
        )
        ax.annotate(
            r["label"],
            (r["bytes"] / 1024, r["accuracy"]["mean"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    pts = sorted((rows[i]["bytes"] / 1024, rows[i]["accuracy"]["mean"]) for i in front)
    ax.step([p[0] for p in pts], [p[1] for p in pts], "k--", where="post", linewidth=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("model size (KiB)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("MNIST-1D: one method per compression family", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path, rel = figure_path(ctx, "survey_cheng2018", "pareto")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return rel
