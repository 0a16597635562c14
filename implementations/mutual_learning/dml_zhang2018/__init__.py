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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.mutual_learning._base import MutualLearner, soft_kl

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


#: `kb run dml_zhang2018 --full` exists: the paper-scale setting, read by `kb` without importing this module.
FULL = "CIFAR-100, two resnet32 peers (and a resnet32x4 teacher for the KD control), 200 epochs, crop+flip; GPU"


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Two peers alone, with DML, with the entropy-matched control, and a peer distilled from a larger teacher.

    The run is in `experiment.py`.
    """
    from implementations.mutual_learning.dml_zhang2018.experiment import reproduce as run

    return run(ctx)
