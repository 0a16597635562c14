"""The small-scale reproduction of LQ-Nets (Zhang et al., 2018): full precision, uniform-grid QAT and LQ QAT of weights
and activations at 1-3 bits on MNIST-1D."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from implementations.quantization._base import QuantMLP, beats, latency, model_bytes, remove_weight_quantizers
from implementations.quantization.lqnets_zhang2018 import build_task

if TYPE_CHECKING:
    from implementations._harness import RunContext


NAMES = {"learned": "LQ", "uniform_absmax": "Uniform (absmax)", "uniform_ls": "Uniform (LS step)"}
SETTING = dict(dataset="mnist1d", hidden=(128, 128), epochs=8, lr=0.1, batch_size=256, bits=(1, 2, 3))


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """FP, uniform-grid QAT and LQ QAT at 1-3 bits (weights and activations), same seeds and epochs."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, count_flops

    s = SETTING
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs = ctx.epochs(s["epochs"])
    dim = data.input_shape[-1]
    variants: dict[str, tuple[int | None, str, int]] = {"fp": (None, "", 1)}
    for bits in s["bits"]:
        variants[f"uniform_w{bits}a{bits}"] = (bits, "uniform_absmax", 1)
        variants[f"lq_w{bits}a{bits}"] = (bits, "learned", 1)
    variants["uniform_ls_w2a2"] = (2, "uniform_ls", 1)  # ablation: uniform levels, least-squares step
    variants["lq_w2a2_t3"] = (2, "learned", 3)  # open question: T = 3 alternations per step

    acc: dict[str, list[float]] = {}
    models: dict[str, nn.Module] = {}
    ablations = ("uniform_ls_w2a2", "lq_w2a2_t3")  # first seed only (time budget)
    for seed in ctx.seeds:
        for name, (bits, basis, iterations) in variants.items():
            if name in ablations and seed != ctx.seeds[0]:
                continue
            seed_everything(seed)
            if bits is None:
                task: nn.Module = Supervised(QuantMLP(dim, data.num_classes, s["hidden"]))
            else:
                task = build_task(bits, basis, s["hidden"], iterations, dim)
            fit(
                task,
                task.parameters(),
                data,
                epochs,
                s["lr"],
                s["batch_size"],
                ctx.device,
                seed=seed,
                progress=ctx.progress,
            )
            acc.setdefault(name, []).append(evaluate(task, data))
            models[name] = task.model

    rows = []
    for name, (bits, basis, t) in variants.items():
        model = models[name]
        n_bases = sum(m.weight.shape[0] for m in model.modules() if isinstance(m, nn.Linear))
        row = dict(
            name=name,
            label="Full precision" if bits is None else f"{NAMES[basis]} W{bits}/A{bits}" + f" T={t}" * (t > 1),
            role="baseline" if bits is None or basis == "uniform_absmax" else "method",
            accuracy=accuracy_stats(acc[name]),
            params=sum(p.numel() for p in model.parameters()),
            bytes=model_bytes(model, 32, 0) if bits is None else model_bytes(model, bits, n_bases * bits),
            flops=count_flops(model, torch.zeros(1, *data.input_shape)),
            bits=32.0 if bits is None else float(bits),
            extra={"iterations": float(t)} if bits is not None else {},
        )
        if name in ablations:
            row["role"] = "ablation"
            row["extra"]["seeds"] = float(len(acc[name]))
        if name in ("fp", "lq_w2a2"):
            # weights folded to their quantized fp32 values, activation quantizers kept: no low-bit kernels
            row["latency_ms"] = latency(remove_weight_quantizers(model), data.input_shape, ctx.profile)
        rows.append(row)
    mean = {r["name"]: r["accuracy"]["mean"] for r in rows}
    stds = {r["name"]: r["accuracy"]["std"] for r in rows}
    figure = _plot(mean, s["bits"], ctx)

    wins = [b for b in s["bits"] if beats(acc[f"lq_w{b}a{b}"], acc[f"uniform_w{b}a{b}"])]
    per_bit = "; ".join(
        f"{b} bit: LQ {mean[f'lq_w{b}a{b}']:.2f}% vs uniform {mean[f'uniform_w{b}a{b}']:.2f}%" for b in s["bits"]
    )
    gaps = {b: mean[f"lq_w{b}a{b}"] - mean[f"uniform_w{b}a{b}"] for b in s["bits"]}
    largest = max(gaps, key=gaps.get)
    first = {name: values[0] for name, values in acc.items()}  # the ablations ran on the first seed only
    return {
        "id": "lqnets_zhang2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"BN-MLP 40-{'-'.join(map(str, s['hidden']))}-10; all Linear weights (one basis per output "
            f"channel, codes in {{-1,1}}) and hidden activations (one basis per layer, codes in {{0,1}}) quantized "
            f"to K bits; QAT from scratch, SGD momentum 0.9, cosine lr {s['lr']}, batch {s['batch_size']}, wd 5e-4, "
            f"same seeds and epochs for every row; T=1, moving average 0.9; uniform baseline = levels c[1,2,4..] "
            f"with the extreme level at the (running) absmax; bytes = K-bit codes + fp32 bases + fp32 BN/bias.",
        },
        "rows": rows,
        "claim": {
            "text": "Learning the quantizer levels (LQ-Nets) gives higher accuracy than a fixed uniform grid of the "
            "same bit width, at 1-3 bits for weights and activations.",
            "reproduced": len(wins) == len(s["bits"]),
            "evidence": f"{per_bit} (mean over {len(ctx.seeds)} seed(s); LQ beats uniform beyond one standard error of "
            f"the paired difference at {wins or 'no'} bit(s)); full precision {mean['fp']:.2f}%; "
            f"first seed at 2 bits: uniform grid with least-squares step {first['uniform_ls_w2a2']:.2f}% vs LQ "
            f"{first['lq_w2a2']:.2f}%.",
        },
        "answers": [
            {
                "question": "Does running the alternating (codes, basis) minimisation more than once per training "
                "step help?",
                "answer": (
                    "Not clearly"
                    if abs(first["lq_w2a2_t3"] - first["lq_w2a2"]) < 1.0
                    else "Yes"
                    if first["lq_w2a2_t3"] > first["lq_w2a2"]
                    else "No"
                )
                + f" at our scale: T=3 gave {first['lq_w2a2_t3']:.2f}% vs {first['lq_w2a2']:.2f}% for T=1 at 2 bits "
                f"({first['lq_w2a2_t3'] - first['lq_w2a2']:+.2f} points, one seed; the seed-to-seed std of LQ at 2 "
                f"bits is {stds['lq_w2a2']:.2f}).",
                "evidence": f"2-bit weights and activations, seed {ctx.seeds[0]}, {epochs} epochs, same init.",
            },
            {
                "question": "Why learn the quantizer at all instead of using a hand-designed uniform or log grid?",
                "answer": f"Against the absmax uniform grid the learned levels gained most at {largest} bit(s) "
                f"({gaps[largest]:+.2f} points); a uniform grid whose step is fitted by the same least squares "
                f"reached {first['uniform_ls_w2a2']:.2f}% at 2 bits vs {first['lq_w2a2']:.2f}% for LQ (first "
                f"seed), which separates fitting the range from learning the level shape.",
                "evidence": per_bit + ".",
            },
        ],
        "figures": [figure],
    }


def _plot(mean: dict[str, float], bits: tuple[int, ...], ctx: RunContext) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(bits, [mean[f"lq_w{b}a{b}"] for b in bits], "o-", color="#d62728", label="LQ (learned basis)")
    ax.plot(bits, [mean[f"uniform_w{b}a{b}"] for b in bits], "s--", color="#1f77b4", label="uniform (absmax)")
    ax.plot([2], [mean["uniform_ls_w2a2"]], "^", color="#ff7f0e", label="uniform (LS step, 1 seed)")
    ax.axhline(mean["fp"], color="#7f7f7f", linestyle=":", label="full precision")
    ax.set_xticks(list(bits))
    ax.set_xlabel("bits (weights = activations)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / "lqnets_zhang2018_bits.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"{ctx.results_dir.resolve().name}/figures/{path.name}"
