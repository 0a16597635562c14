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

__all__ = ["apply_merges", "conv_datafree_prune", "datafree_prune", "merge_order", "merge_saliency", "reproduce"]


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
        incoming = torch.cat([layer.weight, layer.bias[:, None]], dim=1)  # (N, D + 1)
        return _greedy_merges(incoming, next_layer.weight.detach(), n_keep)


def _greedy_merges(incoming: Tensor, outgoing: Tensor, n_keep: int) -> list[tuple[int, int]]:
    """`merge_order` on explicit incoming rows `(N, D)` and outgoing columns `(K, N)`."""
    with torch.no_grad():
        incoming = incoming.detach().double()
        outgoing = outgoing.detach().clone().double()  # (K, N)
        n = incoming.shape[0]
        distance = torch.cdist(incoming, incoming) ** 2  # incoming weights never change: compute once
        alive = torch.ones(n, dtype=torch.bool)
        merges = []
        for _ in range(n - n_keep):
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
CONV_WIDTH = 0.5  # cnn2d width for the conv-network question: channels (16, 32, 64)
CONV_FRACTION = 0.25  # share of each conv's channels merged away in that experiment


def conv_datafree_prune(model: nn.Module, fraction: float, surgery: bool = True) -> nn.Module:
    r"""Data-free merging of the conv channels of a `CNN2d` (conv, BN, ReLU stages; GAP; linear head).

    With BatchNorm (eval statistics) folded in, channel $j$ computes $\mathrm{ReLU}(s_j\, W_j * x + t_j)$, with
    $s_j = \gamma_j / \sqrt{\sigma_j^2 + \epsilon}$ and $t_j = \beta_j - s_j \mu_j$; its incoming vector is
    $[s_j W_j, t_j]$ and its outgoing weights $a_j$ are the next conv's input-channel slice (or the head's column,
    after the global average pool). Identical incoming vectors give identical maps, also after max-pooling, so the
    surgery $a_i \leftarrow a_i + a_j$ is exact for them, as in the fully connected case.

    Args:
        model: A `CNN2d`.
        fraction: Share of each stage's channels to delete.
        surgery: Fold the deleted channels' outgoing weights into their twins (False: only delete).

    Returns:
        A physically thinner copy.
    """
    from implementations.pruning._base import channel_units, prune_channels

    new = copy.deepcopy(model).eval()
    units, head = channel_units(new)
    keep = []
    with torch.no_grad():
        for index, (conv, norm) in enumerate(units):
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # (N,)
            shift = norm.bias - scale * norm.running_mean
            incoming = torch.cat([conv.weight.flatten(1) * scale[:, None], shift[:, None]], dim=1)  # (N, D + 1)
            consumer = units[index + 1][0] if index + 1 < len(units) else head
            weight = consumer.weight  # (K, N, kh, kw) or (K, N)
            n = weight.shape[1]
            outgoing = weight.transpose(0, 1).reshape(n, -1).T  # (K kh kw, N)
            merges = _greedy_merges(incoming, outgoing, n - int(fraction * n))
            alive = torch.ones(n, dtype=torch.bool)
            for i, j in merges:
                if surgery:
                    weight[:, i] += weight[:, j]
                weight[:, j] = 0.0  # removed below; zero now so the next stage's incoming rows ignore it
                alive[j] = False
            keep.append(alive.nonzero().squeeze(1))
    return prune_channels(new, keep).train(model.training)


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
    from implementations._measure import accuracy_stats, beats, count_params, interleaved_latency, model_row
    from implementations._models import MLP, build_model
    from implementations.pruning._base import channel_units, keep_top, prune_channels

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
        # The same merge on a network made of convolutions (cnn2d: 3x3 convs, BN, GAP, linear head).
        seed_everything(seed)
        cnn = build_model("cnn2d", data.num_classes, data.input_shape, width=CONV_WIDTH)
        fit(Supervised(cnn), cnn.parameters(), data, epochs // 3, seed=seed, **train)
        pruned["conv_dense"] = cnn
        pruned["conv_merge"] = conv_datafree_prune(cnn, CONV_FRACTION)
        pruned["conv_nosurgery"] = conv_datafree_prune(cnn, CONV_FRACTION, surgery=False)
        units, head = channel_units(cnn)
        consumers = [u[0].weight for u in units[1:]] + [head.weight]
        pruned["conv_norm"] = prune_channels(  # keep the channels with the largest outgoing-weight norm
            cnn,
            [
                keep_top(
                    w.detach().transpose(0, 1).flatten(1).norm(dim=1), w.shape[1] - int(CONV_FRACTION * w.shape[1])
                )
                for w in consumers
            ],
        )
        for name, model in pruned.items():
            acc.setdefault(name, []).append(evaluate(model, data))
            models.setdefault(name, model)

    total = count_params(models["dense"])
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    removed = {keep: 1 - count_params(models[f"merge_{keep}"]) / total for keep in KEEPS}
    timed = {"dense": models["dense"], "small": models[f"merge_{CLAIM_KEEP}"]}
    timed.update({f"merge_{n}": models[f"merge_{n}"] for n in KEEPS if n != CLAIM_KEEP})
    timed.update({"conv_dense": models["conv_dense"], "conv_small": models["conv_merge"]})
    latency = interleaved_latency(timed, data.input_shape, rounds=3)  # batch 1, fastest of 3 interleaved rounds
    dense_cols = {**model_row(models["dense"], data.input_shape), "latency_ms": latency["dense"]}
    small_cols = {**model_row(models[f"merge_{CLAIM_KEEP}"], data.input_shape), "latency_ms": latency["small"]}
    conv_dense_cols = {**model_row(models["conv_dense"], data.input_shape), "latency_ms": latency["conv_dense"]}
    conv_cols = {**model_row(models["conv_merge"], data.input_shape), "latency_ms": latency["conv_small"]}
    conv_removed = 1 - conv_cols["params"] / conv_dense_cols["params"]
    conv_flops = 1 - conv_cols["flops"] / conv_dense_cols["flops"]
    k = CLAIM_KEEP
    specs = [
        ("dense", f"Dense MLP 64-{HIDDEN}-10", "baseline", dense_cols),
        (f"merge_{k}", f"Data-free merge to {k} neurons", "method", small_cols),
        (f"nosurgery_{k}", f"Same deletions, no surgery ({k})", "ablation", small_cols),
        (f"norm_{k}", f"Drop smallest outgoing norm ({k})", "baseline", small_cols),
        (f"merge_{k}_ft", f"Merge + {finetune} epochs retraining ({k})", "ablation", small_cols),
        (f"norm_{k}_ft", f"Norm drop + {finetune} epochs retraining ({k})", "ablation", small_cols),
        *[(f"merge_{n}", f"Data-free merge to {n} neurons", "ablation", None) for n in KEEPS if n != k],
        ("conv_dense", f"Dense cnn2d (width {CONV_WIDTH})", "ablation", conv_dense_cols),
        (
            "conv_merge",
            f"cnn2d, data-free merge of {CONV_FRACTION:.0%} of each conv's channels",
            "ablation",
            conv_cols,
        ),
        ("conv_nosurgery", "cnn2d, same deletions, no surgery", "ablation", conv_cols),
        ("conv_norm", "cnn2d, drop smallest outgoing norm", "ablation", conv_cols),
    ]
    rows = []
    for name, label, role, cols in specs:
        if cols is None:
            cols = {**model_row(models[name], data.input_shape), "latency_ms": latency[name]}
        base = conv_dense_cols["params"] if name.startswith("conv_") else total
        extra = {"params_removed": 1 - cols["params"] / base}
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
            f"{finetune} epochs on the training data. Conv question: cnn2d (width {CONV_WIDTH}) trained "
            f"{epochs // 3} epochs, {CONV_FRACTION:.0%} of each conv's channels merged (BN folded into the "
            f"incoming vectors), no retraining. Pruned models are physically smaller; latency is batch 1 on 1 "
            f"CPU thread, fastest of 3 interleaved rounds (first seed's models).",
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
            },
            {
                "question": "Does the method help at all on networks whose parameters sit mostly in convolutions?",
                "answer": (
                    f"On cnn2d, merging {CONV_FRACTION:.0%} of every conv's channels ({100 * conv_removed:.0f}% "
                    f"of the parameters, {100 * conv_flops:.0f}% of the FLOPs) without data gives "
                    f"{mean['conv_merge']:.1f}% against {mean['conv_dense']:.1f}% dense: "
                    + (
                        "within 2 points of the dense net"
                        if mean["conv_dense"] - mean["conv_merge"] <= 2.0
                        else "more than 2 points below the dense net"
                    )
                    + ". Compared with the other data-free choices at the same size it "
                    + (
                        "clearly helps: the surgery beats plain deletion and merging beats dropping the "
                        "smallest-outgoing-norm channels, both beyond seed noise."
                        if beats(acc["conv_merge"], acc["conv_nosurgery"])
                        and beats(acc["conv_merge"], acc["conv_norm"])
                        else "does not clearly help: it does not beat both plain deletion and norm-based dropping "
                        "beyond seed noise."
                    )
                ),
                "evidence": f"cnn2d (width {CONV_WIDTH}) trained {epochs // 3} epochs: dense "
                f"{mean['conv_dense']:.2f}%, merge {mean['conv_merge']:.2f}%, no surgery "
                f"{mean['conv_nosurgery']:.2f}%, norm drop {mean['conv_norm']:.2f}% (no retraining, "
                f"{len(ctx.seeds)} seed(s)); BN statistics folded into the incoming vectors.",
            },
        ],
        "figures": [figure],
    }


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
