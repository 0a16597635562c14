r"""Explaining Knowledge Distillation by Quantifying the Knowledge (Cheng, Rao, Chen & Zhang, 2020).

Paper: [arXiv:2003.03622](https://arxiv.org/abs/2003.03622) · notes: `papers/kdexplain_cheng2020.md`

How much of each input unit ("pixel") $x_i$ an intermediate feature $f$ keeps is measured by perturbing the input
with Gaussian noise $x' = x + \epsilon$, $\epsilon_i \sim \mathcal{N}(0, \sigma_i^2)$, made as large (of maximal
entropy) as possible while the feature barely changes:

$$
\min_{\boldsymbol\sigma}\ \mathbb{E}_{\epsilon}\Big[\frac{\lVert f(x + \epsilon) - f(x) \rVert^2}{D\, \sigma_f^2}\Big]
  - \lambda\, \frac{1}{n}\sum_{i=1}^{n} H_i, \qquad H_i = \log \sigma_i + \tfrac{1}{2}\log(2\pi e),
$$

with $\sigma_f^2$ the feature variance over the images. A pixel whose entropy is clearly below the mean entropy of the
background, $\bar H_{\mathrm{bg}} - H_i > b$, is a *visual concept*. Counting concepts on the foreground
($N^{\mathrm{fg}}$, task-relevant) and background ($N^{\mathrm{bg}}$) gives hypothesis 1's metrics, with
$\lambda_{\mathrm{ratio}} = N^{\mathrm{fg}} / (N^{\mathrm{fg}} + N^{\mathrm{bg}})$. Hypothesis 2 measures how far the
weights travel before an image's foreground concepts peak, $D = \sum_{k=1}^{\hat m} \lVert w_k - w_{k-1}\rVert /
\lVert w_0 \rVert$ with $\hat m = \arg\max_k N^{\mathrm{fg}}_k$, through its mean $D_{\mathrm{mean}}$ (speed) and its
spread over images $D_{\mathrm{std}}$ (simultaneity). Hypothesis 3's stability is
$\rho = |S_M| / |\bigcup_{j \le M} S_j|$, the share of all foreground concepts ever learned ($S_j$ at epoch $j$) that
the final network $M$ keeps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = [
    "Config",
    "KnowledgeQuantifier",
    "concept_mask",
    "gaussian_entropy",
    "information_loss",
    "learning_distance",
    "mnist1d_foreground",
    "reproduce",
    "stability",
    "weight_path",
]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the quantification (the paper's values are not in our notes)."""

    lam: float = 0.5  # $\lambda$: weight of the mean entropy against the normalised feature change
    margin: float = 0.5  # $b$ (nats): a concept's entropy is this far below the background mean
    sigma_max: float = 3.0  # cap on $\sigma_i$ (inputs are standardised): $\sigma = \sigma_{\max}\,\mathrm{sigmoid}(s)$
    init_sigma: float = 0.1  # $\sigma_i$ at the start of the optimisation
    steps: int = 60  # Adam steps on $\boldsymbol\sigma$
    lr: float = 0.05  # Adam learning rate on $s$
    samples: int = 2  # noise draws per image and step, for the expectation
    layer: int = -1  # which of the network's `features` is $f$ (-1: the last conv stage)


def gaussian_entropy(sigma: Tensor) -> Tensor:
    r"""Entropy of $\mathcal{N}(0, \sigma^2)$: $H = \log \sigma + \tfrac{1}{2}\log(2\pi e)$, elementwise."""
    return sigma.log() + 0.5 * math.log(2 * math.pi * math.e)


def information_loss(
    perturbed: Tensor, clean: Tensor, feature_var: Tensor, entropy: Tensor, lam: float
) -> dict[str, Tensor]:
    r"""Terms of $\mathbb{E}_\epsilon \lVert f(x') - f(x)\rVert^2 / (D \sigma_f^2) - \lambda \frac{1}{n}\sum_i H_i$.

    Args:
        perturbed: Features of the noisy inputs, `(S, B, *F)` for $S$ noise draws.
        clean: Features of the clean inputs $f(x)$, `(B, *F)`.
        feature_var: $\sigma_f^2$, a scalar tensor.
        entropy: Per-pixel entropies $H_i$, `(B, n)`.
        lam: $\lambda$.

    Returns:
        `{"distortion", "entropy"}`: the feature change and $-\lambda \bar H$, each averaged over the batch.
    """
    distortion = (perturbed - clean).pow(2).flatten(2).mean(dim=(0, 2)) / feature_var  # (B,)
    return {"distortion": distortion.mean(), "entropy": -lam * entropy.mean(dim=1).mean()}


