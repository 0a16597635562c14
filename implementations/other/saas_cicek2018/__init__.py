r"""SaaS: Speed as a Supervisor for Semi-supervised Learning (Cicek, Fawzi & Soatto, 2018).

Paper: [arXiv:1805.00980](https://arxiv.org/abs/1805.00980) · notes: `papers/saas_cicek2018.md`

SGD fits a training set faster the more of its labels are correct, so the speed of learning scores a candidate
posterior $P \in \Delta_K^{N_u}$ (one row on the simplex per unlabelled example) over the unknown labels. With
the labelled pairs $(x_i, y_i)$ and the unlabelled $x_j$, the training loss of weights $w$ under $P$ is

$$
L(w; P) = \frac{1}{N} \Big( \sum_{i \in \mathcal{L}} -\log p_{y_i}(x_i; w)
          + \sum_{j \in \mathcal{U}} \sum_k -P_{jk} \log p_k(x_j; w) \Big).
$$

A short SGD run $w_0 \to w_1 \to \dots \to w_T$ from a fixed initialisation learns fast when the cumulative loss
$\sum_t L(w_t; P)$ is small, so the posterior descends its gradient (the weights' dependence on $P$ is ignored,
as in the paper's first-order update) and is projected back onto the simplex:

$$
P \leftarrow \Pi_{\Delta}\Big(P - \eta_P\, \bar G\Big), \qquad
\bar G_{jk} = \frac{1}{|t : j \in \mathcal{B}_t|} \sum_{t : j \in \mathcal{B}_t} -\log p_k(x_j; w_t),
$$

i.e. each label moves toward the classes the network learns to predict fastest for that example. The weights
are reset to $w_0$ before every short run, so the score judges the labels and not one set of weights. Finally a
network is trained from scratch on the labelled data plus $\arg\max_k P_{jk}$.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "SaaS", "project_simplex", "reproduce", "soft_cross_entropy"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the posterior estimation (phase 1)."""

    outer_iterations: int = 30  # number of posterior updates (each after one short run from w_0)
    inner_epochs: int = 1  # length of the short SGD run, in epochs over the unlabelled data
    inner_lr: float = 0.1  # SGD learning rate of the short runs (momentum 0.9)
    posterior_lr: float = 0.1  # $\eta_P$: step of the projected gradient update of P
    batch_size: int = 128  # mini-batch of the short runs: half labelled (recycled), half unlabelled


def soft_cross_entropy(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    r"""$-\sum_k t_k \log \mathrm{softmax}(z)_k$ per example, averaged (or summed) over the batch.

    Args:
        logits: $z$, shape `(B, K)`.
        targets: Rows on the simplex $t$, shape `(B, K)`.
        reduction: `mean` or `sum` over the batch.
    """
    per_example = -(targets * F.log_softmax(logits, dim=-1)).sum(-1)  # (B,)
    return per_example.mean() if reduction == "mean" else per_example.sum()


def project_simplex(v: Tensor) -> Tensor:
    r"""Euclidean projection of each row onto the probability simplex $\{p : p \ge 0, \sum_k p_k = 1\}$.

    Sort $u = \mathrm{sort}(v)$ decreasingly, take the largest $\rho$ with $u_\rho - (\sum_{r \le \rho} u_r - 1)/\rho
    > 0$, and return $\max(v - \tau, 0)$ with $\tau = (\sum_{r \le \rho} u_r - 1)/\rho$ (Duchi et al., 2008).

    Args:
        v: Rows to project, shape `(N, K)`.
    """
    u = torch.sort(v, dim=-1, descending=True).values  # (N, K)
    cumsum = u.cumsum(-1) - 1  # (N, K)
    ranks = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)  # (K,)
    support = (u - cumsum / ranks) > 0  # (N, K), true on a prefix
    rho = support.to(v.dtype).cumsum(-1).argmax(-1, keepdim=True)  # index of the last true entry, (N, 1)
    tau = cumsum.gather(-1, rho) / (rho + 1).to(v.dtype)  # (N, 1)
    return (v - tau).clamp_min(0)


