r"""LSQ++: Lower running time and higher recall in multi-codebook quantization (Martinez et al., 2018).

Paper: [ECCV 2018](http://openaccess.thecvf.com/content_ECCV_2018/papers/Julieta_Martinez_LSQ_lower_runtime_ECCV_2018_paper.pdf)
· notes: `papers/lsqpp_martinez2018.md`

Multi-codebook (additive) quantization writes each $x_i \in \mathbb{R}^D$ as a sum of one codeword from each of
$M$ full-dimensional codebooks $C_m \in \mathbb{R}^{K \times D}$, with codes $b_{mi} \in \{1..K\}$:

$$
\min_{C, b} \sum_i \Big\lVert x_i - \sum_{m=1}^{M} C_m[b_{mi}] \Big\rVert_2^2 .
$$

Local search quantization (LSQ) alternates (i) the least-squares codebook update
$C = (B^\top B + \lambda I)^{-1} B^\top X$ for the one-hot code matrix $B \in \{0,1\}^{n \times MK}$, and
(ii) encoding by iterated local search: perturb a few codes, then iterated conditional modes (ICM) minimise, one
codebook at a time, the unary plus pairwise energy

$$
E(b) = \sum_m \big(\lVert C_m[b_m] \rVert^2 - 2 \langle x, C_m[b_m] \rangle\big)
     + \sum_{m \ne m'} \langle C_m[b_m], C_{m'}[b_{m'}] \rangle ,
$$

keeping the new codes of a vector only if its energy went down. LSQ++ adds stochastic relaxation (SR-D): after each
codebook update Gaussian noise is added to the codewords, with per-dimension standard deviation
$\sigma_j = \mathrm{std}_j(C) / M \cdot (1 - t/T)^{p}$ that decays to 0 (an annealing schedule), and it builds
$B^\top B$ from code co-occurrence counts instead of a dense product, which makes the codebook update cheap.
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
    "Config",
    "LSQPlusPlus",
    "adc_distances",
    "decode",
    "icm_encode",
    "pq_train",
    "quantization_error",
    "reproduce",
    "sr_d_perturb",
    "update_codebooks",
]


@dataclass(frozen=True)
class Config:
    """Hyperparameters (Rayuela.jl defaults in the comments where they differ)."""

    codebooks: int = 8  # $M$
    codewords: int = 16  # $K$: code of $M \log_2 K = 32$ bits
    iterations: int = 10  # $T$ codebook-update / encoding rounds (Rayuela: 25)
    ils_iterations: int = 4  # ILS iterations per encoding in training (Rayuela: 8)
    icm_iterations: int = 3  # ICM sweeps per ILS iteration (Rayuela: 4)
    perturbations: int = 4  # codes perturbed per ILS iteration (npert)
    base_ils_iterations: int = 8  # ILS iterations for the final encoding of the database
    stochastic_relaxation: bool = True  # SR-D noise on the codebooks (False: plain LSQ)
    sr_power: float = 0.5  # $p$ of the $(1 - t/T)^p$ schedule
    fast_update: bool = True  # $B^\top B$ from co-occurrence counts (False: dense one-hot product, as LSQ)
    ridge: float = 1e-4  # $\lambda$


def decode(codes: Tensor, codebooks: Tensor) -> Tensor:
    r"""$\hat x_i = \sum_m C_m[b_{mi}]$: codes `(N, M)` and codebooks `(M, K, D)` -> `(N, D)`."""
    return sum(codebooks[m, codes[:, m]] for m in range(codebooks.shape[0]))


def quantization_error(x: Tensor, codes: Tensor, codebooks: Tensor) -> Tensor:
    r"""Per-vector squared error $\lVert x_i - \hat x_i \rVert^2$, shape `(N,)`."""
    return ((x - decode(codes, codebooks)) ** 2).sum(-1)


def update_codebooks(x: Tensor, codes: Tensor, codewords: int, ridge: float = 1e-4, fast: bool = True) -> Tensor:
    r"""Least-squares codebooks $C = (B^\top B + \lambda I)^{-1} B^\top X$ for fixed codes.

    Args:
        x: Data `(N, D)`.
        codes: Codes `(N, M)`, int64 in `[0, K)`.
        codewords: $K$.
        ridge: $\lambda$ (keeps unused codewords at 0).
        fast: Build $B^\top B$ from pairwise code counts (LSQ++) instead of the dense one-hot product.

    Returns:
        Codebooks `(M, K, D)`.
    """
    n, m = codes.shape
    k = codewords
    flat = codes + torch.arange(m) * k  # (N, M): column of each code in B
    if fast:
        # (B^T B)[(a, i), (b, j)] = #{n : b_a = i, b_b = j}: one bincount over all pairs of codebooks
        pairs = (flat[:, :, None] * (m * k) + flat[:, None, :]).reshape(-1)
        gram = torch.bincount(pairs, minlength=(m * k) ** 2).view(m * k, m * k).to(x.dtype)
        bx = torch.zeros(m * k, x.shape[1], dtype=x.dtype).index_add_(0, flat.reshape(-1), x.repeat_interleave(m, 0))
    else:
        one_hot = F.one_hot(flat, m * k).sum(1).to(x.dtype)  # (N, MK)
        gram, bx = one_hot.t() @ one_hot, one_hot.t() @ x
    solution = torch.linalg.solve(gram + ridge * torch.eye(m * k, dtype=x.dtype), bx)  # (MK, D)
    return solution.view(m, k, -1)


def sr_d_perturb(codebooks: Tensor, step: int, steps: int, power: float, generator: torch.Generator) -> Tensor:
    r"""SR-D: add $\mathcal{N}(0, \sigma_j^2)$ to dimension $j$ of every codeword, $\sigma_j = \mathrm{std}_j(C) / M
    \cdot (1 - t/T)^p$."""
    m, k, d = codebooks.shape
    std = codebooks.reshape(m * k, d).std(0) / m * (1 - step / steps) ** power  # (D,)
    return codebooks + torch.randn(codebooks.shape, generator=generator) * std


def icm_encode(
    x: Tensor, codes: Tensor, codebooks: Tensor, ils: int, icm: int, npert: int, generator: torch.Generator
) -> Tensor:
    """Iterated local search: perturb `npert` codes, `icm` ICM sweeps (random order), keep a vector's new codes only
    when its energy decreased; `ils` rounds. Returns codes `(N, M)`."""
    m, k, _ = codebooks.shape
    n = len(x)
    unary = (codebooks**2).sum(-1)[None] - 2 * torch.einsum("nd,mkd->nmk", x, codebooks)  # (N, M, K)
    # pairwise[j, o, l, k] = 2 <C_j[k], C_o[l]>, with the o = j blocks zeroed so a sum over o skips j
    pairwise = 2 * torch.einsum("jkd,old->jolk", codebooks, codebooks) * (1 - torch.eye(m))[:, :, None, None]
    rows, books = torch.arange(n), torch.arange(m)
    best, best_err = codes.clone(), quantization_error(x, codes, codebooks)
    for _ in range(ils):
        trial = best.clone()
        chosen = torch.rand(n, m, generator=generator).argsort(1)[:, :npert]  # (N, npert) distinct codebooks
        trial[rows[:, None], chosen] = torch.randint(0, k, chosen.shape, generator=generator)
        for _ in range(icm):
            for j in torch.randperm(m, generator=generator).tolist():
                # cost of each codeword of codebook j given the others: unary + sum_o 2 <C_j[k], C_o[b_o]>
                cost = unary[:, j] + pairwise[j][books[None, :], trial].sum(1)  # (N, K)
                trial[:, j] = cost.argmin(1)
        err = quantization_error(x, trial, codebooks)
        better = err < best_err
        best[better], best_err[better] = trial[better], err[better]
    return best


def adc_distances(queries: Tensor, codes: Tensor, codebooks: Tensor, norms: Tensor | None = None) -> Tensor:
    r"""$\lVert q - \hat x \rVert^2 - \lVert q \rVert^2 = \lVert \hat x \rVert^2 - 2 \sum_m \langle q, C_m[b_m] \rangle$
    from lookup tables; $\lVert \hat x \rVert^2$ is computed from the codes (no stored norm).

    Args:
        queries: Raw queries `(Q, D)`.
        codes: Database codes `(N, M)`.
        codebooks: `(M, K, D)`.
        norms: $\lVert \hat x \rVert^2$ `(N,)` if already decoded from the codes (they do not depend on the
            query, so a search over many query batches decodes them once); None decodes them here.

    Returns:
        Shape `(Q, N)`; ranks like the true squared distance to the reconstruction.
    """
    m = codebooks.shape[0]
    tables = torch.einsum("qd,mkd->qmk", queries, codebooks)  # (Q, M, K)
    inner = sum(tables[:, j].index_select(1, codes[:, j]) for j in range(m))  # (Q, N): one gather per codebook
    if norms is None:
        norms = (decode(codes, codebooks) ** 2).sum(-1)  # (N,)
    return norms[None] - 2 * inner


def pq_train(x: Tensor, subspaces: int, codewords: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Product quantization (k-means per subspace), written as additive codebooks that are zero outside their
    subspace. Returns `(codes (N, M), codebooks (M, K, D))`."""
    n, d = x.shape
    width = d // subspaces
    codebooks = torch.zeros(subspaces, codewords, d)
    codes = torch.zeros(n, subspaces, dtype=torch.long)
    for j in range(subspaces):
        part = x[:, j * width : (j + 1) * width]
        centroids = kmeans(part, codewords, generator=generator)
        codebooks[j, :, j * width : (j + 1) * width] = centroids
        codes[:, j] = torch.cdist(part, centroids).argmin(1)
    return codes, codebooks


