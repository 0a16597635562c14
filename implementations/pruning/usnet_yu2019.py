r"""Universally Slimmable Networks and Improved Training Techniques (Yu & Huang, 2019).

Paper: [arXiv:1903.05134](https://arxiv.org/abs/1903.05134) · notes: `papers/usnet_yu2019.md`

A universally slimmable network runs at any width $w \in [w_{\min}, w_{\max}]$ (layer $l$ keeps its first
$\lceil w\,C_l \rceil$ channels). Each step trains $n$ widths by the *sandwich rule*, the smallest, the largest and
$n - 2$ random ones, because the accuracy of every width lies between the two extremes; the largest learns from
the labels and the others from its predictions (*in-place distillation*, with a stop-gradient $\operatorname{sg}$):

$$
\mathcal{L} = \mathrm{CE}\big(y, p_{w_{\max}}(x)\big)
  + \sum_{w \in \{w_{\min}\} \cup S} \mathrm{CE}\big(\operatorname{sg}[p_{w_{\max}}(x)],\ p_{w}(x)\big),
\qquad S \sim \mathcal{U}[w_{\min}, w_{\max}]^{n-2}.
$$

As in the authors' US-MobileNets, the last stage is a fixed-width tail (only its input is slimmed). Batch
normalisation shares $\gamma, \beta$ across widths (sliced), and cannot store statistics for infinitely
many widths, so after training the statistics of a chosen width are recomputed as the plain average over a few
training batches (*BN calibration*),

$$
\mu_w = \frac{1}{T}\sum_{t=1}^{T} \mathbb{E}_{B_t}[z_w], \qquad \sigma^2_w = \frac{1}{T}\sum_{t=1}^{T}
\mathrm{Var}_{B_t}[z_w].
$$
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.pruning.slimmable_yu2019 import SlicedBatchNorm1d, SlimmableConv1d, SlimmableLinear, width_channels

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "USNet", "inplace_distillation_loss", "recalibrate_bn", "reproduce", "sample_widths"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; $n = 4$ and the sandwich rule with in-place distillation are the paper's defaults."""

    width_range: tuple[float, float] = (0.25, 1.0)  # $[w_{\min}, w_{\max}]$ (MobileNets: [0.35, 1.0])
    n_widths: int = 4  # $n$, widths trained per step (Sec. 4)
    sandwich: bool = True  # always include $w_{\min}$ and $w_{\max}$ (else $n$ uniform random widths)
    inplace_distillation: bool = True  # soft targets from the widest sampled width (else labels for all)
    nonuniform: bool = False  # one random width per layer (AutoSlim's one-shot training); US-Nets: one per network
    fixed_tail: bool = True  # the last stage keeps its full output width (the authors' US-MobileNet tail)
    channels: tuple[int, ...] = (16, 32, 32)  # $C_l$ at $w = 1$
    in_channels: int = 1  # MNIST-1D has one input channel
    length: int = 40  # input length of MNIST-1D
    num_classes: int = 10  # $K$
    calib_batches: int = 8  # $T$, training batches averaged by the BN calibration
    calib_batch_size: int = 128  # batch size of the calibration passes


def sample_widths(cfg: Config, generator: torch.Generator | None = None) -> list[tuple[float, ...]]:
    r"""Per-layer widths of the $n$ sub-networks of one step, the teacher (widest) first.

    Sandwich: $w_{\max}$, $w_{\min}$, then $n-2$ draws from $\mathcal{U}[w_{\min}, w_{\max}]$; otherwise $n$ draws,
    sorted so that the widest comes first. With `nonuniform` each draw gives every layer its own width.
    """
    low, high = cfg.width_range
    layers = len(cfg.channels)

    def draw() -> tuple[float, ...]:
        u = torch.rand(layers if cfg.nonuniform else 1, generator=generator)
        values = (low + (high - low) * u).tolist()
        return tuple(values) if cfg.nonuniform else tuple(values * layers)

    if cfg.sandwich:
        return [(high,) * layers, (low,) * layers] + [draw() for _ in range(cfg.n_widths - 2)]
    return sorted((draw() for _ in range(cfg.n_widths)), key=sum, reverse=True)


