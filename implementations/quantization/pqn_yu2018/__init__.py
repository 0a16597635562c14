r"""Product Quantization Network for Fast Image Retrieval (Yu, Yuan, Fang & Jin, 2018).

Paper: [ECCV 2018](https://doi.org/10.1007/978-3-030-01246-5_12) · notes: `papers/pqn_yu2018.md`

A feature $x \in \mathbb{R}^D$ is split into $M$ sub-vectors $x_m \in \mathbb{R}^{D/M}$; subspace $m$ has $K$
codewords $c_{m1}, \dots, c_{mK}$. Product quantization replaces $x_m$ by its nearest codeword; PQN replaces the
hard assignment by a softmax over negative squared distances with scale $\alpha$, which is differentiable in both
the feature and the codewords and tends to hard PQ as $\alpha \to \infty$:

$$
s_m(x) = \sum_{k=1}^{K} \frac{\exp(-\alpha \lVert x_m - c_{mk} \rVert_2^2)}
{\sum_{k'} \exp(-\alpha \lVert x_m - c_{mk'} \rVert_2^2)}\, c_{mk}, \qquad s(x) = [s_1(x), \dots, s_M(x)].
$$

Search is asymmetric: the database stores only the codeword indices $b_m(y)$, the query stays real, and the
similarity is read from $M$ lookup tables, $\langle x, \hat y \rangle = \sum_m \langle x_m, c_{m b_m(y)} \rangle$.
Training mirrors it with the asymmetric triplet loss (raw anchor, soft-quantized positive and negative):

$$
\mathcal{L} = \max\big(0,\; m + \langle x(I), s(x(I^-)) \rangle - \langle x(I), s(x(I^+)) \rangle\big).
$$
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.quantization._base import kmeans

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = [
    "PQN",
    "Config",
    "ProductQuantizer",
    "asymmetric_similarity",
    "asymmetric_triplet_loss",
    "reproduce",
    "retrieval_metrics",
    "soft_product_quantize",
]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of the small-scale reproduction."""

    embed_dim: int = 32  # $D$, feature dimension (L2-normalised)
    subspaces: int = 4  # $M$
    codewords: int = 16  # $K$ per subspace: code of $M \log_2 K = 16$ bits
    alpha: float = 10.0  # $\alpha$, soft-assignment scale (inverse temperature)
    margin: float = 0.2  # $m$ of the triplet loss


def soft_product_quantize(x: Tensor, codebooks: Tensor, alpha: float) -> Tensor:
    r"""$s(x)$: per subspace, the softmax($-\alpha \lVert x_m - c_{mk} \rVert^2$)-weighted mean of the codewords.

    Args:
        x: Features, shape `(B, D)`.
        codebooks: Codewords $c_{mk}$, shape `(M, K, D/M)`.
        alpha: $\alpha > 0$.

    Returns:
        Soft-quantized features, shape `(B, D)`.
    """
    m, k, d = codebooks.shape
    sub = x.view(-1, m, 1, d)  # (B, M, 1, d)
    dist = ((sub - codebooks[None]) ** 2).sum(-1)  # (B, M, K)
    weights = torch.softmax(-alpha * dist, dim=-1)  # (B, M, K)
    return torch.einsum("bmk,mkd->bmd", weights, codebooks).reshape(x.shape)


def asymmetric_similarity(queries: Tensor, codes: Tensor, codebooks: Tensor) -> Tensor:
    r"""$\sum_m \langle q_m, c_{m b_m} \rangle$ through lookup tables $T_{q m k} = \langle q_m, c_{mk} \rangle$.

    Args:
        queries: Raw query features, shape `(Q, D)`.
        codes: Database codes $b_m$, shape `(N, M)`, int64.
        codebooks: Shape `(M, K, D/M)`.

    Returns:
        Similarities, shape `(Q, N)`.
    """
    m, _, d = codebooks.shape
    tables = torch.einsum("qmd,mkd->qmk", queries.view(-1, m, d), codebooks)  # (Q, M, K)
    # one gather per subspace: column b_m(y) of table m, for every database item
    return sum(tables[:, j].index_select(1, codes[:, j]) for j in range(m))  # (Q, N)


def asymmetric_triplet_loss(anchor: Tensor, positive_q: Tensor, negative_q: Tensor, margin: float) -> Tensor:
    r"""$\max(0, m + \langle x, s(x^-) \rangle - \langle x, s(x^+) \rangle)$, averaged over the batch.

    Args:
        anchor: Raw anchor features $x(I)$, shape `(B, D)`.
        positive_q: Quantized positive features $s(x(I^+))$, shape `(B, D)`.
        negative_q: Quantized negative features $s(x(I^-))$, shape `(B, D)`.
        margin: $m$.
    """
    return F.relu(margin + (anchor * negative_q).sum(-1) - (anchor * positive_q).sum(-1)).mean()


