r"""Network Trimming: A Data-Driven Neuron Pruning Approach towards Efficient Deep Architectures (Hu et al., 2016).

Paper: [arXiv:1607.03250](https://arxiv.org/abs/1607.03250) · notes: `papers/apoz_hu2016.md`

The Average Percentage of Zeros of channel $c$ in layer $i$, over $N$ examples with $M$ output positions each (1 for a
fully connected neuron), measured after the ReLU:

$$
\mathrm{APoZ}^{(i)}_c = \frac{\sum_{k=1}^{N} \sum_{j=1}^{M} \mathbb{1}\big[O^{(i)}_{c,j}(k) = 0\big]}{N \times M} .
$$

Units with the highest APoZ are trimmed (with their incoming and outgoing weights), the thinner network is retrained
from the surviving weights, and trimming and retraining alternate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations._harness import Supervised
from implementations._models import build_model
from implementations.pruning._base import channel_units, keep_top, prune_channels, size_rows

if TYPE_CHECKING:
    from implementations._data import TensorData
    from implementations._harness import RunContext

__all__ = ["Config", "apoz_scores", "layer_apoz", "reproduce", "trim"]

CRITERIA = ("apoz", "weight", "random")


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the small-scale reproduction."""

    rounds: int = 3  # trim/retrain iterations (the paper iterates several times)
    fraction: float = 0.3  # share of each layer's remaining units trimmed per round (the paper: APoZ > mean + std)
    epochs: int = 20  # dense training
    retrain_epochs: int = 5  # retraining per round, from the surviving weights
    lr: float = 0.05  # $\eta_0$ of dense training
    retrain_lr: float = 0.01  # retraining rate
    apoz_examples: int = 500  # examples the APoZ is measured on (the paper: a validation set)


def apoz_scores(activation: Tensor) -> Tensor:
    r"""$\mathrm{APoZ}_c$: the fraction of exact zeros of each channel over examples and positions.

    Args:
        activation: Post-ReLU outputs $O$, shape `(N, C, *spatial)` or `(N, C)`.

    Returns:
        Scores in $[0, 1]$, shape `(C,)`; higher means more often inactive (trimmed first).
    """
    return (activation == 0).transpose(0, 1).flatten(1).float().mean(dim=1)


@torch.no_grad()
def layer_apoz(model: nn.Module, x: Tensor) -> list[Tensor]:
    """APoZ of every hidden layer's units of a `_models` network on inputs `x` (in eval mode)."""
    was_training = model.training
    model.eval()
    _, features = model(x, return_features=True)  # post-ReLU outputs, one tensor per hidden stage
    model.train(was_training)
    return [apoz_scores(f) for f in features]


def trim(model: nn.Module, importance: list[Tensor], fraction: float) -> nn.Module:
    r"""Physically remove $\lfloor f\,C_l \rfloor$ least important units of every hidden layer $l$.

    Args:
        model: An MLP, CNN1d or CNN2d.
        importance: Per hidden layer, higher = keep (pass $-\mathrm{APoZ}$ for network trimming).
        fraction: $f$, share of each layer's units removed.
    """
    keep = [keep_top(s, s.numel() - math.floor(fraction * s.numel())) for s in importance]
    return prune_channels(model, keep)


def _importance(model: nn.Module, criterion: str, x: Tensor, generator: torch.Generator) -> list[Tensor]:
    units, _ = channel_units(model)
    if criterion == "apoz":
        return [-a for a in layer_apoz(model, x)]
    if criterion == "weight":  # L2 norm of each unit's incoming weights
        return [p.weight.detach().flatten(1).norm(dim=1) for p, _ in units]
    return [torch.rand(p.weight.shape[0], generator=generator) for p, _ in units]


def _smoke_task() -> tuple[Supervised, Tensor, Tensor]:
    """A tiny MLP trimmed by APoZ, for the generic smoke test."""
    torch.manual_seed(0)
    model = build_model("mlp", 10, (40,), width=0.125)
    x, y = torch.randn(8, 40), torch.randint(0, 10, (8,))
    return Supervised(trim(model, [-a for a in layer_apoz(model, x)], 0.5)), x, y