class SaaS(nn.Module):
    r"""A classifier plus a posterior over the labels of `num_unlabelled` examples, learned by speed.

    In `forward_train(x, y)`, a label `y >= 0` is a known label and `y = -1 - j` marks unlabelled example `j`,
    whose target is row `j` of the posterior. `posterior` is a parameter only so that autograd accumulates
    $\partial \sum_t L(w_t; P) / \partial P$ over a short run; the model's optimiser never sees it.
    """

    def __init__(self, model: nn.Module, num_unlabelled: int, num_classes: int, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Config()
        self.model = model
        self.posterior = nn.Parameter(torch.full((num_unlabelled, num_classes), 1.0 / num_classes))  # P, uniform
        self.register_buffer("visits", torch.zeros(num_unlabelled))  # sum over steps of 1/B per appearance

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`."""
        return self.model(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits `(B, K)` and the two halves of $L(w; P)$ on the batch, each divided by the batch size."""
        logits = self.model(x)  # (B, K)
        labelled = y >= 0
        index = (-1 - y).clamp_min(0)[~labelled]  # rows of P
        batch = x.shape[0]
        with torch.no_grad():
            self.visits.index_add_(0, index, torch.full_like(index, 1.0 / batch, dtype=self.visits.dtype))
        ce = F.cross_entropy(logits[labelled], y[labelled], reduction="sum") / batch
        unlabelled = soft_cross_entropy(logits[~labelled], self.posterior[index], reduction="sum") / batch
        return logits, {"ce": ce, "unlabelled": unlabelled}

    @torch.no_grad()
    def update_posterior(self) -> None:
        r"""$P \leftarrow \Pi_\Delta(P - \eta_P \bar G)$ with the per-visit mean gradient; resets the accumulators."""
        if self.posterior.grad is None:
            return
        mean_grad = self.posterior.grad / self.visits.clamp_min(1e-12)[:, None]  # (N_u, K): mean -log p_k
        self.posterior.copy_(project_simplex(self.posterior - self.cfg.posterior_lr * mean_grad))
        self.posterior.grad = None
        self.visits.zero_()

    def short_run(self, x: Tensor, y: Tensor, init_state: dict[str, Tensor], seed: int) -> list[float]:
        """Reset the weights to `init_state`, run `inner_epochs` of SGD on `(x, y)`, accumulate the P gradient.

        Returns:
            The loss $L(w_t; P)$ of every step (its sum is the cumulative loss the posterior minimises).
        """
        self.model.load_state_dict(init_state)
        self.model.train()
        opt = torch.optim.SGD(self.model.parameters(), lr=self.cfg.inner_lr, momentum=0.9, weight_decay=5e-4)
        gen = torch.Generator().manual_seed(seed)
        labelled, unlabelled = (y >= 0).nonzero().squeeze(1), (y < 0).nonzero().squeeze(1)
        half = self.cfg.batch_size // 2
        losses = []
        for _ in range(self.cfg.inner_epochs):
            # one epoch over the unlabelled examples; each batch is half unlabelled, half (recycled) labelled
            order_u = unlabelled[torch.randperm(len(unlabelled), generator=gen)]
            n_steps = -(-len(order_u) // half)
            order_l = labelled[torch.randint(len(labelled), (n_steps * half,), generator=gen)]
            for step in range(n_steps):
                idx = torch.cat([order_l[step * half : (step + 1) * half], order_u[step * half : (step + 1) * half]])
                _, terms = self.forward_train(x[idx], y[idx])
                loss = sum(terms.values())
                opt.zero_grad(set_to_none=True)  # the model's grads only: P.grad keeps accumulating
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        return losses

    def estimate(self, x: Tensor, y: Tensor, seed: int = 0) -> Tensor:
        """Phase 1: `outer_iterations` short runs from the same $w_0$, each followed by a posterior update."""
        init_state = copy.deepcopy(self.model.state_dict())  # w_0
        for t in range(self.cfg.outer_iterations):
            self.short_run(x, y, init_state, seed=seed * 1000 + t)
            self.update_posterior()
        self.model.load_state_dict(init_state)
        return self.posterior.detach().clone()

    @classmethod
    def smoke_task(cls) -> tuple[nn.Module, Tensor, Tensor]:
        """A tiny MLP with a posterior over 4 unlabelled examples; the batch mixes 4 labelled and 4 unlabelled."""
        from implementations.other._base import tiny_model

        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        task = cls(tiny_model(), num_unlabelled=4, num_classes=10)
        x = torch.randn(8, 1, 40, generator=gen)  # (B, 1, 40)
        y = torch.cat([torch.randint(0, 10, (4,), generator=gen), -1 - torch.arange(4)])  # (B,)
        return task, x, y


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """SaaS vs supervised-only and pseudo-labelling on MNIST-1D with 20 labels per class, over `ctx.seeds`.

    The run is in `experiment.py`.
    """
    from implementations.other.saas_cicek2018.experiment import reproduce as run

    return run(ctx)
