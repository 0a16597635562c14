r"""Mutual-learning family contract: a cohort of $K$ peers that teach each other, with no pretrained teacher.

A mutual learner is one harness task that holds all $K$ networks (separate peers, branches on a shared trunk, or
sub-networks feeding a fused classifier) and trains them in a single run:
`forward_train(x, y) -> (logits, {name: weighted_loss})` returns the logits of the deployed network (the first peer,
or the fused/ensemble classifier when that is what the method deploys) and the weighted loss terms of *every*
peer, so `fit()` minimises $\sum_{k=1}^{K} \mathcal{L}_k$ with one optimizer over all parameters. The target a peer
imitates is always another peer's (or the ensemble's) prediction held fixed for that step, so
$\partial \mathcal{L}_k / \partial \theta_j = 0$ through the target for $j \ne k$. `forward(x)` is the deployed
prediction, so `evaluate(task, data)` scores it; each peer can be scored on its own through `task.peers[k]`.

Most methods of the family imitate a temperature-softened distribution, $p^{(T)} = \mathrm{softmax}(z / T)$, with

$$
\mathrm{KL}_T(z_t \,\|\, z_s) = T^2 \sum_{m} p^{(T)}_{t,m} \log \frac{p^{(T)}_{t,m}}{p^{(T)}_{s,m}},
$$

averaged over the batch; the $T^2$ keeps the gradient scale independent of $T$ (Hinton et al., 2015).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._models import build_model

__all__ = ["Ensemble", "MutualLearner", "Predictor", "smoke_task", "soft_kl"]


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    r"""$T^2\,\mathrm{KL}(p_t^{(T)} \,\|\, p_s^{(T)})$, averaged over the batch; detach the teacher before calling.

    Args:
        student_logits: Logits of the network that learns, $z_s$, shape `(B, K)`.
        teacher_logits: Logits of the target, $z_t$, shape `(B, K)`.
        temperature: $T > 0$.

    Returns:
        A scalar tensor, 0 when the two distributions are equal.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)  # (B, K)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)  # (B, K)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


class Ensemble(nn.Module):
    r"""Average of the logits of several models, $\bar z = \frac{1}{K} \sum_k z_k$ (for evaluation)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, x: Tensor) -> Tensor:
        """Mean logits `(B, K)`."""
        return torch.stack([m(x) for m in self.models]).mean(dim=0)


class Predictor(nn.Module):
    """Expose another prediction method of a task as `forward` (e.g. `Predictor(task, "ensemble_logits")`)."""

    def __init__(self, task: nn.Module, method: str) -> None:
        super().__init__()
        self.task = task
        self.method = method

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` of `task.<method>(x)`."""
        return getattr(self.task, self.method)(x)


class MutualLearner(nn.Module):
    """Base class of mutual-learning methods: `peers` is the cohort, all of it trainable."""

    def __init__(self, peers: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(peers) < 2:
            raise ValueError(f"mutual learning needs at least 2 peers, got {len(peers)}")
        self.peers = nn.ModuleList(peers)

    @property
    def num_peers(self) -> int:
        """$K$, the size of the cohort."""
        return len(self.peers)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter of the cohort and of any extra module (gate, fusion, heads)."""
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` of the deployed network (the first peer by default)."""
        return self.peers[0](x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Deployed logits `(B, K)` and the weighted loss terms of all peers; implemented by each method."""
        raise NotImplementedError


def smoke_task(
    entrypoint: type[MutualLearner], num_peers: int = 3, batch_size: int = 8, num_classes: int = 10, seed: int = 0
) -> tuple[MutualLearner, Tensor, Tensor]:
    """A tiny mutual-learning task for the generic smoke test.

    An entrypoint with its own `smoke_task()` classmethod is delegated to. Otherwise it is built as
    `entrypoint(peers)` with its default config, where the peers are `num_peers` quarter-width `cnn1d` networks
    (three conv stages, channels 8-16-16) for MNIST-1D-shaped inputs.

    Args:
        entrypoint: A `MutualLearner` subclass, e.g. `DML`.
        num_peers: $K$.
        batch_size: $B$ of the synthetic batch.
        num_classes: Number of classes.
        seed: Seeds the peers' initialisation and the batch.

    Returns:
        `(task, x, y)`: the task, a batch `x` of shape `(B, 1, 40)` and labels `y` of shape `(B,)`.
    """
    if hasattr(entrypoint, "smoke_task"):
        return entrypoint.smoke_task()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    in_shape = (1, 40)
    peers = [build_model("cnn1d", num_classes, in_shape, width=0.25) for _ in range(num_peers)]
    task = entrypoint(peers)
    x = torch.randn(batch_size, *in_shape, generator=gen)  # (B, 1, 40)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen)  # (B,)
    return task, x, y
