r"""Dataset Distillation (Wang, Zhu, Torralba & Efros, 2018).

Paper: [arXiv:1811.10959](https://arxiv.org/abs/1811.10959) · notes: `papers/datasetdistill_wang2018.md`

The model stays fixed and the training set is compressed: a few synthetic examples $\tilde{\mathbf{x}}$ (with
fixed labels) and learned step sizes $\tilde\eta$ are optimised so that a few gradient steps on them, from an
initialisation $\theta_0$, give weights that do well on the real data. With $S$ distilled batches
$\tilde{\mathbf{x}}_1, \dots, \tilde{\mathbf{x}}_S$ visited for $E$ epochs, the inner updates are

$$
\theta_{t+1} = \theta_t - \tilde\eta_t\, \nabla_{\theta_t}\, \ell\big(\tilde{\mathbf{x}}_{t \bmod S}, \theta_t\big),
\qquad t = 0, \dots, ES - 1,
$$

and the outer problem differentiates through all of them (back-propagation through the unrolled steps):

$$
\tilde{\mathbf{x}}^*, \tilde\eta^* = \arg\min_{\tilde{\mathbf{x}}, \tilde\eta}\;
\mathbb{E}_{\theta_0 \sim p(\theta_0)}\;
\ell\big(\mathbf{x}, \theta_{ES}(\tilde{\mathbf{x}}, \tilde\eta, \theta_0)\big),
$$

with $p(\theta_0)$ a point mass (fixed, known initialisation) or the network's random initialisation (the data
must then work from any start). Each step has its own learned rate, kept positive as $\tilde\eta_t =
e^{\lambda_t}$.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "DatasetDistillation", "reset_parameters", "reproduce", "unroll"]

Params = dict[str, Tensor]


@dataclass(frozen=True)
class Config:
    """Hyperparameters (the paper's MNIST defaults use 10 steps x 3 epochs of one image per class per step)."""

    images_per_class: int = 1  # distilled examples per class in each distilled batch
    steps: int = 1  # $S$: distinct distilled batches (10 images in all with the defaults)
    epochs: int = 10  # $E$: passes over the distilled batches; $ES$ GD steps in all
    init_lr: float = 0.05  # initial $\tilde\eta_t$
    outer_lr: float = 0.02  # Adam step on $\tilde{\mathbf{x}}$ and $\lambda_t$
    outer_iterations: int = 250  # outer Adam steps
    real_batch: int = 1024  # real examples per outer step


def reset_parameters(model: nn.Module) -> None:
    r"""Draw a fresh random initialisation, $\theta_0 \sim p(\theta_0)$, in place."""
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def unroll(
    model: nn.Module, params: Params, images: Tensor, labels: Tensor, lrs: Tensor, epochs: int, create_graph: bool
) -> Params:
    r"""The $ES$ inner GD steps, $\theta_{t+1} = \theta_t - \tilde\eta_t \nabla \ell(\tilde{\mathbf{x}}_{t \bmod S},
    \theta_t)$.

    Args:
        model: The architecture; its own parameters are not used.
        params: $\theta_0$ by name.
        images: Distilled batches $\tilde{\mathbf{x}}$, shape `(S, M, *input_shape)`.
        labels: Their labels, shape `(M,)` (the same for every batch).
        lrs: $\tilde\eta_t$ for $t < ES$, shape `(E S,)`.
        epochs: $E$.
        create_graph: Keep the graph of every step, so that a loss on $\theta_{ES}$ back-propagates to the images
            and rates.

    Returns:
        $\theta_{ES}$ by name.
    """
    names = list(params)
    theta = [p if p.requires_grad else p.detach().requires_grad_(True) for p in params.values()]
    steps = images.shape[0]
    for t in range(epochs * steps):
        logits = functional_call(model, dict(zip(names, theta, strict=True)), (images[t % steps],))  # (M, K)
        grads = torch.autograd.grad(F.cross_entropy(logits, labels), theta, create_graph=create_graph)
        theta = [p - lrs[t] * g for p, g in zip(theta, grads, strict=True)]
        if not create_graph:
            theta = [p.detach().requires_grad_(True) for p in theta]
    return dict(zip(names, theta, strict=True))


class DatasetDistillation(nn.Module):
    r"""Learnable distilled data $\tilde{\mathbf{x}}$ and log step sizes $\lambda_t$ for a fixed architecture."""

    def __init__(
        self, model: nn.Module, num_classes: int, input_shape: tuple[int, ...], cfg: Config | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg or Config()
        self.model = model  # holds theta_0; never trained here
        self.model.requires_grad_(False)
        m = num_classes * self.cfg.images_per_class
        self.images = nn.Parameter(torch.randn(self.cfg.steps, m, *input_shape))  # (S, M, *input_shape)
        self.register_buffer("labels", torch.arange(num_classes).repeat_interleave(self.cfg.images_per_class))
        n_steps = self.cfg.epochs * self.cfg.steps
        self.log_lrs = nn.Parameter(torch.full((n_steps,), math.log(self.cfg.init_lr)))  # lambda_t

    def theta0(self) -> Params:
        r"""The current initialisation $\theta_0$ (the model's parameters), detached."""
        return {name: p.detach() for name, p in self.model.named_parameters()}

    def trained_params(self, create_graph: bool = False) -> Params:
        r"""$\theta_{ES}$: the weights after the inner GD steps on the distilled data from $\theta_0$."""
        return unroll(
            self.model, self.theta0(), self.images, self.labels, self.log_lrs.exp(), self.cfg.epochs, create_graph
        )

    def forward(self, x: Tensor) -> Tensor:
        r"""Logits `(B, K)` of the network trained on the distilled data from the current $\theta_0$."""
        with torch.enable_grad():
            params = self.trained_params()
        return functional_call(self.model, {k: v.detach() for k, v in params.items()}, (x,))

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        r"""Logits of $\theta_{ES}$ on the real batch and the outer loss $\ell(\mathbf{x}, \theta_{ES})$."""
        params = self.trained_params(create_graph=True)
        logits = functional_call(self.model, params, (x,))  # (B, K)
        return logits, {"outer_ce": F.cross_entropy(logits, y)}

    def distill(self, x: Tensor, y: Tensor, random_init: bool = False, seed: int = 0) -> list[float]:
        r"""Optimise images and rates with Adam on random real batches; `random_init` redraws $\theta_0$ each step.

        Returns:
            The outer loss of every iteration.
        """
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam([self.images, self.log_lrs], lr=self.cfg.outer_lr)
        losses = []
        for _ in range(self.cfg.outer_iterations):
            if random_init:
                reset_parameters(self.model)
            idx = torch.randint(len(y), (min(self.cfg.real_batch, len(y)),), generator=gen)
            _, terms = self.forward_train(x[idx], y[idx])
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses

    @classmethod
    def smoke_task(cls) -> tuple[nn.Module, Tensor, Tensor]:
        """Two distilled images per class step on a tiny MLP; the outer loss reaches images and rates."""
        from implementations.other._base import INPUT_SHAPE, tiny_model

        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        task = cls(tiny_model(), 10, INPUT_SHAPE, Config(steps=2, epochs=1))
        x = torch.randn(8, *INPUT_SHAPE, generator=gen)  # (B, 1, 40)
        return task, x, torch.randint(0, 10, (8,), generator=gen)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """10 distilled examples vs 10 (and 100) random real ones, fixed and random initialisation, over `ctx.seeds`.

    The run is in `experiment.py`.
    """
    from implementations.other.datasetdistill_wang2018.experiment import reproduce as run

    return run(ctx)
