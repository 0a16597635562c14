r"""Feature Fusion for Online Mutual Knowledge Distillation (Kim, Hyun, Chung & Kwak, 2020).

Paper: [arXiv:1904.09058](https://arxiv.org/abs/1904.09058) · notes: `papers/ffl_kim2020.md`

Sub-networks $k = 1, \dots, K$ (which may differ in width or type) give last-stage feature maps $F_k$ and logits
$z_k$. A fusion module $\phi$ (depthwise then pointwise convolution, each with BN and ReLU) merges the concatenated
maps and a fused classifier $h$ reads them: $z_f = h(\phi([F_1, \dots, F_K]))$. Knowledge flows both ways online,
with $q(\cdot) = \mathrm{softmax}(\cdot / T)$ and $z_{\mathrm{ens}} = \frac{1}{K}\sum_k z_k$:

$$
\mathcal{L}_{\mathrm{fused}} = \mathcal{L}_{\mathrm{ce}}(z_f, y) + T^2 D_{\mathrm{KL}}\big(q(z_{\mathrm{ens}}) \,\|\,
q(z_f)\big),
\qquad
\mathcal{L}_{\mathrm{sub}} = \sum_{k=1}^{K} \Big[\mathcal{L}_{\mathrm{ce}}(z_k, y)
    + T^2 D_{\mathrm{KL}}\big(q(z_f) \,\|\, q(z_k)\big)\Big].
$$

The teacher side of each KL term is held fixed; the fused classifier's cross-entropy also trains the
sub-networks through the fusion module.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._models import CNN1d
from implementations.mutual_learning._base import Ensemble, MutualLearner, Predictor, soft_kl

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["FFL", "Config", "FusionModule", "ffl_loss", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters."""

    temperature: float = 3.0  # $T$ of both KL terms
    fused_channels: int | None = None  # channels after the pointwise conv; None = the widest sub-network's


def ffl_loss(sub_logits: Sequence[Tensor], fused_logits: Tensor, y: Tensor, temperature: float) -> dict[str, Tensor]:
    r"""$\mathcal{L}_{\mathrm{sub}}$ and $\mathcal{L}_{\mathrm{fused}}$ as named terms.

    Args:
        sub_logits: $z_k$ of each sub-network, each `(B, C)`.
        fused_logits: $z_f$, `(B, C)`.
        y: Labels, `(B,)`.
        temperature: $T$.

    Returns:
        `{"ce{k}", "kl{k}", "ce_fused", "kl_fused"}`.
    """
    losses: dict[str, Tensor] = {}
    fused_teacher = fused_logits.detach()
    for k, z in enumerate(sub_logits):
        losses[f"ce{k}"] = F.cross_entropy(z, y)
        losses[f"kl{k}"] = soft_kl(z, fused_teacher, temperature)  # fused classifier teaches every sub-network
    ensemble = torch.stack([z.detach() for z in sub_logits]).mean(0)  # (B, C), $z_{ens}$
    losses["ce_fused"] = F.cross_entropy(fused_logits, y)
    losses["kl_fused"] = soft_kl(fused_logits, ensemble, temperature)  # the ensemble teaches the fused classifier
    return losses


def _last_channels(model: nn.Module) -> int:
    return [m.num_features for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)][-1]


class FusionModule(nn.Module):
    r"""$\phi$ and $h$: depthwise conv-BN-ReLU, pointwise conv-BN-ReLU, then the fused classifier."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: int, dims: int, flat_length: int | None):
        super().__init__()
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.fuse = nn.Sequential(
            conv(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            norm(in_channels),
            nn.ReLU(),
            conv(in_channels, out_channels, 1, bias=False),
            norm(out_channels),
            nn.ReLU(),
        )
        self.flat_length = flat_length  # positions kept by flattening (1-D nets), None = global average pool
        self.classifier = nn.Linear(out_channels * (flat_length or 1), num_classes)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Fused logits `(B, C)` from the sub-networks' last feature maps `(B, C_k, *S)`."""
        h = self.fuse(torch.cat(list(features), dim=1))  # (B, C_f, *S)
        return self.classifier(h.flatten(1) if self.flat_length else h.flatten(2).mean(-1))


