r"""Loss-aware Binarization of Deep Networks (Hou, Yao & Kwok, 2017).

Paper: [arXiv:1611.01600](https://arxiv.org/abs/1611.01600) · notes: `papers/lab_hou2017.md`

Each layer's weights are binarized as $\hat w_l = \alpha_l b_l$, $b_l \in \{-1, +1\}^{n_l}$. Instead of choosing
$\alpha_l, b_l$ to approximate $w_l$ (binary weight networks, $\alpha_l = \lVert w_l \rVert_1 / n_l$), LAB takes a
proximal Newton step on the loss with a diagonal curvature $D_l = \operatorname{diag}(d_l)$; the step has the closed
form

$$
b_l = \operatorname{sign}(w_l), \qquad \alpha_l = \frac{\lVert d_l \odot w_l \rVert_1}{\lVert d_l \rVert_1},
\qquad d_l = \epsilon \mathbf{1} + \sqrt{\hat v_l},
$$

where $\hat v_l$ is Adam's bias-corrected second moment of the gradients taken at the binarized weights and $w_l$ is
the full-precision weight after Adam's step (clipped to $[-1, 1]$). With $d_l \propto \mathbf 1$ this is the binary
weight network; BinaryConnect uses $\alpha_l = 1$.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from implementations._harness import Supervised
from implementations.quantization._base import (
    QuantMLP,
    beats,
    latency,
    model_bytes,
    quantize_weights,
    remove_weight_quantizers,
)

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["LAB", "Binarizer", "Config", "binarize", "lab_scale", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Binarization hyperparameters (Adam's defaults, which the curvature estimate must match)."""

    scale: str = "lab"  # "lab": alpha = ||d w||_1 / ||d||_1; "bwn": alpha = mean |w|; "bc": alpha = 1
    beta2: float = 0.999  # $\beta_2$ of Adam's second moment $v$
    eps: float = 1e-8  # $\epsilon$ in $d = \epsilon + \sqrt{\hat v}$
    clip: float = 1.0  # latent weights live in [-clip, clip] (BinaryConnect)


def lab_scale(w: Tensor, d: Tensor) -> Tensor:
    r"""$\alpha = \lVert d \odot w \rVert_1 / \lVert d \rVert_1$ for a positive curvature $d$ (same shape as $w$)."""
    return (d * w.abs()).sum() / d.sum()


def binarize(w: Tensor, alpha: Tensor | float) -> Tensor:
    r"""$\alpha \operatorname{sign}(w)$ with $\operatorname{sign}(0) = +1$, and gradient 1 with respect to $w$ (STE)."""
    b = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    return w + (alpha * b - w).detach()


