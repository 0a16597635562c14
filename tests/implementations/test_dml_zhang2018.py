"""Paper properties of Deep Mutual Learning (Zhang et al., 2018), and the quick reproduction."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from implementations.mutual_learning._base import smoke_task
from implementations.mutual_learning.dml_zhang2018 import DML, Config, entropy_matched_target, mimicry_loss


def test_mimicry_is_the_mean_of_pairwise_kl_and_zero_for_identical_peers() -> None:
    student = torch.tensor([[2.0, 0.0, -1.0]])
    peers = [torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]])]
    p_s = F.softmax(student, -1)[0]

    def kl(target: torch.Tensor) -> float:  # D_KL(p_l || p_k), written out
        p_t = F.softmax(target, -1)[0]
        return float((p_t * (p_t / p_s).log()).sum())

    expected = (kl(peers[0]) + kl(peers[1])) / 2
    assert math.isclose(mimicry_loss(student, peers).item(), expected, rel_tol=1e-5)
    assert mimicry_loss(student, [student.clone(), student.clone()]).abs().item() < 1e-7
    # DML_e: one KL to the peers' mean posterior, which differs from the mean of the KLs (Jensen)
    mean_p = (F.softmax(peers[0], -1) + F.softmax(peers[1], -1))[0] / 2
    expected_e = float((mean_p * (mean_p / p_s).log()).sum())
    assert math.isclose(mimicry_loss(student, peers, ensemble_teacher=True).item(), expected_e, rel_tol=1e-5)
    assert expected_e < expected


def test_entropy_matched_target_has_the_peer_entropy_and_peaks_at_the_label() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 10, generator=gen) * torch.tensor([0.1, 0.5, 1.0, 2.0, 4.0, 8.0])[:, None]
    y = torch.tensor([0, 3, 5, 7, 9, 2])
    target = entropy_matched_target(y, logits)
    p = F.softmax(logits, -1)
    entropy = -(p * p.log()).sum(-1)
    entropy_t = -(target * target.log()).sum(-1)
    assert torch.allclose(entropy_t, entropy, atol=1e-4)
    assert torch.allclose(target.sum(-1), torch.ones(6), atol=1e-6)
    assert torch.equal(target.argmax(-1), y)
    # all off-label entries are equal: no information about which wrong class is likely
    off = target.masked_select(~F.one_hot(y, 10).bool()).view(6, 9)
    assert torch.allclose(off, off[:, :1].expand(-1, 9))


def test_each_peer_learns_from_the_other_but_does_not_move_it() -> None:
    torch.manual_seed(0)
    peers = [nn.Linear(4, 3), nn.Linear(4, 3)]
    task = DML(peers, Config())
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    _, losses = task.forward_train(x, y)
    assert set(losses) == {"ce0", "kl0", "ce1", "kl1"}
    losses["kl0"].backward()  # peer 0's mimicry term: the target (peer 1) is held fixed
    assert peers[0].weight.grad.abs().sum() > 0
    assert peers[1].weight.grad is None


def test_smoke_cohort_has_k_peers_and_deploys_the_first() -> None:
    task, x, y = smoke_task(DML)
    assert task.num_peers == 3
    assert torch.equal(task(x), task.peers[0](x))


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._runner import make_context
    from implementations.mutual_learning.dml_zhang2018 import reproduce
    from implementations.mutual_learning.dml_zhang2018.experiment import Q_PENALTY, Q_TEACHER
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run dml_zhang2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    names = {row.name for row in result.rows}
    assert {"independent", "dml", "kd_teacher", "teacher", "dml_smoothed"} <= names
    assert result.protocol.n_train == 500
    assert [a.question for a in result.answers] == [Q_PENALTY, Q_TEACHER]
    assert result.figures == ["results/figures/dml_zhang2018_accuracy.png"]
