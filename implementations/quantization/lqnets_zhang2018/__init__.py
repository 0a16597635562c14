r"""LQ-Nets: Learned Quantization for Highly Accurate and Compact Deep Neural Networks (Zhang et al., 2018).

Paper: [arXiv:1807.10029](https://arxiv.org/abs/1807.10029) · notes: `papers/lqnets_zhang2018.md`

A $K$-bit quantizer is a learned basis $v \in \mathbb{R}^K$; its $2^K$ levels are $v^\top e_l$ for all codes
$e_l \in \{-1, 1\}^K$ (weights) or $\{0, 1\}^K$ (post-ReLU activations), and a value goes to its nearest level,

$$
Q(x; v) = v^\top e_l, \qquad l = \arg\min_{l'} |x - v^\top e_{l'}| .
$$

The basis is fitted to the $N$ values $x \in \mathbb{R}^N$ the quantizer sees by block coordinate descent on
$\min_{v, B} \lVert B^\top v - x \rVert_2^2$ with $B \in \{\pm 1\}^{K \times N}$: with $v$ fixed each column of $B$
is the nearest of the $2^K$ codes (exhaustive search), and with $B$ fixed

$$
v^\ast = (B B^\top)^{-1} B x ,
$$

run $T$ times per training step and smoothed by a moving average, $v \leftarrow m v + (1 - m) v^\ast$. The network is
trained through the straight-through estimator (for activations, with zero gradient above the largest level).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations.quantization._base import QAT, QuantMLP

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "LQQuantizer", "all_codes", "fit_basis", "nearest_codes", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Quantizer hyperparameters; defaults follow the paper's weight quantizer."""

    bits: int = 2  # $K$
    signed: bool = True  # codes in {-1, 1}^K (weights) or {0, 1}^K (activations after ReLU)
    channels: int = 1  # number of bases: output channels for weights, 1 for activations (per layer)
    iterations: int = 1  # $T$ alternations per training step (Sec. 3.2: T = 1 suffices)
    momentum: float = 0.9  # $m$ of the moving average of $v$ (official code)
    basis: str = "learned"  # "learned" | "uniform_ls" (v = c [1, 2, 4, ...], c by least squares) | "uniform_absmax"


def all_codes(bits: int, signed: bool) -> Tensor:
    r"""The $2^K$ binary codes $e_l$ as rows, shape `(2^K, K)`, entries in $\{-1, 1\}$ or $\{0, 1\}$."""
    codes = torch.tensor(list(itertools.product((0.0, 1.0), repeat=bits)))  # (2^K, K)
    return 2 * codes - 1 if signed else codes


def nearest_codes(x: Tensor, basis: Tensor, codes: Tensor) -> Tensor:
    r"""Index $l$ of the nearest level $v^\top e_l$ for every value (search over the $2^K$ sorted levels).

    Args:
        x: Values, shape `(C, N)`: row $c$ is quantized with basis row $c$.
        basis: $v$, shape `(C, K)`.
        codes: $e_l$ as rows, shape `(2^K, K)`.

    Returns:
        Long indices into `codes`, shape `(C, N)`.
    """
    levels, order = (basis @ codes.T).sort(dim=1)  # (C, 2^K), ascending
    # thresholds t_l are the midpoints between consecutive levels; a value on a threshold takes the lower level
    thresholds = (levels[:, 1:] + levels[:, :-1]) / 2  # (C, 2^K - 1)
    position = torch.zeros(x.shape, dtype=torch.long, device=x.device)  # (C, N), in [0, 2^K - 1]
    for j in range(thresholds.shape[1]):
        position += x > thresholds[:, j : j + 1]  # count the thresholds below each value
    return order.gather(1, position)


def fit_basis(
    x: Tensor, basis: Tensor, codes: Tensor, iterations: int = 1, uniform: bool = False, index: Tensor | None = None
) -> Tensor:
    r"""$T$ rounds of block coordinate descent: codes by nearest level, then $v = (B B^\top)^{-1} B x$.

    $B$ has only $2^K$ distinct columns, so $B B^\top = \sum_l n_l e_l e_l^\top$ and $B x = \sum_l s_l e_l$ with
    $n_l$ the number of values assigned to code $l$ and $s_l$ their sum.

    Args:
        x: Values, shape `(C, N)`.
        basis: Starting $v$, shape `(C, K)`.
        codes: All codes, shape `(2^K, K)`.
        iterations: $T$.
        uniform: Constrain $v = c\,[1, 2, \dots, 2^{K-1}]$ and fit the scalar $c$ instead.
        index: Codes of `x` under `basis` (from `nearest_codes`), when already computed.

    Returns:
        The refitted basis, shape `(C, K)`; a basis direction no code uses keeps its old value.
    """
    n_codes, bits = codes.shape
    powers = 2.0 ** torch.arange(bits, dtype=x.dtype, device=x.device)  # (K,)
    for step in range(iterations):
        if index is None or step > 0:
            index = nearest_codes(x, basis, codes)  # (C, N): B given v
        counts = torch.zeros(x.shape[0], n_codes, dtype=x.dtype, device=x.device).scatter_add_(
            1, index, torch.ones_like(x)
        )  # (C, 2^K): n_l
        sums = torch.zeros_like(counts).scatter_add_(1, index, x)  # (C, 2^K): s_l
        if uniform:
            z = codes @ powers  # (2^K,): levels are c * z_l
            scale = (sums @ z) / (counts @ (z * z)).clamp_min(1e-12)  # least-squares c, (C,)
            basis = scale[:, None] * powers
            continue
        gram = torch.einsum("lk,cl,lj->ckj", codes, counts, codes)  # (C, K, K): B B^T
        rhs = sums @ codes  # (C, K): B x
        ridge = 1e-6 * x.shape[1] * torch.eye(bits, dtype=x.dtype, device=x.device)
        solved = torch.linalg.solve(gram + ridge, rhs)  # (C, K)
        unused = gram.diagonal(dim1=1, dim2=2) == 0  # {0,1} codes whose bit k is never 1
        basis = torch.where(unused, basis, solved)
    return basis


