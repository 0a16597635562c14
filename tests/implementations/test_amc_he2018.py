"""Paper properties of AMC (He et al., 2018), and the quick reproduction."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from implementations._models import CNN1d
from implementations.automl._base import ChannelPruner, cnn1d_flops
from implementations.automl.amc_he2018 import AMC, DDPG, Config, action_wall, layer_embedding, truncated_normal


def test_action_wall_keeps_the_budget_reachable() -> None:
    channels, lbound = (16, 32, 64, 64), 0.2
    target = 0.5 * cnn1d_flops(channels)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        keep: list[int] = []
        for t in range(len(channels)):
            keep.append(action_wall(keep, t, float(torch.rand((), generator=gen)), channels, target, lbound))
            assert keep[-1] >= math.ceil(lbound * channels[t])
        assert cnn1d_flops(keep) <= target  # whatever the agent asks, the episode ends inside the budget
    # an action that already fits is left alone; a greedy first action is cut down
    assert action_wall([], 0, 0.5, channels, target, lbound) == 8
    k = action_wall([16, 32], 2, 1.0, channels, target, lbound)  # the largest c_3 that still fits
    assert k < 64 and cnn1d_flops([16, 32, k, 13]) <= target < cnn1d_flops([16, 32, k + 1, 13])


def test_action_wall_uses_the_input_length_and_search_skips_warmup() -> None:
    channels, lbound = (16, 32, 64, 64), 0.2
    target = 0.5 * cnn1d_flops(channels, length=64)
    k = action_wall([16, 32], 2, 1.0, channels, target, lbound, length=64)
    assert cnn1d_flops([16, 32, k, 13], length=64) <= target < cnn1d_flops([16, 32, k + 1, 13], length=64)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = CNN1d(1, 64, 10, channels=(8, 8, 8)).eval()
    x, y = torch.randn(32, 1, 64, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    amc = AMC(model, x, y, x, Config(episodes=6, warmup=4, batch_size=2))
    best = amc.search_ddpg(gen)
    assert all(h["flops"] <= amc.target for h in amc.history)  # budget met at length 64, not 40
    assert [h["phase"] for h in amc.history] == ["warmup"] * 4 + ["search"] * 2
    assert best["episode"] >= 4 and best["accuracy"] == max(h["accuracy"] for h in amc.history[4:])


def test_state_embedding_and_exploration_noise() -> None:
    emb = layer_embedding((16, 32, 64, 64))
    assert emb.shape == (4, 10) and emb[:, :7].min() >= 0 and emb[:, :7].max() <= 1
    assert torch.equal(emb[:, 0], torch.tensor([0, 1 / 3, 2 / 3, 1]))  # layer index, min-max normalised
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([truncated_normal(0.9, 0.5, 0.2, 1.0, gen) for _ in range(400)])
    assert draws.min() >= 0.2 and draws.max() <= 1.0
    assert abs(truncated_normal(0.6, 1e-4, 0.2, 1.0, gen) - 0.6) < 1e-3  # sigma -> 0: the actor's action


def test_ddpg_soft_target_update_and_baseline() -> None:
    torch.manual_seed(0)
    cfg = Config(batch_size=4, tau=0.25, moving_alpha=0.5)
    agent = DDPG(10, cfg, capacity=8)
    for i in range(8):
        agent.remember((torch.rand(10), 0.5, -0.2 if i % 2 else -0.4, torch.rand(10), i % 4 == 3))
    agent.remember((torch.rand(10), 0.5, -0.3, torch.rand(10), False))
    assert len(agent.memory) == 8  # oldest transition dropped
    old_target = [p.clone() for p in agent.target[0].parameters()]
    agent.update(torch.Generator().manual_seed(0))
    for old, new, live in zip(old_target, agent.target[0].parameters(), agent.actor.parameters(), strict=True):
        assert torch.allclose(new, 0.75 * old + 0.25 * live.detach(), atol=1e-6)  # theta' <- (1-tau) theta' + tau theta
    assert -0.4 * 0.5 <= agent.baseline <= -0.2 * 0.5  # b <- b + alpha (mean R - b) from b = 0


def test_channel_pruner_reconstruction() -> None:
    torch.manual_seed(0)
    model = CNN1d(1, 40, 10, channels=(8, 16, 16)).eval()
    for stage in model.stages:  # non-trivial BN
        stage[1].running_mean.uniform_(-0.2, 0.2)
    x = torch.randn(256, 1, 40)
    with torch.no_grad():
        reference = model(x)
        full = ChannelPruner(model, x, ridge=1e-9)([8, 16, 16])
        assert torch.allclose(full(x), reference, atol=1e-4)  # keeping everything refits the same weights
        keep = [6, 8, 8]
        plain, refit = ChannelPruner(model)(keep), ChannelPruner(model, x)(keep)
        assert [s[0].out_channels for s in refit.stages] == keep
        assert (
            sum(p.numel() for p in refit.parameters())
            == 1 * 6 * 5 + 6 * 8 * 5 + 8 * 8 * 5 + 2 * (6 + 8 + 8) + 8 * 5 * 10 + 10
        )
        err_plain, err_refit = (plain(x) - reference).pow(2).mean(), (refit(x) - reference).pow(2).mean()
    assert err_refit < 0.5 * err_plain  # least-squares refit of the next layer recovers the unpruned outputs


def test_quick_reproduction_is_schema_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from implementations._measure import beats
    from implementations._runner import make_context
    from implementations.automl.amc_he2018 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    data = reproduce(ctx)
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **data,
            "profile": "quick",
            "command": "kb run amc_he2018 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    assert [row.name for row in result.rows] == ["unpruned", "uniform", "greedy", "random", "amc"]
    for name in ("uniform", "greedy", "random", "amc"):
        assert result.row(name).flops <= 0.5 * result.row("unpruned").flops
    assert result.claim.reproduced == beats(result.row("amc").accuracy.values, result.row("uniform").accuracy.values)
    assert result.answers[0].question.startswith("Is a reinforcement-learning agent needed")
