"""The small-scale reproduction of Learning Compression from Limited Unlabeled Data (He & Cheng, 2018): absmax vs
least-squares scales and stale vs re-estimated BatchNorm on a CNN for MNIST-1D, over bit widths and sample counts, with
a real int8 reference."""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from implementations.quantization._base import (
    beats,
    int8_kernels,
    int8_ptq,
    model_bytes,
    quantizable_layers,
    serialized_bytes,
)
from implementations.quantization.limiteddata_he2018 import (
    Config,
    LimitedDataCompression,
    ls_quantize,
    naive_quantize,
    renormalize,
)

if TYPE_CHECKING:
    from implementations._harness import RunContext


SETTING = dict(dataset="mnist1d", model="cnn1d", width=0.5, epochs=15, lr=0.05, batch_size=128)
BITS = (2, 3, 4)
SAMPLES = (16, 64, 256, 1024)  # unlabelled inputs for re-normalisation
INITS = (1.0, 0.75, 0.5, 0.25)  # alpha_0 = c * max|W| / q_max: starting points of the alternating fit
OPEN_QUESTIONS = (
    "How much of the recovery comes from re-estimating batch-norm statistics alone, versus the better weight "
    "quantizer?",
    "Minimising l2 quantization error is sensitive to large weights and, with a discrete codebook, only reaches a "
    "local minimum; does this limit the method at low bit widths?",
)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Train a BN CNN per seed; naive vs LS scale x stale vs re-estimated BN, over bits and sample counts; int8."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, count_flops, cpu_time_ms, interleaved_latency
    from implementations._models import build_model

    s, cfg = SETTING, Config()
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs = ctx.epochs(s["epochs"])
    samples = tuple(n for n in SAMPLES if n <= data.n_train)
    acc: dict[str, list[float]] = {}
    errors: dict[tuple[int, str], list[float]] = {}
    trained: dict[str, nn.Module] = {}
    int8_path = ""
    for seed in ctx.seeds:
        seed_everything(seed)
        model = build_model(s["model"], data.num_classes, data.input_shape, width=s["width"])
        fit(
            Supervised(model),
            model.parameters(),
            data,
            epochs,
            s["lr"],
            s["batch_size"],
            ctx.device,
            seed=seed,
            progress=ctx.progress,
        )
        model = model.cpu().eval()
        acc.setdefault("fp", []).append(evaluate(model, data))
        # the unlabelled pool: a seeded random draw of training inputs, labels never read
        pool = data.x_train[torch.randperm(data.n_train, generator=torch.Generator().manual_seed(seed))]
        task = LimitedDataCompression(model, cfg)
        for bits in BITS:
            for fit_name, fit_scale in (("naive", False), ("ls", True)):
                stale = task.compress(None, bits, fit_scale)
                acc.setdefault(f"{fit_name}_w{bits}_stale", []).append(evaluate(stale, data))
                for n in samples:
                    renormed = renormalize(copy.deepcopy(stale), pool[:n], cfg.batch_size)
                    acc.setdefault(f"{fit_name}_w{bits}_n{n}", []).append(evaluate(renormed, data))
            best = renormalize(_local_minima(model, bits, errors), pool[: cfg.samples], cfg.batch_size)
            acc.setdefault(f"best_w{bits}", []).append(evaluate(best, data))
        acc.setdefault("fp_renorm", []).append(evaluate(renormalize(copy.deepcopy(model), pool[: cfg.samples]), data))
        # real int8 (torch.ao FX graph mode), calibrated on the same unlabelled inputs as the re-normalisation
        static, int8_info = int8_ptq(model, pool[: cfg.samples])
        with int8_kernels():
            acc.setdefault("int8_static", []).append(evaluate(static, data))
        trained = trained or {"fp": model, "int8_static": static}
        int8_path = int8_path or int8_info["path"]

    main_n = cfg.samples if cfg.samples in samples else samples[-1]
    fp = trained["fp"]
    n_total, n_layers = sum(p.numel() for p in fp.parameters()), len(quantizable_layers(fp))
    flops = count_flops(fp, torch.zeros(1, *data.input_shape))
    quick = ctx.profile == "quick"
    with int8_kernels():
        lat = interleaved_latency(trained, data.input_shape, rounds=1 if quick else 3)
        batch_ms = {k: cpu_time_ms(m, data.input_shape, 256, 0.02 if quick else 0.1) for k, m in trained.items()}
    ser = {k: serialized_bytes(m) for k, m in trained.items()}
    # int8 static: int8 weights with one fp32 scale per output channel (zero points are 0 for symmetric weights),
    # everything else fp32, the same parameter-storage rule as the simulated low-bit rows
    out_channels = sum(layer.weight.shape[0] for _, layer in quantizable_layers(fp))
    rows: list[dict[str, Any]] = []

    def add(name: str, label: str, role: str, **cols: Any) -> None:
        rows.append(dict(name=name, label=label, role=role, accuracy=accuracy_stats(acc[name]), **cols))

    real = {
        k: dict(latency_ms=lat[k], extra={"serialized_bytes": ser[k], "cpu_ms_batch256": batch_ms[k]}) for k in trained
    }
    add(
        "fp",
        "Full precision (fp32)",
        "baseline",
        params=n_total,
        bytes=4 * n_total,
        flops=flops,
        bits=32.0,
        **real["fp"],
    )
    add(
        "fp_renorm",
        f"fp32, BN re-estimated on {cfg.samples}",
        "ablation",
        params=n_total,
        bytes=4 * n_total,
        flops=flops,
        bits=32.0,
    )
    for bits in BITS:
        size = dict(params=n_total, bytes=model_bytes(fp, bits, n_layers), flops=flops, bits=float(bits))
        sweep = {f"acc_n{n}": sum(acc[f"ls_w{bits}_n{n}"]) / len(ctx.seeds) for n in samples}
        add(f"naive_w{bits}_stale", f"W{bits} absmax scale, stale BN", "baseline", **size)
        add(f"naive_w{bits}_n{main_n}", f"W{bits} absmax scale, BN re-est. ({main_n})", "ablation", **size)
        add(f"ls_w{bits}_stale", f"W{bits} LS scale, stale BN", "ablation", **size)
        add(
            f"ls_w{bits}_n{main_n}",
            f"W{bits} LS scale + BN re-est. ({main_n} unlabelled)",
            "method" if bits == cfg.bits else "ablation",
            **size,
            extra=sweep,
        )
    add(
        "int8_static",
        "int8 static PTQ, all layers (torch.ao FX), calibrated on the same unlabelled inputs",
        "baseline",
        params=n_total,
        bytes=model_bytes(fp, 8, out_channels),
        flops=flops,
        bits=8.0,
        **{**real["int8_static"], "extra": {**real["int8_static"]["extra"], "int8_ptq_path": int8_path}},
    )

    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    b, key = cfg.bits, f"ls_w{cfg.bits}_n{main_n}"
    gap = mean["fp"] - mean[f"naive_w{b}_stale"]
    recovered = (mean[key] - mean[f"naive_w{b}_stale"]) / gap if gap > 0 else math.nan
    reproduced = beats(acc[key], acc[f"naive_w{b}_stale"]) and recovered >= 0.5
    per_bits = "; ".join(
        f"W{q}: naive/stale {mean[f'naive_w{q}_stale']:.2f}%, naive+BN {mean[f'naive_w{q}_n{main_n}']:.2f}%, "
        f"LS/stale {mean[f'ls_w{q}_stale']:.2f}%, LS+BN {mean[f'ls_w{q}_n{main_n}']:.2f}%"
        for q in BITS
    )
    figure = _plot(mean, samples, ctx)
    return {
        "id": "limiteddata_he2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"{s['model']} width {s['width']} (BatchNorm after every conv) trained in fp32 (SGD, cosine lr "
            f"{s['lr']}, {epochs} epochs); then post-training, label-free: every conv/linear weight quantized to b "
            f"bits (grid -q_max..q_max, one scale per layer; absmax scale vs {cfg.iterations}-step alternating LS "
            f"fit), BN statistics stale or re-estimated (torch.optim.swa_utils.update_bn) on N unlabelled training "
            f"inputs, N in {list(samples)}. The low-bit rows are simulated (fp32 kernels on quantized values). The "
            f"int8 row is a real torch.ao int8 model from the shared `int8_ptq` helper (FX graph mode static PTQ: "
            f"conv-BN-ReLU folded, per-channel int8 weights, uint8 activations calibrated on the same "
            f"{cfg.samples} unlabelled inputs, int8 kernels). bytes, one rule for every row: parameter storage, "
            f"b-bit weight codes + fp32 scales (one per layer; one per output channel for int8) + fp32 BN and "
            f"bias; extra.serialized_bytes is the torch.save(state_dict) file of the real fp32 and int8 models. "
            f"Latency: batch 1, best of interleaved rounds; cpu_ms_batch256: thread CPU time per batch of 256; "
            f"1 thread, first seed's models.",
        },
        "rows": rows,
        "claim": {
            "text": f"Fitting the scale by least squares and re-estimating BN statistics on a few hundred unlabelled "
            f"samples recovers most of the accuracy that naive post-training quantization loses (here W{b}, "
            f"N={main_n}: beats naive beyond seed noise and recovers at least half of the gap to fp32).",
            "reproduced": bool(reproduced),
            "evidence": f"W{b}: LS + BN re-est. {mean[key]:.2f}% vs naive {mean[f'naive_w{b}_stale']:.2f}% vs fp32 "
            f"{mean['fp']:.2f}% ({recovered:.0%} of the gap recovered); {per_bits}; for reference, real int8 "
            f"static PTQ {mean['int8_static']:.2f}% ({ser['int8_static']} B vs fp32 {ser['fp']} B serialized, "
            f"batch-1 latency {lat['int8_static']:.3f} vs {lat['fp']:.3f} ms); mean over {len(ctx.seeds)} seed(s).",
        },
        "answers": _answers(mean, errors, main_n),
        "figures": [figure],
    }


