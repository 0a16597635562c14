r"""Constraint-Aware Deep Neural Network Compression (Chen, Tung, Vedula & Mori, 2018).

Paper: <http://openaccess.thecvf.com/content_ECCV_2018/html/Changan_Chen_Constraints_Matter_in_ECCV_2018_paper.html>
· notes: `papers/constraintaware_chen2018.md`

Compression hyperparameters $\theta$ (here the per-layer channel preserve ratios) are chosen by constrained Bayesian
optimisation of $\max_\theta a(F_\theta)$ s.t. $p(F_\theta) \le c$. Gaussian processes model the accuracy $a$ and
the constrained quantity $p$ (FLOPs, treated as a black box); the next $\theta$ maximises expected improvement
weighted by the probability of feasibility,

$$
\alpha(\theta) = \mathrm{EI}(\theta \mid a^\star_t)\; \Pr\big(p(\theta) \le g_t\big), \qquad
\mathrm{EI} = (\mu - a^\star_t)\,\Phi(z) + \sigma\,\phi(z),\ z = \frac{\mu - a^\star_t}{\sigma},
$$

with $a^\star_t$ the best accuracy observed under the current bound $g_t$. Cooling relaxes the bound from the
uncompressed network's value $p_0$ to the target $c$ over $T$ iterations, linearly or exponentially:

$$
g_t^{\text{lin}} = p_0 + \tfrac{t}{T}\,(c - p_0), \qquad
g_t^{\exp} = c + (p_0 - c)\,\frac{e^{-\lambda t / T} - e^{-\lambda}}{1 - e^{-\lambda}},
$$

both equal to $p_0$ at $t = 0$ and to $c$ at $t = T$ (the notes' $g_t = c + e^{t/T}$ is never below $c + 1$).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from implementations.automl._base import CETask, ChannelPruner, cnn1d_flops

if TYPE_CHECKING:
    from implementations._harness import RunContext
    from implementations._models import CNN1d

__all__ = ["Config", "ConstraintAwareCompression", "cooling_schedule", "constrained_ei", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the search (our choices where the notes give none)."""

    flops_ratio: float = 0.2  # target $c$: FLOPs at most this fraction of the uncompressed network's
    lbound: float = 0.1  # smallest preserve ratio per layer
    iterations: int = 25  # evaluations in all, initial design included
    n_init: int = 5  # random initial design
    cooling: str = "linear"  # "none" | "linear" | "exponential" | "notes" ($g_t = c + e^{t/T}$ as written)
    cooling_steps: int = 15  # $T$: iterations until the bound reaches $c$
    decay: float = 3.0  # $\lambda$ of the exponential schedule
    candidates: int = 500  # random $\theta$ scored by the acquisition per iteration
    refit_every: int = 5  # GP kernel hyperparameters re-optimised every this many iterations


def cooling_schedule(t: int, cfg: Config, start: float, target: float) -> float:
    r"""The bound $g_t$ at BO iteration $t$ (counted from the end of the initial design)."""
    frac = min(1.0, t / max(1, cfg.cooling_steps))
    if cfg.cooling == "none":
        return target
    if cfg.cooling == "linear":
        return start + frac * (target - start)
    if cfg.cooling == "exponential":
        lam = cfg.decay
        return target + (start - target) * (math.exp(-lam * frac) - math.exp(-lam)) / (1 - math.exp(-lam))
    if cfg.cooling == "notes":
        return target + math.exp(t / max(1, cfg.cooling_steps))  # as written in the notes: never reaches c
    raise ValueError(f"unknown cooling {cfg.cooling!r}")


def constrained_ei(mean: np.ndarray, std: np.ndarray, best: float | None, feasible_prob: np.ndarray) -> np.ndarray:
    r"""$\mathrm{EI}(\theta \mid a^\star)\Pr(\text{feasible})$, or $\Pr(\text{feasible})$ before any feasible point."""
    from scipy.stats import norm

    if best is None:
        return feasible_prob
    std = np.maximum(std, 1e-9)
    z = (mean - best) / std
    return ((mean - best) * norm.cdf(z) + std * norm.pdf(z)) * feasible_prob


def _gp(dim: int, kernel: Any = None) -> Any:
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    if kernel is None:
        kernel = ConstantKernel(1.0) * Matern(length_scale=np.full(dim, 0.5), nu=2.5) + WhiteKernel(1e-3)
        return GaussianProcessRegressor(kernel, normalize_y=True, random_state=0)
    return GaussianProcessRegressor(kernel, normalize_y=True, optimizer=None)


