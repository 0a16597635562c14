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


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run amc_he2018`
# ---------------------------------------------------------------------------------------------------------------------

OPEN_QUESTION = (
    "Is a reinforcement-learning agent needed, or would a simple search over per-layer ratios (random or greedy) "
    "find equally good policies at small scale?"
)
CHANNELS = (16, 32, 64, 64)  # the trained 4-stage 1-D CNN that every search prunes


def _uniform(amc: AMC) -> list[int]:
    """The largest uniform preserve ratio (same for every layer) that meets the budget."""
    best = [max(1, math.ceil(amc.cfg.lbound * c)) for c in amc.channels]
    for step in range(1, 101):
        keep = [max(1, round(step / 100 * c)) for c in amc.channels]
        if amc.flops(keep) <= amc.target:
            best = keep
    return best


def _greedy(amc: AMC, step: float = 0.1) -> list[int]:
    """Greedy baseline: lower one layer's ratio by `step` at a time, keeping the move with the best accuracy."""
    ratios = [1.0] * len(amc.channels)

    def keep_of(r: list[float]) -> list[int]:
        return [max(1, round(x * c)) for x, c in zip(r, amc.channels, strict=True)]

    while amc.flops(keep_of(ratios)) > amc.target:
        trials = []
        for t in range(len(ratios)):
            if ratios[t] - step >= amc.cfg.lbound - 1e-9:
                trial = ratios[:t] + [ratios[t] - step] + ratios[t + 1 :]
                acc = amc.accuracy(keep_of(trial))
                amc.history.append({"keep": keep_of(trial), "accuracy": acc, "flops": amc.flops(keep_of(trial))})
                trials.append((acc, -t, trial))
        if not trials:
            break
        ratios = max(trials)[2]
    return keep_of(ratios)


def reproduce(ctx: Any) -> dict[str, Any]:
    """AMC (DDPG) vs uniform, greedy and random search at 50% FLOPs on a trained 1-D CNN, then fine-tuned."""
    from dataclasses import replace

    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, interleaved_latency, model_row
    from implementations._models import CNN1d
    from implementations.automl._base import finetune

    cfg = Config()
    if ctx.profile == "quick":
        cfg = replace(cfg, episodes=12, warmup=6, batch_size=16)
    data = load_dataset("mnist1d", n_train=ctx.n_train)
    epochs, ft_epochs = ctx.epochs(10), ctx.epochs(2)
    n_val = data.n_train // 4
    acc: dict[str, list[float]] = {}
    before: dict[str, list[float]] = {}
    searched: dict[str, list[float]] = {}
    policies: dict[str, list[list[int]]] = {}
    evaluations: dict[str, list[int]] = {}
    best_episode: list[int] = []  # per seed, the DDPG episode whose policy AMC reports
    models: dict[str, nn.Module] = {}
    for seed in ctx.seeds:
        order = torch.randperm(data.n_train, generator=torch.Generator().manual_seed(seed))
        val_idx, train_idx = order[:n_val], order[n_val:]
        part = replace(data, x_train=data.x_train[train_idx], y_train=data.y_train[train_idx])
        seed_everything(seed)
        base = CNN1d(1, data.input_shape[-1], data.num_classes, channels=CHANNELS)
        fit(Supervised(base), base.parameters(), part, epochs, lr=0.1, seed=seed, progress=False)
        acc.setdefault("unpruned", []).append(evaluate(base, data))
        models.setdefault("unpruned", base)
        gen = torch.Generator().manual_seed(seed)
        found = {}
        for name in ("uniform", "greedy", "random", "amc"):
            amc = AMC(base, data.x_train[val_idx], data.y_train[val_idx], part.x_train[:512], cfg)
            if name == "uniform":
                keep = _uniform(amc)
            elif name == "greedy":
                keep = _greedy(amc)
            elif name == "random":
                for _ in range(cfg.episodes):
                    amc.episode(lambda t, s, g=gen: cfg.lbound + (1 - cfg.lbound) * float(torch.rand((), generator=g)))
                keep = max(amc.history, key=lambda h: h["accuracy"])["keep"]
            else:
                best = amc.search_ddpg(gen)
                keep = best["keep"]
                best_episode.append(best["episode"])
                warm = [h["accuracy"] for h in amc.history if h["phase"] == "warmup"]
            found[name] = keep
            evaluations.setdefault(name, []).append(max(1, len(amc.history)))
            searched.setdefault(name, []).append(amc.accuracy(keep))
            if name == "amc":
                searched.setdefault("amc_incl_warmup", []).append(max([searched["amc"][-1], *warm]))
            pruned = amc.pruner(keep)
            before.setdefault(name, []).append(evaluate(pruned, data))
            seed_everything(seed)
            finetune(pruned, part, ft_epochs, lr=0.02, seed=seed, device=ctx.device)
            acc.setdefault(name, []).append(evaluate(pruned, data))
            policies.setdefault(name, []).append(keep)
            models.setdefault(name, pruned)

    size = {k: model_row(m, data.input_shape) for k, m in models.items()}
    if ctx.profile != "quick":
        for k, ms in interleaved_latency(models, data.input_shape, rounds=3).items():
            size[k]["latency_ms"] = ms
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    mean_before = {k: sum(v) / len(v) for k, v in before.items()}
    mean_search = {k: sum(v) / len(v) for k, v in searched.items()}
    specs = {
        "unpruned": (f"Unpruned 1-D CNN {list(CHANNELS)}", "baseline"),
        "uniform": ("Uniform preserve ratio (hand-crafted)", "baseline"),
        "greedy": ("Greedy per-layer search", "ablation"),
        "random": (f"Random search ({cfg.episodes} policies)", "ablation"),
        "amc": (f"AMC, DDPG agent ({cfg.episodes} episodes)", "method"),
    }
    rows = []
    for name, (label, role) in specs.items():
        extra: dict[str, float | str] = {}
        if name != "unpruned":
            extra = {
                "accuracy_before_finetune": mean_before[name],
                "search_val_accuracy": mean_search[name],
                "evaluations": sum(evaluations[name]) / len(evaluations[name]),
                "channels_all_seeds": "; ".join(str(p) for p in policies[name]),
                "flops_ratio_seed0": size[name]["flops"] / size["unpruned"]["flops"],
            }
            if name == "amc":
                extra["best_episode_all_seeds"] = "; ".join(str(e) for e in best_episode)
                extra["search_val_accuracy_incl_warmup"] = mean_search["amc_incl_warmup"]
        rows.append(
            dict(name=name, label=label, role=role, accuracy=accuracy_stats(acc[name]), **size[name], extra=extra)
        )
    from implementations.architecture._base import save_tradeoff_plot

    figure = save_tradeoff_plot(rows, ctx, "amc_he2018", title=f"AMC at {cfg.flops_ratio:g}x FLOPs on MNIST-1D")
    rl_vs = {k: mean_search["amc"] - mean_search[k] for k in ("random", "greedy")}
    best_other = max(("random", "greedy"), key=lambda k: mean_search[k])
    if beats(searched["amc"], searched[best_other]):
        verdict = "the DDPG agent found better policies than random and greedy search, beyond seed noise"
    elif beats(searched[best_other], searched["amc"]):
        verdict = f"no: {best_other} search found better policies than the DDPG agent, beyond seed noise"
    else:
        verdict = f"no: the DDPG agent's policies and {best_other} search's are within seed noise of each other"
    return {
        "id": "amc_he2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"Per seed: CNN1d {list(CHANNELS)} trained {epochs} epochs (SGD lr 0.1 cosine) on 3/4 of the "
            f"training set; the other 1/4 scores policies (accuracy without fine-tuning; channels by next-layer "
            f"weight magnitude, next layer refitted by ridge least squares on 512 training inputs). Budget "
            f"{cfg.flops_ratio:g}x FLOPs, preserve ratios in [{cfg.lbound}, 1], AMC's action wall for every search. "
            f"DDPG: {cfg.episodes} episodes ({cfg.warmup} random warm-up), hidden {cfg.hidden}, lr actor "
            f"{cfg.lr_actor} / critic {cfg.lr_critic}, tau {cfg.tau}, gamma {cfg.discount}, batch {cfg.batch_size}, "
            f"truncated-normal noise sigma {cfg.init_delta} x {cfg.delta_decay}^episode. Random search: "
            f"{cfg.episodes} uniform policies through the same wall. Greedy: -0.1 ratio steps on the best layer. "
            f"AMC reports the best of its {cfg.episodes - cfg.warmup} learned episodes (warm-up policies are random "
            f"search and not candidates; the winning episode index is in extra). "
            f"Each search's best policy is fine-tuned {ft_epochs} epochs (SGD lr 0.02 cosine); accuracy = test after "
            f"fine-tuning. Size columns: seed 0's pruned models; latency batch 1, fastest of 3 interleaved rounds.",
        },
        "rows": rows,
        "claim": {
            "text": "At the same FLOPs budget, the per-layer policy learned by the agent beats the hand-crafted "
            "uniform policy (after fine-tuning; paired over seeds, gain above one standard error).",
            "reproduced": beats(acc["amc"], acc["uniform"]),
            "evidence": f"after fine-tuning: AMC {mean['amc']:.2f}% vs uniform {mean['uniform']:.2f}% (unpruned "
            f"{mean['unpruned']:.2f}%); without fine-tuning: AMC {mean_before['amc']:.2f}% vs uniform "
            f"{mean_before['uniform']:.2f}%; FLOPs kept (seed 0): AMC {rows[-1]['extra']['flops_ratio_seed0']:.3f}, "
            f"uniform {rows[1]['extra']['flops_ratio_seed0']:.3f} ({len(ctx.seeds)} seeds).",
        },
        "answers": [
            {
                "question": OPEN_QUESTION,
                "answer": f"At this scale {verdict} (search objective: held-out accuracy without fine-tuning); "
                f"after fine-tuning the policies end within {max(abs(mean['amc'] - mean[k]) for k in rl_vs):.2f} "
                f"points of each other.",
                "evidence": "held-out accuracy of the best policy (no fine-tuning): "
                + ", ".join(f"{k} {mean_search[k]:.2f}" for k in ("uniform", "greedy", "random", "amc"))
                + f" (AMC if its random warm-up episodes were counted: {mean_search['amc_incl_warmup']:.2f}; "
                + f"winning DDPG episodes {best_episode})"
                + "; test after fine-tuning: "
                + ", ".join(f"{k} {mean[k]:.2f}" for k in ("uniform", "greedy", "random", "amc"))
                + "; evaluations per search: "
                + ", ".join(f"{k} {sum(v) / len(v):.0f}" for k, v in evaluations.items())
                + f" ({len(ctx.seeds)} seeds).",
            }
        ],
        "figures": [figure],
    }
