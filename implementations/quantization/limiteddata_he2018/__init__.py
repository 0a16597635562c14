r"""Learning Compression from Limited Unlabeled Data (He & Cheng, 2018).

Paper: [ECCV 2018](http://openaccess.thecvf.com/content_ECCV_2018/html/Xiangyu_He_Learning_Compression_from_ECCV_2018_paper.html)
· notes: `papers/limiteddata_he2018.md`

Post-training compression without labels, in two steps. First, the weights $W$ of every layer are replaced by a
scaled integer grid, with the scale fitted by least squares instead of taken from $\max |W|$:

$$
\min_{\alpha > 0,\; Q \in \{-q_{\max}, \dots, q_{\max}\}^n} \lVert W - \alpha Q \rVert_2^2, \qquad
q_{\max} = 2^{b-1} - 1,
$$

solved Lloyd-Max style by alternating the two exact partial minimisations (so the error never increases)

$$
Q \leftarrow \operatorname{clip}\big(\operatorname{round}(W / \alpha), -q_{\max}, q_{\max}\big), \qquad
\alpha \leftarrow \frac{\langle W, Q \rangle}{\langle Q, Q \rangle},
$$

from the naive scale $\alpha_0 = \max|W| / q_{\max}$. Second, *re-normalisation*: the batch-norm statistics,
stale once the weights change, are re-estimated by forwarding $N$ unlabelled inputs through the compressed network,

$$
\mu_c = \frac{1}{N L} \sum_{i, l} h_{i c l}, \qquad \sigma_c^2 = \frac{1}{N L - 1} \sum_{i, l} (h_{i c l} - \mu_c)^2,
$$

with no labels and no gradient step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.quantization._base import quantizable_layers, quantize

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "LimitedDataCompression", "ls_quantize", "naive_quantize", "renormalize", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the post-training compression."""

    bits: int = 3  # $b$ of the weight codes ($b = 2$ is ternary)
    iterations: int = 30  # alternating (Quasi-Lloyd-Max) steps of the scale fit
    samples: int = 256  # $N$ unlabelled inputs for re-normalisation (paper: 1000 ImageNet images)
    batch_size: int = 256  # batch of the re-estimation forward passes


def naive_quantize(w: Tensor, bits: int) -> Tensor:
    r"""Absmax baseline $\hat W = \alpha_0 \operatorname{round}(W / \alpha_0)$, $\alpha_0 = \max|W| / q_{\max}$."""
    q, scale = quantize(w, bits)  # one scale per tensor
    return (q.float() * scale).view_as(w)


def ls_quantize(
    w: Tensor, bits: int, iterations: int = 30, alpha: Tensor | float | None = None
) -> tuple[Tensor, Tensor, list[float]]:
    r"""Fit $\alpha$ and $Q$ by alternating minimisation of $\lVert W - \alpha Q \rVert_2^2$.

    Args:
        w: Weights, any shape.
        bits: $b \ge 2$; codes in $\{-q_{\max}, \dots, q_{\max}\}$.
        iterations: Number of (assign $Q$, fit $\alpha$) rounds; stops early at a fixed point.
        alpha: Initial scale; None: $\alpha_0 = \max|W| / q_{\max}$.

    Returns:
        `(codes, alpha, errors)`: integer-valued float codes of `w`'s shape, the scalar scale, and the squared error
        after each round (non-increasing).
    """
    qmax = 2 ** (bits - 1) - 1
    w = w.detach().float()
    tiny = torch.finfo(torch.float32).tiny
    alpha_t = torch.as_tensor(w.abs().max() / qmax if alpha is None else alpha, dtype=torch.float32).clamp_min(tiny)
    codes = (w / alpha_t).round().clamp(-qmax, qmax)
    errors: list[float] = []
    for _ in range(iterations):
        # alpha-step: the least-squares scale for fixed codes (keep the old one for all-zero codes)
        norm = (codes * codes).sum()
        if norm > 0:
            alpha_t = ((w * codes).sum() / norm).clamp_min(tiny)
        # Q-step: nearest grid point for fixed alpha
        new = (w / alpha_t).round().clamp(-qmax, qmax)
        errors.append(float(((w - alpha_t * new) ** 2).sum()))
        if torch.equal(new, codes):
            break
        codes = new
    return codes, alpha_t, errors


@torch.no_grad()
def renormalize(model: nn.Module, unlabelled: Tensor, batch_size: int = 256) -> nn.Module:
    r"""Re-estimate every batch norm's $\mu$, $\sigma^2$ on `unlabelled` inputs (cumulative average over batches).

    Uses `torch.optim.swa_utils.update_bn` (reset the statistics, momentum None, forward in train mode); affine
    parameters and weights are untouched. Returns `model` in eval mode.
    """
    if len(unlabelled):
        torch.optim.swa_utils.update_bn(unlabelled.split(batch_size), model)
    return model.eval()


def _quantized_copy(model: nn.Module, bits: int, fit_scale: bool, iterations: int) -> nn.Module:
    out = copy.deepcopy(model).eval()
    with torch.no_grad():
        for _, layer in quantizable_layers(out):
            if fit_scale:
                codes, alpha, _ = ls_quantize(layer.weight, bits, iterations)
                layer.weight.copy_(alpha * codes)
            else:
                layer.weight.copy_(naive_quantize(layer.weight, bits))
    return out


class LimitedDataCompression(nn.Module):
    """A trained model and its label-free compression: LS-scaled low-bit weights, then BN re-normalisation."""

    def __init__(self, model: nn.Module, cfg: Config | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg or Config()

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` of the uncompressed model."""
        return self.model(x)

    def compress(self, unlabelled: Tensor | None = None, bits: int | None = None, fit_scale: bool = True) -> nn.Module:
        """A compressed copy: weights quantized (LS scale, or absmax when `fit_scale` is False), BN re-estimated
        on `unlabelled` inputs `(N, ...)` when given (stale statistics otherwise)."""
        quantized = _quantized_copy(self.model, bits or self.cfg.bits, fit_scale, self.cfg.iterations)
        return quantized if unlabelled is None else renormalize(quantized, unlabelled, self.cfg.batch_size)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits of the model with LS-quantized weights (straight-through gradient) and its CE.

        This is the label-based fine-tuning that the paper's label-free procedure replaces; it is what the smoke
        test exercises.
        """
        params = dict(self.model.named_parameters())
        for name, layer in quantizable_layers(self.model):
            w = layer.weight
            codes, alpha, _ = ls_quantize(w, self.cfg.bits, self.cfg.iterations)
            params[f"{name}.weight" if name else "weight"] = w + (alpha * codes - w).detach()  # STE
        logits = torch.func.functional_call(self.model, params, (x,))  # (B, K)
        return logits, {"ce": F.cross_entropy(logits, y)}

    @classmethod
    def smoke_task(cls) -> tuple[LimitedDataCompression, Tensor, Tensor]:
        """A tiny CNN1d with BN, 3-bit LS-quantized weights in the forward pass."""
        from implementations._models import build_model

        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        task = cls(build_model("cnn1d", 10, (1, 40), width=0.25))
        return task, torch.randn(8, 1, 40, generator=gen), torch.randint(0, 10, (8,), generator=gen)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Train a BN CNN per seed; naive vs LS scale x stale vs re-estimated BN, over bits and sample counts; int8. The run
    is in `experiment.py`."""
    from implementations.quantization.limiteddata_he2018.experiment import reproduce as run

    return run(ctx)
