r"""CS231n Lecture 15: Efficient Methods and Hardware for Deep Learning (Han, 2017): a runnable illustration.

Slides: [cs231n_2017_lecture15.pdf](http://cs231n.stanford.edu/slides/2017/cs231n_2017_lecture15.pdf) · notes:
`papers/cs231n_han2017.md`

The lecture's recurring point is that moving data costs far more energy than computing with it. Its table
(Horowitz, ISSCC 2014, 45 nm) prices a 32-bit DRAM read at 640 pJ against 0.9 pJ for a 32-bit float add and
3.7 pJ for a float multiply. For a fully connected network run on one example, every weight is read once and used
in one multiply-add, so the energy per inference is roughly

$$
E \approx \underbrace{\frac{\text{weight bytes}}{4} \cdot E_{\text{DRAM}}}_{\text{memory}}
  \;+\; \underbrace{\text{MACs} \cdot (E_{\times} + E_{+})}_{\text{arithmetic}},
$$

and a batch of $B$ examples shares one read of the weights, dividing the memory term by $B$. This module measures,
for one small MLP, what the lecture's inference-side techniques buy on a CPU: fp32, static post-training int8
quantization (the shared `quantization._base.int8_ptq`, torch.ao FX graph mode: int8 weights and activations, int8
kernels), 50% magnitude pruning (`torch.nn.utils.prune`) with a short retrain, and both stacked, reporting accuracy,
bytes, latency and the energy estimate above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["ENERGY_PJ", "Config", "EfficiencyReport", "energy_pj", "magnitude_prune", "reproduce"]

#: Energy per operation in pJ at 45 nm (Horowitz, ISSCC 2014), the table the lecture shows.
ENERGY_PJ = {
    "int8_add": 0.03,
    "int32_add": 0.1,
    "fp32_add": 0.9,
    "int8_mult": 0.2,
    "int32_mult": 3.1,
    "fp32_mult": 3.7,
    "sram_read_32b": 5.0,
    "dram_read_32b": 640.0,
}


@dataclass(frozen=True)
class Config:
    """The compression settings the lecture walks through, at MLP scale."""

    sparsity: float = 0.5  # fraction of weights removed by global magnitude pruning
    retrain_epochs: int = 2  # retraining after pruning (the lecture's prune-retrain loop, one round)
    index_bits: int = 4  # relative-index bits of a sparse weight (Deep Compression stores 4-bit gaps for FC)


def energy_pj(weight_bytes: float, macs: float, arithmetic: str = "fp32", batch_size: int = 1) -> dict[str, float]:
    r"""Energy per example from the table: weights read from DRAM once per batch, one mult + add per MAC.

    Args:
        weight_bytes: Bytes of weights read per forward pass.
        macs: Multiply-accumulates per example.
        arithmetic: `fp32` (float mult + float add) or `int8` (int8 mult + int32 accumulate).
        batch_size: $B$ examples share one read of the weights.

    Returns:
        `{"memory": pJ, "compute": pJ, "total": pJ}` per example.
    """
    per_mac = {
        "fp32": ENERGY_PJ["fp32_mult"] + ENERGY_PJ["fp32_add"],
        "int8": ENERGY_PJ["int8_mult"] + ENERGY_PJ["int32_add"],
    }[arithmetic]
    memory = weight_bytes / 4 * ENERGY_PJ["dram_read_32b"] / batch_size
    compute = macs * per_mac
    return {"memory": memory, "compute": compute, "total": memory + compute}


def magnitude_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Global L1 (magnitude) pruning of every `nn.Linear` weight, in place; the masks stay until `prune.remove`."""
    targets = [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    return model


class EfficiencyReport:
    """Variants of one trained MLP (fp32, int8, pruned, pruned + int8) with their size, speed and energy."""

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg or Config()

    @staticmethod
    def weight_counts(model: nn.Module) -> tuple[int, int]:
        """`(all, non-zero)` entries of the `nn.Linear` weights (the MACs of one example, dense and sparse)."""
        weights = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]
        return sum(w.numel() for w in weights), sum(int(torch.count_nonzero(w)) for w in weights)

    def storage_bytes(self, model: nn.Module, bits: int, sparse: bool) -> int:
        """Weight storage: dense `bits`-bit values, or non-zeros with `index_bits`-bit relative indices; + biases."""
        dense, nonzero = self.weight_counts(model)
        biases = sum(m.bias.numel() for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None)
        values = nonzero * (bits + self.cfg.index_bits) if sparse else dense * bits
        return (values + 7) // 8 + 4 * biases

    @classmethod
    def smoke_task(cls) -> tuple[nn.Module, Tensor, Tensor]:
        """A tiny MLP pruned to 50% (masks kept) as a CE task; the masked weights get no gradient."""
        from implementations.other._base import Supervised, tiny_model

        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = magnitude_prune(tiny_model(), cls().cfg.sparsity)
        x = torch.randn(8, 1, 40, generator=gen)  # (B, 1, 40)
        return Supervised(model), x, torch.randint(0, 10, (8,), generator=gen)


