r"""SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size (Iandola et al., 2016).

Paper: [arXiv:1602.07360](https://arxiv.org/abs/1602.07360) · notes: `papers/squeezenet_iandola2016.md`

A Fire module (Sec. 3.2) squeezes $M$ input channels with $s_{1\times1}$ 1x1 filters, then expands with
$e_{1\times1}$ 1x1 and $e_{3\times3}$ 3x3 filters whose outputs are concatenated. Without biases it has

$$
P_{\text{fire}} = M\, s_{1\times1} + s_{1\times1}\, e_{1\times1} + 9\, s_{1\times1}\, e_{3\times3}
\quad\text{against}\quad P_{\text{conv}} = 9\, M\, (e_{1\times1} + e_{3\times3})
$$

for a plain 3x3 layer with the same outputs. The widths of Fire module $i$ follow the metaparameters of
Sec. 5: $e_i = \text{base}_e + \text{incr}_e \lfloor i / \text{freq} \rfloor$,
$e_{3\times3, i} = pct_{3\times3}\, e_i$, $s_{1\times1, i} = SR\, e_i$. Downsampling comes late (one max-pool in
the middle), and the classifier is a 1x1 conv to $K$ channels followed by global average pooling, with no
fully connected layer. `Config(plain=True)` is the baseline: the same layout with each Fire module replaced by a
3x3 conv of $e_i$ outputs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations.architecture._base import conv_bn

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = [
    "TINY",
    "Config",
    "Fire",
    "SqueezeNet",
    "compressed_bytes",
    "fire_params",
    "fire_widths",
    "magnitude_prune",
    "quantize_weights",
    "reproduce",
]


@dataclass(frozen=True)
class Config:
    """Architecture of a digits-sized SqueezeNet (4 Fire modules instead of 8, 3x3 stem instead of 7x7/2)."""

    in_channels: int = 1  # grey-scale digits (3 in the paper)
    image_size: int = 8  # input side (224 in the paper)
    num_classes: int = 10  # $K$
    stem_channels: int = 32  # conv1 (96 filters of 7x7, stride 2 in the paper)
    num_fire: int = 4  # Fire modules (fire2..fire9, 8, in the paper)
    base_e: int = 32  # $\text{base}_e$ (128)
    incr_e: int = 32  # $\text{incr}_e$ (128)
    freq: int = 2  # $\text{freq}$ (2)
    pct3x3: float = 0.5  # $pct_{3\times3}$ (0.5)
    squeeze_ratio: float = 0.125  # $SR$ (0.125)
    pool_after: tuple[int, ...] = (1,)  # max-pool after these Fire indices: late downsampling (Sec. 3.1)
    dropout: float = 0.5  # before the final conv (after fire9 in the paper)
    plain: bool = False  # baseline: a 3x3 conv of e_i outputs instead of each Fire module


TINY = Config(stem_channels=8, num_fire=2, base_e=16, incr_e=16)


def fire_widths(cfg: Config) -> list[tuple[int, int, int]]:
    r"""$(s_{1\times1}, e_{1\times1}, e_{3\times3})$ of each Fire module from the metaparameters (Sec. 5)."""
    widths = []
    for i in range(cfg.num_fire):
        e = cfg.base_e + cfg.incr_e * (i // cfg.freq)  # $e_i$
        e3 = round(cfg.pct3x3 * e)
        widths.append((max(1, round(cfg.squeeze_ratio * e)), e - e3, e3))
    return widths


def fire_params(m: int, s1: int, e1: int, e3: int) -> int:
    r"""Weights of a Fire module, $M s_{1\times1} + s_{1\times1} e_{1\times1} + 9 s_{1\times1} e_{3\times3}$."""
    return m * s1 + s1 * e1 + 9 * s1 * e3


class Fire(nn.Module):
    """Squeeze 1x1 (ReLU), then expand 1x1 and 3x3 (ReLU each), concatenated along channels (Fig. 1)."""

    def __init__(self, c_in: int, s1: int, e1: int, e3: int) -> None:
        super().__init__()
        self.squeeze = conv_bn(c_in, s1, 1)
        self.expand1x1 = conv_bn(s1, e1, 1)
        self.expand3x3 = conv_bn(s1, e3, 3)

    def forward(self, x: Tensor) -> Tensor:
        """`(B, M, H, W)` -> `(B, e1 + e3, H, W)`."""
        s = self.squeeze(x)  # (B, s1, H, W)
        return torch.cat([self.expand1x1(s), self.expand3x3(s)], dim=1)


class SqueezeNet(nn.Module):
    """Stem conv, Fire modules (or plain 3x3 convs), late max-pool, dropout, 1x1 conv to K, global average pool."""

    def __init__(self, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or Config()
        layers: list[nn.Module] = [conv_bn(cfg.in_channels, cfg.stem_channels, 3)]
        c_in = cfg.stem_channels
        for i, (s1, e1, e3) in enumerate(fire_widths(cfg)):
            layers.append(conv_bn(c_in, e1 + e3, 3) if cfg.plain else Fire(c_in, s1, e1, e3))
            c_in = e1 + e3
            if i in cfg.pool_after:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Conv2d(c_in, cfg.num_classes, 1)  # conv10: no fully connected layer

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` from images `(B, C, H, W)`."""
        h = self.classifier(self.dropout(self.features(x)))  # (B, K, H', W')
        return h.mean(dim=(2, 3))


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float = 0.5) -> nn.Module:
    """Copy of `model` with the smallest-magnitude `sparsity` of each conv's weights masked out
    (`torch.nn.utils.prune.l1_unstructured`; the mask stays attached, so fine-tuning keeps the zeros)."""
    from torch.nn.utils import prune

    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            prune.l1_unstructured(module, "weight", amount=sparsity)
    return model