class LQQuantizer(nn.Module):
    """Learned quantizer $Q(x; v)$ with the basis refit by block coordinate descent in every training step.

    Weights: `Config(signed=True, channels=C_out)` as a parametrization of the layer's weight (row $c$ = channel
    $c$). Activations: `Config(signed=False, channels=1)` after a ReLU.
    """

    def __init__(self, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Config()
        self.register_buffer("codes", all_codes(self.cfg.bits, self.cfg.signed))  # (2^K, K)
        self.register_buffer("basis", torch.zeros(self.cfg.channels, self.cfg.bits))  # (C, K): $v$
        self.register_buffer("initialized", torch.tensor(False))  # set by the first training-mode call

    def levels(self) -> Tensor:
        r"""The current levels $v^\top e_l$, shape `(C, 2^K)`."""
        return self.basis @ self.codes.T

    def _uniform_basis(self, x: Tensor) -> Tensor:
        # the hand-designed grid: c [1, 2, 4, ...] with the extreme level at max |x|
        top = x.abs().amax(dim=1) if self.cfg.signed else x.amax(dim=1)  # (C,)
        powers = 2.0 ** torch.arange(self.cfg.bits, dtype=x.dtype, device=x.device)
        return (top / (2**self.cfg.bits - 1)).clamp_min(1e-8)[:, None] * powers  # (C, K)

    @torch.no_grad()
    def _set_grid(self, x: Tensor) -> None:
        """Initialise the basis to the uniform grid, or (uniform_absmax) track the grid of the current values."""
        grid = self._uniform_basis(x)
        if not bool(self.initialized) or self.cfg.channels > 1:
            self.basis.copy_(grid)  # weights: the absmax grid follows the current weights exactly
            self.initialized.fill_(True)
        else:
            self.basis.mul_(self.cfg.momentum).add_((1 - self.cfg.momentum) * grid)  # activations: running absmax

    def forward(self, x: Tensor) -> Tensor:
        """Quantized `x` (same shape), with the straight-through estimator; refits $v$ in training mode.

        The forward pass uses the codes $B$ of the current basis; the same $B$ starts the refit, and the refitted
        (moving-average) basis is used from the next step on, so one nearest-level search serves both.
        """
        cfg = self.cfg
        rows = x.reshape(cfg.channels, -1) if cfg.channels > 1 else x.reshape(1, -1)  # (C, N)
        values = rows.detach()
        if self.training and (cfg.basis == "uniform_absmax" or not bool(self.initialized)):
            self._set_grid(values)
        levels = self.levels()  # (C, 2^K)
        index = nearest_codes(values, self.basis, self.codes)  # (C, N)
        q = levels.gather(1, index)  # (C, N)
        if self.training and cfg.basis != "uniform_absmax":
            with torch.no_grad():
                new = fit_basis(values, self.basis, self.codes, cfg.iterations, cfg.basis == "uniform_ls", index)
                self.basis.mul_(cfg.momentum).add_((1 - cfg.momentum) * new)
        if not cfg.signed:
            # activations: no gradient above the largest level (clipped STE)
            rows = torch.minimum(rows, levels.amax(dim=1, keepdim=True))
        return (rows + (q - rows).detach()).view_as(x)

    @classmethod
    def smoke_task(cls, bits: int = 2, batch_size: int = 8, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
        """A tiny MLP with LQ weights and LQ activations, for the generic smoke test."""
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        task = build_task(bits, "learned", hidden=(16, 16))
        x = torch.randn(batch_size, 40, generator=gen)  # (B, 40)
        return task, x, torch.randint(0, 10, (batch_size,), generator=gen)


def build_task(
    bits: int, basis: str, hidden: tuple[int, ...] = (256, 256), iterations: int = 1, in_features: int = 40
) -> QAT:
    """BN-MLP with every Linear weight and every hidden activation quantized by an `LQQuantizer` of `bits`."""
    act = Config(bits=bits, signed=False, channels=1, iterations=iterations, basis=basis)
    model = QuantMLP(in_features, 10, hidden, activation=lambda _w: nn.Sequential(nn.ReLU(), LQQuantizer(act)))
    weight = Config(bits=bits, signed=True, iterations=iterations, basis=basis)
    return QAT(model, lambda layer: LQQuantizer(replace(weight, channels=layer.weight.shape[0])))


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """FP, uniform-grid QAT and LQ QAT at 1-3 bits (weights and activations), same seeds and epochs. The run is in
    `experiment.py`."""
    from implementations.quantization.lqnets_zhang2018.experiment import reproduce as run

    return run(ctx)
