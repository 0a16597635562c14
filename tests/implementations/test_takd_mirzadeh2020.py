"""Paper properties of teacher-assistant KD (Mirzadeh et al., 2020), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from implementations.distillation.kd_hinton2015 import KD
from implementations.distillation.kd_hinton2015 import Config as KDConfig
from implementations.distillation.takd_mirzadeh2020 import TAKD, Config, distill_path, midpoint_assistant


def test_midpoint_rule_picks_accuracy_not_size() -> None:
    # The notes' example: teacher 50%, student 40% -> aim for 45%.
    assert midpoint_assistant(50.0, 40.0, {"big": 48.0, "mid": 44.0, "small": 41.0}) == "mid"
    assert midpoint_assistant(90.0, 50.0, {"w0.5": 85.0, "w0.25": 72.0}) == "w0.25"


def test_each_step_is_hinton_kd_from_the_previous_model() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    _, ours = TAKD(student, teacher, Config(temperature=2.0, kd_weight=0.7)).forward_train(x, y)
    _, ref = KD(student, teacher, KDConfig(temperature=2.0, alpha=0.7)).forward_train(x, y)
    assert torch.allclose(ours["ce"], ref["ce"]) and torch.allclose(ours["kd"], ref["kd"])


def test_distill_path_chains_teachers_and_freezes_them() -> None:
    torch.manual_seed(0)
    teacher = nn.Linear(4, 3)
    seen: list[tuple[nn.Module, nn.Module]] = []

    def train(task: TAKD) -> None:
        seen.append((task.teacher, task.student))

    models = distill_path(teacher, [lambda: nn.Linear(4, 3), lambda: nn.Linear(4, 3)], train)
    assert len(models) == 2 and seen[0][0] is teacher and seen[1][0] is models[0] and seen[1][1] is models[1]
    assert not any(p.requires_grad for p in models[0].parameters())  # a TA is frozen once it teaches
    assert all(p.requires_grad for p in models[1].parameters())


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    # MNIST-1D comes from the user cache (generated once, offline, when missing).
    from implementations._runner import make_context
    from implementations.distillation.takd_mirzadeh2020 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run takd_mirzadeh2020 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    m = {row.name: row.accuracy.mean for row in result.rows}
    assert {"teacher", "student", "student_kd", "student_ta0p5", "student_ta0p25", "student_ta0p5_ta0p25"} <= set(m)
    method = next(row for row in result.rows if row.role == "method")
    assert result.claim.reproduced == (method.accuracy.mean > m["student_kd"])
    assert [a.question for a in result.answers] == [
        "How should the teacher assistant be chosen?",
        "How many teacher assistants should be used?",
    ]
