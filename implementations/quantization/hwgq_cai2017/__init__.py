r"""Deep Learning with Low Precision by Half-wave Gaussian Quantization (Cai, He, Sun & Vasconcelos, 2017).

Paper: [arXiv:1702.00953](https://arxiv.org/abs/1702.00953) · notes: `papers/hwgq_cai2017.md`

Batch-normalised pre-activations are roughly $\mathcal{N}(0, 1)$, so the activation quantizer is a half-wave
quantizer with $m = 2^b - 1$ positive levels fitted once, offline, to the positive half of a standard Gaussian:

$$
Q(x) = \begin{cases} q_i & x \in (t_i, t_{i+1}], \\ 0 & x \le 0, \end{cases} \qquad
q^\ast, t^\ast = \arg\min_{q, t} \mathbb{E}_{x \sim \mathcal{N}(0,1)}\big[(Q(x) - x)^2 \mid x > 0\big],
$$

with $t_1 = 0$, $t_{m+1} = \infty$ and Lloyd's conditions $t_i = (q_{i-1} + q_i)/2$,
$q_i = \mathbb{E}[x \mid t_i < x \le t_{i+1}]$ (or, for uniform HWGQ, $q_i = i\Delta$ with the best $\Delta$: 0.538 at
2 bits). The backward pass replaces $Q'$ (zero almost everywhere) by the derivative of a ReLU variant: the ReLU,
the clipped ReLU $\min(\max(x, 0), q_m)$, or the log-tailed ReLU, equal to $q_m + \log(x - \tau)$ above $q_m$ with
$\tau = q_m - 1$. Weights are binary, $\hat w = \alpha \operatorname{sign}(w)$ with $\alpha$ the mean $|w|$ per
output channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations._harness import Supervised
from implementations.quantization._base import QuantMLP, quantize_weights

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["HWGQ", "Config", "binary_weight", "half_gaussian_levels", "half_gaussian_mse", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Activation-quantizer hyperparameters; defaults follow the paper's main 2-bit setting."""

    bits: int = 2  # $b$: $2^b - 1$ positive levels plus 0
    uniform: bool = True  # uniform levels $q_i = i \Delta$ (the paper's default) or Lloyd's non-uniform levels
    backward: str = "clipped"  # "relu" | "clipped" | "log" (log-tailed ReLU)


