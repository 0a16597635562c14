"""Properties of the sparse-transfer analogue of Liu et al. (2017): exact sparsity, masks survive the transfer."""

from __future__ import annotations

from pathlib import Path

import torch

from implementations._data import TensorData
from implementations.pruning.transfersparse_liu2017 import SparseTransfer, detached_copy, split_task


def _zeros(task: SparseTransfer) -> list[torch.Tensor]:
    return [module.weight == 0 for _, module in task.trunk()]


def test_global_magnitude_pruning_is_exact_masks_only_shrink_and_head_stays_dense() -> None:
    task, x, y = SparseTransfer.smoke_task()  # already pruned to 90% on the "source"
    total = sum(m.weight.numel() for _, m in task.trunk())
    assert sum(int(z.sum()) for z in _zeros(task)) == int(0.9 * total)
    before = _zeros(task)
    task.prune(0.95)
    after = _zeros(task)
    assert sum(int(z.sum()) for z in after) == int(0.95 * total)
    assert all(torch.all(a[b]) for a, b in zip(after, before, strict=True))  # old zeros stay zero
    assert int((task.model.head.weight == 0).sum()) == 0
    # the survivors are the largest magnitudes across all trunk layers (one global threshold)
    fresh, _, _ = SparseTransfer.smoke_task()  # same seed: the same trained-free weights before pruning
    weights = [m.weight_orig.detach().clone() for _, m in fresh.trunk()]
    magnitudes = torch.cat([w.abs().flatten() for w in weights])
    threshold = magnitudes.sort().values[int(0.9 * total)]  # smallest surviving magnitude
    for (_, m), w in zip(fresh.trunk(), weights, strict=True):
        assert torch.all(w.abs()[m.weight_mask == 1] >= threshold)
        assert torch.all(w.abs()[m.weight_mask == 0] <= threshold)


def test_transfer_keeps_weights_and_masks_and_fine_tuning_keeps_zeros() -> None:
    source, x, y = SparseTransfer.smoke_task()
    target = source.transfer(3)
    assert target.model.head.out_features == 3
    for (_, a), (_, b) in zip(source.trunk(), target.trunk(), strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.weight_mask, b.weight_mask)
    fresh = SparseTransfer(target.model).model.__class__  # same architecture class
    torch.manual_seed(1)
    reinit = source.transfer(3, reinit_weights=fresh(1, 40, 3, channels=(8, 16, 16)))
    pairs = list(zip(source.trunk(), reinit.trunk(), strict=True))
    assert all(torch.equal(a.weight == 0, b.weight == 0) for (_, a), (_, b) in pairs)  # same mask
    assert all(not torch.equal(a.weight, b.weight) for (_, a), (_, b) in pairs if a.weight.count_nonzero() > 0)
    zeros = _zeros(target)
    opt = torch.optim.SGD(target.parameters(), lr=0.1)
    for _ in range(3):
        _, losses = target.forward_train(x, y % 3)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert all(torch.all(m.weight[z] == 0) for (_, m), z in zip(target.trunk(), zeros, strict=True))
    copied = detached_copy(target)  # works right after training (masked weights are non-leaf tensors)
    assert torch.equal(copied.model.head.weight, target.model.head.weight)


def test_split_task_renumbers_labels_and_subsets() -> None:
    data = TensorData(
        x_train=torch.arange(10.0)[:, None],
        y_train=torch.arange(10),
        x_test=torch.arange(10.0)[:, None],
        y_test=torch.arange(10) % 10,
        num_classes=10,
        input_shape=(1,),
    )
    target = split_task(data, range(5, 10), n_train=3, seed=0)
    assert target.num_classes == 5 and target.n_train == 3 and set(target.y_train.tolist()) <= set(range(5))
    assert torch.equal(target.x_train[:, 0].long() - 5, target.y_train)  # x encodes the original label
    assert target.y_test.tolist() == [0, 1, 2, 3, 4]


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.pruning.transfersparse_liu2017 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run transfersparse_liu2017 --quick",
            "environment": {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"},
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    dense, sparse = result.row("dense_target"), result.row("transfer_sparse_s98")
    assert sparse.nonzero_params < 0.2 * dense.nonzero_params and sparse.extra["trunk_sparsity"] > 0.97
    assert result.claim.reproduced is False or sparse.accuracy.mean > result.row("target_direct_s98").accuracy.mean
    assert result.answers
