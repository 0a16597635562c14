r"""Soft Weight-Sharing for Neural Network Compression (Ullrich, Meeds & Welling, 2017).

Paper: [arXiv:1702.04008](https://arxiv.org/abs/1702.04008) · notes: `papers/softweightsharing_ullrich2017.md`

A pretrained network is retrained under a Gaussian-mixture prior over all its weights $w_1, \dots, w_I$,

$$
p(\mathbf{w}) = \prod_{i=1}^{I} \sum_{j=0}^{J} \pi_j\, \mathcal{N}\big(w_i \mid \mu_j, \sigma_j^2\big),
\qquad \mu_0 = 0,\ \pi_0 \text{ fixed},
$$

learned jointly with the weights (empirical Bayes) by minimising

$$
\mathcal{L} = -\log p(\mathbf{T} \mid \mathbf{X}, \mathbf{w}) - \tau \log p(\mathbf{w}, \{\mu_j, \sigma_j, \pi_j\}).
$$

Weights gather around a few means and, mostly, around the zero component. Afterwards components whose
KL divergence is small are merged, and every weight is set to the mean of its most responsible component,
$w_i \leftarrow \mu_{j^*}$ with $j^* = \arg\max_j \pi_j \mathcal{N}(w_i \mid \mu_j, \sigma_j^2)$: the network is then
pruned (component 0) and quantized (the other means) in one go.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._harness import epoch_generator
from implementations._models import build_model
from implementations.quantization._base import quantizable_layers

if TYPE_CHECKING:
    from implementations._data import TensorData
    from implementations._harness import RunContext

__all__ = ["Config", "GaussianMixturePrior", "SoftWeightSharing", "reproduce", "storage_bits"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; the paper's values where given (it tuned 13 of them by Bayesian optimisation)."""

    components: int = 17  # $J + 1$, including the zero component ($2^4 + 1$, Sec. 6)
    pi_zero: float = 0.999  # $\pi_0$, fixed
    tau: float = 0.05  # $\tau$, weight of the complexity term (notes: 0.05)
    init_sigma: float = 0.02  # initial $\sigma_j$ of every component (ours: about 1/4 of the weights' std)
    min_sigma: float = 1e-3  # floor on $\sigma_j$, in place of the paper's Gamma hyper-priors (ours)
    lr: float = 1e-3  # Adam learning rate of the weights (ours)
    mixture_lr: float = 5e-4  # Adam learning rate of the means (Sec. 6: around 5e-4)
    variance_lr: float = 3e-3  # Adam learning rate of the log-variances and mixing logits (ours)
    merge_kl: float = 0.5  # merge two components when their symmetric KL is below this (ours)


