"""Paper properties of Net2Net (Chen et al., 2016), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations._models import MLP
from implementations.distillation.net2net_chen2016 import Config, Net2Net, net2deeper, net2wider


def _mlp() -> MLP:
    torch.manual_seed(0)
    model = MLP(6, 4, (5, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # positive-ish biases keep most ReLUs active, so the test exercises real activity
    return model


@pytest.mark.parametrize("layer", [0, 1])
def test_net2wider_computes_the_same_function(layer: int) -> None:
    model = _mlp()
    x = torch.randn(32, 6)
    old = model.layers[layer].out_features
    wide = net2wider(model, layer, old * 3, generator=torch.Generator().manual_seed(1))
    assert wide.layers[layer].out_features == old * 3
    assert torch.allclose(wide(x), model(x), atol=1e-5)
    # Every copied unit repeats an old unit's incoming weights, and the copies of a unit share its outgoing
    # weights, which sum back to the original column (each is divided by the number of copies).
    w_in, old_in = wide.layers[layer].weight, model.layers[layer].weight
    nxt = wide.layers[layer + 1] if layer + 1 < len(wide.layers) else wide.head
    old_next = model.layers[layer + 1] if layer + 1 < len(model.layers) else model.head
    for unit in range(old):
        copies = [j for j in range(old * 3) if torch.equal(w_in[j], old_in[unit])]
        assert unit in copies
        assert torch.allclose(nxt.weight[:, copies].sum(dim=1), old_next.weight[:, unit], atol=1e-6)
    assert torch.equal(model.layers[layer].weight, old_in)  # the source network is left unchanged


def test_net2wider_noise_breaks_symmetry_only_in_new_units() -> None:
    model = _mlp()
    wide = net2wider(model, 0, 10, noise=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(wide.layers[0].weight[:5], model.layers[0].weight)
    assert not any(
        torch.equal(wide.layers[0].weight[j], model.layers[0].weight[i]) for j in range(5, 10) for i in range(5)
    )
    x = torch.randn(16, 6)
    assert 0 < (wide(x) - model(x)).abs().max() < 0.1
    with pytest.raises(ValueError):
        net2wider(model, 0, 2)


def test_net2deeper_inserts_an_identity_layer() -> None:
    model = _mlp()
    deep = net2deeper(model, 0)
    x = torch.randn(32, 6)
    assert len(deep.layers) == 3 and torch.equal(deep.layers[1].weight, torch.eye(5))
    assert torch.allclose(deep(x), model(x), atol=1e-6)
    logits, features = deep(x, return_features=True)
    assert len(features) == 3 and torch.allclose(features[1], features[0])  # ReLU(I ReLU(v)) = ReLU(v)


def test_grow_builds_a_trainable_equivalent_student() -> None:
    teacher = _mlp()
    task = Net2Net.grow(teacher, Config(width_factor=2, extra_layers=1, noise=0.0))
    student = task.student
    assert [layer.out_features for layer in student.layers] == [10, 6, 6]
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    assert torch.allclose(student(x), teacher(x), atol=1e-5)
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in task.teacher.parameters())
    logits, losses = task.forward_train(x, y)
    assert set(losses) == {"ce"} and torch.allclose(losses["ce"], torch.nn.functional.cross_entropy(logits, y))


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.distillation.net2net_chen2016 import reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run net2net_chen2016 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    reach = {row.name: row.extra["epochs_to_random_final"] for row in result.rows if row.name != "teacher"}
    assert result.claim.reproduced == all(reach[f"{n}_net2net"] < reach[f"{n}_random"] for n in ("wide", "deep"))
    assert result.row("deep_net2net").params > result.row("wide_net2net").params > result.row("teacher").params