def _interval_moments(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""$P$, $\int x\,\phi$, $\int x^2 \phi$ of the standard normal density $\phi$ over $(a, b]$ (b may be inf)."""
    pdf_a, pdf_b = torch.exp(-a * a / 2) / math.sqrt(2 * math.pi), torch.exp(-b * b / 2) / math.sqrt(2 * math.pi)
    prob = torch.special.ndtr(b) - torch.special.ndtr(a)
    first = pdf_a - pdf_b
    b_pdf_b = torch.where(torch.isinf(b), torch.zeros_like(b), b * pdf_b)
    return prob, first, prob + a * pdf_a - b_pdf_b


def _thresholds(levels: Tensor) -> tuple[Tensor, Tensor]:
    inf = torch.tensor([math.inf], dtype=levels.dtype)
    lower = torch.cat([levels.new_zeros(1), (levels[1:] + levels[:-1]) / 2])  # t_1 = 0, then midpoints
    return lower, torch.cat([lower[1:], inf])


def half_gaussian_mse(levels: Tensor) -> Tensor:
    r"""$\mathbb{E}[(Q(x) - x)^2 \mid x > 0]$ for $x \sim \mathcal{N}(0, 1)$ and positive levels $q_1 < \dots < q_m$."""
    lower, upper = _thresholds(levels.double())
    prob, first, second = _interval_moments(lower, upper)
    return (second - 2 * levels * first + levels**2 * prob).sum() / 0.5


def half_gaussian_levels(bits: int = 2, uniform: bool = True, iterations: int = 200) -> Tensor:
    r"""The $m = 2^b - 1$ positive levels of HWGQ, fitted by Lloyd's algorithm to the half Gaussian.

    Non-uniform: $q_i \leftarrow \mathbb{E}[x \mid t_i < x \le t_{i+1}]$. Uniform: $q_i = i \Delta$ with
    $\Delta \leftarrow \sum_i i\, \mathbb{E}[x\, 1_i] / \sum_i i^2 P_i$ (least squares for fixed cells). Cells are
    re-drawn at the midpoints after each update.

    Returns:
        Levels `(2^b - 1,)` in float64, ascending (the zero level of $x \le 0$ is implicit).
    """
    m = 2**bits - 1
    index = torch.arange(1, m + 1, dtype=torch.float64)
    levels = index * (3.0 / m)  # start evenly on (0, 3]
    for _ in range(iterations):
        prob, first, _ = _interval_moments(*_thresholds(levels))
        if uniform:
            levels = index * (index * first).sum() / (index**2 * prob).sum()
        else:
            levels = first / prob.clamp_min(1e-300)
    return levels


def binary_weight(w: Tensor) -> Tensor:
    r"""$\alpha_c \operatorname{sign}(w)$ with $\alpha_c$ the mean $|w|$ of output channel $c$; gradient 1 (STE)."""
    alpha = w.detach().abs().flatten(1).mean(1).view(-1, *([1] * (w.dim() - 1)))  # (C_out, 1, ...)
    return w + (alpha * torch.where(w >= 0, 1.0, -1.0) - w).detach()


class HWGQ(nn.Module):
    """Half-wave Gaussian quantizer, used in place of the ReLU after a BatchNorm."""

    def __init__(self, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Config()
        self.register_buffer("levels", half_gaussian_levels(self.cfg.bits, self.cfg.uniform).float())  # (m,)

    def quantize(self, x: Tensor) -> Tensor:
        r"""Forward quantizer $Q(x)$: 0 for $x \le 0$, else the level of the cell containing $x$."""
        levels = self.levels.to(x.dtype)
        lower, _ = _thresholds(levels)
        # Q(x) = q_1 [x > 0] + sum_{i >= 2} (q_i - q_{i-1}) [x > t_i]: cells (t_i, t_{i+1}] as in the definition
        out = levels[0] * (x > 0).to(x.dtype)
        for i in range(1, len(levels)):
            out = out + (levels[i] - levels[i - 1]) * (x > lower[i]).to(x.dtype)
        return out

    def surrogate(self, x: Tensor) -> Tensor:
        """The backward function whose derivative replaces $Q'$ (ReLU, clipped ReLU or log-tailed ReLU)."""
        top = self.levels[-1].to(x.dtype)  # $q_m$
        if self.cfg.backward == "relu":
            return torch.relu(x)
        if self.cfg.backward == "clipped":
            return torch.minimum(torch.relu(x), top)
        tau = top - 1  # slope 1 at q_m, then logarithmic growth
        tail = top + torch.log(torch.clamp(x - tau, min=1.0))
        return torch.where(x > top, tail, torch.relu(x))

    def forward(self, x: Tensor) -> Tensor:
        """$Q(x)$ in the forward pass, the surrogate's gradient in the backward pass."""
        proxy = self.surrogate(x)
        return proxy + (self.quantize(x.detach()) - proxy).detach()

    @classmethod
    def smoke_task(cls, batch_size: int = 8, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
        """A tiny BN-MLP with binary weights and 2-bit HWGQ activations, for the generic smoke test."""
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        task = build_task(Config(), hidden=(16, 16))
        x = torch.randn(batch_size, 40, generator=gen)  # (B, 40)
        return task, x, torch.randint(0, 10, (batch_size,), generator=gen)


def build_task(
    cfg: Config | None, binary: bool = True, hidden: tuple[int, ...] = (256, 256), in_features: int = 40
) -> Supervised:
    """BN-MLP whose activations are HWGQ (`cfg`) or ReLU (`cfg=None`), with binary or fp32 weights."""
    activation = (lambda _w: nn.ReLU()) if cfg is None else (lambda _w: HWGQ(cfg))
    model = QuantMLP(in_features, 10, hidden, activation=activation)
    return Supervised(quantize_weights(model, lambda _layer: binary_weight) if binary else model)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """FP, binary weights + ReLU, and binary weights + 2-bit HWGQ with three backward choices, same seeds. The run is in
    `experiment.py`."""
    from implementations.quantization.hwgq_cai2017.experiment import reproduce as run

    return run(ctx)
