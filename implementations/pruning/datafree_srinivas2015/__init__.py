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


def _smoke_task() -> tuple[nn.Module, Tensor, Tensor]:
    """A tiny MLP merged from 16 to 8 hidden neurons, for the generic smoke test."""
    from implementations._harness import Supervised
    from implementations._models import MLP

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = datafree_prune(MLP(40, 10, hidden=(16,)), [8])
    return Supervised(model), torch.randn(8, 40, generator=gen), torch.randint(0, 10, (8,), generator=gen)


datafree_prune.smoke_task = _smoke_task  # type: ignore[attr-defined]


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Data-free merging vs plain deletion vs norm-based dropping of a wide MLP on digits, over `ctx.seeds`.

    The run is in `experiment.py`.
    """
    from implementations.pruning.datafree_srinivas2015.experiment import reproduce as run

    return run(ctx)