class Binarizer(nn.Module):
    r"""Weight parametrization $w \mapsto \alpha\, \mathrm{sign}(w)$ that also tracks Adam's second moment of $w$."""

    def __init__(self, shape: torch.Size, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Config()
        self.register_buffer("second_moment", torch.zeros(shape))  # $v$, Adam's exp_avg_sq of this weight
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # $t$

    def curvature(self) -> Tensor:
        r"""$d = \epsilon + \sqrt{v / (1 - \beta_2^t)}$ (all ones before the first step: BWN's scale)."""
        if int(self.steps) == 0:
            return torch.ones_like(self.second_moment)
        v_hat = self.second_moment / (1 - self.cfg.beta2 ** int(self.steps))
        return self.cfg.eps + v_hat.sqrt()

    @torch.no_grad()
    def observe(self, latent: nn.Parameter) -> None:
        r"""Post-accumulate-grad hook: $v \leftarrow \beta_2 v + (1 - \beta_2) g^2$ with $g = \nabla \ell(\hat w)$."""
        if latent.grad is not None:
            self.second_moment.mul_(self.cfg.beta2).addcmul_(latent.grad, latent.grad, value=1 - self.cfg.beta2)
            self.steps += 1

    def forward(self, w: Tensor) -> Tensor:
        """The binarized weight (same shape), STE gradient."""
        w_clipped = w.detach().clamp(-self.cfg.clip, self.cfg.clip)
        if self.cfg.scale == "bc":
            alpha: Tensor | float = 1.0
        elif self.cfg.scale == "bwn":
            alpha = w_clipped.abs().mean()
        else:
            alpha = lab_scale(w_clipped, self.curvature())
        return binarize(w, alpha)


class LAB(Supervised):
    """Cross-entropy task on a model whose Linear/Conv weights are binarized with the loss-aware scale.

    Train it with Adam (`fit(..., optimizer="adamw", weight_decay=0)`): each binarizer's hook keeps the same second
    moment that Adam keeps for the latent weight, and the latent weights are clipped to $[-1, 1]$ before every
    forward pass, as after each update in BinaryConnect.
    """

    def __init__(self, model: nn.Module, cfg: Config | None = None) -> None:
        self.cfg = cfg or Config()
        super().__init__(quantize_weights(model, lambda layer: Binarizer(layer.weight.shape, self.cfg)))
        for module in self.model.modules():
            if parametrize.is_parametrized(module, "weight"):
                binarizer = module.parametrizations.weight[0].quantizer
                module.parametrizations.weight.original.register_post_accumulate_grad_hook(binarizer.observe)

    @torch.no_grad()
    def clip_(self) -> None:
        """Clip every latent weight to $[-1, 1]$ in place."""
        for module in self.model.modules():
            if parametrize.is_parametrized(module, "weight"):
                module.parametrizations.weight.original.clamp_(-self.cfg.clip, self.cfg.clip)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits `(B, K)` and `{"ce": ...}` with binarized weights."""
        self.clip_()
        return super().forward_train(x, y)

    @classmethod
    def smoke_task(cls, batch_size: int = 8, seed: int = 0) -> tuple[LAB, Tensor, Tensor]:
        """A tiny BN-MLP with LAB-binarized weights, for the generic smoke test."""
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        task = cls(QuantMLP(40, 10, (16, 16)))
        x = torch.randn(batch_size, 40, generator=gen)  # (B, 40)
        return task, x, torch.randint(0, 10, (batch_size,), generator=gen)


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run lab_hou2017`
# ---------------------------------------------------------------------------------------------------------------------

SETTING = dict(dataset="mnist1d", hidden=(256, 256), epochs=10, lr=0.01, batch_size=256)
SWEEP = {"narrow": (64, 64), "deep": (256,) * 4}  # open question: width and depth (first seed only, time budget)
NO_BN = ("bwn_nobn", "lab_nobn")  # ablation: without BN the next layer sees alpha, so the scales can differ in effect


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Full precision, BinaryConnect, BWN and LAB on a BN-MLP, plus a width/depth sweep of BWN vs LAB."""
    from implementations._data import load_dataset
    from implementations._harness import evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, count_flops

    s = SETTING
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs = ctx.epochs(s["epochs"])
    dim = data.input_shape[-1]
    variants: dict[str, tuple[str | None, tuple[int, ...]]] = {
        "fp": (None, s["hidden"]),
        "bc": ("bc", s["hidden"]),
        "bwn": ("bwn", s["hidden"]),
        "lab": ("lab", s["hidden"]),
    }
    for tag, hidden in SWEEP.items():
        variants[f"bwn_{tag}"] = ("bwn", hidden)
        variants[f"lab_{tag}"] = ("lab", hidden)
    for name in NO_BN:
        variants[name] = (name.split("_")[0], s["hidden"])
    acc: dict[str, list[float]] = {}
    models: dict[str, nn.Module] = {}
    for seed in ctx.seeds:
        for name, (scale, hidden) in variants.items():
            if name.endswith(tuple(SWEEP)) and seed != ctx.seeds[0]:
                continue
            seed_everything(seed)
            model = QuantMLP(dim, data.num_classes, hidden, batch_norm=name not in NO_BN)
            task = Supervised(model) if scale is None else LAB(model, Config(scale=scale))
            fit(
                task,
                task.parameters(),
                data,
                epochs,
                s["lr"],
                s["batch_size"],
                ctx.device,
                seed=seed,
                optimizer="adamw",
                weight_decay=0.0,
                progress=ctx.progress,
            )
            acc.setdefault(name, []).append(evaluate(task, data))
            models[name] = model

    labels = {None: "Full precision", "bc": "BinaryConnect (alpha=1)", "bwn": "BWN (alpha=mean|w|)", "lab": "LAB"}
    rows = []
    for name, (scale, hidden) in variants.items():
        model = models[name]
        n_layers = len(hidden) + 1
        arch = "-".join(map(str, (dim, *hidden, data.num_classes)))
        row = dict(
            name=name,
            label=f"{labels[scale]}, MLP {arch}" + (", no BN (biases instead)" if name in NO_BN else ""),
            role="method" if name == "lab" else "baseline" if name in ("fp", "bc", "bwn") else "ablation",
            accuracy=accuracy_stats(acc[name]),
            params=sum(p.numel() for p in model.parameters()),
            bytes=model_bytes(model, 32, 0) if scale is None else model_bytes(model, 1, n_layers),
            flops=count_flops(model, torch.zeros(1, *data.input_shape)),
            bits=32.0 if scale is None else 1.0,
            extra={"hidden_layers": float(len(hidden)), "width": float(hidden[0]), "seeds": float(len(acc[name]))},
        )
        if name in ("fp", "lab"):
            # binarized weights folded into dense fp32 weights: no binary kernels, so no speed-up is expected
            row["latency_ms"] = latency(remove_weight_quantizers(model), data.input_shape, ctx.profile)
        rows.append(row)
    mean = {r["name"]: r["accuracy"]["mean"] for r in rows}
    from implementations._runner import save_accuracy_plot

    figure = save_accuracy_plot(rows, ctx, "lab_hou2017", title=f"Binarized BN-MLPs on {data.name}")
    first = {name: values[0] for name, values in acc.items()}  # the sweep ran on the first seed only
    gaps = {"main": first["lab"] - first["bwn"], **{t: first[f"lab_{t}"] - first[f"bwn_{t}"] for t in SWEEP}}
    # seed noise of one LAB - BWN gap: the std over seeds of the paired difference on the main network; a change
    # between two single-seed gaps has about sqrt(2) times that std, and only a change beyond it counts as a trend
    paired = [a - b for a, b in zip(acc["lab"], acc["bwn"], strict=True)]
    noise = statistics.stdev(paired) if len(paired) > 1 else math.inf
    sweep = "; ".join(
        f"{t} ({'-'.join(map(str, SWEEP[t]))}): LAB {first[f'lab_{t}']:.2f}% vs BWN {first[f'bwn_{t}']:.2f}%"
        for t in ("narrow", "main", "deep")
        if t != "main"
    )
    reproduced = beats(acc["lab"], acc["bwn"]) and beats(acc["lab"], acc["bc"])

    def trend(delta: float) -> str:
        if abs(delta) <= math.sqrt(2) * noise:
            return "showed no change beyond seed noise"
        return "grew" if delta > 0 else "shrank"

    nobn_beats = beats(acc["lab_nobn"], acc["bwn_nobn"])
    nobn_loses = beats(acc["bwn_nobn"], acc["lab_nobn"])

    return {
        "id": "lab_hou2017",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"BN-MLP with Linear-BN-ReLU hidden layers and a linear head; every Linear weight binarized "
            f"(one scale per layer), latent weights clipped to [-1, 1], STE; Adam (AdamW with wd 0), cosine lr "
            f"{s['lr']}, batch {s['batch_size']}, same seeds and epochs for all rows; LAB's d = eps + sqrt(v_hat) "
            f"from the same second moment Adam keeps; bytes = 1 bit per weight + one fp32 scale per layer + fp32 "
            f"BN/bias; latency is of the binarized weights folded into fp32 (no binary kernels). BatchNorm after "
            f"every hidden Linear divides out that layer's alpha, so the scale only acts at the head; the no-BN "
            f"ablation (Linear with bias + ReLU, all seeds) lets it act everywhere. Width/depth sweep: first seed "
            f"only; a change in the LAB - BWN gap counts as a trend only beyond sqrt(2) x the seed std of that gap "
            f"on the main network.",
        },
        "rows": rows,
        "claim": {
            "text": "Loss-aware binarization (curvature-weighted scale from Adam's second moment) trains more accurate "
            "binary-weight networks than BinaryConnect and binary weight networks.",
            "reproduced": reproduced,
            "evidence": f"MLP {dim}-{'-'.join(map(str, s['hidden']))}-{data.num_classes}: LAB {mean['lab']:.2f}% vs "
            f"BWN {mean['bwn']:.2f}% vs BinaryConnect {mean['bc']:.2f}% (full precision {mean['fp']:.2f}%), mean "
            f"over {len(ctx.seeds)} seed(s); reproduced = LAB beats both beyond one standard error of the paired "
            f"difference. With BatchNorm after every binarized layer only the head's scale matters; without BN: LAB "
            f"{mean['lab_nobn']:.2f}% vs BWN {mean['bwn_nobn']:.2f}% (LAB "
            f"{'better' if nobn_beats else 'worse' if nobn_loses else 'within seed noise'}).",
        },
        "answers": [
            {
                "question": "Is the advantage over plain weight binarization (scale equal to mean absolute weight) "
                "visible on small networks, and does it grow with width and depth as claimed?",
                "answer": f"On the first seed LAB minus BWN was {gaps['narrow']:+.2f} points on the narrow 2x64 MLP, "
                f"{gaps['main']:+.2f} on the 2x256 MLP and {gaps['deep']:+.2f} on the deep 4x256 MLP, so the gap "
                f"{trend(gaps['main'] - gaps['narrow'])} with width and {trend(gaps['deep'] - gaps['main'])} with "
                f"depth: one seed per network, and the seed std of the gap on the 2x256 MLP is {noise:.2f} points, "
                f"so a change must exceed {math.sqrt(2) * noise:.2f} points to count. "
                + (
                    "On the 2x256 BN-MLP LAB beats BWN beyond seed noise."
                    if beats(acc["lab"], acc["bwn"])
                    else "On the 2x256 BN-MLP the advantage is not visible beyond seed noise; with BN after every "
                    "hidden layer only the head's scale differs between LAB and BWN."
                ),
                "evidence": sweep + f"; 2x256 (seed {ctx.seeds[0]}): LAB {first['lab']:.2f}% vs BWN {first['bwn']:.2f}%"
                f"; over all seeds LAB {mean['lab']:.2f}% vs BWN {mean['bwn']:.2f}%.",
            }
        ],
        "figures": [figure],
    }
