r"""AMC: AutoML for Model Compression and Acceleration on Mobile Devices (He et al., 2018).

Paper: [arXiv:1802.03494](https://arxiv.org/abs/1802.03494) · notes: `papers/amc_he2018.md`

A DDPG agent walks through a trained network layer by layer. At layer $t$ it observes the layer embedding

$$
s_t = \big(t,\ c_{\text{in}},\ c_{\text{out}},\ L_t,\ \text{stride},\ k,\ \mathrm{FLOPs}[t],\ \text{reduced},\
\text{rest},\ a_{t-1}\big),
$$

each feature min-max normalised over the layers, and outputs a continuous preserve ratio $a_t \in [a_{\min}, 1]$ for
the layer's channels, explored with a truncated normal $\mathcal{TN}(\mu(s_t), \sigma^2)$ whose $\sigma$ decays by
$0.95$ per episode. In the resource-constrained protocol the action is clipped so that the budget stays reachable
with every later layer at $a_{\min}$; after the last layer the pruned network (channels chosen by weight
magnitude, next layer refitted by least squares) is scored without fine-tuning, $R = -\mathrm{Error}$, and every
transition of the episode gets that reward. The critic is fitted to

$$
y_t = R - b + \gamma\, Q'\big(s_{t+1}, \mu'(s_{t+1})\big), \qquad b \leftarrow b + \alpha\,(\bar R_{\text{batch}} - b),
$$

with a moving-average baseline $b$, $\gamma = 1$, and the actor ascends $Q(s, \mu(s))$; target networks follow
with rate $\tau$. The best policy found is fine-tuned once.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.automl._base import CETask, ChannelPruner, cnn1d_flops, stage_lengths

if TYPE_CHECKING:
    from implementations._harness import RunContext
    from implementations._models import CNN1d

__all__ = ["AMC", "Config", "DDPG", "action_wall", "layer_embedding", "reproduce", "truncated_normal"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; defaults follow the authors' search script unless the comment says otherwise."""

    flops_ratio: float = 0.5  # budget: preserved FLOPs fraction (MobileNet 0.5 FLOPs setting)
    lbound: float = 0.2  # $a_{\min}$, smallest preserve ratio
    episodes: int = 80  # search episodes (authors: 800; 10x fewer here)
    warmup: int = 20  # random-action episodes before learning (authors: 100)
    hidden: int = 64  # actor/critic hidden units (authors: 300)
    lr_actor: float = 1e-3  # authors: 1e-4, raised because there are ~10x fewer updates here
    lr_critic: float = 1e-3  # critic learning rate
    tau: float = 0.01  # target-network update rate
    discount: float = 1.0  # $\gamma$
    batch_size: int = 64  # replay minibatch
    memory_per_layer: int = 100  # replay capacity = this x number of layers
    init_delta: float = 0.5  # initial $\sigma$ of the truncated-normal exploration
    delta_decay: float = 0.95  # $\sigma$ decay per episode after warm-up
    moving_alpha: float = 0.5  # $\alpha$ of the reward baseline


def layer_embedding(channels: tuple[int, ...], in_channels: int = 1, length: int = 40, kernel: int = 5) -> Tensor:
    """Static part of $s_t$ for the stages of a `CNN1d` (dynamic columns zero), min-max normalised, `(L, 10)`."""
    lengths = stage_lengths(length, len(channels))
    rows, c_prev = [], in_channels
    for t, (c, n) in enumerate(zip(channels, lengths, strict=True)):
        rows.append([t, c_prev, c, n, 2, kernel, 2 * c_prev * c * kernel * n, 0.0, 0.0, 1.0])
        c_prev = c
    emb = torch.tensor(rows, dtype=torch.float32)
    low, high = emb[:, :7].min(0).values, emb[:, :7].max(0).values
    emb[:, :7] = (emb[:, :7] - low) / (high - low).clamp_min(1e-8)
    return emb


