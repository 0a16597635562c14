r"""The `other` family: methods that fit no compression family, and runnable illustrations of theory and surveys.

Papers here are a mix. Some are methods (an input transform, a semi-supervised scheme, a data set distiller);
others are lectures, surveys or theory texts, for which the module builds a small *illustration* of their main
point rather than a reproduction of a table (their fidelity is `partial`). Both plug into the one harness
contract, `forward_train(x, y) -> (logits, {name: weighted_loss})`, through the plain supervised task

$$
\mathcal{L} = \mathrm{CE}\big(y, \mathrm{softmax}(f_\theta(x))\big).
$$

`smoke_task(entrypoint)` delegates to `entrypoint.smoke_task()` when the entry point defines one (each module
here may); otherwise it builds `entrypoint()` with no arguments, wraps it in the CE task when it is a bare
`nn.Module` without `forward_train`, and pairs it with a seeded MNIST-1D-shaped batch `(B, 1, 40)`.
`fit_ce` is the shared training call of the reproductions: plain CE, SGD with momentum and a cosine schedule
(`_harness.fit`), one CPU thread (the machines are small and shared), test accuracy in percent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations._harness import Supervised

if TYPE_CHECKING:
    from implementations._data import TensorData
    from implementations._harness import RunContext

__all__ = ["INPUT_SHAPE", "Supervised", "figure_path", "fit_ce", "smoke_task", "tiny_model"]

#: Shape of one MNIST-1D input without the batch dimension: one channel of 40 samples.
INPUT_SHAPE = (1, 40)


def tiny_model(num_classes: int = 10, hidden: int = 16) -> nn.Module:
    """A two-layer MLP on MNIST-1D-shaped inputs, for smoke tests."""
    from implementations._models import MLP

    return MLP(INPUT_SHAPE[0] * INPUT_SHAPE[1], num_classes, (hidden,))


def smoke_task(
    entrypoint: Any, batch_size: int = 8, num_classes: int = 10, seed: int = 0
) -> tuple[nn.Module, Tensor, Tensor]:
    """A tiny task for the generic smoke test.

    Args:
        entrypoint: The paper's entry point. When it has a `smoke_task()` (class- or static method), that is
            returned as is; otherwise `entrypoint()` is built with its defaults.
        batch_size: $B$ of the synthetic batch.
        num_classes: $K$.
        seed: Seeds the initialisation and the batch.

    Returns:
        `(task, x, y)`: a module with `forward_train`, a batch `x` of shape `(B, 1, 40)` and labels `y` `(B,)`.
    """
    custom = getattr(entrypoint, "smoke_task", None)
    if callable(custom):
        return custom()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    built = entrypoint()
    task = built if hasattr(built, "forward_train") else Supervised(built)
    x = torch.randn(batch_size, *INPUT_SHAPE, generator=gen)  # (B, 1, 40)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen)  # (B,)
    return task, x, y


def fit_ce(
    model: nn.Module,
    data: TensorData,
    ctx: RunContext,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
) -> float:
    """Train `model` with cross-entropy (SGD momentum 0.9, cosine lr) and return its test accuracy in percent."""
    from implementations._harness import evaluate, fit

    fit(
        Supervised(model),
        model.parameters(),
        data,
        epochs,
        lr,
        batch_size,
        ctx.device,
        seed=seed,
        weight_decay=weight_decay,
        progress=ctx.progress,
    )
    return evaluate(model, data)


def figure_path(ctx: RunContext, paper_id: str, name: str) -> tuple[Any, str]:
    """`(file to write, path to list in "figures")` for `<results_dir>/figures/<paper_id>_<name>.png`."""
    path = ctx.results_dir / "figures" / f"{paper_id}_{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, f"{ctx.results_dir.resolve().name}/figures/{path.name}"