@torch.no_grad()
def quantize_weights(model: nn.Module, bits: int = 6) -> nn.Module:
    r"""Fold the pruning masks in, then quantize every conv weight tensor symmetrically to `bits` bits,
    $\hat w = \Delta\, \mathrm{round}(w / \Delta)$ with $\Delta = \max|w| / (2^{b-1} - 1)$ (zeros stay zero)."""
    from torch.nn.utils import prune

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            if prune.is_pruned(module):
                prune.remove(module, "weight")
            step = module.weight.abs().max().clamp_min(1e-12) / (2 ** (bits - 1) - 1)  # $\Delta$
            module.weight.copy_(torch.round(module.weight / step) * step)
    return model


def compressed_bytes(model: nn.Module, bits: int) -> int:
    r"""Storage of a pruned and quantized model, in bytes (rounded up).

    Each conv weight tensor of $n$ entries with $z$ non-zeros costs the smaller of dense $b$-bit codes ($n b$ bits)
    and a 1-bit occupancy mask plus codes of the non-zeros only ($n + z b$ bits), plus one fp32 scale; every other
    parameter (BatchNorm $\gamma, \beta$, biases) stays fp32. So pruning saves bytes once $z / n < 1 - 1/b$.
    """
    conv_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d)}
    total = 0
    for p in model.parameters():
        n = p.numel()
        if id(p) in conv_weights:
            z = int(torch.count_nonzero(p.detach()))
            total += min(n * bits, n + z * bits) + 32
        else:
            total += 32 * n
    return math.ceil(total / 8)


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run squeezenet_iandola2016`
# ---------------------------------------------------------------------------------------------------------------------

EPOCHS, LR, BATCH = 5, 0.1, 128  # the same for every variant (SqueezeNet underfits in so few epochs at lr 0.05)
SPARSITY, BITS, FT_EPOCHS = 0.5, 6, 1  # open question: 50% magnitude pruning, 1 masked fine-tune epoch, 6-bit


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Plain CNN vs SqueezeNet (SR 0.125 and 0.25) on digits, then prune, fine-tune and quantize both."""
    from implementations._data import load_dataset
    from implementations._harness import evaluate
    from implementations._measure import accuracy_stats, model_row
    from implementations.architecture._base import fit_model, save_tradeoff_plot, size_columns, train_variants

    data = load_dataset("digits", n_train=ctx.n_train)
    epochs = ctx.epochs(EPOCHS)
    configs = {"plain_cnn": Config(plain=True), "squeezenet": Config(), "squeezenet_sr025": Config(squeeze_ratio=0.25)}
    compressed: dict[str, list[float]] = {"plain_cnn_dc": [], "squeezenet_dc": []}
    examples: dict[str, nn.Module] = {}

    def compress(name: str, seed: int, model: nn.Module) -> None:
        if name in ("plain_cnn", "squeezenet"):
            pruned = magnitude_prune(model, SPARSITY)
            fit_model(pruned, data, ctx, ctx.epochs(FT_EPOCHS), LR, BATCH, seed)
            examples[f"{name}_dc"] = small = quantize_weights(pruned, BITS)
            compressed[f"{name}_dc"].append(evaluate(small, data))

    builders = {name: (lambda c=c: SqueezeNet(c)) for name, c in configs.items()}
    acc = {**train_variants(builders, data, ctx, epochs, LR, BATCH, compress), **compressed}
    cols = size_columns({name: SqueezeNet(cfg) for name, cfg in configs.items()}, data.input_shape, ctx)
    # compressed rows: 6-bit codes of the non-zeros + occupancy mask per conv, fp32 BN (see compressed_bytes)
    cols.update(
        {
            name: {**model_row(model, data.input_shape), "bytes": compressed_bytes(model, BITS), "bits": float(BITS)}
            for name, model in examples.items()
        }
    )
    labels = {
        "plain_cnn": ("Plain CNN (3x3 convs)", "baseline"),
        "squeezenet": ("SqueezeNet SR=0.125", "method"),
        "squeezenet_sr025": ("SqueezeNet SR=0.25", "ablation"),
        "plain_cnn_dc": (f"Plain CNN, {SPARSITY:.0%} pruned + {BITS}-bit", "ablation"),
        "squeezenet_dc": (f"SqueezeNet, {SPARSITY:.0%} pruned + {BITS}-bit", "ablation"),
    }
    rows = [
        dict(name=n, label=lab, role=r, accuracy=accuracy_stats(acc[n]), **cols[n]) for n, (lab, r) in labels.items()
    ]
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    plain, squeeze = cols["plain_cnn"], cols["squeezenet"]
    param_x, flop_x = plain["params"] / squeeze["params"], plain["flops"] / squeeze["flops"]
    lat1_x = plain["latency_ms"] / squeeze["latency_ms"]
    latb_x = plain["extra"]["latency_ms_b256"] / squeeze["extra"]["latency_ms_b256"]
    drop = mean["plain_cnn"] - mean["squeezenet"]
    drop_dc = {n: mean[n] - mean[f"{n}_dc"] for n in ("plain_cnn", "squeezenet")}
    figure = save_tradeoff_plot(
        rows[:3], ctx, "squeezenet_iandola2016", f"SqueezeNet on digits ({len(ctx.seeds)} seeds)"
    )
    return {
        "id": "squeezenet_iandola2016",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": "sklearn digits 8x8, 2-D convs; 3x3 stem of 32, 4 Fire modules (base_e 32, incr_e 32, freq 2, "
            "pct3x3 0.5), max-pool after the second, dropout 0.5, 1x1 conv to 10, GAP; BatchNorm after every conv; "
            f"SGD momentum 0.9, cosine lr {LR}, batch {BATCH}, wd 5e-4, same epochs and seeds for all; compressed "
            f"rows: per-layer {SPARSITY:.0%} magnitude pruning of every conv, {ctx.epochs(FT_EPOCHS)} masked fine-tune "
            f"epochs, then {BITS}-bit symmetric per-tensor weights (no retraining after quantization); their bytes: "
            f"per conv tensor the smaller of dense {BITS}-bit codes and a 1-bit occupancy mask + {BITS}-bit codes "
            f"of the non-zeros, one fp32 scale per conv, BN parameters and biases fp32; other rows: dense fp32. CPU "
            "latency on 1 thread.",
        },
        "rows": rows,
        "claim": {
            "text": "Fire modules reach the accuracy of a plain CNN of the same layout with far fewer parameters.",
            "reproduced": bool(param_x >= 5 and drop <= 1.0),
            "evidence": f"SqueezeNet {mean['squeezenet']:.2f}% with {squeeze['params']} parameters vs plain CNN "
            f"{mean['plain_cnn']:.2f}% with {plain['params']} ({param_x:.1f}x fewer; criteria: >= 5x fewer and a "
            f"drop <= 1 point, drop {drop:.2f}); with SR=0.25, {mean['squeezenet_sr025']:.2f}% with "
            f"{cols['squeezenet_sr025']['params']} parameters.",
        },
        "answers": [
            {
                "question": "Does a small parameter count buy a correspondingly small compute cost and latency, given "
                "that late downsampling keeps activation maps large?",
                "answer": f"{'Only in FLOPs' if latb_x < 0.5 * flop_x else 'Yes'}: {param_x:.1f}x fewer parameters "
                f"came with {flop_x:.1f}x fewer FLOPs, but the CPU speed-up was {latb_x:.1f}x at batch 256 and "
                f"{lat1_x:.1f}x at batch 1 (below 1 = slower).",
                "evidence": f"plain vs SqueezeNet: params {plain['params']} vs {squeeze['params']}, FLOPs "
                f"{plain['flops']} vs {squeeze['flops']}, CPU latency {plain['latency_ms']:.3f} vs "
                f"{squeeze['latency_ms']:.3f} ms (batch 1), {plain['extra']['latency_ms_b256']:.2f} vs "
                f"{squeeze['extra']['latency_ms_b256']:.2f} ms (batch 256).",
            },
            {
                "question": "Can an architecture that is already compact still be pruned and quantized without losing "
                "accuracy?",
                "answer": f"{'Yes' if drop_dc['squeezenet'] <= 1.0 else 'Not fully'}: "
                f"{SPARSITY:.0%} pruning + {BITS}-bit weights cost SqueezeNet {drop_dc['squeezenet']:.2f} points "
                f"and the plain CNN {drop_dc['plain_cnn']:.2f} points after a short masked fine-tune.",
                "evidence": f"SqueezeNet {mean['squeezenet']:.2f}% -> {mean['squeezenet_dc']:.2f}%; plain CNN "
                f"{mean['plain_cnn']:.2f}% -> {mean['plain_cnn_dc']:.2f}%.",
            },
        ],
        "figures": [figure],
    }
