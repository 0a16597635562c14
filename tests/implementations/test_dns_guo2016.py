"""Paper properties of Dynamic Network Surgery (Guo, Yao & Chen, 2016), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations._measure import beats
from implementations._models import MLP
from implementations.pruning.dns_guo2016 import Config, DynamicNetworkSurgery, surgery_mask


def test_two_thresholds_give_hysteresis() -> None:
    weight = torch.tensor([0.05, -0.05, 0.15, -0.15, 0.3, -0.3])
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    # |w| < a -> 0; a <= |w| < b -> unchanged; |w| >= b -> 1 (Eq. 3), with a = 0.1, b = 0.2.
    assert surgery_mask(weight, mask, 0.1, 0.2).tolist() == [0.0, 0.0, 1.0, 0.0, 1.0, 1.0]


def _task(splice: bool) -> tuple[DynamicNetworkSurgery, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    task = DynamicNetworkSurgery(MLP(4, 3, hidden=(5,)), Config(crate=(0.0, 0.0), splice=splice))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    task.train()
    task.update_masks()
    return task, x, y


def test_masked_weights_keep_learning_and_are_spliced_back() -> None:
    task, x, y = _task(splice=True)
    mask = task.mask0
    weight = task.model.layers[0].weight
    assert 0 < int((mask == 0).sum()) < mask.numel()  # threshold = mean |W|: about half is cut
    _, losses = task.forward_train(x, y)
    losses["ce"].backward()
    # Eq. 2: the gradient at W ⊙ T reaches every entry, masked ones included.
    assert (weight.grad[mask == 0] != 0).any()
    # A masked weight that grows past b_k comes back.
    q = (mask == 0).nonzero()[0].tolist()
    with torch.no_grad():
        weight[q[0], q[1]] = 2 * float(task.band0[1])
    task.update_masks()
    assert task.mask0[q[0], q[1]] == 1 and task.spliced >= 1
    # The forward pass uses W ⊙ T, and `pruned()` folds it into exact zeros.
    pruned = task.pruned()
    assert torch.allclose(pruned(x), task(x), atol=1e-6)
    assert torch.equal(pruned.layers[0].weight == 0, task.mask0 == 0)


def test_without_splicing_masked_weights_get_no_gradient_and_stay_out() -> None:
    task, x, y = _task(splice=False)
    mask = task.mask0.clone()
    weight = task.model.layers[0].weight
    _, losses = task.forward_train(x, y)
    losses["ce"].backward()
    assert (weight.grad[mask == 0] == 0).all()
    with torch.no_grad():
        weight.mul_(100.0)  # every weight far above b_k
    task.update_masks()
    assert torch.equal(task.mask0, mask) and task.spliced == 0


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.pruning.dns_guo2016 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    env = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run dns_guo2016 --quick",
            "environment": env,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    dns, baseline, dense = result.row("dns"), result.row("prune_retrain"), result.row("dense")
    assert abs(dns.extra["compression"] - baseline.extra["compression"]) < 0.05 * dns.extra["compression"]
    assert dns.nonzero_params < dense.nonzero_params and dns.bytes == min(4 * dns.params, 8 * dns.nonzero_params)
    assert result.claim.reproduced == (
        dns.accuracy.mean >= dense.accuracy.mean - 1 and beats(dns.accuracy.values, baseline.accuracy.values)
    )
    matched = result.row("nosplice_matched")  # the splicing ablation at DNS's per-layer sparsity
    assert matched.nonzero_params >= dns.nonzero_params - 3  # never sparser than DNS (floor rounding per layer)


def test_cap_keeps_the_largest_of_this_steps_cuts() -> None:
    from implementations.pruning.dns_guo2016 import _cap_zeros

    weight = torch.tensor([0.1, 0.2, 0.3, 0.4, 5.0, 6.0])
    old = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # entry 0 was cut before: it cannot come back
    new = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0])  # this step cuts 1, 2, 3: 4 zeros in all
    capped = _cap_zeros(weight, old, new, 0.5)  # at most floor(0.5 * 6) = 3 zeros: restore the largest new cut (3)
    assert capped.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert torch.equal(_cap_zeros(weight, old, new, 0.9), new)  # under the cap: unchanged