class LSQPlusPlus(nn.Module):
    """Additive quantizer trained by (SR-D) local search from a PQ initialisation; `Config` switches LSQ/LSQ++."""

    def __init__(self, dim: int, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Config()
        self.codebooks = nn.Parameter(torch.zeros(self.cfg.codebooks, self.cfg.codewords, dim))  # (M, K, D)

    @torch.no_grad()
    def fit(self, x: Tensor, generator: torch.Generator) -> list[float]:
        """Train on `x` `(N, D)`; returns the mean squared error after every round (PQ initialisation first)."""
        c = self.cfg
        codes, codebooks = pq_train(x, c.codebooks, c.codewords, generator)
        history = [float(quantization_error(x, codes, codebooks).mean())]
        for step in range(c.iterations):
            codebooks = update_codebooks(x, codes, c.codewords, c.ridge, c.fast_update)
            if c.stochastic_relaxation:
                codebooks = sr_d_perturb(codebooks, step, c.iterations, c.sr_power, generator)
            codes = icm_encode(x, codes, codebooks, c.ils_iterations, c.icm_iterations, c.perturbations, generator)
            history.append(float(quantization_error(x, codes, codebooks).mean()))
        self.codebooks.copy_(update_codebooks(x, codes, c.codewords, c.ridge, c.fast_update))
        self.train_codes = codes
        return history

    @torch.no_grad()
    def encode(self, x: Tensor, generator: torch.Generator, codes: Tensor | None = None) -> Tensor:
        """Codes `(N, M)` of `x` by ILS from `codes` (default: random codes)."""
        c = self.cfg
        start = (
            codes if codes is not None else torch.randint(0, c.codewords, (len(x), c.codebooks), generator=generator)
        )
        return icm_encode(x, start, self.codebooks, c.base_ils_iterations, c.icm_iterations, c.perturbations, generator)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Reconstruction `(B, D)` and the quantization error for the current codes (gradient to the codebooks)."""
        codes = self.encode(x, torch.Generator().manual_seed(0))
        recon = decode(codes, self.codebooks)  # (B, D)
        return recon, {"quantization": ((x - recon) ** 2).sum(-1).mean()}

    @classmethod
    def smoke_task(cls) -> tuple[LSQPlusPlus, Tensor, Tensor]:
        """A 2x4 additive quantizer of 6-d vectors with random codewords."""
        gen = torch.Generator().manual_seed(0)
        task = cls(6, Config(codebooks=2, codewords=4, base_ils_iterations=2))
        task.codebooks.data = torch.randn(2, 4, 6, generator=gen)
        return task, torch.randn(8, 6, generator=gen), torch.zeros(8, dtype=torch.long)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """PQ vs LSQ vs LSQ++ at 32-bit codes on CNN features of MNIST-1D: error, recall@N, time; weights as a side test.

    The run is in `experiment.py`.
    """
    from implementations.quantization.lsqpp_martinez2018.experiment import reproduce as run

    return run(ctx)
