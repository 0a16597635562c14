r"""Data-Free Knowledge Distillation for Deep Neural Networks (Lopes, Fenu & Starner, 2017).

Paper: [arXiv:1710.07535](https://arxiv.org/abs/1710.07535) · notes: `papers/datafree_lopes2017.md`

The teacher is released with *metadata*: statistics of its activations $a_l(x)$ on the training set, here per-class
means $\mu_{c,l}$ and standard deviations $\sigma_{c,l}$ of a set of recorded signals $\phi_j$ (the top layer, every
layer, or spectral coefficients of consecutive layer pairs). A transfer set is rebuilt without the data: for a class
$c$, draw a target $\hat{\phi}_j \sim \mathcal{N}(\mu_{c,j}, \mathrm{diag}\,\sigma_{c,j}^2)$ and optimise the input
from noise,

$$
\hat{x} = \arg\min_{x} \sum_{j} \frac{1}{D_j} \big\lVert \phi_j(x) - \hat{\phi}_j \big\rVert_2^2 ,
$$

then distil the student on $\{\hat{x}\}$ with the teacher's softened outputs,
$T^2\,\mathrm{KL}(p_t^{(T)} \| p_s^{(T)})$. The spectral record uses the graph of two consecutive layers, with
adjacency $|W_l|$ between their units and Laplacian $L = D - A = U \Lambda U^\top$:
$\phi_l(x) = U_k^\top [a_{l-1}(x); a_l(x)]$ keeps the $k$ smoothest graph-Fourier coefficients. $U_k$ is rebuilt
from the released weights, so only the coefficient statistics are stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations.distillation._base import Distiller
from implementations.distillation.kd_hinton2015 import kd_loss

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = [
    "ActivationRecord",
    "Config",
    "DataFreeKD",
    "layer_pair_basis",
    "reconstruct",
    "reconstruction_loss",
    "record_metadata",
    "reproduce",
    "teacher_activations",
]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of reconstruction and distillation (scaled to an MLP on 8x8 digits)."""

    temperature: float = 4.0  # $T$ of the distillation on the transfer set
    steps: int = 150  # Adam steps on the inputs per reconstruction
    lr: float = 0.1  # Adam step size on the inputs
    spectral_k: int = 32  # $k$ graph-Fourier coefficients kept per layer pair


def teacher_activations(teacher: nn.Module, x: Tensor) -> list[Tensor]:
    """Flattened hidden activations and logits `[(B, H_1), ..., (B, K)]` of a `return_features` model."""
    logits, features = teacher(x, return_features=True)
    return [f.flatten(1) for f in features] + [logits]


def layer_pair_basis(weight: Tensor, k: int) -> Tensor:
    r"""The $k$ eigenvectors of smallest eigenvalue of the bipartite graph Laplacian of one layer pair.

    Args:
        weight: $W_l$, shape `(H_l, H_{l-1})`; the adjacency is $A = [[0, |W_l|^\top], [|W_l|, 0]]$.
        k: Number of eigenvectors kept.

    Returns:
        $U_k$, shape `(H_{l-1} + H_l, k)`, orthonormal columns.
    """
    h_out, h_in = weight.shape
    adjacency = torch.zeros(h_in + h_out, h_in + h_out, dtype=torch.float64)
    adjacency[h_in:, :h_in] = weight.detach().abs().double()
    adjacency[:h_in, h_in:] = adjacency[h_in:, :h_in].T
    laplacian = torch.diag(adjacency.sum(1)) - adjacency
    _, vectors = torch.linalg.eigh(laplacian)  # eigenvalues in ascending order
    return vectors[:, :k].float()


