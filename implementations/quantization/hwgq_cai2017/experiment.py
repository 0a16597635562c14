"""The small-scale reproduction of HWGQ (Cai et al., 2017): binary-weight BN-MLPs on MNIST-1D with 2-bit half-wave
Gaussian activations and three backward approximations, against full precision and binary weights with ReLU."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations._harness import Supervised
from implementations.quantization._base import beats, latency, model_bytes, remove_weight_quantizers
from implementations.quantization.hwgq_cai2017 import Config, _thresholds, build_task, half_gaussian_levels

if TYPE_CHECKING:
    from implementations._harness import RunContext


SETTING = dict(dataset="mnist1d", hidden=(128, 128), epochs=10, lr=0.1, batch_size=256)
BACKWARDS = ("bw_hwgq_clipped", "bw_hwgq_relu", "bw_hwgq_log")


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """FP, binary weights + ReLU, and binary weights + 2-bit HWGQ with three backward choices, same seeds."""
    from implementations._data import load_dataset
    from implementations._harness import evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, count_flops

    s = SETTING
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs = ctx.epochs(s["epochs"])
    dim = data.input_shape[-1]
    variants: dict[str, tuple[Config | None, bool, str, str]] = {
        "fp": (None, False, "Full precision (fp32 weights, ReLU)", "baseline"),
        "bw_relu": (None, True, "Binary weights, fp32 ReLU activations", "baseline"),
        "bw_hwgq_clipped": (Config(backward="clipped"), True, "BW + 2-bit HWGQ, clipped-ReLU backward", "method"),
        "bw_hwgq_relu": (Config(backward="relu"), True, "BW + 2-bit HWGQ, ReLU backward", "ablation"),
        "bw_hwgq_log": (Config(backward="log"), True, "BW + 2-bit HWGQ, log-tailed backward", "ablation"),
        "bw_hwgq_nonuniform": (Config(uniform=False), True, "BW + 2-bit non-uniform HWGQ, clipped", "ablation"),
    }
    acc: dict[str, list[float]] = {}
    tasks: dict[str, Supervised] = {}
    for seed in ctx.seeds:
        for name, (cfg, binary, _, _) in variants.items():
            if name == "bw_hwgq_nonuniform" and seed != ctx.seeds[0]:
                continue  # ablation on the first seed only (time budget)
            seed_everything(seed)
            task = build_task(cfg, binary, s["hidden"], dim)
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
            tasks[name] = task
    gaussian = _gaussian_check(tasks["fp"].model, data)

    rows = []
    for name, (cfg, binary, label, role) in variants.items():
        model = tasks[name].model
        n_channels = sum(m.weight.shape[0] for m in model.modules() if isinstance(m, nn.Linear))
        row = dict(
            name=name,
            label=label,
            role=role,
            accuracy=accuracy_stats(acc[name]),
            params=sum(p.numel() for p in model.parameters()),
            bytes=model_bytes(model, 1, n_channels) if binary else model_bytes(model, 32, 0),
            flops=count_flops(model, torch.zeros(1, *data.input_shape)),
            bits=1.0 if binary else 32.0,
            extra={"activation_bits": float(cfg.bits) if cfg else 32.0, "seeds": float(len(acc[name]))},
        )
        if name in ("fp", "bw_hwgq_clipped"):
            # binary weights folded into fp32 and activations simulated: no low-bit kernels, no speed-up expected
            row["latency_ms"] = latency(remove_weight_quantizers(model), data.input_shape, ctx.profile)
        rows.append(row)
    mean = {r["name"]: r["accuracy"]["mean"] for r in rows}
    from implementations._runner import save_accuracy_plot

    figure = save_accuracy_plot(rows, ctx, "hwgq_cai2017", title=f"Binary weights, 2-bit activations, {data.name}")
    levels = ", ".join(f"{v:.3f}" for v in half_gaussian_levels(2, True).tolist())
    spread = max(mean[k] for k in BACKWARDS) - min(mean[k] for k in BACKWARDS)
    backward = (
        f"clipped {mean['bw_hwgq_clipped']:.2f}%, ReLU {mean['bw_hwgq_relu']:.2f}%, log-tailed "
        f"{mean['bw_hwgq_log']:.2f}%"
    )
    return {
        "id": "hwgq_cai2017",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"BN-MLP 40-{'-'.join(map(str, s['hidden']))}-10 (Linear-BN-activation); binary weights "
            f"(alpha = mean |w| per output channel, STE) on every Linear layer; 2-bit uniform HWGQ levels "
            f"[{levels}] fitted offline to the half Gaussian; SGD momentum 0.9, cosine lr {s['lr']}, batch "
            f"{s['batch_size']}, wd 5e-4, same seeds and epochs for all rows (non-uniform HWGQ: first seed only); "
            f"latency of the simulated model.",
        },
        "rows": rows,
        "claim": {
            "text": "With binary weights and 2-bit half-wave Gaussian activations, a clipped-ReLU backward trains a "
            "more accurate network than the plain ReLU backward.",
            "reproduced": beats(acc["bw_hwgq_clipped"], acc["bw_hwgq_relu"]),
            "evidence": f"backward {backward} (reproduced = the paired gain of clipped over ReLU exceeds one "
            f"standard error over seeds); binary weights with fp32 ReLU {mean['bw_relu']:.2f}%, full precision "
            f"{mean['fp']:.2f}% (mean over {len(ctx.seeds)} seed(s)).",
        },
        "answers": [
            {
                "question": "Does the Gaussian assumption behind the offline-fitted levels hold in small networks, "
                "and how much does the choice of backward approximation (clipped vs log-tailed ReLU) matter?",
                "answer": f"In shape roughly (BN outputs of the trained fp32 MLP: skewness {gaussian['skew']:.2f}, "
                f"excess kurtosis {gaussian['kurtosis']:.2f}, positive fraction {gaussian['positive']:.2f}); their "
                f"std is {gaussian['std']:.2f} after BN's learned affine (assumed 1), and the offline half-Gaussian "
                f"uniform levels have {gaussian['excess']:.1%} more quantization error than uniform levels fitted to "
                f"the empirical positive part. The backward choice moved accuracy by {spread:.2f} points ({backward}).",
                "evidence": f"MSE on the positive BN outputs with HWGQ levels {gaussian['mse_hwgq']:.4f} vs uniform "
                f"levels fitted to them {gaussian['mse_empirical']:.4f}; "
                f"{len(ctx.seeds)} seed(s).",
            }
        ],
        "figures": [figure],
    }


@torch.no_grad()
def _gaussian_check(model: nn.Module, data: Any) -> dict[str, float]:
    """Statistics of the BN outputs of a trained fp32 model on the test set, and HWGQ vs empirical-Lloyd error."""
    outputs: list[Tensor] = []
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    hooks = [m.register_forward_hook(lambda _m, _i, o: outputs.append(o.flatten())) for m in norms]
    model.eval()
    model(data.x_test)
    for hook in hooks:
        hook.remove()
    x = torch.cat(outputs).double()
    z = (x - x.mean()) / x.std()
    positive = x[x > 0]
    levels = half_gaussian_levels(2, True)

    def mse(lv: Tensor) -> float:
        lower, _ = _thresholds(lv)
        cell = torch.bucketize(positive, lower[1:])
        return float(((lv[cell] - positive) ** 2).mean())

    # the same family fitted to the empirical positive part: uniform levels i * delta, Lloyd-style alternation
    index = torch.arange(1, len(levels) + 1, dtype=torch.float64)
    empirical = levels.clone()
    for _ in range(50):
        lower, _ = _thresholds(empirical)
        cell = torch.bucketize(positive, lower[1:])
        sums = torch.zeros_like(empirical).index_add_(0, cell, positive)
        counts = torch.zeros_like(empirical).index_add_(0, cell, torch.ones_like(positive))
        empirical = index * (index * sums).sum() / (index**2 * counts).sum()
    return {
        "skew": float((z**3).mean()),
        "std": float(x.std()),
        "kurtosis": float((z**4).mean() - 3),
        "positive": float((x > 0).double().mean()),
        "mse_hwgq": mse(levels),
        "mse_empirical": mse(empirical),
        "excess": mse(levels) / mse(empirical) - 1,
    }
