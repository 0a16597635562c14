"""Paper properties of the knowledge quantification of Cheng et al. (2020), and the quick reproduction."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from implementations.distillation._base import smoke_task
from implementations.distillation.kdexplain_cheng2020 import (
    Config,
    KnowledgeQuantifier,
    concept_mask,
    gaussian_entropy,
    learning_distance,
    stability,
    weight_path,
)


def test_entropy_and_concepts_follow_the_definitions() -> None:
    assert gaussian_entropy(torch.tensor(1.0)).item() == pytest.approx(math.log(2 * math.pi * math.e) / 2)
    doubled = gaussian_entropy(torch.tensor(2.0)) - gaussian_entropy(torch.tensor(1.0))
    assert doubled.item() == pytest.approx(math.log(2))  # doubling sigma adds log 2 nats
    entropy = torch.tensor([[0.0, 0.9, 1.0, 1.0, 1.2, 0.3]])  # (B=1, n=6); background = positions 2..5, mean 0.875
    foreground = torch.tensor([[True, True, False, False, False, False]])
    # concepts: mean_bg - H_i > 0.5, i.e. H_i < 0.375: the first foreground pixel and the last background pixel
    assert concept_mask(entropy, foreground, 0.5).tolist() == [[True, False, False, False, False, True]]
    assert concept_mask(entropy, foreground, 1.0).tolist() == [[False] * 6]


def test_stability_and_learning_distance() -> None:
    history = torch.tensor(
        [[[1, 1, 0, 0]], [[0, 1, 1, 0]], [[0, 1, 1, 0]]], dtype=torch.bool
    )  # (E=3, B=1, n=4): 3 concepts ever learned, 2 kept
    assert stability(history).tolist() == [pytest.approx(2 / 3)]
    assert stability(torch.zeros(2, 1, 3, dtype=torch.bool)).isnan().all()
    # w_0 = (3, 4) with norm 5, then steps of length 3 and 4: path = (0, 3/5, 7/5)
    states = [{"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([6.0, 4.0])}, {"w": torch.tensor([6.0, 8.0])}]
    path = weight_path(states)
    assert torch.allclose(path, torch.tensor([0.0, 0.6, 1.4]))
    counts = torch.tensor([[1, 5], [3, 5]])  # N_fg after epochs 1, 2 for two images: peaks at epoch 2 and epoch 1
    assert torch.allclose(learning_distance(path, counts), torch.tensor([1.4, 0.6]))


class _UsesFirstTwo(nn.Module):
    """A frozen 'network' whose feature depends on input positions 0 and 1 only."""

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        feature = 10 * x[..., :2]  # (B, 1, 2)
        logits = feature.flatten(1)
        return (logits, [feature]) if return_features else logits


def test_noise_grows_where_the_feature_ignores_the_input() -> None:
    torch.manual_seed(0)
    cfg = Config(steps=80, lr=0.1, samples=4)
    quantifier = KnowledgeQuantifier(_UsesFirstTwo(), cfg=cfg)
    entropy = quantifier.quantify(torch.randn(6, 1, 8))  # (1, B, n=8)
    sigma = quantifier.sigma(0).flatten(1)  # (B, 8)
    assert (sigma[:, 2:] > 0.8 * cfg.sigma_max).all()  # ignored positions: close to the most noise allowed
    assert (sigma[:, :2] < 0.5).all()  # used positions keep small noise
    foreground = torch.zeros(6, 8, dtype=torch.bool)
    foreground[:, :2] = True
    assert concept_mask(entropy[0], foreground, cfg.margin)[:, :2].all()


def test_only_the_noise_is_trained_and_networks_stay_frozen() -> None:
    task, x, y = smoke_task(KnowledgeQuantifier)  # a student and a teacher resnet8 on (3, 16, 16) images
    task.train()
    assert not any(m.training for m in task.networks.modules())
    logits, losses = task.forward_train(x, y)
    assert logits.shape == (8, 10) and set(losses) == {"distortion0", "entropy0", "distortion1", "entropy1"}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in task.networks.parameters())
    assert [tuple(p.shape) for p in task.raw_sigma] == [(8, 1, 16, 16)] * 2  # one sigma per pixel, all channels
    assert all(p.grad.abs().sum() > 0 for p in task.raw_sigma)


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.distillation.kdexplain_cheng2020 import reproduce
    from implementations.distillation.kdexplain_cheng2020.experiment import QUESTIONS
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run kdexplain_cheng2020 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert {row.name for row in result.rows} == {"teacher", "baseline", "kd"}
    assert {"n_fg", "n_bg", "ratio", "d_mean", "d_std", "rho"} <= set(result.row("kd").extra)
    assert [a.question for a in result.answers] == list(QUESTIONS)
    assert len(result.figures) == 2
    assert (tmp_path / "results" / "figures" / "kdexplain_cheng2020_concepts.png").stat().st_size > 1000