def action_wall(
    keep: list[int], t: int, ratio: float, channels: tuple[int, ...], target: float, lbound: float, length: int = 40
) -> int:
    r"""Channels of layer `t` for action `ratio`, clipped so that the FLOPs budget stays reachable.

    Args:
        keep: Channels already chosen for layers `< t`.
        t: Current layer.
        ratio: The agent's preserve ratio $a_t$.
        channels: Unpruned channels $C_l$.
        target: FLOPs budget.
        lbound: $a_{\min}$: every later layer is assumed at this ratio.
        length: Input length of the `CNN1d` (the FLOPs depend on it).

    Returns:
        The channel count of layer `t` (at least `ceil(lbound * C_t)`).
    """
    floor = [max(1, math.ceil(lbound * c)) for c in channels]
    rest = floor[t + 1 :]
    base = cnn1d_flops([*keep, 0, *rest], length=length)
    slope = cnn1d_flops([*keep, 1, *rest], length=length) - base  # FLOPs are linear in c_t with the others fixed
    most = int((target - base) // slope) if slope > 0 else channels[t]
    wanted = round(ratio * channels[t])
    return max(floor[t], min(wanted, most, channels[t]))


def truncated_normal(mean: float, std: float, low: float, high: float, generator: torch.Generator) -> float:
    r"""One draw of $\mathcal{N}(\text{mean}, \text{std}^2)$ truncated to $[\text{low}, \text{high}]$ (inverse CDF)."""
    normal = torch.distributions.Normal(torch.tensor(mean), torch.tensor(max(std, 1e-6)))
    lo, hi = normal.cdf(torch.tensor(low)), normal.cdf(torch.tensor(high))
    u = lo + (hi - lo) * torch.rand((), generator=generator)
    return float(normal.icdf(u.clamp(1e-6, 1 - 1e-6)).clamp(low, high))


class DDPG(nn.Module):
    r"""Actor $\mu(s)$ (sigmoid output), critic $Q(s, a)$, their target copies and a replay memory."""

    def __init__(self, state_dim: int, cfg: Config, capacity: int) -> None:
        super().__init__()
        h = cfg.hidden
        self.cfg = cfg
        self.actor = nn.Sequential(nn.Linear(state_dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))
        self.critic_state, self.critic_action = nn.Linear(state_dim, h), nn.Linear(1, h)
        self.critic_head = nn.Sequential(nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))
        self.target = copy.deepcopy(
            nn.ModuleList([self.actor, self.critic_state, self.critic_action, self.critic_head])
        )
        critic = [*self.critic_state.parameters(), *self.critic_action.parameters(), *self.critic_head.parameters()]
        self.opt_actor = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr_actor)
        self.opt_critic = torch.optim.Adam(critic, lr=cfg.lr_critic)
        self.capacity, self.memory = capacity, []  # [(s, a, r, s', done)]
        self.baseline = 0.0  # $b$

    def policy(self, state: Tensor, target: bool = False) -> Tensor:
        r"""$\mu(s)$ in $(0, 1)$, shape `(B, 1)`."""
        return torch.sigmoid((self.target[0] if target else self.actor)(state))

    def q(self, state: Tensor, action: Tensor, target: bool = False) -> Tensor:
        """$Q(s, a)$, shape `(B, 1)`."""
        s, a, head = (
            (self.target[1], self.target[2], self.target[3])
            if target
            else (self.critic_state, self.critic_action, self.critic_head)
        )
        return head(s(state) + a(action))

    def remember(self, transition: tuple[Tensor, float, float, Tensor, bool]) -> None:
        """Store one transition, dropping the oldest beyond the capacity."""
        self.memory.append(transition)
        del self.memory[: max(0, len(self.memory) - self.capacity)]

    def update(self, generator: torch.Generator) -> None:
        """One critic and one actor step on a replay minibatch, then the soft target update."""
        if len(self.memory) < self.cfg.batch_size:
            return
        idx = torch.randint(len(self.memory), (self.cfg.batch_size,), generator=generator).tolist()
        s, a, r, s2, done = zip(*(self.memory[i] for i in idx), strict=True)
        s, s2 = torch.stack(s), torch.stack(s2)  # (B, D)
        a, r = torch.tensor(a)[:, None], torch.tensor(r)[:, None]  # (B, 1)
        not_done = 1.0 - torch.tensor(done, dtype=torch.float32)[:, None]
        self.baseline += self.cfg.moving_alpha * (float(r.mean()) - self.baseline)  # moving-average baseline
        with torch.no_grad():
            y = (r - self.baseline) + self.cfg.discount * not_done * self.q(s2, self.policy(s2, True), True)
        critic_loss = F.mse_loss(self.q(s, a), y)
        self.opt_critic.zero_grad()
        critic_loss.backward()
        self.opt_critic.step()
        actor_loss = -self.q(s, self.policy(s)).mean()
        self.opt_actor.zero_grad()
        actor_loss.backward()
        self.opt_actor.step()
        live = [self.actor, self.critic_state, self.critic_action, self.critic_head]
        with torch.no_grad():
            for target, source in zip(self.target, live, strict=True):
                for pt, p in zip(target.parameters(), source.parameters(), strict=True):
                    pt.lerp_(p, self.cfg.tau)


