"""Paper properties of data-free KD from activation records (Lopes et al., 2017), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from implementations._models import MLP
from implementations.distillation.datafree_lopes2017 import (
    Config,
    DataFreeKD,
    layer_pair_basis,
    reconstruct,
    reconstruction_loss,
    record_metadata,
    teacher_activations,
)


def test_spectral_basis_starts_with_the_constant_graph_signal() -> None:
    # A connected bipartite graph: the Laplacian's smallest eigenvalue is 0 with a constant eigenvector.
    weight = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])  # (H_l = 2, H_{l-1} = 3)
    basis = layer_pair_basis(weight, k=3)  # (5, 3)
    assert basis.shape == (5, 3)
    assert torch.allclose(basis.T @ basis, torch.eye(3), atol=1e-5)
    assert torch.allclose(basis[:, 0].abs(), torch.full((5,), 5**-0.5), atol=1e-5)
    adjacency = torch.zeros(5, 5)
    adjacency[3:, :3] = weight.abs()
    adjacency = adjacency + adjacency.T
    laplacian = torch.diag(adjacency.sum(1)) - adjacency
    rayleigh = torch.diag(basis.T @ laplacian @ basis)
    assert rayleigh[0].abs() < 1e-5 and torch.all(rayleigh[1:] > 1e-3) and torch.all(rayleigh.diff() >= -1e-5)


def test_records_hold_per_class_statistics_and_count_their_bytes() -> None:
    torch.manual_seed(0)
    teacher = MLP(4, 3, hidden=(5, 6)).eval()
    x, y = torch.randn(30, 4), torch.arange(30) % 3
    acts = teacher_activations(teacher, x)
    assert [a.shape[1] for a in acts] == [5, 6, 3]
    top = record_metadata(teacher, x, y, "top_layer")
    assert torch.allclose(top.means[0][1], acts[-1][y == 1].mean(0), atol=1e-6)
    assert torch.allclose(top.stds[0][2], acts[-1][y == 2].std(0), atol=1e-6)
    assert top.num_bytes() == 4 * (2 * 3 * 3 + 3)  # K x K means and stds + K class counts, fp32
    every = record_metadata(teacher, x, y, "all_layers")
    assert every.num_bytes() == 4 * (2 * 3 * (5 + 6 + 3) + 3)
    weights = [teacher.layers[1].weight, teacher.head.weight]
    spectral = record_metadata(teacher, x, y, "spectral", weights, k=2)
    assert [m.shape for m in spectral.means] == [(3, 2), (3, 2)] and spectral.num_bytes() == 4 * (2 * 3 * 4 + 3)


def test_reconstruction_matches_the_recorded_top_layer_from_noise() -> None:
    torch.manual_seed(0)
    teacher = MLP(6, 3, hidden=(16,)).eval().requires_grad_(False)
    x, y = torch.randn(60, 6), torch.arange(60) % 3
    record = record_metadata(teacher, x, y, "top_layer")
    record.stds = [torch.zeros_like(s) for s in record.stds]  # deterministic targets: the class means
    x_hat, classes = reconstruct(teacher, record, 12, (6,), Config(steps=300, lr=0.05), seed=0)
    start, _ = reconstruct(teacher, record, 12, (6,), Config(steps=0), seed=0)  # the initial noise
    targets = [record.means[0][classes]]
    before = reconstruction_loss(record.signals(teacher_activations(teacher, start)), targets)
    after = reconstruction_loss(record.signals(teacher_activations(teacher, x_hat)), targets)
    assert after < 0.05 * before and after < 1e-2
    assert reconstruction_loss(targets, [t.clone() for t in targets]) == 0


def test_distiller_ignores_labels_and_vanishes_when_student_equals_teacher() -> None:
    student, teacher = nn.Linear(3, 4), nn.Linear(3, 4)
    x = torch.randn(5, 3)
    task = DataFreeKD(student, teacher)
    _, a = task.forward_train(x, torch.zeros(5, dtype=torch.long))
    _, b = task.forward_train(x, torch.arange(5) % 4)
    assert torch.equal(a["kd"], b["kd"]) and a["kd"] > 0
    teacher.load_state_dict(student.state_dict())
    assert DataFreeKD(student, teacher).forward_train(x, torch.zeros(5, dtype=torch.long))[1]["kd"].abs() < 1e-6


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.distillation.datafree_lopes2017 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run datafree_lopes2017 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    names = {row.name for row in result.rows}
    assert {"kd_real", "kd_noise", "kd_top_layer", "kd_all_layers", "kd_spectral"} <= names
    sizes = {k: result.row(f"kd_{k}").extra["metadata_bytes"] for k in ("top_layer", "all_layers", "spectral")}
    assert sizes["top_layer"] < sizes["spectral"] < sizes["all_layers"]
    assert result.answers[0].question.startswith("How close does a student")