@dataclass
class ActivationRecord:
    """Released metadata: per-class mean and std of each recorded signal, and the class frequencies."""

    kind: str  # "top_layer", "all_layers" or "spectral"
    means: list[Tensor]  # (K, D_j) per signal
    stds: list[Tensor]  # (K, D_j) per signal
    class_counts: Tensor  # (K,)
    bases: list[Tensor]  # spectral only: U_k per layer pair, rebuilt from the weights (not stored)

    def signals(self, activations: list[Tensor]) -> list[Tensor]:
        r"""The recorded signals $\phi_j$ of a list of activations `[(B, H_1), ..., (B, K)]`."""
        if self.kind == "top_layer":
            return [activations[-1]]
        if self.kind == "all_layers":
            return activations
        pairs = zip(activations[:-1], activations[1:], strict=True)
        return [torch.cat(pair, dim=1) @ basis for pair, basis in zip(pairs, self.bases, strict=True)]

    def num_bytes(self) -> int:
        """Storage of the metadata as fp32 (the spectral bases come from the released weights for free)."""
        return 4 * (sum(m.numel() + s.numel() for m, s in zip(self.means, self.stds, strict=True)) + len(self))

    def __len__(self) -> int:
        return len(self.class_counts)


@torch.no_grad()
def record_metadata(
    teacher: nn.Module, x: Tensor, y: Tensor, kind: str, weights: list[Tensor] | None = None, k: int = 32
) -> ActivationRecord:
    """Per-class statistics of the teacher's recorded signals on the (private) training set.

    Args:
        teacher: The trained teacher (a `return_features` model).
        x: Training inputs `(N, ...)`; y: labels `(N,)`.
        kind: `top_layer`, `all_layers` or `spectral`.
        weights: Spectral only: $W_l$ between consecutive recorded activations, `(H_l, H_{l-1})` each.
        k: Spectral only: coefficients kept per pair.
    """
    num_classes = int(y.max()) + 1
    bases = [layer_pair_basis(w, k) for w in weights] if kind == "spectral" and weights else []
    record = ActivationRecord(kind, [], [], torch.bincount(y, minlength=num_classes), bases)
    for signal in record.signals(teacher_activations(teacher, x)):
        record.means.append(torch.stack([signal[y == c].mean(0) for c in range(num_classes)]))  # (K, D_j)
        record.stds.append(torch.stack([signal[y == c].std(0) for c in range(num_classes)]))  # (K, D_j)
    return record


def reconstruction_loss(signals: list[Tensor], targets: list[Tensor]) -> Tensor:
    r"""$\sum_j \frac{1}{D_j} \lVert \phi_j(x) - \hat{\phi}_j \rVert^2$, averaged over the batch."""
    return sum(((s - t) ** 2).mean(dim=1) for s, t in zip(signals, targets, strict=True)).mean()


def reconstruct(
    teacher: nn.Module, record: ActivationRecord, n: int, input_shape: tuple[int, ...], cfg: Config, seed: int
) -> tuple[Tensor, Tensor]:
    """Rebuild `n` inputs from the metadata alone: classes by frequency, targets sampled, inputs optimised.

    Returns:
        `(x_hat, c)`: inputs `(n, *input_shape)` and the classes they were drawn for `(n,)`.
    """
    gen = torch.Generator().manual_seed(seed)
    classes = torch.multinomial(record.class_counts.float(), n, replacement=True, generator=gen)  # (n,)
    targets = [
        m[classes] + s[classes] * torch.randn(m[classes].shape, generator=gen)
        for m, s in zip(record.means, record.stds, strict=True)
    ]  # sampled once per input
    x = torch.randn(n, *input_shape, generator=gen).requires_grad_(True)  # start from noise
    opt = torch.optim.Adam([x], lr=cfg.lr)
    for _ in range(cfg.steps):
        loss = reconstruction_loss(record.signals(teacher_activations(teacher, x)), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return x.detach(), classes


class DataFreeKD(Distiller):
    """KD on a transfer set that may hold no real example: the labels `y` of the batch are never used."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and `{"kd": T^2 KL(p_t || p_s)}` on the (reconstructed) inputs."""
        logits_s = self.student(x)  # (B, K)
        with torch.no_grad():
            logits_t = self.teacher(x)  # (B, K)
        return logits_s, {"kd": kd_loss(logits_s, logits_t, self.cfg.temperature)}


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher, then one student distilled on real data, on noise, and on three reconstructed transfer sets.

    The run is in `experiment.py`.
    """
    from implementations.distillation.datafree_lopes2017.experiment import reproduce as run

    return run(ctx)
