"""Paper properties of Han et al. (2017) dense-sparse-dense training, and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from implementations._measure import beats
from implementations._models import build_model
from implementations.pruning.dsd_han2017 import DSD, Config


def test_sparse_phase_masks_smallest_weights_except_first_layer() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", 10, (12,), width=1 / 32)  # 12 -> 8 -> 8 -> 10
    first = model.layers[0].weight.detach().clone()
    originals = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    task = DSD(model, Config(sparsity=0.3))
    task.sparsify()
    assert torch.equal(model.layers[0].weight, first) and "layers.0" not in task.pruned
    for name, mask in task.pruned.items():
        w = originals[name]
        assert int(mask.sum()) == int(0.3 * w.numel())
        assert float(w[mask].abs().max()) <= float(w[~mask].abs().min())  # Mask = 1(|W| > lambda)


def test_training_keeps_mask_then_redense_restarts_pruned_weights_from_zero() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", 10, (12,), width=1 / 32)
    task = DSD(model, Config(sparsity=0.5))
    task.sparsify()
    x, y = torch.randn(32, 12), torch.randint(0, 10, (32,))
    optimizer = torch.optim.SGD(task.parameters(), lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        sum(task.forward_train(x, y)[1].values()).backward()
        optimizer.step()
    modules = dict(model.named_modules())
    assert all(bool((modules[n].weight[m] == 0).all()) for n, m in task.pruned.items())  # W <- (W - lr g) * Mask
    task.redensify()
    assert not any(hasattr(m, "weight_mask") for m in model.modules())
    assert all(bool((modules[n].weight[m] == 0).all()) for n, m in task.pruned.items())  # restart from zero
    sum(task.forward_train(x, y)[1].values()).backward()
    grads = torch.cat([modules[n].weight.grad[m] for n, m in task.pruned.items()])
    assert float(grads.abs().sum()) > 0  # ... and they train again


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.pruning.dsd_han2017 import reproduce
    from kb.results import Result

    data = reproduce(make_context("quick", results_dir=tmp_path / "results", device="cpu"))
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    extra = {"profile": "quick", "command": "kb run dsd_han2017 --quick", "environment": env}
    result = Result.model_validate({**data, **extra, "wall_time_s": 1.0, "created": "2025-01-01T00:00:00"})
    assert result.row("dsd").params == result.row("dense").params == result.row("control").params
    assert result.row("dsd_sparse").nonzero_params < result.row("dsd").nonzero_params
    assert result.claim.reproduced == beats(result.row("dsd").accuracy.values, result.row("control").accuracy.values)