def concept_mask(entropy: Tensor, foreground: Tensor, margin: float) -> Tensor:
    r"""Visual concepts: pixels with $\bar H_{\mathrm{bg}} - H_i > b$, $\bar H_{\mathrm{bg}}$ per image.

    Args:
        entropy: $H_i$, `(..., B, n)`.
        foreground: Boolean foreground mask, `(B, n)`; every image needs background pixels.
        margin: $b$.

    Returns:
        Boolean concept mask, same shape as `entropy`.
    """
    background = (~foreground).float()
    mean_bg = (entropy * background).sum(-1, keepdim=True) / background.sum(-1, keepdim=True)  # (..., B, 1)
    return mean_bg - entropy > margin


def stability(foreground_concepts: Tensor) -> Tensor:
    r"""$\rho = |S_M| / |\bigcup_j S_j|$ per image from the foreground concepts of every epoch, `(E, B, n)` -> `(B,)`.

    Images that never had a concept get NaN.
    """
    ever = foreground_concepts.any(dim=0).sum(-1).float()  # (B,)
    final = foreground_concepts[-1].sum(-1).float()
    return torch.where(ever > 0, final / ever.clamp_min(1), torch.full_like(ever, float("nan")))


def weight_path(states: Sequence[dict[str, Tensor]]) -> Tensor:
    r"""Cumulative normalised distance travelled, $\sum_{k \le j} \lVert w_k - w_{k-1}\rVert / \lVert w_0\rVert$.

    Args:
        states: Weights $w_0, \dots, w_E$ (state dicts; only floating-point parameters and buffers of the same keys).

    Returns:
        `(E + 1,)`, starting at 0.
    """

    def flat(state: dict[str, Tensor]) -> Tensor:
        kept = [v for k, v in state.items() if v.is_floating_point() and "running" not in k]  # weights, no BN stats
        return torch.cat([v.flatten().float() for v in kept])

    vectors = [flat(s) for s in states]
    steps = torch.stack([(b - a).norm() for a, b in zip(vectors[:-1], vectors[1:], strict=True)])
    return torch.cat([torch.zeros(1), steps.cumsum(0)]) / vectors[0].norm()


def learning_distance(path: Tensor, foreground_counts: Tensor) -> Tensor:
    r"""$D = $ `path`$[\hat m]$ per image, $\hat m = \arg\max_k N^{\mathrm{fg}}_k$ (first epoch reaching the peak).

    Args:
        path: Cumulative distance after each epoch, `(E + 1,)` (index 0 = initialisation).
        foreground_counts: $N^{\mathrm{fg}}$ after epochs $1..E$, `(E, B)`.

    Returns:
        `(B,)`.
    """
    peak = foreground_counts.float().argmax(dim=0) + 1  # (B,), argmax returns the first maximum
    return path[peak]


