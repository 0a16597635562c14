"""Paper properties of PackNet (Mallya & Lazebnik, 2018), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations._data import TensorData
from implementations._harness import fit
from implementations._models import CNN1d
from implementations.pruning.packnet_mallya2018 import Config, PackNet, class_split, release_mask


def _toy_data(seed: int) -> TensorData:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 1, 40, generator=gen)
    y = torch.randint(0, 2, (64,), generator=gen)
    return TensorData(x, y, x[:16], y[:16], num_classes=2, input_shape=(1, 40))


def test_release_mask_keeps_the_largest_free_weights() -> None:
    weight = torch.tensor([0.1, -0.5, 0.3, 2.0, -0.05, 1.0])
    free = torch.tensor([True, True, True, False, True, True])
    keep = release_mask(weight, free, prune_ratio=0.5)  # floor(0.5 * 5) = 2 free weights released: 0.05 and 0.1
    assert keep.tolist() == [False, True, True, False, False, True]
    assert not (keep & ~free).any()


def test_earlier_task_is_exactly_unchanged_and_owned_weights_are_frozen() -> None:
    torch.manual_seed(0)
    net = PackNet(CNN1d(1, 40, 10, channels=(4, 8, 8)), num_tasks=2, classes_per_task=2, cfg=Config(prune_ratio=0.75))
    train = dict(lr=0.1, weight_decay=0.0, progress=False)
    task1, task2 = _toy_data(1), _toy_data(2)
    net.start_task(1)
    fit(net, net.trainable_parameters(), task1, epochs=2, **train)
    net.prune()
    for layer in net.layers:  # exactly floor(0.75 n) weights released per layer, and zeroed
        owner = layer.parametrizations.weight[0].owner
        assert int((owner == 0).sum()) == int(0.75 * owner.numel())
        assert torch.all(layer.parametrizations.weight.original[owner == 0] == 0)
    fit(net, net.trainable_parameters(), task1, epochs=1, **train)
    net.finish_task()
    net.eval()
    logits_before = net(task1.x_test).detach().clone()
    owned = [layer.parametrizations.weight.original.detach().clone() for layer in net.layers]
    net.start_task(2)
    fit(net, net.trainable_parameters(), task2, epochs=2, **train)
    net.prune()
    fit(net, net.trainable_parameters(), task2, epochs=1, **train)
    net.finish_task()
    changed = False
    for layer, before in zip(net.layers, owned, strict=True):
        owner, now = layer.parametrizations.weight[0].owner, layer.parametrizations.weight.original
        assert torch.equal(now[owner == 1], before[owner == 1])  # task 1's weights did not move
        changed |= not torch.equal(now[owner == 2], before[owner == 2])
    assert changed  # task 2 did learn something in the freed weights
    net.set_task(1)
    net.eval()
    assert torch.equal(net(task1.x_test), logits_before)  # no forgetting, bit for bit


def test_class_split_relabels_in_order() -> None:
    x = torch.arange(6.0)[:, None, None].expand(6, 1, 3)
    y = torch.tensor([0, 1, 2, 3, 2, 1])
    data = TensorData(x, y, x, y, num_classes=4, input_shape=(1, 3))
    split = class_split(data, (2, 1))
    assert split.y_train.tolist() == [1, 0, 0, 1] and split.x_train[:, 0, 0].tolist() == [1.0, 2.0, 4.0, 5.0]
    assert split.num_classes == 2


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.pruning.packnet_mallya2018 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run packnet_mallya2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert result.row("packnet").extra["max_forgetting"] == 0.0  # holds at any training length
    backbone = result.row("packnet").params - 5 * (80 * 2 + 2)  # shared stages; five 2-way heads on 80 features
    assert result.row("independent").params == 5 * (backbone + 162)
    assert result.figures == ["results/figures/packnet_mallya2018_tasks.png"]
    assert (tmp_path / "results" / "figures" / "packnet_mallya2018_tasks.png").stat().st_size > 1000
