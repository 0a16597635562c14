"""Paper properties of neuron-selection distillation (Luo et al., 2016, MobileID), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations._models import MLP
from implementations.distillation.mobileid_luo2016 import (
    NeuronSelectionKD,
    fisher_scores,
    neuron_regression_loss,
    select_neurons,
    selection_energy,
)


def test_fisher_score_is_between_over_within_class_scatter() -> None:
    y = torch.tensor([0, 0, 1, 1])
    h = torch.tensor([[0.0, 1.0, 5.0], [2.0, 1.0, 5.0], [4.0, 3.0, 5.0], [6.0, 3.0, 5.0]])
    # Neuron 0: class means 1, 5, mean 3 -> between 2*4 + 2*4 = 16; within 1+1+1+1 = 4 -> 4.
    # Neuron 1: perfectly separated (within 0) -> huge; neuron 2: constant -> 0.
    scores = fisher_scores(h, y)
    assert scores[0].item() == pytest.approx(4.0)
    assert scores[1] > 1e6 and scores[2] == 0


def test_greedy_selection_skips_a_redundant_copy_of_the_best_neuron() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4  # four "identities" = two binary attributes
    best = (y // 2).float() * 2 + 0.3 * torch.randn(200, generator=gen)  # attribute 1, most discriminative
    copy = 3 * best + 0.01 * torch.randn(200, generator=gen)  # same information, correlation ~1
    other = (y % 2).float() * 2 + 0.6 * torch.randn(200, generator=gen)  # attribute 2: weaker but uncorrelated
    noise = torch.randn(200, generator=gen)
    h = torch.stack([best, copy, other, noise], dim=1)  # (200, 4)
    chosen = select_neurons(h, y, k=2, weight=1.0)
    assert set(chosen.tolist()) & {0, 1} and 2 in chosen.tolist()  # one of the pair, then the new neuron
    assert set(select_neurons(h, y, k=2, weight=0.0).tolist()) == {0, 1}  # lambda = 0: unary term only
    unary = fisher_scores(h, y)
    unary = unary / unary.max()
    corr = torch.corrcoef(h.T)
    # Energy of the greedy set is below that of the top-Fisher pair; hand value for one pair.
    assert selection_energy(chosen, unary, corr, 1.0) < selection_energy(torch.tensor([0, 1]), unary, corr, 1.0)
    pair = torch.tensor([0, 2])
    expected = -(unary[0] + unary[2]) + 1.0 / 1 * corr[0, 2].abs()
    assert torch.allclose(selection_energy(pair, unary, corr, 1.0), expected)


def test_student_regresses_selected_neurons_and_labels_only_train_the_readout() -> None:
    torch.manual_seed(0)
    teacher, student = MLP(6, 4, hidden=(10,)).eval(), MLP(6, 4, hidden=(5,))
    selected = torch.tensor([7, 2, 4])
    task = NeuronSelectionKD(student, teacher, selected=selected, in_shape=(6,))
    assert task.regressor.out_features == 3 and task.readout.in_features == 3
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    target = torch.relu(teacher.layers[0](x))[:, selected]
    assert torch.allclose(task.targets(x), target)
    logits, losses = task.forward_train(x, y)
    assert logits.shape == (8, 4)
    predicted = task.regressor(student(x, return_features=True)[1][-1])
    assert torch.allclose(losses["neurons"], 0.5 * (predicted - target).pow(2).sum(1).mean())
    losses["readout"].backward()
    assert all(p.grad is None for p in student.parameters())  # CE stops at the detached predictions
    assert task.readout.weight.grad is not None and task.readout.weight.grad.abs().sum() > 0
    assert neuron_regression_loss(target, target.clone()) == 0


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.distillation.mobileid_luo2016 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run mobileid_luo2016 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    m = {row.name: row.accuracy.mean for row in result.rows}
    assert {"student_labels", "student_kd", "neurons_all", "neurons_random", "neurons_selected"} <= set(m)
    assert result.claim.reproduced == (m["neurons_selected"] > max(m["student_labels"], m["student_kd"]))
    assert result.row("neurons_all").params > result.row("neurons_selected").params  # wider regression layer
    assert len(result.answers) == 2
