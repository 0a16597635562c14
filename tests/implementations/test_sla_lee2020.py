"""Paper properties of self-supervised label augmentation (Lee et al., 2020), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations._models import build_model
from implementations.self_distillation.sla_lee2020 import SLA, Config, aggregate, joint_labels, rotations


def test_rotations_and_joint_labels() -> None:
    image = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    copies = rotations(image, 4)
    assert copies.shape == (4, 1, 2, 2) and torch.equal(copies[0], image[0])
    assert torch.equal(copies[1, 0], torch.tensor([[2.0, 4.0], [1.0, 3.0]]))  # 90 degrees counter-clockwise
    assert torch.equal(torch.rot90(copies[3], 1, dims=(-2, -1)), image[0])  # four quarter turns = identity
    assert joint_labels(torch.tensor([0, 7]), 4).tolist() == [0, 28, 1, 29, 2, 30, 3, 31]


def test_aggregation_reads_each_copy_at_its_own_transformation() -> None:
    n, m, batch = 3, 4, 2
    z = torch.zeros(m * batch, n * m)
    for j in range(m):
        for b in range(batch):
            for i in range(n):
                z[j * batch + b, i * m + j] = 10 * i + j + 100 * b  # z_{ij}(t_j(x_b)); other entries are 0
    s = aggregate(z, m)
    expected = torch.tensor([[10 * i + 1.5 + 100 * b for i in range(n)] for b in range(batch)])
    assert torch.allclose(s, expected)


def test_self_distilled_head_learns_from_a_fixed_aggregate() -> None:
    torch.manual_seed(0)
    task = SLA(build_model("cnn2d", 10, (1, 8, 8), width=0.25), (1, 8, 8), Config())
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 10, (5,))
    logits, losses = task.forward_train(x, y)
    assert set(losses) == {"sla", "sd_kl", "sd_ce"} and task.joint_head.out_features == 40
    losses["sd_kl"].backward()
    assert task.joint_head.weight.grad is None  # the aggregate is the teacher: the KL does not move it
    assert task.backbone.head.weight.grad.abs().sum() > 0
    task.eval()  # deployed: the self-distilled head alone, one pass on the untransformed input
    assert torch.equal(task(x), task.backbone(x))
    joint_only = SLA(task.backbone, (1, 8, 8), Config(self_distill=False)).eval()
    assert torch.equal(joint_only(x), joint_only.single_logits(x))


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.self_distillation.sla_lee2020 import Q_INVARIANCE, Q_KEPT, reproduce
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run sla_lee2020 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {"baseline", "da", "sla_si", "sla_ag", "sla_sd"} <= {row.name for row in result.rows}
    assert result.row("sla_ag").flops == 4 * result.row("sla_sd").flops
    assert [a.question for a in result.answers] == [Q_INVARIANCE, Q_KEPT]
