r"""Face Model Compression by Distilling Knowledge from Neurons (Luo, Zhu, Liu, Wang & Tang, AAAI 2016).

Paper: [AAAI 2016](https://www.aaai.org/ocs/index.php/AAAI/AAAI16/paper/view/11977) ·
notes: `papers/mobileid_luo2016.md`

Instead of soft labels, the student regresses a subset $\mathcal{S}$ of the teacher's top hidden neurons $h(x)$.
The subset is chosen by minimising an energy over binary indicators $y_i \in \{0, 1\}$ on a fully connected graph of
neurons, with a unary term that rewards discriminative neurons and a pairwise term that penalises keeping two
correlated ones; here $\phi_i$ is neuron $i$'s Fisher ratio (between-class over within-class variance, scaled to
$[0, 1]$), $\rho_{ij}$ the correlation of neurons $i, j$ on the training set, and $|\mathcal{S}| = k$:

$$
E(\mathbf{y}) = -\sum_i \phi_i\, y_i + \frac{\lambda}{k - 1} \sum_{i < j} |\rho_{ij}|\, y_i\, y_j .
$$

We minimise it greedily (add the neuron with the largest drop in energy, $k$ times). The student $f(x; W)$ is then
trained on the regression loss alone,

$$
\mathcal{L}(W) = \frac{1}{2N} \sum_{n=1}^{N} \big\lVert f(x_n; W) - h_{\mathcal{S}}(x_n) \big\rVert_2^2 ,
$$

and its predicted neurons are read out by a linear classifier trained on them with the labels (face verification in
the paper; classification here), which never sends gradients into the student.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation._base import Distiller

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = [
    "Config",
    "NeuronSelectionKD",
    "fisher_scores",
    "neuron_regression_loss",
    "reproduce",
    "select_neurons",
    "selection_energy",
    "top_hidden",
]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the neuron selection and the readout."""

    num_selected: int = 32  # $k = |\mathcal{S}|$ (a quarter of a 128-unit teacher layer)
    correlation_weight: float = 1.0  # $\lambda$ of the pairwise term
    readout_weight: float = 1.0  # weight of the CE of the linear readout (trained on detached predictions)


def top_hidden(model: nn.Module, x: Tensor) -> Tensor:
    """The last hidden representation `(B, H)` of a `return_features` model (conv maps are average-pooled)."""
    _, features = model(x, return_features=True)
    h = features[-1]
    return h.mean(dim=(2, 3)) if h.dim() == 4 else h.flatten(1)


def fisher_scores(h: Tensor, y: Tensor) -> Tensor:
    r"""$\phi_i = \sum_c n_c (\mu_{ci} - \mu_i)^2 / \sum_c \sum_{n \in c} (h_{ni} - \mu_{ci})^2$, shape `(H,)`.

    Args:
        h: Teacher neurons on the training set, shape `(N, H)`.
        y: Labels, shape `(N,)`.
    """
    onehot = F.one_hot(y).to(h.dtype)  # (N, C)
    counts = onehot.sum(0)  # (C,)
    class_means = onehot.T @ h / counts.clamp_min(1)[:, None]  # (C, H)
    between = (counts[:, None] * (class_means - h.mean(0)) ** 2).sum(0)  # (H,)
    within = ((h - class_means[y]) ** 2).sum(0)  # (H,)
    return between / within.clamp_min(1e-8)


def selection_energy(selected: Tensor, unary: Tensor, correlation: Tensor, weight: float) -> Tensor:
    r"""$E(\mathbf{y})$ of the index set `selected` (the energy in the module docstring).

    Args:
        selected: Indices of the kept neurons, shape `(k,)`.
        unary: $\phi$, shape `(H,)`.
        correlation: $\rho$, shape `(H, H)`.
        weight: $\lambda$.
    """
    k = len(selected)
    pair = correlation[selected][:, selected].abs().triu(diagonal=1).sum()
    return -unary[selected].sum() + weight / max(1, k - 1) * pair