class GaussianMixturePrior(nn.Module):
    r"""$\log p(\mathbf{w}) = \sum_i \log \sum_j \pi_j \mathcal{N}(w_i \mid \mu_j, \sigma_j^2)$ with $\mu_0 = 0$ and
    $\pi_0$ fixed; means start evenly spread over the pretrained weights' range."""

    def __init__(self, weights: Tensor, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        lo, hi = float(weights.min()), float(weights.max())
        self.means = nn.Parameter(torch.linspace(lo, hi, cfg.components - 1))  # $\mu_{1..J}$
        self.log_var = nn.Parameter(torch.full((cfg.components,), 2 * math.log(cfg.init_sigma)))  # $\log\sigma_j^2$
        self.logits = nn.Parameter(torch.zeros(cfg.components - 1))  # mixing weights of $j \ge 1$

    def parameters_now(self) -> tuple[Tensor, Tensor, Tensor]:
        """`(mu, sigma2, pi)`, each `(J + 1,)`, component 0 first."""
        mu = torch.cat([self.means.new_zeros(1), self.means])
        var = self.log_var.clamp_min(2 * math.log(self.cfg.min_sigma)).exp()
        pi = torch.cat([self.means.new_tensor([self.cfg.pi_zero]), (1 - self.cfg.pi_zero) * self.logits.softmax(0)])
        return mu, var, pi

    def log_joint(self, w: Tensor) -> Tensor:
        r"""$\log \pi_j + \log \mathcal{N}(w_i \mid \mu_j, \sigma_j^2)$, shape `(I, J + 1)` for weights `(I,)`."""
        mu, var, pi = self.parameters_now()
        constant = pi.log() - 0.5 * (math.log(2 * math.pi) + var.log())  # (J + 1,)
        return constant - (w[:, None] - mu).square() * (0.5 / var)

    def log_prob(self, w: Tensor) -> Tensor:
        r"""$\log p(\mathbf{w})$ (a scalar) for the flat weights `(I,)`."""
        joint = self.log_joint(w)  # (I, J + 1)
        # log-sum-exp with a detached shift: the same value and gradient as torch.logsumexp, about 2x cheaper here
        shift = joint.detach().amax(dim=1, keepdim=True)  # (I, 1)
        return ((joint - shift).exp().sum(dim=1).log() + shift.squeeze(1)).sum()

    @torch.no_grad()
    def merged(self) -> tuple[Tensor, Tensor]:
        """Means and a component map after merging components with symmetric KL below `merge_kl`.

        Returns:
            `(mu, target)`: the (J + 1,) means after merging (pi-weighted, component 0 stays at 0) and, for every
            component, the index of the component it was merged into.
        """
        mu, var, pi = self.parameters_now()
        target = torch.arange(len(mu))
        order = mu.argsort().tolist()
        for a, b in zip(order[:-1], order[1:], strict=True):  # neighbours along the real line
            kl = 0.5 * ((var[a] + (mu[a] - mu[b]) ** 2) / var[b] + (var[b] + (mu[a] - mu[b]) ** 2) / var[a] - 2)
            if kl < self.cfg.merge_kl:  # union of the two groups; a group holding component 0 stays at zero
                root_a, root_b = int(target[a]), int(target[b])
                target[(target == root_a) | (target == root_b)] = 0 if 0 in (root_a, root_b) else root_a
        mu = mu.clone()
        for t in target.unique().tolist():
            members = target == t
            mu[members] = 0.0 if t == 0 else (pi[members] * mu[members]).sum() / pi[members].sum()
        return mu, target


class SoftWeightSharing(nn.Module):
    r"""Cross-entropy + $\tau$-weighted negative log mixture prior over every Linear/conv weight of `model`."""

    def __init__(self, model: nn.Module, n_train: int, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Config()
        self.model = model
        self.n_train = n_train  # the complexity term is per data set, the CE a per-example mean
        self.prior = GaussianMixturePrior(self.flat_weights().detach(), self.cfg)

    def flat_weights(self) -> Tensor:
        """All Linear/conv weights (not biases) as one vector `(I,)`."""
        return torch.cat([layer.weight.flatten() for _, layer in quantizable_layers(self.model)])

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`."""
        return self.model(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        r"""Logits, the CE and $-\tau \log p(\mathbf{w}) / N$ (the paper's objective divided by $N$)."""
        logits = self.model(x)
        losses = {"ce": F.cross_entropy(logits, y)}
        if self.cfg.tau > 0:  # tau = 0 is plain retraining (used to time the prior's overhead)
            losses["complexity"] = -self.cfg.tau * self.prior.log_prob(self.flat_weights()) / self.n_train
        return logits, losses

    @torch.no_grad()
    def quantize(self) -> nn.Module:
        """A copy of the network with every weight set to its most responsible (merged) component's mean."""
        import copy

        mu, target = self.prior.merged()
        model = copy.deepcopy(self.model)
        for _, layer in quantizable_layers(model):
            w = layer.weight.flatten()
            layer.weight.copy_(mu[target[self.prior.log_joint(w).argmax(dim=1)]].view_as(layer.weight))
        return model

    @classmethod
    def smoke_task(cls) -> tuple[SoftWeightSharing, Tensor, Tensor]:
        """A tiny MLP under the mixture prior, for the generic smoke test."""
        torch.manual_seed(0)
        task = cls(build_model("mlp", 10, (40,), width=0.125), n_train=100, cfg=Config(components=5))
        return task, torch.randn(8, 40), torch.randint(0, 10, (8,))


def storage_bits(model: nn.Module, index_bits: int = 5) -> tuple[int, int]:
    r"""Bits of `model` in the Deep Compression sparse format (no Huffman coding), and the number of codebook values.

    Each layer stores its non-zeros (plus filler zeros where a gap exceeds $2^b$) as a $b$-bit relative index and a
    $\lceil \log_2(K + 1) \rceil$-bit code into one codebook of $K$ distinct non-zero values shared by all layers
    (32 bits each); biases stay fp32.
    """
    from implementations.pruning.deepcompression_han2016 import relative_indices

    layers = quantizable_layers(model)
    values = torch.cat([layer.weight.flatten() for _, layer in layers])
    codebook = values[values != 0].unique()
    code_bits = max(1, math.ceil(math.log2(codebook.numel() + 1)))
    bits = 32 * codebook.numel()
    for _, layer in layers:
        positions, _ = relative_indices(layer.weight.flatten() != 0, index_bits)
        bits += positions.numel() * (index_bits + code_bits)
        if layer.bias is not None:
            bits += 32 * layer.bias.numel()
    return bits, codebook.numel()


def retrain(task: SoftWeightSharing, data: TensorData, epochs: int, seed: int, batch_size: int = 128) -> float:
    """Adam on the weights (`lr`) and on the mixture (`mixture_lr`); returns the mean seconds per epoch."""
    import time

    from implementations._data import iterate_batches

    cfg = task.cfg
    prior = task.prior
    opt = torch.optim.Adam(
        [
            {"params": task.model.parameters(), "lr": cfg.lr},
            {"params": [prior.means], "lr": cfg.mixture_lr},
            {"params": [prior.log_var, prior.logits], "lr": cfg.variance_lr},
        ]
    )
    task.train()
    started = time.perf_counter()
    for epoch in range(epochs):
        gen = epoch_generator(seed, epoch)
        for xb, yb in iterate_batches(data.x_train, data.y_train, batch_size, shuffle=True, generator=gen):
            loss = sum(task.forward_train(xb, yb)[1].values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    task.eval()
    return (time.perf_counter() - started) / max(1, epochs)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Pretrain an MLP on digits, retrain it under the mixture prior, snap the weights; compare with magnitude pruning +
    k-means at the same sparsity and number of values; time the prior; probe tau and the mixture learning rate. The run
    is in `experiment.py`."""
    from implementations.quantization.softweightsharing_ullrich2017.experiment import reproduce as run

    return run(ctx)
