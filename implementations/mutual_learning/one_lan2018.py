r"""Knowledge Distillation by On-the-Fly Native Ensemble (Lan, Zhu & Gong, 2018).

Paper: [arXiv:1806.04606](https://arxiv.org/abs/1806.04606) · notes: `papers/one_lan2018.md`

The low layers of the target network are shared and its top layers are copied into $m$ branches with logits
$z_1, \dots, z_m$. A gate on the shared features, $g(x) = \mathrm{softmax}(\mathrm{ReLU}(\mathrm{BN}(W\,
\mathrm{GAP}(h))))$, weighs the branches into an ensemble teacher built on the fly,

$$
z_e = \sum_{i=1}^{m} g_i(x)\, z_i ,
$$

and, with $\tilde p = \mathrm{softmax}(\cdot / T)$, all of it is trained in one stage on

$$
\mathcal{L} = \sum_{i=1}^{m} \mathcal{L}_{\mathrm{ce}}(z_i, y) + \mathcal{L}_{\mathrm{ce}}(z_e, y)
            + T^2 \sum_{i=1}^{m} D_{\mathrm{KL}}\big(\tilde p_e \,\|\, \tilde p_i\big).
$$

At test time one branch with the shared trunk is the target network itself; the gated ensemble is an option.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations._models import CifarResNet, CNN1d
from implementations.mutual_learning._base import MutualLearner, Predictor, soft_kl

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["ONE", "Branch", "Config", "gated_ensemble", "one_loss", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; the paper's CIFAR setting uses 3 branches and $T = 3$."""

    temperature: float = 3.0  # $T$
    shared_stages: int = 2  # stages in the shared trunk; the rest (the last stage of 3) is branched
    kl_weight: float = 1.0  # weight of the distillation term (0: multi-branch training without ONE's teacher)
    gate: bool = True  # learned gate; False = uniform weights $g_i = 1/m$ (ablation)


def gated_ensemble(branch_logits: Tensor, gate: Tensor) -> Tensor:
    r"""$z_e = \sum_i g_i z_i$.

    Args:
        branch_logits: Logits of the branches, shape `(m, B, K)`.
        gate: Branch weights, shape `(B, m)`, rows summing to 1.

    Returns:
        Ensemble logits, shape `(B, K)`.
    """
    return torch.einsum("mbk,bm->bk", branch_logits, gate)


def one_loss(branch_logits: Tensor, ensemble_logits: Tensor, y: Tensor, cfg: Config) -> dict[str, Tensor]:
    r"""The three ONE terms: CE of every branch, CE of the ensemble, $T^2$-scaled KL from the ensemble to each branch.

    The ensemble is the teacher of the KL term, so it is detached there (its own CE still trains the gate).

    Args:
        branch_logits: `(m, B, K)`.
        ensemble_logits: $z_e$, `(B, K)`.
        y: Labels, `(B,)`.
        cfg: Temperature and weights.

    Returns:
        `{"ce{i}", "ce_ens"[, "kl{i}"]}`, already weighted.
    """
    losses = {f"ce{i}": F.cross_entropy(z, y) for i, z in enumerate(branch_logits)}
    losses["ce_ens"] = F.cross_entropy(ensemble_logits, y)
    if cfg.kl_weight > 0:
        teacher = ensemble_logits.detach()
        for i, z in enumerate(branch_logits):
            losses[f"kl{i}"] = cfg.kl_weight * soft_kl(z, teacher, cfg.temperature)
    return losses