apoz_scores.smoke_task = _smoke_task  # `_base.smoke_task` delegates to it


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run apoz_hu2016`
# ---------------------------------------------------------------------------------------------------------------------


def _spearman(a: Tensor, b: Tensor) -> float:
    ranks = [v.argsort().argsort().double() for v in (a, b)]
    ra, rb = (r - r.mean() for r in ranks)
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def _trim_and_retrain(
    model: nn.Module, criterion: str, rounds: int, data: TensorData, x_apoz: Tensor, cfg: Config, seed: int, **train
) -> nn.Module:
    from implementations._harness import fit

    gen = torch.Generator().manual_seed(seed)
    for _ in range(rounds):
        model = trim(model, _importance(model, criterion, x_apoz, gen), cfg.fraction)
        fit(Supervised(model), model.parameters(), data, lr=cfg.retrain_lr, seed=seed, **train)
    return model


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """MLP (ReLU, no BN) on digits trimmed by APoZ, weight norm or at random; one trim round on a BN CNN."""
    from implementations._data import load_dataset
    from implementations._harness import evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats
    from implementations._runner import save_accuracy_plot

    cfg = Config()
    data = load_dataset("digits", n_train=ctx.n_train)
    epochs, retrain = ctx.epochs(cfg.epochs), ctx.epochs(cfg.retrain_epochs)
    train = dict(batch_size=64, device=ctx.device, progress=False)
    x_apoz = data.x_train[: cfg.apoz_examples].to(ctx.device)
    acc: dict[str, list[float]] = {}
    rho: dict[str, list[float]] = {}
    apoz_stats: dict[str, list[float]] = {}
    final: dict[str, nn.Module] = {}
    for seed in ctx.seeds:
        for arch in ("mlp", "cnn2d"):
            seed_everything(seed)
            dense = build_model(arch, data.num_classes, data.input_shape, width=1.0 if arch == "mlp" else 0.5)
            fit(Supervised(dense), dense.parameters(), data, epochs=epochs, lr=cfg.lr, seed=seed, **train)
            acc.setdefault(f"{arch}_dense", []).append(evaluate(dense, data))
            apoz = layer_apoz(dense, x_apoz)
            weight = _importance(dense, "weight", x_apoz, torch.Generator())
            rho.setdefault(arch, []).append(
                sum(_spearman(-a, w) for a, w in zip(apoz, weight, strict=True)) / len(apoz)
            )
            flat = torch.cat(apoz)
            apoz_stats.setdefault(f"{arch}_mean", []).append(float(flat.mean()))
            apoz_stats.setdefault(f"{arch}_std", []).append(float(flat.std()))
            rounds = cfg.rounds if arch == "mlp" else 1  # the BN net: one trim round, for the APoZ question
            for criterion in CRITERIA:
                trimmed = _trim_and_retrain(dense, criterion, rounds, data, x_apoz, cfg, seed, epochs=retrain, **train)
                acc.setdefault(f"{arch}_{criterion}", []).append(evaluate(trimmed, data))
                final[f"{arch}_{criterion}"] = trimmed
            final[f"{arch}_dense"] = dense

    labels = {"apoz": "trim by APoZ", "weight": "trim by weight norm", "random": "trim at random"}
    rows = []
    # every row timed together (interleaved rounds), each architecture on its own input shape
    timed = {}
    for arch in ("mlp", "cnn2d"):
        keys = [f"{arch}_dense", *(f"{arch}_{c}" for c in CRITERIA)]
        timed.update(size_rows({k: final[k] for k in keys}, data.input_shape, ctx.profile))
    for arch, name in (("mlp", "MLP 64-256-256-10"), ("cnn2d", "CNN2d with BN")):
        rounds = cfg.rounds if arch == "mlp" else 1
        rows.append(
            dict(
                name=f"{arch}_dense",
                label=f"{name}, dense",
                role="baseline",
                **timed[f"{arch}_dense"],
            )
        )
        for criterion in CRITERIA:
            role = "method" if (arch, criterion) == ("mlp", "apoz") else "ablation"
            rows.append(
                dict(
                    name=f"{arch}_{criterion}",
                    label=f"{name}, {labels[criterion]} x{rounds}",
                    role=role,
                    **timed[f"{arch}_{criterion}"],
                )
            )
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    params = {row["name"]: row["params"] for row in rows}
    r = {k: sum(v) / len(v) for k, v in rho.items()}
    st = {k: sum(v) / len(v) for k, v in apoz_stats.items()}
    figure = save_accuracy_plot(rows, ctx, "apoz_hu2016", title=f"Network trimming on {data.name}")
    kept = (1 - cfg.fraction) ** cfg.rounds
    alike = "alike" if r["mlp"] > 0.7 else "partly alike" if r["mlp"] > 0.3 else "differently"
    return {
        "id": "apoz_hu2016",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"SGD momentum 0.9, cosine lr {cfg.lr}, batch 64, wd 5e-4, {epochs} epochs. APoZ on "
            f"{cfg.apoz_examples} training inputs. MLP: {cfg.rounds} rounds, each removing the {100 * cfg.fraction:g}% "
            f"highest-APoZ (or lowest incoming-weight L2 norm, or random) units of each hidden layer physically, then "
            f"retraining {retrain} epochs at lr {cfg.retrain_lr}. CNN2d width 0.5 (BN before ReLU): one such round.",
        },
        "rows": rows,
        "claim": {
            "text": "Iteratively trimming the neurons with the highest APoZ and retraining from the surviving weights "
            "shrinks the network without hurting accuracy (within about 1 point).",
            "reproduced": mean["mlp_apoz"] >= mean["mlp_dense"] - 1.0,
            "evidence": f"MLP params {params['mlp_dense']} -> {params['mlp_apoz']} ({kept:.0%} of the units of each "
            f"hidden layer kept); accuracy dense {mean['mlp_dense']:.2f}% vs trimmed {mean['mlp_apoz']:.2f}% "
            f"(weight-norm trimming {mean['mlp_weight']:.2f}%, random {mean['mlp_random']:.2f}%).",
        },
        "answers": [
            {
                "question": "Is a high zero rate a better pruning signal than small weight norm, or do the two rank "
                "units the same way?",
                "answer": f"They rank units {alike} (mean per-layer "
                f"Spearman between -APoZ and incoming-weight norm {r['mlp']:.2f} in the MLP), and after the same trim "
                f"schedule APoZ gave {mean['mlp_apoz']:.1f}% vs {mean['mlp_weight']:.1f}% for weight norm "
                f"and {mean['mlp_random']:.1f}% for random.",
                "evidence": f"MLP dense {mean['mlp_dense']:.2f}%; trimmed x{cfg.rounds}: APoZ {mean['mlp_apoz']:.2f}%, "
                f"weight {mean['mlp_weight']:.2f}%, random {mean['mlp_random']:.2f}%; APoZ over MLP units "
                f"{st['mlp_mean']:.2f} +- {st['mlp_std']:.2f}.",
            },
            {
                "question": "Does APoZ still work for networks with batch normalisation or non-ReLU activations?",
                "answer": "With BN before the ReLU the APoZ values "
                + ("bunch up" if st["cnn2d_std"] < st["mlp_std"] else "spread no less than without BN")
                + f" ({st['cnn2d_mean']:.2f} +- "
                f"{st['cnn2d_std']:.2f} over channels, vs {st['mlp_mean']:.2f} +- {st['mlp_std']:.2f} in the MLP); one "
                f"trim round then gave {mean['cnn2d_apoz']:.1f}% vs {mean['cnn2d_weight']:.1f}% (weight norm) and "
                f"{mean['cnn2d_random']:.1f}% (random), dense {mean['cnn2d_dense']:.1f}%.",
                "evidence": f"CNN2d: Spearman(-APoZ, filter norm) {r['cnn2d']:.2f}; accuracies after one "
                f"{100 * cfg.fraction:g}% trim + {retrain} epochs: APoZ {mean['cnn2d_apoz']:.2f}%, weight "
                f"{mean['cnn2d_weight']:.2f}%, random {mean['cnn2d_random']:.2f}%.",
            },
        ],
        "figures": [figure],
    }