def select_neurons(h: Tensor, y: Tensor, k: int, weight: float = 1.0) -> Tensor:
    """Greedy minimisation of the selection energy: `k` discriminative, weakly correlated neurons of `h` `(N, H)`.

    Returns:
        The selected indices `(k,)`, in the order they were added.
    """
    unary = fisher_scores(h, y)
    unary = unary / unary.max().clamp_min(1e-12)  # phi scaled to [0, 1]
    correlation = torch.nan_to_num(torch.corrcoef(h.T), nan=0.0).abs()  # (H, H); dead neurons correlate with none
    chosen: list[int] = []
    penalty = torch.zeros_like(unary)  # sum_{j in S} |rho_ij| for every candidate i
    for _ in range(k):
        # Energy drop of adding neuron i: phi_i - lambda / (k - 1) * sum_{j in S} |rho_ij|.
        gain = unary - weight / max(1, k - 1) * penalty
        if chosen:
            gain[chosen] = -float("inf")
        best = int(gain.argmax())
        chosen.append(best)
        penalty += correlation[best]
    return torch.tensor(chosen)


def neuron_regression_loss(predicted: Tensor, target: Tensor) -> Tensor:
    r"""$\frac{1}{2B} \sum_n \lVert f(x_n) - h_{\mathcal{S}}(x_n) \rVert_2^2$ for `(B, k)` predictions and targets."""
    return 0.5 * (predicted - target).pow(2).sum(dim=1).mean()


class NeuronSelectionKD(Distiller):
    """The student regresses the teacher's selected top hidden neurons; a linear readout classifies its predictions.

    `selected` holds the neuron indices (all neurons when None). The regression layer (the student's output layer in
    the paper) maps the student's top hidden representation to `k` values, and the readout maps those to classes; both
    are built from the shapes of a probe input of shape `in_shape`, or on the first `forward_train` when it is None.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        cfg: Config | None = None,
        selected: Tensor | None = None,
        in_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()
        self.register_buffer("selected", selected.long() if selected is not None else None)
        self.regressor: nn.Linear | None = None
        self.readout: nn.Linear | None = None
        if in_shape is not None:
            self._build(torch.zeros(2, *in_shape))

    @torch.no_grad()
    def _build(self, x: Tensor) -> None:
        was_training = self.student.training
        self.student.eval()
        width_s = top_hidden(self.student, x).shape[1]
        self.student.train(was_training)
        width_t = top_hidden(self.teacher, x).shape[1]
        k = width_t if self.selected is None else len(self.selected)
        self.regressor = nn.Linear(width_s, k).to(x.device)
        self.readout = nn.Linear(k, self.teacher(x).shape[1]).to(x.device)

    def targets(self, x: Tensor) -> Tensor:
        r"""$h_{\mathcal{S}}(x)$, shape `(B, k)`."""
        with torch.no_grad():
            h = top_hidden(self.teacher, x)  # (B, H)
        return h if self.selected is None else h[:, self.selected]

    def forward(self, x: Tensor) -> Tensor:
        """Class logits `(B, K)` of the readout on the student's predicted neurons."""
        return self.readout(self.regressor(top_hidden(self.student, x)))

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Readout logits `(B, K)`, `{"neurons": regression, "readout": CE of the readout}`."""
        if self.regressor is None:
            self._build(x)
        predicted = self.regressor(top_hidden(self.student, x))  # (B, k)
        logits = self.readout(predicted.detach())  # labels train the readout only
        return logits, {
            "neurons": neuron_regression_loss(predicted, self.targets(x)),
            "readout": self.cfg.readout_weight * F.cross_entropy(logits, y),
        }


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher; one compact student trained on labels, soft labels, all neurons, random and selected neurons.

    The run is in `experiment.py`.
    """
    from implementations.distillation.mobileid_luo2016.experiment import reproduce as run

    return run(ctx)
