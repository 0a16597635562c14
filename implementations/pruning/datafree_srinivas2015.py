r"""Data-free Parameter Pruning for Deep Neural Networks (Srinivas & Babu, 2015).

Paper: [arXiv:1507.06149](https://arxiv.org/abs/1507.06149) · notes: `papers/datafree_srinivas2015.md`

In a fully connected layer, neuron $j$ computes $h(W_j^\top x)$ and feeds the next layer through its outgoing
weights $a_j$. If $W_i = W_j$, then $a_i h(W_i^\top x) + a_j h(W_j^\top x) = (a_i + a_j) h(W_i^\top x)$, so $j$
can be deleted and $a_j$ added to $a_i$ ("surgery") without changing the function. When the two are only close,
the squared error this causes is bounded by a term that grows with $\varepsilon_{i,j} = W_i - W_j$ and with
neuron $j$'s outgoing weights; the paper's saliency of deleting $j$ in favour of $i$ is

$$
s_{i,j} = \langle a_j^2 \rangle\, \lVert \varepsilon_{i,j} \rVert_2^2 ,
$$

with $\langle a_j^2 \rangle$ the mean of the squared outgoing weights of $j$. The pair with the smallest
saliency is merged, the saliencies are recomputed (only $a_i$ changed), and so on: no training data is used.
Here the incoming vector $W_j$ includes the bias, so that the merge of identical neurons is exact.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["apply_merges", "datafree_prune", "merge_order", "merge_saliency", "reproduce"]


def merge_saliency(incoming: Tensor, outgoing: Tensor) -> Tensor:
    r"""All pairwise saliencies $s_{i,j} = \langle a_j^2 \rangle \lVert W_i - W_j \rVert^2$ (diagonal $+\infty$).

    Args:
        incoming: $W$, one row per neuron (weights and bias), shape `(N, D + 1)`.
        outgoing: $a$, one column per neuron (the next layer's weight), shape `(K, N)`.

    Returns:
        $s$, shape `(N, N)`; row $i$ is the surviving neuron, column $j$ the deleted one.
    """
    distance = torch.cdist(incoming, incoming) ** 2  # ||W_i - W_j||^2, (N, N)
    saliency = distance * (outgoing**2).mean(dim=0)[None, :]  # <a_j^2> per column j
    return saliency.fill_diagonal_(torch.inf)


def merge_order(layer: nn.Linear, next_layer: nn.Linear, n_keep: int) -> list[tuple[int, int]]:
    """Greedy merges `(i, j)` (delete $j$, fold it into $i$) that take `layer` down to `n_keep` neurons.

    The sequence for a smaller `n_keep` extends the one for a larger `n_keep`, so one call serves every size.

    Args:
        layer: The layer whose output neurons are pruned, `Linear(D, N)`.
        next_layer: The layer that consumes them, `Linear(N, K)`.
        n_keep: Neurons left.
    """
    with torch.no_grad():
        incoming = torch.cat([layer.weight, layer.bias[:, None]], dim=1).double()  # (N, D + 1)
        outgoing = next_layer.weight.detach().clone().double()  # (K, N)
        distance = torch.cdist(incoming, incoming) ** 2  # incoming weights never change: compute once
        alive = torch.ones(layer.out_features, dtype=torch.bool)
        merges = []
        for _ in range(layer.out_features - n_keep):
            saliency = distance * (outgoing**2).mean(dim=0)[None, :]  # s_{i,j} as in merge_saliency, (N, N)
            saliency[~alive, :] = torch.inf
            saliency[:, ~alive] = torch.inf
            saliency.fill_diagonal_(torch.inf)
            i, j = divmod(int(saliency.argmin()), saliency.shape[1])
            outgoing[:, i] += outgoing[:, j]  # a_i <- a_i + a_j
            alive[j] = False
            merges.append((i, j))
    return merges


def apply_merges(
    layer: nn.Linear, next_layer: nn.Linear, merges: Sequence[tuple[int, int]], surgery: bool = True
) -> tuple[nn.Linear, nn.Linear]:
    """Physically remove the deleted neurons: smaller copies of `layer` and `next_layer`.

    Args:
        layer: `Linear(D, N)`.
        next_layer: `Linear(N, K)`.
        merges: `(i, j)` pairs from `merge_order`, applied in order.
        surgery: Add $a_j$ to $a_i$ (False: only delete $j$, an ablation).

    Returns:
        `Linear(D, N - len(merges))` and `Linear(N - len(merges), K)`.
    """
    with torch.no_grad():
        outgoing = next_layer.weight.detach().clone()  # (K, N)
        alive = torch.ones(layer.out_features, dtype=torch.bool)
        for i, j in merges:
            if surgery:
                outgoing[:, i] += outgoing[:, j]
            alive[j] = False
        keep = alive.nonzero().squeeze(1)
        new_layer = nn.Linear(layer.in_features, len(keep))
        new_layer.weight.copy_(layer.weight[keep])
        new_layer.bias.copy_(layer.bias[keep])
        new_next = nn.Linear(len(keep), next_layer.out_features)
        new_next.weight.copy_(outgoing[:, keep])
        new_next.bias.copy_(next_layer.bias)
    return new_layer, new_next


def datafree_prune(model: nn.Module, n_keep: Sequence[int], surgery: bool = True) -> nn.Module:
    """Data-free pruning of every hidden layer of an `MLP` (`layers[l]` feeds `layers[l+1]` or `head`).

    Args:
        model: An `implementations._models.MLP`.
        n_keep: Neurons kept in each hidden layer.
        surgery: Fold the deleted neurons' outgoing weights into their twins.

    Returns:
        A physically smaller copy of the MLP.
    """
    new = copy.deepcopy(model)
    last = len(new.layers) - 1
    for index, keep in enumerate(n_keep):
        consumer = new.head if index == last else new.layers[index + 1]
        merges = merge_order(new.layers[index], consumer, keep)
        new.layers[index], consumer = apply_merges(new.layers[index], consumer, merges, surgery)
        if index == last:
            new.head = consumer
        else:
            new.layers[index + 1] = consumer
    return new


def _smoke_task() -> tuple[nn.Module, Tensor, Tensor]:
    """A tiny MLP merged from 16 to 8 hidden neurons, for the generic smoke test."""
    from implementations._harness import Supervised
    from implementations._models import MLP

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = datafree_prune(MLP(40, 10, hidden=(16,)), [8])
    return Supervised(model), torch.randn(8, 40, generator=gen), torch.randint(0, 10, (8,), generator=gen)


datafree_prune.smoke_task = _smoke_task  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run datafree_srinivas2015`
# ---------------------------------------------------------------------------------------------------------------------

HIDDEN = 512  # width of the one-hidden-layer MLP (the paper prunes wide dense layers)
KEEPS = (256, 128, 77, 32, 16)  # neurons kept
CLAIM_KEEP = 77  # 85% of the parameters removed: the paper's "up to 85%" on MNIST


def _drop_by_norm(model: nn.Module, keep: int) -> nn.Module:
    """Baseline: keep the `keep` hidden neurons with the largest outgoing-weight norm, no surgery."""
    new = copy.deepcopy(model)
    order = new.head.weight.detach().norm(dim=0).argsort(descending=True)[:keep].sort().values
    layer, head = nn.Linear(new.layers[0].in_features, keep), nn.Linear(keep, new.head.out_features)
    with torch.no_grad():
        layer.weight.copy_(new.layers[0].weight[order])
        layer.bias.copy_(new.layers[0].bias[order])
        head.weight.copy_(new.head.weight[:, order])
        head.bias.copy_(new.head.bias)
    new.layers[0], new.head = layer, head
    return new


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Data-free merging vs plain deletion vs norm-based dropping of a wide MLP on digits, over `ctx.seeds`."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, count_params, model_row
    from implementations._models import MLP

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: one thread per run is ~10x faster than oversubscription
    try:
        data = load_dataset("digits", n_train=ctx.n_train)
        epochs, finetune = ctx.epochs(30), ctx.epochs(5)
        train = dict(lr=0.05, batch_size=128, progress=False)
        acc: dict[str, list[float]] = {}
        models: dict[str, nn.Module] = {}
        for seed in ctx.seeds:
            seed_everything(seed)
            dense = MLP(64, data.num_classes, hidden=(HIDDEN,))
            fit(Supervised(dense), dense.parameters(), data, epochs, seed=seed, **train)
            acc.setdefault("dense", []).append(evaluate(dense, data))
            models.setdefault("dense", dense)
            merges = merge_order(dense.layers[0], dense.head, min(KEEPS))  # one greedy run serves every size
            pruned = {}
            for keep in KEEPS:
                for name, surgery in (("merge", True), ("nosurgery", False)):
                    model = pruned[f"{name}_{keep}"] = copy.deepcopy(dense)
                    model.layers[0], model.head = apply_merges(
                        dense.layers[0], dense.head, merges[: HIDDEN - keep], surgery
                    )
                pruned[f"norm_{keep}"] = _drop_by_norm(dense, keep)
            for name in ("merge", "norm"):  # the data-driven reference: the same pruned nets, retrained
                model = pruned[f"{name}_{CLAIM_KEEP}_ft"] = copy.deepcopy(pruned[f"{name}_{CLAIM_KEEP}"])
                fit(Supervised(model), model.parameters(), data, finetune, seed=seed, **train)
            for name, model in pruned.items():
                acc.setdefault(name, []).append(evaluate(model, data))
                models.setdefault(name, model)

        total = count_params(models["dense"])
        mean = {k: sum(v) / len(v) for k, v in acc.items()}
        removed = {keep: 1 - count_params(models[f"merge_{keep}"]) / total for keep in KEEPS}
        dense_cols = model_row(models["dense"], data.input_shape, latency=True)
        small_cols = model_row(models[f"merge_{CLAIM_KEEP}"], data.input_shape, latency=True)
        k = CLAIM_KEEP
        specs = [
            ("dense", f"Dense MLP 64-{HIDDEN}-10", "baseline", dense_cols),
            (f"merge_{k}", f"Data-free merge to {k} neurons", "method", small_cols),
            (f"nosurgery_{k}", f"Same deletions, no surgery ({k})", "ablation", small_cols),
            (f"norm_{k}", f"Drop smallest outgoing norm ({k})", "baseline", small_cols),
            (f"merge_{k}_ft", f"Merge + {finetune} epochs retraining ({k})", "ablation", small_cols),
            (f"norm_{k}_ft", f"Norm drop + {finetune} epochs retraining ({k})", "ablation", small_cols),
            *[(f"merge_{n}", f"Data-free merge to {n} neurons", "ablation", None) for n in KEEPS if n != k],
        ]
        rows = []
        for name, label, role, cols in specs:
            cols = cols or model_row(models[name], data.input_shape)
            extra = {"params_removed": 1 - cols["params"] / total}
            rows.append(
                dict(name=name, label=label, role=role, accuracy=accuracy_stats(acc[name]), **cols, extra=extra)
            )
        figure = _plot(ctx, mean, removed)

        drop = mean["dense"] - mean[f"merge_{k}"]
        curve = "; ".join(
            f"{n} neurons ({100 * removed[n]:.1f}% removed): merge {mean[f'merge_{n}']:.1f}%, no surgery "
            f"{mean[f'nosurgery_{n}']:.1f}%, norm drop {mean[f'norm_{n}']:.1f}%"
            for n in KEEPS
        )
        gap = mean[f"merge_{k}_ft"] - mean[f"merge_{k}"]
        return {
            "id": "datafree_srinivas2015",
            "protocol": {
                "dataset": data.name,
                "n_train": data.n_train,
                "n_test": data.n_test,
                "seeds": list(ctx.seeds),
                "epochs": epochs,
                "selection": "last",
                "notes": f"MLP 64-{HIDDEN}-10 trained {epochs} epochs (SGD lr 0.05, batch 128, wd 5e-4); the hidden "
                f"layer is pruned without data to {KEEPS} neurons by greedy pairwise merging (saliency <a_j^2> "
                f"||W_i - W_j||^2, incoming vector includes the bias); baselines delete the same neurons without "
                f"surgery, or the neurons with the smallest outgoing-weight norm; retrained variants get "
                f"{finetune} epochs on the training data. Pruned models are physically smaller; latency is batch "
                f"1 on 1 CPU thread (first seed's models).",
            },
            "rows": rows,
            "claim": {
                "text": "Without any data, merging similar neurons removes up to 85% of the parameters of an MNIST "
                "network without a large accuracy drop (here: within 2 points).",
                "reproduced": drop <= 2.0,
                "evidence": f"{100 * removed[k]:.1f}% of the parameters removed ({k} of {HIDDEN} neurons kept): "
                f"{mean[f'merge_{k}']:.2f}% vs dense {mean['dense']:.2f}% (drop {drop:.2f} points), mean over "
                f"{len(ctx.seeds)} seed(s). {curve}.",
            },
            "answers": [
                {
                    "question": "How close to a retrained pruned network does a purely data-free merge get at the "
                    "same size?",
                    "answer": f"At {k} neurons the data-free merge reaches {mean[f'merge_{k}']:.1f}%, "
                    f"{gap:.1f} points below the same network retrained for {finetune} epochs "
                    f"({mean[f'merge_{k}_ft']:.1f}%; norm drop + retraining {mean[f'norm_{k}_ft']:.1f}%).",
                    "evidence": f"dense {mean['dense']:.2f}%; {curve}.",
                }
            ],
            "figures": [figure],
        }
    finally:
        torch.set_num_threads(threads)


def _plot(ctx: RunContext, mean: dict[str, float], removed: dict[int, float]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [100 * removed[n] for n in KEEPS]
    for name, label in (
        ("merge", "data-free merge"),
        ("nosurgery", "same deletions, no surgery"),
        ("norm", "drop smallest outgoing norm"),
    ):
        ax.plot(xs, [mean[f"{name}_{n}"] for n in KEEPS], "-o", label=label)
    ax.axhline(mean["dense"], color="gray", linestyle="--", label="dense")
    ax.set_xlabel("parameters removed (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Data-free neuron merging, MLP 64-{HIDDEN}-10 on digits (no retraining)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / "datafree_srinivas2015_sparsity.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"{ctx.results_dir.resolve().name}/figures/{path.name}"