def inplace_distillation_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    r"""$\mathrm{CE}(\operatorname{sg}[p_t], p_s) = -\frac{1}{B}\sum_b \sum_k p_{t,bk} \log p_{s,bk}$ (no grad to $p_t$)

    Args:
        student_logits: Logits of the narrower sub-network, `(B, K)`.
        teacher_logits: Logits of the widest sub-network, `(B, K)` (detached here).

    Returns:
        A scalar tensor.
    """
    target = F.softmax(teacher_logits.detach(), dim=-1)  # (B, K)
    return -(target * F.log_softmax(student_logits, dim=-1)).sum(dim=-1).mean()


class USNet(nn.Module):
    """A 1-D conv net runnable at any channel configuration; set `.channels` (or call `set_width`) to switch."""

    def __init__(self, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or Config()
        convs, norms, c_in, length = [], [], cfg.in_channels, cfg.length
        for c_out in cfg.channels:
            convs.append(SlimmableConv1d(c_in, c_out, 5, stride=2, padding=2, bias=False))
            norms.append(SlicedBatchNorm1d(c_out))
            c_in, length = c_out, (length - 1) // 2 + 1
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        self.out_length = length  # $L$ of the last stage
        self.head = SlimmableLinear(c_in * length, cfg.num_classes)
        self.channels: tuple[int, ...] = tuple(cfg.channels)  # active configuration $c = (c_1, \dots, c_L)$

    def set_width(self, width: float | Sequence[float]) -> None:
        """Activate a uniform width (a float) or per-layer widths (a sequence)."""
        widths = [width] * len(self.cfg.channels) if isinstance(width, float | int) else list(width)
        chans = tuple(width_channels([c], w)[0] for c, w in zip(self.cfg.channels, widths, strict=True))
        self.channels = (*chans[:-1], self.cfg.channels[-1]) if self.cfg.fixed_tail else chans

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` of the sub-network with `self.channels` from inputs `(B, C, L)`."""
        h = x if x.dim() == 3 else x.unsqueeze(1)  # (B, C, L)
        for conv, norm, c in zip(self.convs, self.norms, self.channels, strict=True):
            h = F.relu(norm(conv(h, c)))  # (B, c, L_l)
        return self.head(h.flatten(1))

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Teacher logits and one loss per sampled sub-network (sandwich rule, in-place distillation)."""
        losses: dict[str, Tensor] = {}
        teacher = None
        for i, widths in enumerate(sample_widths(self.cfg)):
            self.set_width(widths)
            logits = self(x)  # (B, K)
            if teacher is None:
                teacher = logits
                losses["ce_widest"] = F.cross_entropy(logits, y)
            elif self.cfg.inplace_distillation:
                losses[f"ipd_{i}"] = inplace_distillation_loss(logits, teacher)
            else:
                losses[f"ce_{i}"] = F.cross_entropy(logits, y)
        self.channels = tuple(self.cfg.channels)
        return teacher, losses

    @classmethod
    def smoke_task(cls) -> tuple[USNet, Tensor, Tensor]:
        """A tiny US-Net and a seeded batch, for the generic smoke test."""
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(8, 1, 40, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        return cls(Config(channels=(8, 8, 8))), x, y


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: Tensor, cfg: Config, generator: torch.Generator | None = None) -> None:
    r"""Reset every sliced BN and refill $\mu_w, \sigma^2_w$ with the cumulative average over `cfg.calib_batches`.

    Runs the model in training mode at its current configuration, then leaves it in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the plain mean over the calibration batches
    model.train()
    order = torch.randperm(len(x), generator=generator)
    for t in range(cfg.calib_batches):
        idx = order[t * cfg.calib_batch_size : (t + 1) * cfg.calib_batch_size]
        if len(idx):
            model(x[idx.to(x.device)])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run usnet_yu2019`
# ---------------------------------------------------------------------------------------------------------------------

OPEN_QUESTION = (
    "How much of the gain comes from inplace distillation (a form of self-distillation) versus the sandwich "
    "sampling of widths?"
)
ANCHORS = (0.25, 0.5, 1.0)  # widths that also get an individually trained network
GRID = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)  # widths a US-Net is evaluated at


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """US-Net (sandwich + in-place distillation) and two ablations against individually trained nets."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, interleaved_latency, model_row
    from implementations._models import CNN1d

    cfg = Config()
    data = load_dataset("mnist1d", n_train=ctx.n_train)
    # 7 epochs left US-Net under-trained (76% vs 88.5% at full width); 14 narrowed the gap further but took ~75 s,
    # over the one-minute CPU budget of the default profile
    epochs = ctx.epochs(10)
    train = dict(lr=0.1, batch_size=128, device=ctx.device, progress=False)
    variants = {
        "usnet": cfg,
        "no_ipd": replace(cfg, inplace_distillation=False),
        "no_sandwich": replace(cfg, sandwich=False),
    }
    acc: dict[str, list[float]] = {}
    for seed in ctx.seeds:
        for name, variant in variants.items():
            seed_everything(seed)
            net = USNet(variant)
            fit(net, net.parameters(), data, epochs, seed=seed, **train)
            grid = []
            for width in GRID:
                net.set_width(width)
                if name == "usnet":  # the running statistics left by training, shared by all widths
                    acc.setdefault(f"norecal_{width:g}", []).append(evaluate(net, data))
                recalibrate_bn(net, data.x_train, variant, torch.Generator().manual_seed(seed))
                grid.append(evaluate(net, data))
                acc.setdefault(f"{name}_{width:g}", []).append(grid[-1])
            acc.setdefault(f"{name}_avg", []).append(sum(grid) / len(grid))
        acc.setdefault("norecal_avg", []).append(sum(acc[f"norecal_{w:g}"][-1] for w in GRID) / len(GRID))
        for width in ANCHORS:
            seed_everything(seed)
            chans = width_channels(cfg.channels, width, cfg.fixed_tail)
            model = CNN1d(cfg.in_channels, cfg.length, cfg.num_classes, channels=chans)
            fit(Supervised(model), model.parameters(), data, epochs, seed=seed, **train)
            acc.setdefault(f"individual_{width:g}", []).append(evaluate(model, data))

    plain = {
        w: CNN1d(cfg.in_channels, cfg.length, cfg.num_classes, width_channels(cfg.channels, w, cfg.fixed_tail))
        for w in GRID
    }
    size = {w: model_row(m, data.input_shape) for w, m in plain.items()}
    if ctx.profile != "quick":
        for w, ms in interleaved_latency(plain, data.input_shape, rounds=2).items():
            size[w]["latency_ms"] = ms

    def cols(width: float) -> dict[str, Any]:
        return size[width]

    rows = []
    for width in GRID:
        tag = f"{width:g}".replace(".", "")
        if width in ANCHORS:
            rows.append(
                dict(
                    name=f"individual_w{tag}",
                    label=f"Trained alone, {width:g}x",
                    role="baseline",
                    accuracy=accuracy_stats(acc[f"individual_{width:g}"]),
                    **cols(width),
                )
            )
        rows.append(
            dict(
                name=f"usnet_w{tag}",
                label=f"US-Net at {width:g}x",
                role="method",
                accuracy=accuracy_stats(acc[f"usnet_{width:g}"]),
                **cols(width),
            )
        )
    for name, label in (
        ("usnet", "US-Net, mean over widths"),
        ("no_ipd", "US-Net without in-place distillation, mean"),
        ("no_sandwich", "US-Net with random widths only (no sandwich), mean"),
        ("norecal", "US-Net without BN calibration, mean"),
    ):
        role = "method" if name == "usnet" else "ablation"
        rows.append(dict(name=f"{name}_avg", label=label, role=role, accuracy=accuracy_stats(acc[f"{name}_avg"])))
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    gaps = {w: mean[f"usnet_{w:g}"] - mean[f"individual_{w:g}"] for w in ANCHORS}
    reproduced = all(g >= -1.0 for g in gaps.values())
    drop_ipd = mean["usnet_avg"] - mean["no_ipd_avg"]
    drop_sandwich = mean["usnet_avg"] - mean["no_sandwich_avg"]
    figure = _plot(ctx, mean)
    return {
        "id": "usnet_yu2019",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"1-D CNN with channels {cfg.channels} at width 1; US-Nets train n={cfg.n_widths} widths per "
            f"step in {list(cfg.width_range)}, BN statistics recalibrated per evaluated width on "
            f"{cfg.calib_batches}x{cfg.calib_batch_size} training examples; individual CNN1d per anchor width "
            f"{list(ANCHORS)}; every run {epochs} epochs SGD lr {train['lr']} cosine, batch {train['batch_size']}, "
            f"wd 5e-4, same seed per run. Width grid for the means: {list(GRID)}. Size columns are those of the "
            f"plain network at that width (latency: batch 1, fastest of 2 interleaved rounds, 1 thread).",
        },
        "rows": rows,
        "claim": {
            "text": "A universally slimmable network, trained once with the sandwich rule and in-place "
            "distillation, runs at any width with accuracy comparable to networks trained individually at that "
            "width (here: no anchor width more than 1 point below).",
            "reproduced": reproduced,
            "evidence": "US-Net vs individual (mean over "
            f"{len(ctx.seeds)} seeds): "
            + ", ".join(f"{w:g}x {mean[f'usnet_{w:g}']:.2f} vs {mean[f'individual_{w:g}']:.2f}" for w in ANCHORS)
            + "; intermediate widths "
            + ", ".join(f"{w:g}x {mean[f'usnet_{w:g}']:.2f}" for w in GRID if w not in ANCHORS)
            + f"; without BN calibration the grid mean goes from {mean['usnet_avg']:.2f} to {mean['norecal_avg']:.2f}",
        },
        "answers": [
            {
                "question": OPEN_QUESTION,
                "answer": f"Averaged over the width grid, removing in-place distillation changes accuracy by "
                f"{-drop_ipd:+.2f} points and removing the sandwich rule by {-drop_sandwich:+.2f} points: at this "
                f"short schedule in-place distillation {_verdict(drop_ipd)} and the sandwich rule "
                f"{_verdict(drop_sandwich)} on average, while at the smallest width the sandwich rule is worth "
                f"{mean['usnet_0.25'] - mean['no_sandwich_0.25']:+.2f} points.",
                "evidence": f"grid means: full {mean['usnet_avg']:.2f}, no IPD {mean['no_ipd_avg']:.2f}, no sandwich "
                f"{mean['no_sandwich_avg']:.2f}; at 0.25x: full {mean['usnet_0.25']:.2f}, no IPD "
                f"{mean['no_ipd_0.25']:.2f}, no sandwich {mean['no_sandwich_0.25']:.2f}; at 1x: full "
                f"{mean['usnet_1']:.2f}, no IPD {mean['no_ipd_1']:.2f}, no sandwich {mean['no_sandwich_1']:.2f} "
                f"({len(ctx.seeds)} seeds).",
            }
        ],
        "figures": [figure],
    }


def _verdict(gain: float) -> str:
    """Words for the accuracy a training trick adds (mean over the grid, in points)."""
    if abs(gain) < 1.0:
        return "makes no clear difference"
    return "helps" if gain > 0 else "hurts"


def _plot(ctx: RunContext, mean: dict[str, float]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, style in (("usnet", "s-"), ("no_ipd", "^--"), ("no_sandwich", "v--"), ("norecal", "x:")):
        ax.plot(GRID, [mean[f"{name}_{w:g}"] for w in GRID], style, label=name.replace("_", " "))
    ax.plot(ANCHORS, [mean[f"individual_{w:g}"] for w in ANCHORS], "ko", label="trained alone")
    ax.set_xlabel("width multiplier")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    ax.set_title("Universally slimmable 1-D CNN on MNIST-1D", fontsize=9)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / "usnet_yu2019_widths.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"{ctx.results_dir.resolve().name}/figures/{path.name}"