class Branch(nn.Module):
    """Shared trunk + one branch (top stages and head): a full copy of the target network's architecture."""

    def __init__(self, trunk: nn.Module, upper: nn.Module, head: nn.Module, flatten: bool) -> None:
        super().__init__()
        self.trunk, self.upper, self.head, self.flatten = trunk, upper, head, flatten

    def from_shared(self, h: Tensor) -> Tensor:
        """Branch logits `(B, K)` from the shared features `h`."""
        h = self.upper(h)
        return self.head(h.flatten(1) if self.flatten else h.flatten(2).mean(-1))

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` of the trunk followed by this branch."""
        return self.from_shared(self.trunk(x))


def _split(model: nn.Module, shared_stages: int) -> tuple[list[nn.Module], list[nn.Module], nn.Module, bool]:
    """Low modules, top stages, head and pooling (flatten or average) of a `CNN1d`/`CNN2d`/`CifarResNet`."""
    stages = list(model.stages)
    if not 0 < shared_stages < len(stages):
        raise ValueError(f"shared_stages must be in [1, {len(stages) - 1}], got {shared_stages}")
    low = ([model.stem] if isinstance(model, CifarResNet) else []) + stages[:shared_stages]
    return low, stages[shared_stages:], model.head, isinstance(model, CNN1d)


class ONE(MutualLearner):
    """On-the-fly native ensemble: branches of `peers[0]`'s architecture on the trunk of `peers[0]`."""

    def __init__(self, peers: Sequence[nn.Module], cfg: Config | None = None) -> None:
        cfg = cfg or Config()
        low, _, _, flatten = _split(peers[0], cfg.shared_stages)
        trunk = nn.Sequential(*low)  # shared low layers, taken from the first network
        branches = []
        for peer in peers:  # the top layers of every network become one branch
            _, upper, head, _ = _split(peer, cfg.shared_stages)
            branches.append(Branch(trunk, nn.Sequential(*upper), head, flatten))
        super().__init__(branches)
        self.cfg = cfg
        channels = [m.num_features for m in trunk.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)][-1]
        m = len(branches)
        # gate: FC + BN + ReLU + softmax on the globally pooled shared features
        self.gate = nn.Sequential(nn.Linear(channels, m), nn.BatchNorm1d(m), nn.ReLU())

    @property
    def trunk(self) -> nn.Module:
        """The shared low layers."""
        return self.peers[0].trunk

    def branch_outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Branch logits `(m, B, K)` and gate weights `(B, m)`."""
        h = self.trunk(x)  # shared features, computed once
        logits = torch.stack([branch.from_shared(h) for branch in self.peers])  # (m, B, K)
        if self.cfg.gate:
            gate = F.softmax(self.gate(h.flatten(2).mean(-1)), dim=-1)  # (B, m)
        else:
            gate = torch.full((x.shape[0], self.num_peers), 1.0 / self.num_peers, device=x.device)
        return logits, gate

    def ensemble_logits(self, x: Tensor) -> Tensor:
        """Gated ensemble logits $z_e$, `(B, K)`."""
        return gated_ensemble(*self.branch_outputs(x))

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits `(B, K)` of branch 0 (the deployed network) and the ONE loss terms."""
        logits, gate = self.branch_outputs(x)
        return logits[0], one_loss(logits, gated_ensemble(logits, gate), y, self.cfg)


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run one_lan2018`
# ---------------------------------------------------------------------------------------------------------------------