def _local_minima(model: nn.Module, bits: int, errors: dict[tuple[int, str], list[float]]) -> nn.Module:
    """LS fits from several starting scales per layer: spread between the local minima, gain over the naive scale,
    and a copy of `model` whose layers keep the lowest-error fit (best of the restarts)."""
    best_model = copy.deepcopy(model).eval()
    spread, gain = [], []
    with torch.no_grad():
        for _, layer in quantizable_layers(best_model):
            w = layer.weight.detach().clone()
            qmax, energy = 2 ** (bits - 1) - 1, float((w**2).sum())
            fits = [ls_quantize(w, bits, 50, c * w.abs().max() / qmax) for c in INITS]
            finals = [errs[-1] / energy for _, _, errs in fits]
            naive = float(((naive_quantize(w, bits) - w) ** 2).sum()) / energy
            spread.append(max(finals) / min(finals) - 1)
            gain.append(1 - finals[0] / naive)
            codes, alpha, _ = fits[finals.index(min(finals))]
            layer.weight.copy_(alpha * codes)
    errors.setdefault((bits, "spread"), []).append(max(spread))
    errors.setdefault((bits, "gain"), []).append(sum(gain) / len(gain))
    return best_model


def _answers(mean: dict[str, float], errors: dict[tuple[int, str], list[float]], n: int) -> list[dict[str, str]]:
    parts = []
    for q in BITS:
        base = mean[f"naive_w{q}_stale"]
        parts.append((q, mean[f"naive_w{q}_n{n}"] - base, mean[f"ls_w{q}_stale"] - base, mean[f"ls_w{q}_n{n}"] - base))
    evidence = "; ".join(f"W{q}: +BN {bn:+.2f}, +LS {ls:+.2f}, both {both:+.2f} points" for q, bn, ls, both in parts)
    bn_bigger = [f"W{q}" for q, bn, ls, _ in parts if bn > ls]
    ls_bigger = [f"W{q}" for q, bn, ls, _ in parts if bn <= ls]
    combined = all(both > max(bn, ls) for _, bn, ls, both in parts)
    err = {q: (sum(errors[(q, "gain")]) / len(errors[(q, "gain")]), max(errors[(q, "spread")])) for q in BITS}
    drop = {q: mean["fp"] - mean[f"ls_w{q}_n{n}"] for q in BITS}
    restart = {q: mean[f"best_w{q}"] - mean[f"ls_w{q}_n{n}"] for q in BITS}
    monotone = all(drop[a] >= drop[b] for a, b in zip(BITS[:-1], BITS[1:], strict=True))
    return [
        {
            "question": OPEN_QUESTIONS[0],
            "answer": f"Over absmax quantization with stale statistics, re-estimating BN alone gained more at "
            f"{', '.join(bn_bigger) or 'no bit width'} and the LS scale alone at {', '.join(ls_bigger) or 'none'}; "
            + (
                "together they gained more than either alone at every bit width."
                if combined
                else "together they did not beat the better single ingredient at every bit width."
            )
            + f" (N={n} unlabelled inputs.)",
            "evidence": evidence + ".",
        },
        {
            "question": OPEN_QUESTIONS[1],
            "answer": "The loss left after LS + re-normalisation "
            + ("grows" if monotone else "does not grow monotonically")
            + f" as bits shrink ({', '.join(f'W{q} {drop[q]:.1f}' for q in BITS)} points below fp32). The "
            f"alternating fit started from different scales reaches local minima up to "
            f"{', '.join(f'{err[q][1]:.0%} (W{q})' for q in BITS)} apart in l2 error (worst layer); keeping the "
            f"best of 4 restarts per layer changed accuracy by {', '.join(f'{restart[q]:+.2f} at W{q}' for q in BITS)} "
            "points, so "
            + (
                "the local minimum is not what limits the low-bit results here; the coarse grid is."
                if max(abs(v) for v in restart.values()) < 1.0
                else "which local minimum the fit reaches moves accuracy by a point or more at "
                + ", ".join(f"W{q}" for q in BITS if abs(restart[q]) >= 1.0)
                + (
                    "; the lower-error minimum was the less accurate one at "
                    + ", ".join(f"W{q}" for q in BITS if restart[q] <= -1.0)
                    + ", so the l2 objective itself, not only its local minima, limits low-bit accuracy."
                    if any(restart[q] <= -1.0 for q in BITS)
                    else "."
                )
            ),
            "evidence": "; ".join(
                f"W{q}: LS cuts the relative l2 weight error of the absmax scale by {err[q][0]:.0%}; best-of-restarts "
                f"LS + BN {mean[f'best_w{q}']:.2f}% vs single fit {mean[f'ls_w{q}_n{n}']:.2f}%"
                for q in BITS
            )
            + f"; restarts from alpha_0 = {'/'.join(f'{c:g}' for c in INITS)} x max|W|/q_max.",
        },
    ]


def _plot(mean: dict[str, float], samples: tuple[int, ...], ctx: RunContext) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    xs = [0, *samples]
    for bits, color in zip(BITS, ("#d62728", "#ff7f0e", "#1f77b4"), strict=True):
        for fit_name, style in (("ls", "o-"), ("naive", "x--")):
            ys = [mean[f"{fit_name}_w{bits}_stale"], *(mean[f"{fit_name}_w{bits}_n{n}"] for n in samples)]
            ax.plot(range(len(xs)), ys, style, color=color, label=f"W{bits} {'LS' if fit_name == 'ls' else 'absmax'}")
    ax.axhline(mean["fp"], color="#7f7f7f", linestyle=":", label="fp32")
    ax.set_xticks(range(len(xs)), ["stale", *map(str, samples)])
    ax.set_xlabel("unlabelled inputs for BN re-estimation")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / "limiteddata_he2018_samples.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"{ctx.results_dir.resolve().name}/figures/{path.name}"