class FFL(MutualLearner):
    """Sub-networks + fusion module trained with FFL; `forward` is the fused classifier."""

    def __init__(self, peers: Sequence[nn.Module], cfg: Config | None = None) -> None:
        super().__init__(peers)
        self.cfg = cfg or Config()
        channels = [_last_channels(p) for p in peers]
        flat = isinstance(peers[0], CNN1d)  # MNIST-1D nets flatten their last map; image nets pool it
        lengths = {p.head.in_features // c for p, c in zip(peers, channels, strict=True)} if flat else {None}
        if len(lengths) != 1:
            raise ValueError(f"sub-networks' last feature maps must have one spatial size, got {sorted(lengths)}")
        self.fusion = FusionModule(
            sum(channels),
            self.cfg.fused_channels or max(channels),
            peers[0].head.out_features,
            dims=1 if flat else 2,
            flat_length=lengths.pop(),
        )

    def outputs(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Sub-network logits (K x `(B, C)`) and fused logits `(B, C)`."""
        sub_logits, features = [], []
        for peer in self.peers:
            z, feats = peer(x, return_features=True)
            sub_logits.append(z)
            features.append(feats[-1])
        return sub_logits, self.fusion(features)

    def forward(self, x: Tensor) -> Tensor:
        """Fused-classifier logits `(B, C)`."""
        return self.outputs(x)[1]

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Fused logits `(B, C)` and the FFL terms."""
        sub_logits, fused = self.outputs(x)
        return fused, ffl_loss(sub_logits, fused, y, self.cfg.temperature)

    def sub_ensemble_logits(self, x: Tensor) -> Tensor:
        """$z_{ens}$, the mean of the sub-networks' logits, `(B, C)`."""
        return torch.stack(self.outputs(x)[0]).mean(0)


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run ffl_kim2020`
# ---------------------------------------------------------------------------------------------------------------------

SETTINGS = dict(
    dataset="mnist1d", n_train=2000, subnets=(("cnn1d", 0.5), ("cnn1d", 0.25)), epochs=12, lr=0.1, batch_size=128
)
QUESTION = "Is FFL more than an ensemble of sub-networks with a learned merge?"


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Two heterogeneous sub-networks alone (and their ensemble) vs. the same two trained with FFL."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot

    s = SETTINGS
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train or s["n_train"])
    epochs = ctx.epochs(s["epochs"])
    train = dict(epochs=epochs, lr=s["lr"], batch_size=s["batch_size"], device=ctx.device, progress=ctx.progress)

    def new() -> list[nn.Module]:
        return [build_model(a, data.num_classes, data.input_shape, width=w) for a, w in s["subnets"]]

    acc: dict[str, list[float]] = {}

    def record(name: str, model: nn.Module) -> None:
        acc.setdefault(name, []).append(evaluate(model, data))

    for seed in ctx.seeds:
        seed_everything(seed)
        init = new()  # FFL and the independent runs start from the same sub-network weights
        alone = copy.deepcopy(init)
        for k, net in enumerate(alone):
            fit(Supervised(net), net.parameters(), data, seed=seed, **train)
            record(f"alone{k}", net)
        record("ensemble_alone", Ensemble(alone))
        task = FFL(copy.deepcopy(init))
        fit(task, task.parameters(), data, seed=seed, **train)
        for k, net in enumerate(task.peers):
            record(f"ffl{k}", net)
        record("ffl_ensemble", Predictor(task, "sub_ensemble_logits"))
        record("ffl_fused", task)

    names = [f"{a} w={w:g}" for a, w in s["subnets"]]
    cols = [model_row(m, data.input_shape) for m in new()]
    rows = [
        *[dict(name=f"alone{k}", label=f"{n} alone", role="baseline", **cols[k]) for k, n in enumerate(names)],
        dict(
            name="ensemble_alone",
            label="Mean-logit ensemble of the two alone",
            role="baseline",
            **model_row(Ensemble(new()), data.input_shape),
        ),
        *[dict(name=f"ffl{k}", label=f"{n} with FFL", role="method", **cols[k]) for k, n in enumerate(names)],
        dict(
            name="ffl_ensemble",
            label="FFL: mean-logit ensemble",
            role="ablation",
            **model_row(Ensemble(new()), data.input_shape),
        ),
        dict(name="ffl_fused", label="FFL: fused classifier", role="method", **model_row(FFL(new()), data.input_shape)),
    ]
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    figure = save_accuracy_plot(rows, ctx, "ffl_kim2020", title=f"FFL on {data.name} ({len(ctx.seeds)} seeds)")

    sub_gains = [mean[f"ffl{k}"] - mean[f"alone{k}"] for k in range(len(names))]
    fused_gain = mean["ffl_fused"] - mean["ensemble_alone"]
    reproduced = all(beats(acc[f"ffl{k}"], acc[f"alone{k}"]) for k in range(len(names))) and beats(
        acc["ffl_fused"], acc["ensemble_alone"]
    )  # paired-seed rule
    merge_gain = mean["ffl_fused"] - mean["ffl_ensemble"]
    if fused_gain > 0 and all(g > 0 for g in sub_gains):
        answer = (
            "Yes at this scale: the sub-networks themselves improve and the fused classifier beats a plain "
            "ensemble of independently trained sub-networks."
        )
    elif fused_gain > 0:
        answer = "Partly: the fused classifier beats the independent ensemble, but not every sub-network improves."
    else:
        answer = (
            "No at this scale: the fused classifier is no better than averaging independently trained sub-networks."
        )
    return {
        "id": "ffl_kim2020",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"{epochs * -(-data.n_train // s['batch_size'])} SGD steps per network; "
            f"sub-networks {' + '.join(names)} (different widths), fused at their last feature maps; FFL and "
            f"the independent runs start from the same weights; SGD momentum 0.9, cosine lr {s['lr']}, batch "
            f"{s['batch_size']}, wd 5e-4, same epochs and batch order; T={Config().temperature}.",
        },
        "rows": rows,
        "claim": {
            "text": "Both the sub-networks and the fused classifier gain from online feature-fusion distillation: "
            "each sub-network beats itself trained alone, and the fused classifier beats the ensemble of the "
            "independently trained sub-networks.",
            "reproduced": reproduced,
            "evidence": "; ".join(
                f"{n}: FFL {mean[f'ffl{k}']:.2f}% vs alone {mean[f'alone{k}']:.2f}%" for k, n in enumerate(names)
            )
            + f"; fused {mean['ffl_fused']:.2f}% vs ensemble of the two alone {mean['ensemble_alone']:.2f}% "
            f"(mean over {len(ctx.seeds)} seed(s), {data.name}).",
        },
        "answers": [
            {
                "question": QUESTION,
                "answer": answer,
                "evidence": f"fused {mean['ffl_fused']:.2f}% vs the FFL sub-networks' own mean-logit ensemble "
                f"{mean['ffl_ensemble']:.2f}% ({merge_gain:+.2f}) and the independent ensemble "
                f"{mean['ensemble_alone']:.2f}% ({fused_gain:+.2f}); sub-network gains "
                f"{', '.join(f'{g:+.2f}' for g in sub_gains)} points.",
            }
        ],
        "figures": [figure],
    }
