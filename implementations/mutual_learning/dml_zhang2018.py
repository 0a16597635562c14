r"""Deep Mutual Learning (Zhang, Xiang, Hospedales & Lu, 2018).

Paper: [arXiv:1706.00384](https://arxiv.org/abs/1706.00384) · notes: `papers/dml_zhang2018.md`

A cohort of $K$ networks $\Theta_1, \dots, \Theta_K$ with posteriors $p_k = \mathrm{softmax}(z_k)$ is trained from
scratch at the same time, with no pretrained teacher. Each network fits the labels and mimics its peers:

$$
\mathcal{L}_{\Theta_k} = \mathcal{L}_{C_k} + \frac{1}{K-1} \sum_{l \ne k} D_{\mathrm{KL}}\big(p_l \,\|\, p_k\big),
\qquad
D_{\mathrm{KL}}(p_l \,\|\, p_k) = \sum_{m=1}^{M} p_l^m \log \frac{p_l^m}{p_k^m},
$$

where $\mathcal{L}_{C_k}$ is the cross-entropy of network $k$ and $p_l$ is held fixed while $\Theta_k$ is updated.
The paper's variant "DML_e" replaces the $K-1$ terms by one KL to the peers' mean posterior,
$D_{\mathrm{KL}}(\bar p_{\setminus k} \,\|\, p_k)$ with $\bar p_{\setminus k} = \frac{1}{K-1}\sum_{l \ne k} p_l$.

For the notes' question "is the KL only a penalty that keeps the peers together?", `target="smoothed"` swaps each
peer's posterior for an entropy-matched label-smoothing target $q_\varepsilon = (1-\varepsilon)\,e_y +
\varepsilon / M$ with $\varepsilon$ chosen per example so that $H(q_\varepsilon) = H(\bar p_{\setminus k})$: the same
amount of softening, but none of the peer's knowledge of *which* wrong classes are plausible.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.mutual_learning._base import Ensemble, MutualLearner, soft_kl

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["DML", "Config", "entropy_matched_target", "mimicry_loss", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; the paper uses plain softmax posteriors and a unit weight on the KL term."""

    temperature: float = 1.0  # $T$ of the posteriors (1 in the paper)
    kl_weight: float = 1.0  # weight of the mimicry term (1 in the paper's loss)
    ensemble_teacher: bool = False  # False: mean of K-1 KL terms; True: KL to the peers' mean posterior (DML_e)
    target: str = "peer"  # "peer" (DML) or "smoothed" (entropy-matched label smoothing, a control)


def mimicry_loss(
    student_logits: Tensor, peer_logits: Sequence[Tensor], ensemble_teacher: bool = False, temperature: float = 1.0
) -> Tensor:
    r"""Mimicry of peer $k$: $\frac{1}{K-1}\sum_l D_{\mathrm{KL}}(p_l \| p_k)$; or $D_{\mathrm{KL}}(\bar p \| p_k)$.

    Args:
        student_logits: Logits $z_k$ of the peer being updated, shape `(B, M)`.
        peer_logits: Detached logits of the other $K-1$ peers, each `(B, M)`.
        ensemble_teacher: Use the peers' mean posterior as a single target (DML_e).
        temperature: $T$ (scaled by $T^2$ as in `soft_kl`; 1 in the paper).

    Returns:
        A scalar tensor.
    """
    if ensemble_teacher:
        mean_p = torch.stack([F.softmax(z / temperature, dim=-1) for z in peer_logits]).mean(0)  # (B, M)
        # log of the mean posterior, so soft_kl's softmax(log p * T / T) gives back p at temperature T
        return soft_kl(student_logits, temperature * mean_p.clamp_min(1e-12).log(), temperature)
    return torch.stack([soft_kl(student_logits, z, temperature) for z in peer_logits]).mean()


def _smoothed_entropy(eps: Tensor, num_classes: int) -> Tensor:
    r"""Entropy of $(1-\varepsilon) e_y + \varepsilon / M$, elementwise in `eps`."""
    on = 1 - eps + eps / num_classes
    off = eps / num_classes
    return -(torch.xlogy(on, on) + (num_classes - 1) * torch.xlogy(off, off))