class ProductQuantizer(nn.Module):
    """The soft product-quantization layer: `forward` is $s(x)$, `encode`/`decode` are hard PQ."""

    def __init__(self, dim: int, subspaces: int, codewords: int, alpha: float) -> None:
        super().__init__()
        if dim % subspaces:
            raise ValueError(f"dim {dim} is not divisible by {subspaces} subspaces")
        self.alpha = alpha  # $\alpha$
        self.codebooks = nn.Parameter(torch.randn(subspaces, codewords, dim // subspaces) / dim**0.5)  # (M, K, d)

    def forward(self, x: Tensor) -> Tensor:
        """Soft-quantized features `(B, D)`."""
        return soft_product_quantize(x, self.codebooks, self.alpha)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        r"""Hard codes `(B, M)`: the nearest codeword per subspace (the $\alpha \to \infty$ limit)."""
        m, _, d = self.codebooks.shape
        return ((x.view(-1, m, 1, d) - self.codebooks[None]) ** 2).sum(-1).argmin(-1)

    def decode(self, codes: Tensor) -> Tensor:
        """Reconstructed features `(B, D)` from codes `(B, M)`."""
        m = self.codebooks.shape[0]
        return torch.stack([self.codebooks[j, codes[:, j]] for j in range(m)], 1).flatten(1)

    @torch.no_grad()
    def init_kmeans(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        """Set every subspace's codewords to k-means centroids of `x` `(N, D)` (plain PQ training)."""
        m, k, d = self.codebooks.shape
        for j in range(m):
            self.codebooks[j] = kmeans(x.view(-1, m, d)[:, j], k, generator=generator)

    @classmethod
    def smoke_task(cls) -> tuple[PQN, Tensor, Tensor]:
        """A tiny CNN1d embedding with a soft PQ layer, trained by the asymmetric triplet loss."""
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(8, 1, 40, generator=gen), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        return PQN(Config(embed_dim=16), width=0.25), x, y


class PQN(nn.Module):
    """CNN1d embedding network (L2-normalised output) trained with in-batch triplets, with or without the PQ layer."""

    def __init__(
        self, cfg: Config | None = None, quantize: bool = True, width: float = 0.5, in_shape: tuple = (1, 40)
    ) -> None:
        super().__init__()
        from implementations._models import build_model

        self.cfg = cfg or Config()
        self.backbone = build_model("cnn1d", self.cfg.embed_dim, in_shape, width=width)
        self.quantizer = (
            ProductQuantizer(self.cfg.embed_dim, self.cfg.subspaces, self.cfg.codewords, self.cfg.alpha)
            if quantize
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        """Unit-norm features `(B, D)`."""
        return F.normalize(self.backbone(x), dim=-1)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Features `(B, D)` and the triplet loss over random in-batch (positive, negative) pairs per anchor.

        With the PQ layer the loss is asymmetric (anchor raw, positive and negative soft-quantized); without it the
        same triplets use raw features on both sides (the baseline before post-hoc PQ).
        """
        features = self(x)  # (B, D)
        same = y[:, None] == y[None, :]  # (B, B)
        eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
        positive_ok, negative_ok = same & ~eye, ~same
        valid = positive_ok.any(1) & negative_ok.any(1)  # anchors with a positive and a negative in the batch
        if not valid.any():
            return features, {"triplet": features.sum() * 0}
        positive = torch.multinomial(positive_ok[valid].float(), 1).squeeze(1)  # (B',)
        negative = torch.multinomial(negative_ok[valid].float(), 1).squeeze(1)  # (B',)
        target = self.quantizer(features) if self.quantizer is not None else features  # (B, D)
        loss = asymmetric_triplet_loss(features[valid], target[positive], target[negative], self.cfg.margin)
        return features, {"triplet": loss}


class SoftPQLinear(nn.Module):
    r"""A linear layer whose weight columns are product-quantized: soft $s(w)$ while training, hard codes in eval.

    The original weight is frozen; only the codewords learn (the open question: PQN's trick on weight codebooks).
    """

    def __init__(self, layer: nn.Linear, subspaces: int, codewords: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.register_buffer("weight_fp", layer.weight.detach().t().contiguous())  # (D_in, D_out): columns
        self.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        self.quantizer = ProductQuantizer(layer.out_features, subspaces, codewords, alpha)
        self.quantizer.init_kmeans(self.weight_fp, generator)  # start from plain PQ of the columns

    def weight(self) -> Tensor:
        """The quantized weight `(D_out, D_in)`."""
        if self.training:
            return self.quantizer(self.weight_fp).t()
        return self.quantizer.decode(self.quantizer.encode(self.weight_fp)).t()

    def forward(self, x: Tensor) -> Tensor:
        """`x @ W_hat^T + b`, shape `(B, D_out)`."""
        return F.linear(x, self.weight(), self.bias)


def retrieval_metrics(similarity: Tensor, query_labels: Tensor, db_labels: Tensor, k: int = 10) -> dict[str, float]:
    r"""mAP, precision@1 and precision@k (percent) of ranking the database by decreasing similarity.

    $\mathrm{AP} = \frac{1}{R}\sum_{r} P@r \cdot \mathrm{rel}_r$ with $R$ relevant items (same label) per query.

    Args:
        similarity: Shape `(Q, N)`.
        query_labels: Shape `(Q,)`.
        db_labels: Shape `(N,)`.
        k: Cut-off of precision@k.
    """
    order = similarity.argsort(dim=1, descending=True, stable=True)  # (Q, N)
    relevant = (db_labels[order] == query_labels[:, None]).float()  # (Q, N)
    ranks = torch.arange(1, relevant.shape[1] + 1, dtype=torch.float32)
    precision = relevant.cumsum(1) / ranks  # (Q, N): P@r
    ap = (precision * relevant).sum(1) / relevant.sum(1).clamp_min(1)
    return {
        "map": 100 * float(ap.mean()),
        "p1": 100 * float(relevant[:, 0].mean()),
        f"p{k}": 100 * float(relevant[:, :k].mean()),
    }


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Triplet embedding + post-hoc k-means PQ vs PQN trained end to end, MNIST-1D retrieval at 16-bit codes. The run is
    in `experiment.py`."""
    from implementations.quantization.pqn_yu2018.experiment import reproduce as run

    return run(ctx)