SETTINGS = dict(dataset="mnist1d", n_train=2000, model=("cnn1d", 0.5), branches=3, epochs=8, lr=0.1, batch_size=128)
QUESTION = "Are ONE's gains a real distillation effect, or mostly the benefit of ensemble-style training plus tuning?"


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Target network alone vs. ONE (3 branches), ONE without its KL term and ONE with a uniform gate."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row, versus
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot

    s = SETTINGS
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train or s["n_train"])
    epochs = ctx.epochs(s["epochs"])
    train = dict(epochs=epochs, lr=s["lr"], batch_size=s["batch_size"], device=ctx.device, progress=ctx.progress)
    variants = {"one": Config(), "one_no_kl": Config(kl_weight=0.0), "one_uniform": Config(gate=False)}

    def new() -> nn.Module:
        return build_model(s["model"][0], data.num_classes, data.input_shape, width=s["model"][1])

    acc: dict[str, list[float]] = {}
    for seed in ctx.seeds:
        seed_everything(seed)
        init = [new() for _ in range(s["branches"])]  # branch 0 + trunk = the baseline's initial weights
        alone = copy.deepcopy(init[0])
        fit(Supervised(alone), alone.parameters(), data, seed=seed, **train)
        acc.setdefault("alone", []).append(evaluate(alone, data))
        for name, cfg in variants.items():
            task = ONE(copy.deepcopy(init), cfg)
            fit(task, task.parameters(), data, seed=seed, **train)
            acc.setdefault(name, []).append(evaluate(task, data))
            acc.setdefault(f"{name}_ensemble", []).append(evaluate(Predictor(task, "ensemble_logits"), data))

    single = model_row(new(), data.input_shape)
    full_task = ONE([new() for _ in range(s["branches"])])
    ensemble = model_row(Predictor(full_task, "ensemble_logits"), data.input_shape)
    m_name = f"{s['model'][0]} w={s['model'][1]:g}"
    rows = [
        dict(name="alone", label=f"Target alone ({m_name})", role="baseline", **single),
        dict(name="one", label="ONE: branch 0", role="method", **single),
        dict(name="one_ensemble", label="ONE: gated ensemble", role="ablation", **ensemble),
        dict(name="one_no_kl", label="No KL: branch 0", role="ablation", **single),
        dict(name="one_no_kl_ensemble", label="No KL: ensemble", role="ablation", **ensemble),
        dict(name="one_uniform", label="Uniform gate: branch 0", role="ablation", **single),
        dict(name="one_uniform_ensemble", label="Uniform gate: ensemble", role="ablation", **ensemble),
    ]
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    figure = save_accuracy_plot(rows, ctx, "one_lan2018", title=f"ONE on {data.name} ({len(ctx.seeds)} seeds)")

    def cmp(a: str, b: str) -> str:
        """`a` against `b` by the paired-seed `beats` rule, with the mean difference."""
        return versus(acc[a], acc[b], digits=2)

    kl_helps, kl_hurts = beats(acc["one"], acc["one_no_kl"]), beats(acc["one_no_kl"], acc["one"])
    multi_helps = beats(acc["one_no_kl"], acc["alone"])
    if kl_helps:
        answer = "Distillation adds something at this scale: "
    elif multi_helps:
        answer = "Mostly multi-branch training at this scale: "
    elif kl_hurts:
        answer = "Not distillation at this scale: "
    else:
        answer = "Inconclusive at this scale: "
    answer += (
        f"branch 0 with the KL to the ensemble teacher {cmp('one', 'one_no_kl')} the same multi-branch training "
        f"without it, which {cmp('one_no_kl', 'alone')} the network trained alone; ONE itself "
        f"{cmp('one', 'alone')} training alone, and the learned gate {cmp('one', 'one_uniform')} a uniform one."
    )
    return {
        "id": "one_lan2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"{epochs * -(-data.n_train // s['batch_size'])} SGD steps per network; "
            f"target {m_name}; ONE shares its first {Config().shared_stages} stages and branches the last "
            f"stage + head into {s['branches']} branches; branch 0 and the baseline start from the same weights; SGD "
            f"momentum 0.9, cosine lr {s['lr']}, batch {s['batch_size']}, wd 5e-4, same epochs and batch order; "
            f"T={Config().temperature}, no KL ramp-up.",
        },
        "rows": rows,
        "claim": {
            "text": "A single branch trained with ONE (same architecture and cost at test time) is more accurate than "
            "the network trained alone.",
            "reproduced": beats(acc["one"], acc["alone"]),
            "evidence": f"ONE branch 0 {mean['one']:.2f}% vs alone {mean['alone']:.2f}%; gated ensemble "
            f"{mean['one_ensemble']:.2f}% (mean over {len(ctx.seeds)} seed(s), {data.name}).",
        },
        "answers": [
            {
                "question": QUESTION,
                "answer": answer,
                "evidence": f"alone {mean['alone']:.2f}%; branch 0 with ONE {mean['one']:.2f}%, without the KL term "
                f"{mean['one_no_kl']:.2f}%, with a uniform gate {mean['one_uniform']:.2f}%.",
            }
        ],
        "figures": [figure],
    }
