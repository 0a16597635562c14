"""Paper properties of Be Your Own Teacher (Zhang et al., 2019), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from implementations._models import build_model
from implementations.self_distillation.byot_zhang2019 import BYOT, Config, byot_loss, hint_loss, select_hint_weight


@pytest.mark.parametrize(("name", "in_shape"), [("cnn1d", (1, 40)), ("cnn2d", (1, 8, 8))])
def test_exits_adapt_every_stage_to_the_deepest_feature_shape(name: str, in_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    backbone = build_model(name, 10, in_shape, width=0.25)
    task = BYOT(backbone, in_shape)
    x = torch.randn(3, *in_shape)
    logits, features = task.exit_outputs(x)
    _, stage_features = backbone(x, return_features=True)
    assert len(logits) == len(features) == len(stage_features) == 3
    assert all(f.shape == stage_features[-1].shape for f in features)
    assert all(z.shape == (3, 10) for z in logits)
    assert torch.equal(task(x), backbone(x))  # deployed network = the plain backbone, no extra cost


def test_loss_weights_and_zero_imitation_terms_when_exits_match_the_teacher() -> None:
    z, f, y = torch.randn(4, 10), torch.randn(4, 8, 5), torch.tensor([0, 1, 2, 3])
    cfg = Config(temperature=3.0, alpha=0.3, hint_weight=0.03)
    losses = byot_loss([z.clone(), z.clone(), z], [f.clone(), f.clone(), f], y, cfg)
    ce = torch.nn.functional.cross_entropy(z, y)
    assert torch.allclose(losses["ce_deep"], ce) and torch.allclose(losses["ce0"], 0.7 * ce)
    assert losses["kl0"].abs().item() < 1e-6 and losses["hint1"].abs().item() < 1e-12
    assert torch.allclose(hint_loss(torch.ones(2, 3, 4), torch.zeros(2, 3, 4)), torch.tensor(12.0))
    assert set(byot_loss([z, z], [f, f], y, Config(alpha=0.0, hint_weight=0.0))) == {"ce_deep", "ce0"}


def test_the_deepest_classifier_is_a_fixed_teacher() -> None:
    torch.manual_seed(0)
    task = BYOT(build_model("cnn1d", 10, (1, 40), width=0.25), (1, 40))
    x, y = torch.randn(6, 1, 40), torch.randint(0, 10, (6,))
    _, losses = task.forward_train(x, y)
    sum(v for k, v in losses.items() if k[:2] in ("kl", "hi")).backward()
    assert task.backbone.head.weight.grad is None  # imitation terms never pull the teacher towards the students
    assert task.backbone.stages[2][0].weight.grad is None  # nor the deepest stage that produces F_C
    assert task.exits[0].classifier.weight.grad.abs().sum() > 0


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._measure import beats
    from implementations._runner import make_context
    from implementations.self_distillation.byot_zhang2019 import reproduce
    from implementations.self_distillation.byot_zhang2019.experiment import Q_DECAY, QUESTION
    from kb.results import Result

    monkeypatch.setenv("KB_CACHE", str(tmp_path / "cache"))
    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run byot_zhang2019 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    names = {"plain", "byot", "exits_ce", "exits_ce_kl", "exits_ce_hint", "byot_lambda003", "byot_decay"}
    assert names == {row.name for row in result.rows}
    assert "exit1_acc" in result.row("byot").extra
    byot, plain = result.row("byot").accuracy.values, result.row("plain").accuracy.values
    assert result.claim.reproduced == beats(byot, plain)
    assert [a.question for a in result.answers] == [QUESTION, Q_DECAY]


def test_hint_weight_is_chosen_on_held_out_training_data_only() -> None:
    from dataclasses import replace

    from implementations._data import TensorData

    torch.manual_seed(0)
    x, y = torch.randn(60, 1, 40), torch.randint(0, 3, (60,))
    # a test set with a different label rule: if it were used, scores would not match the held-out split
    data = TensorData(x, y, torch.randn(10, 1, 40), torch.zeros(10, dtype=torch.long), 3, (1, 40), "toy")
    train = dict(epochs=1, lr=0.05, batch_size=16, device="cpu", progress=False)
    chosen, scores = select_hint_weight(
        data, lambda: build_model("cnn1d", 3, (1, 40), width=0.25), (0.1, 0.0), Config(), train, 0.25
    )
    assert set(scores) == {0.1, 0.0} and scores[chosen] == max(scores.values())
    # every score is a multiple of 1/15 (15 held-out training examples), never of 1/10 (the test set)
    assert all(abs(v / 100 * 15 - round(v / 100 * 15)) < 1e-6 for v in scores.values())
    assert replace(Config(), hint_weight=chosen).hint_weight == chosen
