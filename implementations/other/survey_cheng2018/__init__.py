r"""Model Compression and Acceleration for Deep Neural Networks (Cheng et al., 2018): a runnable illustration.

Paper: [arXiv:1710.09282](https://arxiv.org/abs/1710.09282) · notes: `papers/survey_cheng2018.md`

The survey sorts compression methods into families and compares them on accuracy against compression rate and
speed-up. This package applies one representative per family to the same MLP on MNIST-1D and puts them in one
table and one accuracy-vs-bytes (Pareto) plot (the run is in `experiment.py`):

- **pruning**: global magnitude pruning to sparsity $s$ with retraining, $\hat W = M \odot W$;
- **low-rank factorisation**: each hidden $W \in \mathbb{R}^{m \times n}$ replaced by its truncated SVD,
  $W \approx U_r \Sigma_r V_r^\top$, with $r(m + n)$ instead of $mn$ weights, then fine-tuned;
- **quantisation**: static post-training int8 (the shared `quantization._base.int8_ptq`: int8 weights
  $\hat w = \Delta \cdot \mathrm{round}(w / \Delta)$ with one $\Delta$ per output channel, int8 activations, int8
  kernels), $8$ instead of $32$ bits each;
- **knowledge distillation**: a narrower MLP trained on $(1-\alpha)\,\mathrm{CE} + \alpha T^2\,
  \mathrm{KL}(p_t^{(T)} \| p_s^{(T)})$ from the baseline as teacher.

(The survey's own grouping puts pruning and quantisation together and has a fourth family of transferred/compact
convolutional filters, which an MLP cannot show; we keep quantisation separate instead.) A point is on the Pareto
front when no other variant is both smaller and more accurate.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "SurveyComparison", "low_rank_mlp", "pareto_front", "reproduce"]


@dataclass(frozen=True)
class Config:
    """One setting per family, chosen for a several-fold compression of a 40-256-256-10 MLP."""

    sparsity: float = 0.9  # pruning: fraction of weights removed (global magnitude)
    rank: int = 16  # low-rank: $r$ of every hidden layer with min(m, n) > r
    student_width: float = 0.25  # distillation: student hidden width relative to the baseline
    temperature: float = 4.0  # distillation: $T$
    alpha: float = 0.9  # distillation: weight of the soft-target term
    finetune_epochs: int = 3  # retraining after pruning / factorising


def low_rank_mlp(model: nn.Module, rank: int) -> nn.Module:
    r"""A copy of `model` whose `nn.Linear` layers with $\min(m, n) > r$ become rank-$r$ SVD factor pairs."""
    from implementations.low_rank._base import svd_linear

    out = copy.deepcopy(model)
    for module in list(out.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and min(child.in_features, child.out_features) > rank:
                setattr(module, child_name, svd_linear(child, rank))
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the `(size, accuracy)` points that no other point beats in both (smaller and more accurate)."""
    front = []
    for i, (size_i, acc_i) in enumerate(points):
        dominated = any(
            size_j <= size_i and acc_j >= acc_i and (size_j < size_i or acc_j > acc_i)
            for j, (size_j, acc_j) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


class SurveyComparison:
    """Apply one method per family to a trained baseline and collect comparable rows."""

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg or Config()

    @staticmethod
    def baseline(num_classes: int = 10, width: float = 1.0) -> nn.Module:
        """The MLP every family compresses: 40 -> 256 w -> 256 w -> K."""
        from implementations._models import build_model

        return build_model("mlp", num_classes, (1, 40), width=width)

    @classmethod
    def smoke_task(cls) -> tuple[nn.Module, Tensor, Tensor]:
        """The distillation member as a task: KD from a tiny teacher into its rank-4 factorisation."""
        from implementations.distillation.kd_hinton2015 import KD
        from implementations.other._base import tiny_model

        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        teacher = tiny_model(hidden=16)
        task = KD(low_rank_mlp(teacher, 4), teacher)
        x = torch.randn(8, 1, 40, generator=gen)  # (B, 1, 40)
        return task, x, torch.randint(0, 10, (8,), generator=gen)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """One method per family on the same trained MLP, plus two combinations, in one table and a Pareto plot.

    The run is in `experiment.py`.
    """
    from implementations.other.survey_cheng2018.experiment import reproduce as run

    return run(ctx)
