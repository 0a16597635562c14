r"""Large Scale Distributed Neural Network Training through Online Distillation (Anil et al., 2018).

Paper: [arXiv:1804.03235](https://arxiv.org/abs/1804.03235) · notes: `papers/codistill_anil2018.md`

Codistillation trains $n$ copies of a model at once, each on its own shard of the data, and each adds a distillation
term towards the average prediction of the *other* copies, computed with stale checkpoints $\tilde f_j$ that are
exchanged only every $k$ steps and only after a burn-in of $t_0$ steps:

$$
\mathcal{L}_i = \ell\big(y, f_i(x)\big)
  + \mathbb{1}[t \ge t_0]\; \psi\Big(\frac{1}{n-1} \sum_{j \ne i} \tilde f_j(x),\; f_i(x)\Big),
  \qquad x \in \text{shard } i .
$$

We take $\psi(\bar p, p_i) = D_{\mathrm{KL}}(\bar p \,\|\, p_i)$, which has the same gradient as the paper's
cross-entropy against the averaged prediction (they differ by the entropy of $\bar p$, a constant in $\theta_i$).
Within one process the shards are simulated by a fixed pseudo-random hash of each example's values, so every
example always belongs to the same copy, whatever the batch it arrives in.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.mutual_learning._base import MutualLearner, soft_kl

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Codistillation", "Config", "churn", "codistillation_loss", "shard_ids", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters (the paper's are per task; these suit a few hundred steps)."""

    distill_weight: float = 1.0  # weight of $\psi$ (0: copies trained alone on their shards)
    burn_in: int = 100  # $t_0$, steps before the distillation term is switched on
    refresh_every: int = 50  # $k$, steps between checkpoint exchanges (staleness of $\tilde f_j$)
    disjoint_shards: bool = True  # each copy sees only its shard; False: every copy sees every example
    temperature: float = 1.0  # of $\psi$