class AMC:
    """The resource-constrained AMC search over the stages of a trained `CNN1d`."""

    def __init__(self, model: CNN1d, val_x: Tensor, val_y: Tensor, calib_x: Tensor, cfg: Config | None = None):
        self.cfg = cfg = cfg or Config()
        self.channels = tuple(stage[0].out_channels for stage in model.stages)
        self.pruner = ChannelPruner(model, calib_x)
        self.val_x, self.val_y = val_x, val_y
        self.length = val_x.shape[-1]  # input length: every FLOPs count uses it
        self.target = cfg.flops_ratio * cnn1d_flops(self.channels, length=self.length)
        self.static = layer_embedding(self.channels, length=val_x.shape[-1])
        self.full_flops = cnn1d_flops(self.channels, length=val_x.shape[-1])
        c_in = (1, *self.channels[:-1])
        lengths = stage_lengths(val_x.shape[-1], len(self.channels))
        self.layer_flops = [2 * a * b * 5 * n for a, b, n in zip(c_in, self.channels, lengths, strict=True)]  # per conv
        self.history: list[dict[str, Any]] = []  # one entry per evaluated policy
        self.phase = "search"  # tag of the next history entries ("warmup" during DDPG's random episodes)

    @torch.no_grad()
    def accuracy(self, keep: list[int]) -> float:
        """Held-out accuracy (%) of the pruned, not fine-tuned network."""
        model = self.pruner(keep)
        return 100.0 * float((model(self.val_x).argmax(-1) == self.val_y).float().mean())

    def flops(self, keep: list[int]) -> int:
        """FLOPs per example of the network pruned to `keep` channels, at this input length."""
        return cnn1d_flops(keep, length=self.length)

    def episode(self, choose: Any) -> tuple[list[tuple[Tensor, float, Tensor, bool]], float, list[int]]:
        """Run one episode; `choose(t, state)` gives $a_t$. Returns the transitions, the reward and the policy."""
        keep, steps, state = [], [], self.static[0].clone()
        for t, c in enumerate(self.channels):
            k = action_wall(keep, t, choose(t, state), self.channels, self.target, self.cfg.lbound, self.length)
            keep.append(k)
            nxt = self.static[min(t + 1, len(self.channels) - 1)].clone()
            rest = self.channels[t + 1 :]
            nxt[7] = 1 - self.flops([*keep, *rest]) / self.full_flops  # reduced
            nxt[8] = sum(self.layer_flops[t + 2 :]) / self.full_flops  # rest (unpruned FLOPs after the next layer)
            nxt[9] = k / c  # previous action
            steps.append((state, k / c, nxt, t == len(self.channels) - 1))
            state = nxt
        acc = self.accuracy(keep)
        self.history.append(
            dict(keep=keep, accuracy=acc, flops=self.flops(keep), episode=len(self.history), phase=self.phase)
        )
        return steps, acc / 100.0 - 1.0, keep  # R = -Error

    def search_ddpg(self, generator: torch.Generator) -> dict[str, Any]:
        """DDPG search; returns the best policy (highest reward) among the agent's episodes.

        The random warm-up episodes only fill the replay memory: their policies are not candidates (they are random
        search, not the agent), unless there are no episodes after the warm-up. The returned entry carries its
        `episode` index.
        """
        cfg = self.cfg
        agent = DDPG(self.static.shape[1], cfg, cfg.memory_per_layer * len(self.channels))
        start = len(self.history)
        for episode in range(cfg.episodes):
            self.phase = "warmup" if episode < cfg.warmup else "search"
            if episode < cfg.warmup:
                choose = lambda t, s: cfg.lbound + (1 - cfg.lbound) * float(torch.rand((), generator=generator))  # noqa: E731
            else:
                delta = cfg.init_delta * cfg.delta_decay ** (episode - cfg.warmup)
                choose = lambda t, s, d=delta: truncated_normal(  # noqa: E731
                    float(agent.policy(s[None]).detach()), d, cfg.lbound, 1.0, generator
                )
            steps, reward, _ = self.episode(choose)
            for state, action, nxt, done in steps:  # every transition gets the final reward
                agent.remember((state, action, reward, nxt, done))
                if episode >= cfg.warmup:
                    agent.update(generator)
        self.phase = "search"
        mine = self.history[start:]
        learned = [h for h in mine if h["phase"] == "search"] or mine
        return max(learned, key=lambda h: h["accuracy"])

    @classmethod
    def smoke_task(cls) -> tuple[CETask, Tensor, Tensor]:
        """A tiny random net pruned by a 3-episode search, wrapped as a CE task, for the generic smoke test."""
        from implementations._models import CNN1d

        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        model = CNN1d(1, 40, 10, channels=(8, 8, 8)).eval()
        x, y = torch.randn(32, 1, 40, generator=gen), torch.randint(0, 10, (32,), generator=gen)
        amc = cls(model, x, y, x, Config(episodes=3, warmup=2, batch_size=2))
        best = amc.search_ddpg(gen)
        return CETask(amc.pruner(best["keep"]).train()), x[:8], y[:8]


CHANNELS = (16, 32, 64, 64)  # the trained 4-stage 1-D CNN that every search prunes


def _uniform(amc: AMC) -> list[int]:
    """The largest uniform preserve ratio (same for every layer) that meets the budget."""
    best = [max(1, math.ceil(amc.cfg.lbound * c)) for c in amc.channels]
    for step in range(1, 101):
        keep = [max(1, round(step / 100 * c)) for c in amc.channels]
        if amc.flops(keep) <= amc.target:
            best = keep
    return best


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """AMC (DDPG) vs uniform, greedy and random search at 50% FLOPs on a trained 1-D CNN, then fine-tuned.

    The run is in `experiment.py`.
    """
    from implementations.automl.amc_he2018.experiment import reproduce as run

    return run(ctx)
