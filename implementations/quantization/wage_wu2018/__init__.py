r"""Training and Inference with Integers in Deep Neural Networks (Wu, Li, Chen & Shi, 2018).

Paper: [arXiv:1802.04680](https://arxiv.org/abs/1802.04680) · notes: `papers/wage_wu2018.md`

WAGE constrains weights (W), activations (A), gradients (G) and back-propagated errors (E) to low-bit fixed point.
With $\sigma(k) = 2^{1-k}$ and a power-of-two shift,

$$
Q(x, k) = \sigma(k) \operatorname{round}\!\Big(\frac{x}{\sigma(k)}\Big), \quad
C(x, k) = \operatorname{clip}\big(x, -1 + \sigma(k), 1 - \sigma(k)\big), \quad
\operatorname{Shift}(x) = 2^{\operatorname{round}(\log_2 x)},
$$

a layer computes $a = Q_A\big(\operatorname{ReLU}(Q(W, k_W)\, x / \alpha)\big)$ with the constant scale
$\alpha = \max\{\operatorname{Shift}(L_{\min} / L_0), 1\}$ that replaces batch normalisation, and the training signals
are

$$
Q_E(e) = Q\Big(C\big(\tfrac{e}{\operatorname{Shift}(\max|e|)}, k_E\big), k_E\Big), \qquad
\Delta W = \sigma(k_G) \cdot \operatorname{sr}\Big(\eta \frac{g}{\operatorname{Shift}(\max|g|)}\Big), \qquad
W \leftarrow C(W - \Delta W, k_G),
$$

where $\operatorname{sr}$ rounds stochastically to an integer and $\eta$ is an integer learning rate, so the weights
stay on the $k_G$-bit grid and every update is an integer number of grid steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._harness import epoch_generator
from implementations.quantization._base import round_ste

if TYPE_CHECKING:
    from implementations._data import TensorData
    from implementations._harness import RunContext

__all__ = ["WAGE", "Config", "clip", "quantize", "quantize_error", "quantize_gradient", "reproduce", "shift", "sigma"]


@dataclass(frozen=True)
class Config:
    """Bit widths $k_W$-$k_A$-$k_G$-$k_E$ (None = float for that quantity); defaults are the paper's 2-8-8-8."""

    bits_w: int | None = 2  # $k_W$: 2 bits = ternary weights {-0.5, 0, 0.5}
    bits_a: int | None = 8  # $k_A$
    bits_g: int | None = 8  # $k_G$: also the precision at which weights are stored
    bits_e: int | None = 8  # $k_E$
    beta: float = 1.5  # $\beta$ in $L_{\min} = \beta \sigma(k_W)$ (weight initialisation range)
    lr: tuple[int, ...] = (8, 4, 2)  # integer learning rate $\eta$, one value per equal share of the training steps
    input_scale: float = 4.0  # inputs are divided by this power of two before $Q_A$ (standardised data, |x| <~ 4)


def sigma(bits: int) -> float:
    r"""Resolution $\sigma(k) = 2^{1-k}$ of the $k$-bit fixed-point grid on $(-1, 1)$."""
    return 2.0 ** (1 - bits)


def shift(x: Tensor) -> Tensor:
    r"""$\operatorname{Shift}(x) = 2^{\operatorname{round}(\log_2 x)}$, the nearest power of two (for $x > 0$)."""
    return 2.0 ** torch.round(torch.log2(x))


def clip(x: Tensor, bits: int) -> Tensor:
    r"""$C(x, k) = \operatorname{clip}(x, -1 + \sigma(k), 1 - \sigma(k))$."""
    return x.clamp(-1 + sigma(bits), 1 - sigma(bits))


def quantize(x: Tensor, bits: int, clip_gradient: bool = True) -> Tensor:
    r"""$Q(C(x, k), k)$ with a straight-through gradient: 1 inside the clipping range and 0 outside, or 1 everywhere.

    Args:
        x: Values.
        bits: $k$.
        clip_gradient: Zero gradient where $C$ clips (activations); False gives the pure STE used for weights.
    """
    step = sigma(bits)
    if clip_gradient:
        return round_ste(clip(x, bits) / step) * step
    return x + (torch.round(clip(x, bits) / step) * step - x).detach()


def quantize_error(e: Tensor, bits: int) -> Tensor:
    r"""$Q_E(e) = Q(C(e / \operatorname{Shift}(\max |e|), k_E), k_E)$: the direction of $e$ on a $k_E$-bit grid."""
    top = e.abs().max()
    if top == 0:
        return e
    return quantize(e / shift(top), bits)