def shard_ids(x: Tensor, num_shards: int) -> Tensor:
    r"""Shard of each example: $\lfloor n \cdot \mathrm{frac}(|\sin(\langle x, w \rangle)| \cdot 43758.5453)\rfloor$.

    $w$ is a fixed random vector (seed 0), so the assignment depends only on the example, is balanced in
    expectation, and is independent of its class.

    Args:
        x: Examples, shape `(B, ...)`.
        num_shards: $n$.

    Returns:
        Shard indices in `[0, n)`, shape `(B,)`.
    """
    flat = x.detach().flatten(1).double()  # (B, D)
    w = torch.randn(flat.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(x.device)
    u = torch.frac(torch.sin(flat @ w).abs() * 43758.5453)  # (B,), in [0, 1)
    return (u * num_shards).long().clamp_max(num_shards - 1)


def codistillation_loss(student_logits: Tensor, stale_logits: Sequence[Tensor], temperature: float = 1.0) -> Tensor:
    r"""$\psi = D_{\mathrm{KL}}\big(\frac{1}{n-1}\sum_j \tilde p_j \,\|\, p_i\big)$, averaged over the batch.

    Args:
        student_logits: Logits of copy $i$, `(B, C)`.
        stale_logits: Logits of the stale copies $\tilde f_j$, $j \ne i$, each `(B, C)`.
        temperature: $T$ (with the $T^2$ factor of `soft_kl`).

    Returns:
        A scalar tensor.
    """
    mean_p = torch.stack([F.softmax(z.detach() / temperature, dim=-1) for z in stale_logits]).mean(0)  # (B, C)
    return soft_kl(student_logits, temperature * mean_p.clamp_min(1e-12).log(), temperature)


def churn(predictions_a: Tensor, predictions_b: Tensor) -> float:
    """Percentage of examples on which two models' predicted classes differ."""
    return 100.0 * (predictions_a != predictions_b).float().mean().item()


class Codistillation(MutualLearner):
    """$n$ copies, each on its own shard, distilling from stale checkpoints of the others."""

    def __init__(self, peers: Sequence[nn.Module], cfg: Config | None = None) -> None:
        super().__init__(peers)
        self.cfg = cfg or Config()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # $t$, training steps so far
        self.stale: list[nn.Module] = []  # $\tilde f_j$: not submodules, so never trained or saved

    def refresh(self) -> None:
        """Exchange checkpoints: each stale copy becomes a frozen, eval-mode copy of the current peer."""
        self.stale = [copy.deepcopy(p).eval().requires_grad_(False) for p in self.peers]

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits `(B, C)` of the copy that owns each example (copy 0 when shards are off), and per copy $i$ the
        terms `ce{i}` and, after the burn-in, `distill{i}`."""
        cfg, n = self.cfg, self.num_peers
        if self.training:
            if int(self.step) % cfg.refresh_every == 0 or not self.stale:
                self.refresh()  # exchange checkpoints every k steps
            self.step += 1
        distill_on = cfg.distill_weight > 0 and int(self.step) > cfg.burn_in
        shard = shard_ids(x, n) if cfg.disjoint_shards else None  # (B,)
        routed: Tensor | None = None
        losses: dict[str, Tensor] = {}
        for i, peer in enumerate(self.peers):
            mine = shard == i if shard is not None else torch.ones_like(y, dtype=torch.bool)  # (B,)
            if not bool(mine.any()):  # this batch holds no example of shard i
                losses[f"ce{i}"] = sum(p.sum() for p in peer.parameters()) * 0.0
                continue
            xi = x[mine]
            logits = peer(xi)  # (B_i, C)
            if routed is None:
                routed = logits.new_zeros(x.shape[0], logits.shape[1])  # (B, C)
            if cfg.disjoint_shards or i == 0:
                routed = routed.index_put((mine.nonzero().squeeze(1),), logits)
            losses[f"ce{i}"] = F.cross_entropy(logits, y[mine])
            if distill_on:
                with torch.no_grad():
                    stale = [self.stale[j](xi) for j in range(n) if j != i]  # stale checkpoints of the others
                losses[f"distill{i}"] = cfg.distill_weight * codistillation_loss(logits, stale, cfg.temperature)
        assert routed is not None  # every example belongs to some shard
        return routed, losses


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run codistill_anil2018`
# ---------------------------------------------------------------------------------------------------------------------

SETTINGS = dict(dataset="mnist1d", n_train=2000, model=("cnn1d", 0.5), copies=2, epochs=7, lr=0.1, batch_size=128)
QUESTION = (
    "Is codistillation more than an implicit ensemble, i.e. does it help when the copies see the same data "
    "rather than disjoint shards?"
)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Copies alone on their shards vs. codistilled; codistillation on shared data; one model on all data; churn."""
    from itertools import combinations

    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot

    s = SETTINGS
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train or s["n_train"])
    epochs = ctx.epochs(s["epochs"])
    train = dict(epochs=epochs, lr=s["lr"], batch_size=s["batch_size"], device=ctx.device, progress=ctx.progress)
    total_steps = epochs * -(-data.n_train // s["batch_size"])
    # burn-in and exchange period as fractions of the run (the paper tunes them per task)
    base = Config(burn_in=total_steps // 5, refresh_every=max(1, total_steps // 10))
    variants = {
        "alone_shard": Config(**{**base.__dict__, "distill_weight": 0.0}),
        "codistill": base,
        "codistill_same": Config(**{**base.__dict__, "disjoint_shards": False}),
    }

    def new() -> nn.Module:
        return build_model(s["model"][0], data.num_classes, data.input_shape, width=s["model"][1])

    acc: dict[str, list[float]] = {}
    preds: dict[str, list[Tensor]] = {}  # test predictions of copy 0, per seed
    agree: dict[str, list[float]] = {}  # disagreement between the copies of one run

    @torch.no_grad()
    def predict(model: nn.Module) -> Tensor:
        model.eval()
        return model(data.x_test.to(ctx.device)).argmax(-1).cpu()

    for seed in ctx.seeds:
        seed_everything(seed)
        init = [new() for _ in range(s["copies"])]  # every variant starts from these weights
        for name, cfg in variants.items():
            task = Codistillation(copy.deepcopy(init), cfg)
            fit(task, task.parameters(), data, seed=seed, **train)
            scores = [evaluate(p, data) for p in task.peers]
            acc.setdefault(name, []).append(sum(scores) / len(scores))
            preds.setdefault(name, []).append(predict(task.peers[0]))
            agree.setdefault(name, []).append(churn(predict(task.peers[0]), predict(task.peers[1])))
        single = copy.deepcopy(init[0])
        fit(Supervised(single), single.parameters(), data, seed=seed, **train)
        acc.setdefault("alone_all", []).append(evaluate(single, data))
        preds.setdefault("alone_all", []).append(predict(single))

    def mean_churn(name: str) -> float | None:
        pairs = list(combinations(preds[name], 2))
        return sum(churn(a, b) for a, b in pairs) / len(pairs) if pairs else None

    cols = model_row(new(), data.input_shape)
    m_name = f"{s['model'][0]} w={s['model'][1]:g}"
    rows = [
        dict(name="alone_shard", label="Copy alone on its shard", role="baseline", **cols),
        dict(name="codistill", label="Codistilled copy (own shard)", role="method", **cols),
        dict(name="codistill_same", label="Codistilled copy (same data)", role="ablation", **cols),
        dict(name="alone_all", label="One model on all data", role="ablation", **cols),
    ]
    churns = {row["name"]: mean_churn(row["name"]) for row in rows}
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
        extra = {} if churns[row["name"]] is None else {"churn_across_seeds_pct": churns[row["name"]]}
        if row["name"] in agree:
            extra["copies_disagree_pct"] = sum(agree[row["name"]]) / len(agree[row["name"]])
        row["extra"] = extra
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    figure = save_accuracy_plot(rows, ctx, "codistill_anil2018", title=f"Codistillation on {data.name}")

    gain = mean["codistill"] - mean["alone_shard"]
    churn_ok = churns["codistill"] is None or churns["codistill"] < churns["alone_shard"]
    churn_text = (
        "churn needs 2+ seeds"
        if churns["codistill"] is None
        else (f"churn across seeds {churns['codistill']:.2f}% vs {churns['alone_shard']:.2f}% alone")
    )
    same_gain = mean["codistill_same"] - mean["alone_all"]
    if same_gain > 0:
        answer = (
            f"Yes at this scale: with every copy on the same data, codistillation still beats one model trained "
            f"on that data ({same_gain:+.2f} points), so part of its effect is ensemble-like regularisation."
        )
    else:
        answer = (
            f"No at this scale: with every copy on the same data, codistillation does not beat one model trained "
            f"on that data ({same_gain:+.2f} points)"
        )
        answer += (
            f"; on disjoint shards it does help ({gain:+.2f}), so there its benefit is what the other shard taught."
            if gain > 0
            else f", and it does not help on disjoint shards either ({gain:+.2f})."
        )
    return {
        "id": "codistill_anil2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"{epochs * -(-data.n_train // s['batch_size'])} SGD steps per network; "
            f"{s['copies']} copies of {m_name}, shards by a fixed hash of the example; every variant starts "
            f"from the same weights and sees the same batches ({total_steps} steps; with shards each copy gets ~1/"
            f"{s['copies']} of every batch); burn-in {base.burn_in} steps, checkpoint exchange every "
            f"{base.refresh_every} steps; SGD momentum 0.9, cosine lr {s['lr']}, batch {s['batch_size']}, wd 5e-4; "
            "churn = % of test examples whose predicted class differs between two seeds, mean over seed pairs.",
        },
        "rows": rows,
        "claim": {
            "text": "Copies that codistill from stale checkpoints of each other while training on disjoint shards end "
            "up more accurate than the same copies trained alone on their shards, and their predictions churn less "
            "across retraining.",
            "reproduced": beats(acc["codistill"], acc["alone_shard"]) and churn_ok,
            "evidence": f"codistilled {mean['codistill']:.2f}% vs alone on shard {mean['alone_shard']:.2f}% "
            f"({gain:+.2f}); {churn_text}; one model on all data {mean['alone_all']:.2f}% "
            f"(mean over {len(ctx.seeds)} seed(s), {data.name}).",
        },
        "answers": [
            {
                "question": QUESTION,
                "answer": answer,
                "evidence": f"same data: codistilled {mean['codistill_same']:.2f}% vs one model "
                f"{mean['alone_all']:.2f}%; "
                f"disjoint shards: codistilled {mean['codistill']:.2f}% vs alone {mean['alone_shard']:.2f}%.",
            }
        ],
        "figures": [figure],
    }