# ---------------------------------------------------------------------------------------------------------------------
# Illustration: `kb run cs231n_han2017`
# ---------------------------------------------------------------------------------------------------------------------

SMALL = dict(hidden=(512, 512), epochs=10, lr=0.05, batch_size=128, latency_batches=(1, 256))

#: The registry's open question, verbatim.
OPEN_QUESTION = (
    "Which of the inference-side techniques stack without hurting each other (e.g. pruning then weight sharing "
    "then quantization)?"
)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Train an MLP per seed, derive the compressed variants, and tabulate accuracy, size, latency and energy."""
    import copy

    from implementations._data import load_dataset
    from implementations._harness import evaluate, seed_everything
    from implementations._measure import accuracy_stats, latency_ms
    from implementations._models import MLP
    from implementations.other._base import fit_ce
    from implementations.quantization._base import int8_kernels, int8_ptq, serialized_bytes

    s, cfg = SMALL, Config()
    report = EfficiencyReport(cfg)
    data = load_dataset("mnist1d", ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs = ctx.epochs(s["epochs"])
    acc: dict[str, list[float]] = {n: [] for n in ("fp32", "int8", "pruned", "pruned_int8")}
    kept: dict[str, nn.Module] = {}
    for seed in ctx.seeds:
        seed_everything(seed)
        model = MLP(40, data.num_classes, s["hidden"])
        acc["fp32"].append(fit_ce(model, data, ctx, epochs, s["lr"], seed, s["batch_size"]))
        # calibration: a seeded draw of 256 training inputs (labels unused)
        calibration = data.x_train[torch.randperm(data.n_train, generator=torch.Generator().manual_seed(seed))[:256]]
        int8, info = int8_ptq(model, calibration)
        with int8_kernels():
            acc["int8"].append(evaluate(int8, data))
        pruned = magnitude_prune(copy.deepcopy(model), cfg.sparsity)
        fit_ce(pruned, data, ctx, ctx.epochs(cfg.retrain_epochs), s["lr"] / 5, seed, s["batch_size"])
        for module in pruned.modules():  # make the zeros permanent
            if isinstance(module, nn.Linear) and prune.is_pruned(module):
                prune.remove(module, "weight")
        acc["pruned"].append(evaluate(pruned, data))
        pruned_int8, _ = int8_ptq(pruned, calibration)
        with int8_kernels():
            acc["pruned_int8"].append(evaluate(pruned_int8, data))
        if not kept:
            kept = {"fp32": model, "int8": int8, "pruned": pruned, "pruned_int8": pruned_int8}

    spec = {  # name -> (label, role, bits, sparse storage, arithmetic)
        "fp32": ("fp32 (dense)", "baseline", 32, False, "fp32"),
        "int8": ("Static int8 PTQ (torch.ao)", "method", 8, False, "int8"),
        "pruned": (f"{cfg.sparsity:.0%} pruned + retrain (fp32)", "method", 32, True, "fp32"),
        "pruned_int8": (f"{cfg.sparsity:.0%} pruned + int8", "ablation", 8, True, "int8"),
    }
    rows = []
    for name, (label, role, bits, sparse, arithmetic) in spec.items():
        model = kept[name]
        dense_w, nonzero_w = report.weight_counts(kept["pruned" if sparse else "fp32"])
        macs = nonzero_w if sparse else dense_w
        size = report.storage_bytes(kept["pruned" if sparse else "fp32"], bits, sparse)
        with int8_kernels():
            lat = {b: latency_ms(model, data.input_shape, batch_size=b, min_run_time=0.1) for b in s["latency_batches"]}
        e1 = energy_pj(size, macs, arithmetic, batch_size=1)
        e256 = energy_pj(size, macs, arithmetic, batch_size=256)
        rows.append(
            dict(
                name=name,
                label=label,
                role=role,
                accuracy=accuracy_stats(acc[name]),
                params=sum(p.numel() for p in kept["fp32"].parameters()),
                nonzero_params=macs + sum(m.bias.numel() for m in kept["fp32"].modules() if isinstance(m, nn.Linear)),
                bytes=size,
                flops=2 * macs,
                latency_ms=lat[1],
                bits=float(bits),
                extra={
                    "serialized_bytes": float(serialized_bytes(model)),
                    "latency_ms_batch256": lat[256],
                    "energy_uj_batch1": e1["total"] / 1e6,
                    "memory_share_batch1": e1["memory"] / e1["total"],
                    "energy_uj_per_example_batch256": e256["total"] / 1e6,
                    "memory_share_batch256": e256["memory"] / e256["total"],
                },
            )
        )
    by = {r["name"]: r for r in rows}
    mean = {n: r["accuracy"]["mean"] for n, r in by.items()}
    drop = {n: mean["fp32"] - mean[n] for n in mean}
    e = {n: r["extra"]["energy_uj_batch1"] for n, r in by.items()}
    share = by["fp32"]["extra"]["memory_share_batch1"]
    reproduced = share > 0.9 and drop["int8"] < 1.0 and e["int8"] < e["fp32"] / 3
    stacked_ok = drop["pruned_int8"] <= drop["pruned"] + max(drop["int8"], 0.0) + 0.5
    figure = _plot(rows, ctx)
    return {
        "id": "cs231n_han2017",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"Illustration of the lecture, not a reproduction. MLP 40-{s['hidden'][0]}-{s['hidden'][1]}-10, "
            f"SGD momentum 0.9, cosine lr {s['lr']}, batch {s['batch_size']}, wd 5e-4; int8 = static post-training "
            f"quantization with torch.ao FX graph mode ({info['path']}: per-channel int8 weights, uint8 activations "
            f"calibrated on 256 training inputs, int8 kernels); pruning = global L1 at {cfg.sparsity:.0%} + "
            f"{cfg.retrain_epochs} retraining epochs at lr {s['lr'] / 5}. bytes: dense values, or non-zeros with "
            f"{cfg.index_bits}-bit relative indices, plus fp32 biases; flops = 2 x (non-zero) MACs; latency on "
            "1 CPU thread (seed-0 models) with dense kernels; energy from the 45 nm table (DRAM read 640 pJ per "
            "32 bits, fp32 mult + add 4.6 pJ, int8 mult + int32 add 0.3 pJ), weights read once per batch.",
        },
        "rows": rows,
        "claim": {
            "text": "Memory access dominates the energy of running a small fully connected model on one example, so "
            "storing the weights in int8 cuts the estimated energy about fourfold at almost no accuracy cost.",
            "reproduced": bool(reproduced),
            "evidence": f"fp32: memory is {share:.1%} of {e['fp32']:.1f} uJ per example at batch 1 "
            f"({by['fp32']['extra']['memory_share_batch256']:.1%} at batch 256); int8: {e['int8']:.1f} uJ, "
            f"accuracy {mean['int8']:.2f}% vs {mean['fp32']:.2f}%; latency at batch 1 {by['int8']['latency_ms']:.3f} "
            f"vs {by['fp32']['latency_ms']:.3f} ms (pruned, dense kernels: {by['pruned']['latency_ms']:.3f} ms). "
            "Criterion: memory share > 90%, int8 drop < 1 point, int8 energy < 1/3 of fp32.",
        },
        "answers": [
            {
                "question": OPEN_QUESTION,
                "answer": f"Pruning then int8 quantization {'stacked' if stacked_ok else 'did not stack'} here: "
                f"the combined accuracy drop ({drop['pruned_int8']:.2f} points) "
                f"{'is within' if stacked_ok else 'exceeds'} the sum of the separate drops plus half a point, while "
                f"the weight bytes multiply down ({by['fp32']['bytes']} -> {by['pruned_int8']['bytes']}). Weight "
                "sharing was not tested.",
                "evidence": f"accuracy: fp32 {mean['fp32']:.2f}%, int8 {mean['int8']:.2f}%, pruned "
                f"{mean['pruned']:.2f}%, pruned + int8 {mean['pruned_int8']:.2f}%; bytes "
                + ", ".join(f"{n} {r['bytes']}" for n, r in by.items())
                + f" (means over {len(ctx.seeds)} seeds).",
            }
        ],
        "figures": [figure],
    }


def _plot(rows: list[dict], ctx: RunContext) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from implementations.other._base import figure_path

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [r["label"] for r in rows]
    memory = [r["extra"]["energy_uj_batch1"] * r["extra"]["memory_share_batch1"] for r in rows]
    compute = [r["extra"]["energy_uj_batch1"] * (1 - r["extra"]["memory_share_batch1"]) for r in rows]
    left.bar(range(len(rows)), memory, label="DRAM weight reads")
    left.bar(range(len(rows)), compute, bottom=memory, label="arithmetic")
    left.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize=7)
    left.set_ylabel("estimated energy per example, batch 1 (uJ)")
    left.legend(fontsize=7)
    for r in rows:
        right.scatter(r["bytes"] / 1024, r["accuracy"]["mean"], s=40)
        right.annotate(
            r["label"],
            (r["bytes"] / 1024, r["accuracy"]["mean"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    right.set_xscale("log")
    right.set_xlabel("weight storage (KiB)")
    right.set_ylabel("test accuracy (%)")
    fig.tight_layout()
    path, rel = figure_path(ctx, "cs231n_han2017", "energy")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return rel
