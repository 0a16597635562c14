r"""Distilling Word Embeddings: An Encoding Approach (Mou, Jia, Xu, Li, Zhang & Jin, 2016).

Paper: [arXiv:1506.04488](https://arxiv.org/abs/1506.04488) · notes: `papers/wordembed_mou2016.md`

Large ("cumbersome") pretrained word embeddings $e_w \in \mathbb{R}^{D}$ are mapped by a learned encoding layer to
small ones,

$$
\tilde{e}_w = f\big(W_{\mathrm{enc}}\, e_w + b_{\mathrm{enc}}\big), \qquad W_{\mathrm{enc}} \in \mathbb{R}^{d \times D},
\ d \ll D,
$$

trained through the task network on the task's labels and, optionally, the soft targets $q^{(T)}$ of a teacher that
uses the large embeddings,

$$
\mathcal{L} = (1 - \alpha)\,\mathrm{CE}\big(y, p^{(1)}\big)
    + \alpha\, T^2\, \mathrm{KL}\big(q^{(T)} \,\|\, p^{(T)}\big).
$$

After training, $\tilde{e}_w$ is precomputed for every word: the deployed model keeps a $V \times d$ table and the
small task network, and both the $V \times D$ table and the encoder are discarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation._base import Distiller

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["BagOfEmbeddings", "Config", "EmbeddingDistiller", "EncodedEmbedding", "embedding_distill_loss", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Sizes and loss weights (the paper distils to small task-specific embeddings)."""

    small_dim: int = 8  # $d$
    temperature: float = 2.0  # $T$ of the teacher's soft targets
    alpha: float = 0.5  # $\alpha$: weight of the soft-target term; 0 = encoding trained on labels only


def embedding_distill_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float, alpha: float
) -> dict[str, Tensor]:
    r"""$(1-\alpha)\,\mathrm{CE}(y, p^{(1)})$ and $\alpha T^2\,\mathrm{KL}(q^{(T)} \| p^{(T)})$, batch means.

    Args:
        student_logits: $z_s$, shape `(B, K)`.
        teacher_logits: $z_t$, shape `(B, K)`.
        labels: $y$, shape `(B,)`.
        temperature: $T$.
        alpha: $\alpha \in [0, 1]$.
    """
    log_p = F.log_softmax(student_logits / temperature, dim=-1)  # (B, K)
    log_q = F.log_softmax(teacher_logits / temperature, dim=-1)  # (B, K)
    return {
        "ce": (1 - alpha) * F.cross_entropy(student_logits, labels),
        "kd": alpha * temperature**2 * F.kl_div(log_p, log_q, reduction="batchmean", log_target=True),
    }


class EncodedEmbedding(nn.Module):
    r"""$\tilde{e}_w = \tanh(W_{\mathrm{enc}} e_w + b_{\mathrm{enc}})$ on a frozen table $E$ of shape $V \times D$."""

    def __init__(self, large: Tensor, small_dim: int) -> None:
        super().__init__()
        self.register_buffer("large", large)  # (V, D), frozen, never deployed
        self.encoder = nn.Linear(large.shape[1], small_dim)  # $W_{\mathrm{enc}}, b_{\mathrm{enc}}$

    def forward(self, tokens: Tensor) -> Tensor:
        """Small embeddings `(B, L, d)` of token ids `(B, L)`."""
        return torch.tanh(self.encoder(self.large[tokens]))

    @torch.no_grad()
    def precompute(self) -> nn.Embedding:
        r"""The deployed $V \times d$ table of all $\tilde{e}_w$."""
        return nn.Embedding.from_pretrained(torch.tanh(self.encoder(self.large)), freeze=True)


class BagOfEmbeddings(nn.Module):
    """Task network: mean of the word embeddings, one ReLU layer, logits. `embedding` maps `(B, L)` to `(B, L, d)`."""

    def __init__(self, embedding: nn.Module, dim: int, num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.embedding = embedding
        self.classifier = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits `(B, K)` from token ids `(B, L)`."""
        return self.classifier(self.embedding(tokens).mean(dim=1))


class EmbeddingDistiller(Distiller):
    """Trains a student (e.g. a `BagOfEmbeddings` over an `EncodedEmbedding`) on labels + the teacher's soft targets.

    The distiller treats its inputs generically: any student and teacher mapping `x` to logits `(B, K)`.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and the weighted `ce` and `kd` terms."""
        logits_s = self.student(x)  # (B, K)
        with torch.no_grad():
            logits_t = self.teacher(x)  # (B, K)
        return logits_s, embedding_distill_loss(logits_s, logits_t, y, self.cfg.temperature, self.cfg.alpha)


def synthetic_corpus(s: dict, n_train: int, seed: int = 0) -> dict[str, Tensor]:
    r"""A toy language with "pretrained" large embeddings.

    Word $w$ has a polarity $s_w \in \{-1, 0, +1\}$ (the first `n_polar` words are polar) and 16 nuisance
    attributes $a_w$; its large embedding is $e_w = r_w s_w u + A a_w + \sigma \varepsilon_w$ with fixed random $u$,
    $A$, a per-word reliability $r_w \sim U(0, 2)$, $\lVert u \rVert \approx$ `signal` and $\sigma \approx$ `noise`.
    A sentence has 1 or 3 polar words among fillers (Zipfian frequencies within each group); its label is the sign of
    the sum of the polarities.
    """
    gen = torch.Generator().manual_seed(seed)
    v, polar, dim = s["vocab"], s["n_polar"], s["large_dim"]
    polarity = torch.zeros(v)
    polarity[:polar] = torch.where(torch.rand(polar, generator=gen) < 0.5, -1.0, 1.0)
    attributes = torch.randn(v, s["nuisance"], generator=gen)
    direction = s["signal"] * torch.randn(dim, generator=gen) / dim**0.5
    mixing = torch.randn(s["nuisance"], dim, generator=gen) / dim**0.5
    noise = s["noise"] * torch.randn(v, dim, generator=gen) / dim**0.5
    reliability = 2 * torch.rand(v, 1, generator=gen)  # $r_w$: how well the "pretraining" captured the polarity
    large = reliability * polarity[:, None] * direction + attributes @ mixing + noise

    def zipf(n: int) -> Tensor:
        return 1.0 / torch.arange(1, n + 1).float()

    def sentences(n: int) -> tuple[Tensor, Tensor]:
        tokens = polar + torch.multinomial(zipf(v - polar), n * s["length"], replacement=True, generator=gen)
        tokens = tokens.view(n, s["length"])
        k = 1 + 2 * torch.randint(0, 2, (n,), generator=gen)  # 1 or 3 polar words: no ties
        words = torch.multinomial(zipf(polar), n * 3, replacement=True, generator=gen).view(n, 3)
        slots = torch.argsort(torch.rand(n, s["length"], generator=gen), dim=1)[:, :3]  # 3 distinct positions
        use = torch.arange(3)[None, :] < k[:, None]  # (n, 3)
        tokens.scatter_(1, slots, torch.where(use, words, tokens.gather(1, slots)))
        score = (polarity[words] * use).sum(-1)
        return tokens, (score > 0).long()

    x_train, y_train = sentences(n_train)
    x_test, y_test = sentences(s["n_test"])
    return dict(large=large, polarity=polarity, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Large-embedding teacher; small students: direct, PCA-initialised, encoded (labels), encoded + soft targets.

    The run is in `experiment.py`.
    """
    from implementations.distillation.wordembed_mou2016.experiment import reproduce as run

    return run(ctx)