class KnowledgeQuantifier(nn.Module):
    r"""Learns the per-pixel noise $\boldsymbol\sigma$ of one batch of inputs for each of several frozen networks.

    `forward_train(x, y)` is one step of the objective for every network (the noise parameters are (re)created when
    the batch changes); `quantify(x)` runs the whole optimisation and returns the entropies $H_i$. A pixel is a
    position of the input with all its channels, so $\sigma$ has shape `(B, 1, *spatial)`.
    """

    def __init__(self, *networks: nn.Module, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Config()
        self.networks = nn.ModuleList(networks)
        self.networks.requires_grad_(False)
        self.networks.eval()
        self.raw_sigma = nn.ParameterList()  # $s$ per network, $\sigma = \sigma_{\max}\,\mathrm{sigmoid}(s)$
        self._batch: Tensor | None = None
        self._clean: list[Tensor] = []
        self._feature_var: list[Tensor] = []

    def train(self, mode: bool = True) -> KnowledgeQuantifier:
        """Only the noise parameters learn; the networks always stay in eval mode."""
        super().train(mode)
        self.networks.eval()
        return self

    def _feature(self, net: nn.Module, x: Tensor) -> Tensor:
        return net(x, return_features=True)[1][self.cfg.layer]

    def reset(self, x: Tensor) -> None:
        r"""Initialise $\sigma$ for the batch `x` `(B, C, *spatial)`; cache the clean features and $\sigma_f^2$."""
        cfg = self.cfg
        start = math.log(cfg.init_sigma / (cfg.sigma_max - cfg.init_sigma))  # sigmoid^{-1}(init / max)
        shape = (x.shape[0], 1, *x.shape[2:])
        self.raw_sigma = nn.ParameterList(nn.Parameter(torch.full(shape, start)) for _ in self.networks)
        self._batch = x
        with torch.no_grad():
            self._clean = [self._feature(net, x) for net in self.networks]
            self._feature_var = [f.var(dim=0).mean().clamp_min(1e-8) for f in self._clean]

    def sigma(self, k: int) -> Tensor:
        r"""$\sigma$ of network `k`, `(B, 1, *spatial)`."""
        return self.cfg.sigma_max * torch.sigmoid(self.raw_sigma[k])

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits of the first network on one noisy copy of `x`, and per network the two terms of the objective."""
        if self._batch is None or self._batch.shape != x.shape or not torch.equal(self._batch, x):
            self.reset(x)
        cfg, losses, logits = self.cfg, {}, None
        for k, net in enumerate(self.networks):
            sigma = self.sigma(k)  # (B, 1, *spatial)
            noise = torch.randn(cfg.samples, *x.shape, device=x.device)  # (S, B, C, *spatial)
            noisy = (x + sigma * noise).flatten(0, 1)  # (S * B, C, *spatial)
            out, features = net(noisy, return_features=True)
            perturbed = features[cfg.layer].unflatten(0, (cfg.samples, x.shape[0]))  # (S, B, *F)
            entropy = gaussian_entropy(sigma).flatten(1)  # (B, n)
            terms = information_loss(perturbed, self._clean[k], self._feature_var[k], entropy, cfg.lam)
            losses.update({f"{name}{k}": value for name, value in terms.items()})
            logits = out[: x.shape[0]] if logits is None else logits
        return logits, losses

    def quantify(self, x: Tensor) -> Tensor:
        r"""Optimise $\sigma$ for the batch `x` and return the entropies, `(num_networks, B, n)`."""
        self.reset(x)
        opt = torch.optim.Adam(self.raw_sigma.parameters(), lr=self.cfg.lr)
        for _ in range(self.cfg.steps):
            _, losses = self.forward_train(x, torch.zeros(len(x), dtype=torch.long))
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            opt.step()
        with torch.no_grad():
            return torch.stack([gaussian_entropy(self.sigma(k)).flatten(1) for k in range(len(self.networks))])


def mnist1d_foreground() -> tuple[np.ndarray, np.ndarray]:
    """Foreground masks of MNIST-1D (train `(4000, 40)`, test `(1000, 40)`): where the digit template lies.

    The data set is regenerated with the `mnist1d` package's own transforms and seed, recording the template's support
    before the noise is added; the signals are checked against the cached `make_dataset` output that
    `load_dataset("mnist1d")` reads. Cached as `.npz`.
    """
    from implementations._data import cache_dir, load_dataset

    path = cache_dir() / "mnist1d_foreground.npz"
    if path.exists():
        with np.load(path) as f:
            return f["train"], f["test"]
    from mnist1d.data import get_dataset_args, get_templates
    from mnist1d.transform import corr_noise_like, iid_noise_like, interpolate, pad, shear, translate
    from mnist1d.utils import set_seed

    args, templates = get_dataset_args(), get_templates()
    set_seed(args.seed)
    xs, masks = [], []
    for label in range(len(templates["y"])):
        for _ in range(args.num_samples // len(templates["y"])):
            # the body of mnist1d.transform.transform, keeping `mask` (the template's support) aside
            x = pad(templates["x"][label] + 1e-8, args.padding)
            x = interpolate(x, args.template_len + args.padding[-1])
            x *= 1 + args.scale_coeff * (np.random.rand() - 0.5)
            x = translate(x, args.max_translation)
            mask = x != 0
            x = mask * x + (1 - mask) * corr_noise_like(x, args.corr_noise_scale)
            x = x + iid_noise_like(x, args.iid_noise_scale)
            x = interpolate(shear(x, args.shear_scale), args.final_seq_length)
            xs.append(x)
            masks.append(interpolate(mask.astype(float), args.final_seq_length) > 0.5)
    order = np.random.permutation(len(xs))
    xs, masks = np.stack(xs)[order], np.stack(masks)[order]
    load_dataset("mnist1d")  # makes sure the package's own data set is cached
    with np.load(cache_dir() / "mnist1d_default.npz") as reference:
        expected = np.concatenate([reference["x"], reference["x_test"]])
    if not np.allclose((xs - xs.mean()) / xs.std(), expected):
        raise RuntimeError("regenerated MNIST-1D differs from mnist1d.make_dataset; the foreground masks are invalid")
    split = int(len(xs) * args.train_split)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, train=masks[:split], test=masks[split:])
    return masks[:split], masks[split:]


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """A KD student and its from-scratch twin (same init and batches), their concepts at every epoch, and a sweep.

    The run is in `experiment.py`.
    """
    from implementations.distillation.kdexplain_cheng2020.experiment import reproduce as run

    return run(ctx)
