"""The small-scale reproduction of WAGE (Wu et al., 2018): float vs 2-8-8-8 WAGE on the same MLP for MNIST-1D, and one
quantity at a time lowered to 4 bits."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from implementations.quantization._base import beats, latency
from implementations.quantization.wage_wu2018 import WAGE, Config, train_wage

if TYPE_CHECKING:
    from implementations._harness import RunContext


#: float_lr: the best of {0.5, 1, 2, 4} for the float run on seed 0 (the alpha-scaled net without BN needs a large lr)
SETTING = dict(dataset="mnist1d", hidden=(256, 256), epochs=10, batch_size=128, float_lr=2.0, bn_lr=0.05)
LABELS = {"float": "Float (same MLP and init, SSE, SGD)", "float_bn_ce": "Float BN-MLP, cross-entropy"}
SWEEP = {"a4": dict(bits_a=4), "g4": dict(bits_g=4), "e4": dict(bits_e=4)}  # one quantity lowered to 4 bits


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Float vs 2-8-8-8 WAGE on the same MLP, plus one quantity at a time lowered to 4 bits (first seed)."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, count_flops, count_params, quantized_bytes
    from implementations.quantization._base import QuantMLP

    s = SETTING
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs = ctx.epochs(s["epochs"])
    dim = data.input_shape[-1]
    float_cfg = Config(bits_w=None, bits_a=None, bits_g=None, bits_e=None)
    variants = {
        "float": float_cfg,
        "float_bn_ce": float_cfg,  # context: a conventional float BN-MLP trained with cross-entropy
        "wage_2888": Config(),
        **{f"wage_{k}": replace(Config(), **v) for k, v in SWEEP.items()},
    }
    acc: dict[str, list[float]] = {}
    models: dict[str, nn.Module] = {}
    for seed in ctx.seeds:
        for name, cfg in variants.items():
            if name.removeprefix("wage_") in SWEEP and seed != ctx.seeds[0]:
                continue  # the sweep runs on the first seed only (time budget)
            seed_everything(seed)
            # same initial weights for every variant: drawn with the 2-bit L_min, then put on the grid if k_G is set
            model: nn.Module = WAGE(dim, data.num_classes, s["hidden"], cfg)
            if name == "float_bn_ce":
                model = Supervised(QuantMLP(dim, data.num_classes, s["hidden"]))
                fit(
                    model,
                    model.parameters(),
                    data,
                    epochs,
                    s["bn_lr"],
                    s["batch_size"],
                    ctx.device,
                    seed=seed,
                    progress=ctx.progress,
                )
            elif name == "float":
                fit(
                    model,
                    model.parameters(),
                    data,
                    epochs,
                    s["float_lr"],
                    s["batch_size"],
                    ctx.device,
                    seed=seed,
                    weight_decay=0.0,
                    progress=ctx.progress,
                )
            else:
                train_wage(model, data, epochs, s["batch_size"], seed)
            acc.setdefault(name, []).append(evaluate(model, data))
            models[name] = model

    rows = []
    for name, cfg in variants.items():
        model = models[name]
        n = count_params(model)
        bits = cfg.bits_w
        tag = "-".join(str(b) for b in (cfg.bits_w, cfg.bits_a, cfg.bits_g, cfg.bits_e))
        rows.append(
            dict(
                name=name,
                label=LABELS.get(name, f"WAGE {tag}"),
                role="baseline" if name.startswith("float") else "method" if name == "wage_2888" else "ablation",
                accuracy=accuracy_stats(acc[name]),
                params=n,
                bytes=4 * n if bits is None else quantized_bytes(n, bits, num_scales=0),
                flops=count_flops(model, torch.zeros(1, *data.input_shape)),
                bits=32.0 if bits is None else float(bits),
                latency_ms=latency(model, data.input_shape, ctx.profile) if name in ("float", "wage_2888") else None,
                extra={"config": name if bits is None else tag, "seeds": float(len(acc[name]))},
            )
        )
    mean = {r["name"]: r["accuracy"]["mean"] for r in rows}
    from implementations._runner import save_accuracy_plot

    figure = save_accuracy_plot(rows, ctx, "wage_wu2018", title=f"WAGE vs float, MLP on {data.name}")
    gap = mean["float"] - mean["wage_2888"]  # against float training of the same constrained network
    gap_conventional = mean["float_bn_ce"] - mean["wage_2888"]  # against a conventional float BN-MLP
    first = {name: values[0] for name, values in acc.items()}
    drops = {k: first["wage_2888"] - first[f"wage_{k}"] for k in SWEEP}
    worst = max(drops, key=drops.get)
    names = {"a4": "activations", "g4": "gradients (and weight storage)", "e4": "errors"}
    gain = beats(acc["wage_2888"], acc["float"])
    noise = not gain and not beats(acc["float"], acc["wage_2888"])
    return {
        "id": "wage_wu2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"MLP {dim}-{'-'.join(map(str, s['hidden']))}-{data.num_classes}, no BN and no biases, constant "
            f"power-of-two scale per layer, SSE loss, batch {s['batch_size']}; WAGE: integer lr {Config().lr} over "
            f"equal thirds of the steps, stochastic rounding, weights stored on the k_G grid; float: same network "
            f"and initial weights, SGD momentum 0.9, cosine lr {s['float_lr']} (best of 0.5/1/2/4 on seed 0); "
            f"conventional float: BN-MLP with biases and cross-entropy, lr {s['bn_lr']}, wd 5e-4; integers "
            f"simulated with float tensors on the grids; sweep rows: first seed only.",
        },
        "rows": rows,
        "claim": {
            "text": "Training with 2-bit weights and 8-bit activations, gradients and errors (WAGE 2-8-8-8) reaches "
            "accuracy comparable to float training (here: within 2 points of a conventional float network, a "
            "BN-MLP trained with cross-entropy). Float training of WAGE's own constrained network (no BN, no "
            "biases, fixed layer scales, SSE loss) is reported too, but it is a weakened baseline: matching it "
            "alone does not count.",
            "reproduced": gap < 2.0 and gap_conventional < 2.0,
            "evidence": f"WAGE 2-8-8-8 {mean['wage_2888']:.2f}% vs conventional float BN-MLP "
            f"{mean['float_bn_ce']:.2f}% (gap {gap_conventional:+.2f} points) and vs float training of the same "
            f"constrained network {mean['float']:.2f}% (gap {gap:+.2f} points); mean over {len(ctx.seeds)} seed(s). "
            + (
                "The integer arithmetic itself costs little (within 2 points of the same network in float), but "
                "the constraints WAGE imposes on the network cost far more than 2 points against conventional "
                "float training, so the claim as stated does not reproduce at this scale."
                if gap < 2.0 <= gap_conventional
                else ""
            ),
        },
        "answers": [
            {
                "question": "Is the occasional accuracy gain from integer training a genuine regularisation effect, or "
                "noise across runs?",
                "answer": (
                    "A gain beyond seed noise appeared here"
                    if gain
                    else "Noise: the difference is within one standard error over seeds"
                    if noise
                    else "There was no gain: WAGE was below float beyond seed noise"
                )
                + f" (WAGE {mean['wage_2888']:.2f}% vs float {mean['float']:.2f}%).",
                "evidence": f"per-seed WAGE {acc['wage_2888']} vs float {acc['float']}.",
            },
            {
                "question": "Which of the four quantized quantities (weights, activations, gradients, errors) costs "
                "most accuracy when its bit width is lowered?",
                "answer": f"Lowering {names[worst]} from 8 to 4 bits cost most ({drops[worst]:.2f} points below "
                f"2-8-8-8 on the first seed); weights are already at the 2-bit minimum (ternary) and were not lowered.",
                "evidence": "; ".join(f"{names[k]} at 4 bits: {first[f'wage_{k}']:.2f}%" for k in SWEEP)
                + f"; 2-8-8-8: {first['wage_2888']:.2f}%.",
            },
        ],
        "figures": [figure],
    }