def quantize_gradient(g: Tensor, bits: int, lr: int, generator: torch.Generator | None = None) -> Tensor:
    r"""$\Delta W = \sigma(k_G)\, \operatorname{sr}(\eta\, g / \operatorname{Shift}(\max|g|))$: whole grid steps.

    Args:
        g: Gradient of a weight tensor.
        bits: $k_G$.
        lr: Integer learning rate $\eta$.
        generator: CPU generator of the stochastic rounding.

    Returns:
        The update $\Delta W$ (same shape), a multiple of $\sigma(k_G)$.
    """
    top = g.abs().max()
    if top == 0:
        return torch.zeros_like(g)
    scaled = lr * g / shift(top)
    floor = scaled.floor()
    # stochastic rounding: up with probability equal to the fractional part
    noise = torch.rand(g.shape, generator=generator).to(g.device)
    return sigma(bits) * (floor + (noise < scaled - floor).to(g.dtype))


class _ErrorQuantizer(torch.autograd.Function):
    """Identity in the forward pass, $Q_E$ on the error in the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, bits: int) -> Tensor:
        ctx.bits = bits
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return quantize_error(grad, ctx.bits), None


class WAGE(nn.Module):
    """An MLP trained in the WAGE dataflow: ternary/low-bit weights, constant scale layers, no BN, no biases."""

    def __init__(
        self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (256, 256), cfg: Config | None = None
    ):
        super().__init__()
        self.cfg = cfg or Config()
        sizes = [in_features, *hidden, num_classes]
        self.weights = nn.ParameterList()
        alphas = []
        l_min = self.cfg.beta * sigma(self.cfg.bits_w or 2)  # $L_{\min}$
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            l_0 = math.sqrt(6 / n_in)  # $L_0$, uniform (Glorot-style) limit
            limit = max(l_min, l_0)
            w = torch.empty(n_out, n_in).uniform_(-limit, limit)
            if self.cfg.bits_g is not None:
                w = sigma(self.cfg.bits_g) * torch.round(w / sigma(self.cfg.bits_g))  # stored on the k_G grid
            self.weights.append(nn.Parameter(w))
            alphas.append(max(float(shift(torch.tensor(l_min / l_0))), 1.0))  # $\alpha$
        self.register_buffer("alphas", torch.tensor(alphas))

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` from inputs `(B, ...)`."""
        cfg = self.cfg
        h = x.flatten(1) / cfg.input_scale  # (B, D)
        if cfg.bits_a is not None:
            h = quantize(h, cfg.bits_a)
        last = len(self.weights) - 1
        for i, w in enumerate(self.weights):
            w_q = quantize(w, cfg.bits_w, clip_gradient=False) if cfg.bits_w is not None else w
            h = F.linear(h, w_q) / self.alphas[i]  # (B, H_l): integer matmul, then a power-of-two shift
            if i < last:
                h = torch.relu(h)
                if cfg.bits_a is not None:
                    h = quantize(h, cfg.bits_a)
            if cfg.bits_e is not None and self.training:
                h = _ErrorQuantizer.apply(h, cfg.bits_e)  # the error reaching this layer's output is quantized
        return h

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        r"""Logits and the sum-of-squared-errors loss $\tfrac12 \lVert z - \mathrm{onehot}(y) \rVert^2$ (batch mean)."""
        logits = self(x)  # (B, K)
        target = F.one_hot(y, logits.shape[-1]).to(logits.dtype)
        return logits, {"sse": 0.5 * ((logits - target) ** 2).sum(-1).mean()}

    @torch.no_grad()
    def update(self, lr: int, generator: torch.Generator | None = None) -> None:
        """The integer WAGE step on every weight from its `.grad` (then clears the gradients)."""
        bits_g = self.cfg.bits_g
        if bits_g is None:
            raise ValueError("the integer update needs k_G; train a float model with an ordinary optimizer")
        for w in self.weights:
            if w.grad is not None:
                w.copy_(clip(w - quantize_gradient(w.grad, bits_g, lr, generator), bits_g))
                w.grad = None

    @classmethod
    def smoke_task(cls, batch_size: int = 8, seed: int = 0) -> tuple[WAGE, Tensor, Tensor]:
        """A tiny 2-8-8-8 WAGE MLP, for the generic smoke test."""
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        task = cls(40, 10, (16,))
        x = torch.randn(batch_size, 40, generator=gen)  # (B, 40)
        return task, x, torch.randint(0, 10, (batch_size,), generator=gen)


def train_wage(model: WAGE, data: TensorData, epochs: int, batch: int, seed: int) -> None:
    r"""WAGE training loop: forward, backward (errors quantized), integer update with the scheduled $\eta$."""
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(data.n_train / batch)
    total = epochs * steps_per_epoch
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(data.n_train, generator=epoch_generator(seed, epoch))
        for step, start in enumerate(range(0, data.n_train, batch)):
            idx = order[start : start + batch]
            _, losses = model.forward_train(data.x_train[idx], data.y_train[idx])
            sum(losses.values()).backward()
            phase = (epoch * steps_per_epoch + step) * len(model.cfg.lr) // total
            model.update(model.cfg.lr[phase], gen)
    model.eval()


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Float vs 2-8-8-8 WAGE on the same MLP, plus one quantity at a time lowered to 4 bits (first seed). The run is in
    `experiment.py`."""
    from implementations.quantization.wage_wu2018.experiment import reproduce as run

    return run(ctx)