class ConstraintAwareCompression:
    """Constrained BO with a cooling schedule over per-layer preserve ratios of a trained `CNN1d`."""

    def __init__(self, model: CNN1d, val_x: Tensor, val_y: Tensor, calib_x: Tensor, cfg: Config | None = None):
        self.cfg = cfg = cfg or Config()
        self.channels = tuple(stage[0].out_channels for stage in model.stages)
        self.pruner = ChannelPruner(model, calib_x)
        self.val_x, self.val_y = val_x, val_y
        self.full_flops = cnn1d_flops(self.channels, length=val_x.shape[-1])
        self.history: list[dict[str, Any]] = []

    def keep(self, theta: np.ndarray) -> list[int]:
        """Channel counts for preserve ratios `theta` `(L,)`."""
        return [max(1, round(float(r) * c)) for r, c in zip(theta, self.channels, strict=True)]

    @torch.no_grad()
    def evaluate(self, theta: np.ndarray, bound: float) -> dict[str, Any]:
        """Compress with `theta`, measure held-out accuracy and the constrained quantity (FLOPs ratio)."""
        keep = self.keep(theta)
        model = self.pruner(keep)
        acc = 100.0 * float((model(self.val_x).argmax(-1) == self.val_y).float().mean())
        entry = {"theta": theta, "keep": keep, "accuracy": acc, "cost": cnn1d_flops(keep) / self.full_flops}
        self.history.append({**entry, "bound": bound})
        return entry

    def best(self, bound: float | None = None) -> dict[str, Any] | None:
        """The most accurate evaluated configuration with cost <= `bound` (default: the target $c$)."""
        bound = self.cfg.flops_ratio if bound is None else bound
        feasible = [h for h in self.history if h["cost"] <= bound + 1e-12]
        return max(feasible, key=lambda h: h["accuracy"]) if feasible else None

    def search(self, rng: np.random.Generator, method: str = "bo") -> dict[str, Any] | None:
        """Random search (`method="random"`) or constrained BO with `cfg.cooling`; returns the best feasible entry."""
        import warnings

        from threadpoolctl import threadpool_limits

        with threadpool_limits(1), warnings.catch_warnings():  # tiny matrices: one BLAS thread is fastest
            warnings.simplefilter("ignore")  # GP hyperparameters at their bounds
            return self._search(rng, method)

    def _search(self, rng: np.random.Generator, method: str) -> dict[str, Any] | None:
        from scipy.stats import norm

        cfg, dim = self.cfg, len(self.channels)

        def draw(n: int) -> np.ndarray:
            return rng.uniform(cfg.lbound, 1.0, size=(n, dim))

        for theta in draw(cfg.n_init if method == "bo" else cfg.iterations):
            self.evaluate(theta, 1.0)
        kernels: list[Any] = [None, None]
        for t in range(cfg.iterations - cfg.n_init if method == "bo" else 0):
            bound = cooling_schedule(t, cfg, 1.0, cfg.flops_ratio)  # p_0 = 1: the uncompressed FLOPs ratio
            x = np.stack([h["theta"] for h in self.history])  # (n, L)
            acc = np.array([h["accuracy"] for h in self.history])
            cost = np.log(np.array([h["cost"] for h in self.history]))  # the constraint GP models log FLOPs ratio
            refit = t % cfg.refit_every == 0
            gps = []
            for i, y in enumerate((acc, cost)):
                gp = _gp(dim, None if refit or kernels[i] is None else kernels[i]).fit(x, y)
                kernels[i] = gp.kernel_
                gps.append(gp)
            cand = draw(cfg.candidates)
            mean, std = gps[0].predict(cand, return_std=True)
            c_mean, c_std = gps[1].predict(cand, return_std=True)
            feasible_prob = norm.cdf((math.log(bound) - c_mean) / np.maximum(c_std, 1e-9))
            incumbent = self.best(bound)
            score = constrained_ei(mean, std, None if incumbent is None else incumbent["accuracy"], feasible_prob)
            self.evaluate(cand[int(np.argmax(score))], bound)
        return self.best()

    @classmethod
    def smoke_task(cls) -> tuple[CETask, Tensor, Tensor]:
        """A tiny random net compressed by a short BO run, wrapped as a CE task, for the generic smoke test."""
        from implementations._models import CNN1d

        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        model = CNN1d(1, 40, 10, channels=(8, 8, 8)).eval()
        x, y = torch.randn(32, 1, 40, generator=gen), torch.randint(0, 10, (32,), generator=gen)
        search = cls(model, x, y, x, Config(flops_ratio=0.5, iterations=7, n_init=5, candidates=50))
        best = search.search(np.random.default_rng(0)) or {"keep": [1, 1, 1]}
        return CETask(search.pruner(best["keep"]).train()), x[:8], y[:8]


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Random search and constrained BO (fixed / linear / exponential / notes' cooling) at 0.2x FLOPs, per seed.

    The run is in `experiment.py`.
    """
    from implementations.automl.constraintaware_chen2018.experiment import reproduce as run

    return run(ctx)