def entropy_matched_target(y: Tensor, peer_logits: Tensor, iterations: int = 24) -> Tensor:
    r"""Label-smoothing target $q_\varepsilon = (1-\varepsilon) e_y + \varepsilon/M$ with $H(q_\varepsilon) = H(p)$.

    $H(q_\varepsilon)$ grows monotonically from 0 to $\log M$ on $\varepsilon \in [0, 1]$, so $\varepsilon$ is found
    by bisection, per example.

    Args:
        y: Labels, shape `(B,)`.
        peer_logits: Logits whose posterior entropy is matched, shape `(B, M)`.
        iterations: Bisection steps (error $2^{-\text{iterations}}$ in $\varepsilon$).

    Returns:
        Target probabilities, shape `(B, M)`, rows summing to 1, maximal at `y`.
    """
    num_classes = peer_logits.shape[-1]
    log_p = F.log_softmax(peer_logits.detach().float(), dim=-1)  # (B, M)
    entropy = -(log_p.exp() * log_p).sum(-1)  # (B,)
    low, high = torch.zeros_like(entropy), torch.ones_like(entropy)
    for _ in range(iterations):
        mid = (low + high) / 2
        too_soft = _smoothed_entropy(mid, num_classes) > entropy
        high, low = torch.where(too_soft, mid, high), torch.where(too_soft, low, mid)
    eps = ((low + high) / 2)[:, None]  # (B, 1)
    return (1 - eps) * F.one_hot(y, num_classes).float() + eps / num_classes


class DML(MutualLearner):
    """Deep mutual learning of $K$ peers; `forward` is the first peer's prediction."""

    def __init__(self, peers: Sequence[nn.Module], cfg: Config | None = None) -> None:
        super().__init__(peers)
        self.cfg = cfg or Config()
        if self.cfg.target not in ("peer", "smoothed"):
            raise ValueError(f"target must be 'peer' or 'smoothed', got {self.cfg.target!r}")

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """First peer's logits `(B, M)` and, per peer $k$, the terms `ce{k}` and `kl{k}`."""
        cfg = self.cfg
        logits = [peer(x) for peer in self.peers]  # K x (B, M)
        losses: dict[str, Tensor] = {}
        for k, z in enumerate(logits):
            # the peers' predictions are targets: fixed while peer k is updated
            others = [z_j.detach() for j, z_j in enumerate(logits) if j != k]
            losses[f"ce{k}"] = F.cross_entropy(z, y)
            if cfg.target == "peer":
                mimicry = mimicry_loss(z, others, cfg.ensemble_teacher, cfg.temperature)
            else:
                mean_p = torch.stack([F.softmax(o, dim=-1) for o in others]).mean(0)  # (B, M)
                target = entropy_matched_target(y, mean_p.clamp_min(1e-12).log())  # (B, M)
                mimicry = F.kl_div(F.log_softmax(z, -1), target, reduction="batchmean")
            losses[f"kl{k}"] = cfg.kl_weight * mimicry
        return logits[0], losses


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run dml_zhang2018`
# ---------------------------------------------------------------------------------------------------------------------

SETTINGS = {
    "small": dict(
        dataset="mnist1d", n_train=2000, peer=("cnn1d", 0.5), teacher=("cnn1d", 1.0), epochs=6, lr=0.1, batch_size=128
    ),
    "full": dict(
        dataset="cifar100",
        n_train=None,
        peer=("resnet32", 1.0),
        teacher=("resnet32x4", 1.0),
        epochs=200,
        lr=0.1,
        batch_size=64,
    ),
}
#: `kb run dml_zhang2018 --full` exists: the paper-scale setting, read by `kb` without importing this module.
FULL = "CIFAR-100, two resnet32 peers (and a resnet32x4 teacher for the KD control), 200 epochs, crop+flip; GPU"
Q_PENALTY = "Is the KL term just a penalty that stops the peer networks from drifting too far apart?"
Q_TEACHER = "Does DML mean a large pretrained model is unnecessary, or only that some reasonably good peer is needed?"


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Two peers alone, with DML, with the entropy-matched control, and a peer distilled from a larger teacher."""
    from implementations._data import augment_crop_flip, load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row, versus
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot
    from implementations.distillation.kd_hinton2015 import KD

    s = SETTINGS["full" if ctx.profile == "full" else "small"]
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train or s["n_train"])
    epochs = ctx.epochs(s["epochs"])
    full = ctx.profile == "full"
    train = dict(
        epochs=epochs,
        lr=s["lr"],
        batch_size=s["batch_size"],
        device=ctx.device,
        progress=ctx.progress,
        augment=augment_crop_flip if full else None,
    )

    def new(spec: tuple[str, float]) -> nn.Module:
        return build_model(spec[0], data.num_classes, data.input_shape, width=spec[1])

    acc: dict[str, list[float]] = {}
    per_peer: dict[str, list[list[float]]] = {}

    def record(name: str, models: Sequence[nn.Module]) -> None:
        scores = [evaluate(m, data) for m in models]
        acc.setdefault(name, []).append(sum(scores) / len(scores))
        per_peer.setdefault(name, []).append(scores)

    for seed in ctx.seeds:
        seed_everything(seed)
        init = [new(s["peer"]), new(s["peer"])]  # both peers start from these weights in every variant
        alone = copy.deepcopy(init)
        for i, peer in enumerate(alone):
            checkpoint = ctx.checkpoint(f"seed{seed}_peer{i}")
            fit(Supervised(peer), peer.parameters(), data, seed=seed, checkpoint=checkpoint, **train)
        record("independent", alone)
        record("ensemble_independent", [Ensemble(alone)])
        for name, cfg in (("dml", Config()), ("dml_smoothed", Config(target="smoothed"))):
            task = DML(copy.deepcopy(init), cfg)
            fit(task, task.parameters(), data, seed=seed, checkpoint=ctx.checkpoint(f"seed{seed}_{name}"), **train)
            record(name, list(task.peers))
            if name == "dml":
                record("dml_ensemble", [Ensemble(task.peers)])
        teacher = new(s["teacher"])
        checkpoint = ctx.checkpoint(f"seed{seed}_teacher")
        fit(Supervised(teacher), teacher.parameters(), data, seed=seed, checkpoint=checkpoint, **train)
        record("teacher", [teacher])
        student = copy.deepcopy(init[0])
        checkpoint = ctx.checkpoint(f"seed{seed}_kd")
        fit(KD(student, teacher), student.parameters(), data, seed=seed, checkpoint=checkpoint, **train)
        record("kd_teacher", [student])

    peer_cols = model_row(new(s["peer"]), data.input_shape)
    pair_cols = model_row(Ensemble([new(s["peer"]), new(s["peer"])]), data.input_shape)
    p_name, t_name = f"{s['peer'][0]} w={s['peer'][1]:g}", f"{s['teacher'][0]} w={s['teacher'][1]:g}"
    rows = [
        dict(
            name="teacher",
            label=f"Teacher alone ({t_name})",
            role="teacher",
            **model_row(new(s["teacher"]), data.input_shape),
        ),
        dict(name="independent", label=f"Peer alone ({p_name})", role="baseline", **peer_cols),
        dict(name="kd_teacher", label="Peer + KD from teacher", role="baseline", **peer_cols),
        dict(name="dml", label="Peer with DML (K=2)", role="method", **peer_cols),
        dict(name="dml_smoothed", label="Entropy-matched smoothing", role="ablation", **peer_cols),
        dict(name="ensemble_independent", label="Ensemble of 2 alone", role="ablation", **pair_cols),
        dict(name="dml_ensemble", label="Ensemble of 2 DML peers", role="ablation", **pair_cols),
    ]
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
        peers = per_peer[row["name"]]
        if len(peers[0]) > 1:  # accuracy of each peer, mean over seeds
            row["extra"] = {f"peer{k + 1}_acc": sum(p[k] for p in peers) / len(peers) for k in range(len(peers[0]))}
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    figure = save_accuracy_plot(rows, ctx, "dml_zhang2018", title=f"DML on {data.name} ({len(ctx.seeds)} seeds)")

    reproduced = all(
        beats([p[k] for p in per_peer["dml"]], [p[k] for p in per_peer["independent"]]) for k in range(2)
    )  # each peer beats itself trained alone, paired by seed

    def cmp(a: str, b: str) -> str:
        """`a` against `b` by the paired-seed `beats` rule, with the mean difference."""
        return versus(acc[a], acc[b], digits=2)

    if beats(acc["dml"], acc["dml_smoothed"]):
        penalty = (
            f"No: DML {cmp('dml', 'dml_smoothed')} a label-smoothing target of the same entropy with no peer "
            "knowledge, so the peer's posterior carries more than a penalty."
        )
    elif beats(acc["dml_smoothed"], acc["dml"]):
        penalty = (
            f"At this scale the peer's posterior is worth no more than a penalty: entropy-matched smoothing "
            f"{cmp('dml_smoothed', 'dml')} DML, and DML {cmp('dml', 'independent')} independent training."
        )
    else:
        penalty = (
            f"Inconclusive at this scale: DML {cmp('dml', 'dml_smoothed')} entropy-matched smoothing, so the "
            f"peer's posterior is not shown to carry more than softening; DML {cmp('dml', 'independent')} "
            "independent training."
        )
    if beats(acc["dml"], acc["kd_teacher"]):
        teacher_answer = f"At this scale a same-size peer was enough: DML {cmp('dml', 'kd_teacher')} KD from a larger "
        teacher_answer += "pretrained teacher."
    elif beats(acc["kd_teacher"], acc["dml"]):
        teacher_answer = f"At this scale the larger pretrained teacher did better: KD {cmp('kd_teacher', 'dml')} DML."
    else:
        teacher_answer = (
            f"Inconclusive at this scale: DML {cmp('dml', 'kd_teacher')} KD from a larger pretrained teacher, and "
            f"against independent training DML {cmp('dml', 'independent')}, KD {cmp('kd_teacher', 'independent')}."
        )
    return {
        "id": "dml_zhang2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"{epochs * -(-data.n_train // s['batch_size'])} SGD steps per network; "
            f"K=2 peers {p_name} from the same initialisation in every variant; teacher {t_name}; SGD "
            f"momentum 0.9, cosine lr {s['lr']}, batch {s['batch_size']}, wd 5e-4, same epochs and batch order for "
            "all; peers updated simultaneously with detached targets; KD baseline T=4, alpha=0.9; accuracy of a "
            "cohort row = mean of its two peers.",
        },
        "rows": rows,
        "claim": {
            "text": "Every network trained in a DML cohort is more accurate than the same network trained alone.",
            "reproduced": reproduced,
            "evidence": f"peer 1: DML {rows[3]['extra']['peer1_acc']:.2f}% vs alone "
            f"{rows[1]['extra']['peer1_acc']:.2f}%; peer 2: DML {rows[3]['extra']['peer2_acc']:.2f}% vs alone "
            f"{rows[1]['extra']['peer2_acc']:.2f}% (mean over {len(ctx.seeds)} seed(s), {data.name}).",
        },
        "answers": [
            {
                "question": Q_PENALTY,
                "answer": penalty,
                "evidence": f"alone {mean['independent']:.2f}%, DML {mean['dml']:.2f}%, entropy-matched smoothing "
                f"{mean['dml_smoothed']:.2f}%.",
            },
            {
                "question": Q_TEACHER,
                "answer": teacher_answer,
                "evidence": f"teacher {mean['teacher']:.2f}%; peer + KD from teacher {mean['kd_teacher']:.2f}%; "
                f"DML peer "
                f"{mean['dml']:.2f}%; alone {mean['independent']:.2f}%; ensemble of two independent peers "
                f"{mean['ensemble_independent']:.2f}% (two networks at inference).",
            },
        ],
        "figures": [figure],
    }
