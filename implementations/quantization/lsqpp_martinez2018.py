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

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.quantization._base import beats, interleaved_time_ms, kmeans

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


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run lsqpp_martinez2018`
# ---------------------------------------------------------------------------------------------------------------------

SETTING = dict(dataset="mnist1d", model="cnn1d", width=0.5, epochs=6, lr=0.05, batch_size=128)
RECALL_AT = (1, 10, 100)
WEIGHT_CFG = dict(codebooks=2, codewords=16, group=8)  # weight sub-vectors of 8 values, 8-bit codes: 1 bit/weight
OPEN_QUESTION = (
    "MCQ here compresses descriptor databases for search; could the same encoder (local search over additive "
    "codebooks) compress network weights as in product-quantized CNN layers?"
)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """PQ vs LSQ vs LSQ++ at 32-bit codes on CNN features of MNIST-1D: error, recall@N, time; weights as a side test."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats
    from implementations._models import build_model

    s, cfg = SETTING, Config()
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs = ctx.epochs(s["epochs"])
    quick = ctx.profile == "quick"
    if quick:
        cfg = replace(cfg, iterations=3, ils_iterations=2, base_ils_iterations=2)
    variants = {
        "lsq": replace(cfg, stochastic_relaxation=False, fast_update=False),
        "lsqpp": cfg,
    }
    stats: dict[str, dict[str, list[float]]] = {}
    searched: dict[str, tuple[Tensor, ...]] = {}  # first seed's (database, queries, codes, codebooks), for timing
    kept_model: nn.Module | None = None

    def record(name: str, **values: float) -> None:
        for key, value in values.items():
            stats.setdefault(name, {}).setdefault(key, []).append(float(value))

    for seed in ctx.seeds:
        seed_everything(seed)
        model = build_model(s["model"], data.num_classes, data.input_shape, width=s["width"])
        fit(
            Supervised(model),
            model.parameters(),
            data,
            epochs,
            s["lr"],
            s["batch_size"],
            ctx.device,
            seed=seed,
            progress=ctx.progress,
        )
        model = model.cpu().eval()
        with torch.no_grad():
            base = model(data.x_train, return_features=True)[1][-1].flatten(1)  # (N, D) learning set = database
            queries = model(data.x_test, return_features=True)[1][-1].flatten(1)  # (Q, D)
        truth = torch.cdist(queries, base).argmin(1)  # exact nearest neighbour of each query
        gen = torch.Generator().manual_seed(seed)
        started = time.thread_time()  # CPU time of this (single-threaded) process: robust to other jobs' load
        codes, codebooks = pq_train(base, cfg.codebooks, cfg.codewords, gen)
        record("pq", **_search(base, queries, codes, codebooks, truth, data), train_s=time.thread_time() - started)
        searched.setdefault("pq", (base, queries, codes, codebooks))
        for name, variant in variants.items():
            gen = torch.Generator().manual_seed(seed)
            quantizer = LSQPlusPlus(base.shape[1], variant)
            started = time.thread_time()
            history = quantizer.fit(base, gen)
            train_s = time.thread_time() - started
            codes = quantizer.encode(base, gen, quantizer.train_codes)
            record(
                name,
                **_search(base, queries, codes, quantizer.codebooks.detach(), truth, data),
                train_s=train_s,
                train_error=history[-1] / float((base**2).sum(-1).mean()),
            )
            searched.setdefault(name, (base, queries, codes, quantizer.codebooks.detach()))
        record("fp", acc=evaluate(model, data))
        for name, (weight_acc, weight_bytes) in _weight_experiment(model, data, cfg, seed).items():
            record(name, acc=weight_acc, bytes=weight_bytes)
        kept_model = kept_model or model

    mean = {name: {k: sum(v) / len(v) for k, v in values.items()} for name, values in stats.items()}
    bits = cfg.codebooks * (cfg.codewords - 1).bit_length()
    dim = int(mean["pq"]["dim"])
    code_bytes = bits * data.n_train // 8
    # codebook entries: PQ's are non-zero only in their own D/M-wide subspace (K x D in all), additive ones are dense
    codebook_values = {"pq": cfg.codewords * dim, "lsq": cfg.codebooks * cfg.codewords * dim}
    codebook_values["lsqpp"] = codebook_values["lsq"]
    search_ms = _search_times(searched, ctx.profile == "quick")
    labels = {
        "exact": ("Exhaustive float search (no compression)", "teacher"),
        "pq": (f"PQ, M={cfg.codebooks} x K={cfg.codewords} (k-means per subspace)", "baseline"),
        "lsq": ("LSQ (ICM local search, no SR, dense B^T B)", "baseline"),
        "lsqpp": ("LSQ++ (SR-D annealing, count-based B^T B)", "method"),
    }
    rows = []
    for name, (label, role) in labels.items():
        search = dict(latency_ms=search_ms[name][0], extra={"search_ms_per_query_batched": search_ms[name][1]})
        if name == "exact":  # recall@1 of the exact search is 100% by definition
            size = dict(params=0, bytes=4 * dim * data.n_train, bits=32.0)
            rows.append(dict(name=name, label=label, role=role, accuracy=accuracy_stats([100.0]), **size, **search))
            continue
        values = stats[name]
        extra = {key: mean[name][key] for key in ("error", "recall10", "recall100", "knn_acc", "train_s")}
        extra |= {"code_bytes": float(code_bytes), **search["extra"]}
        rows.append(
            dict(
                name=name,
                label=label,
                role=role,
                accuracy=accuracy_stats(values["recall1"]),
                params=codebook_values[name],  # the quantizer's parameters: its codebooks
                bytes=code_bytes + 4 * codebook_values[name],  # database codes + fp32 codebooks
                bits=float(bits) / dim,
                latency_ms=search["latency_ms"],
                extra=extra,
            )
        )
    n_net = sum(p.numel() for p in kept_model.parameters())
    for name, label, role in (
        ("fp", "Network, fp32 weights (kNN rows use its features)", "teacher"),
        ("weights_pq", "Network, weights PQ 2x16 per 8 values (1 bit/weight)", "ablation"),
        ("weights_lsqpp", "Network, weights LSQ++ 2x16 per 8 values (1 bit/weight)", "ablation"),
    ):
        rows.append(
            dict(
                name=name,
                label=label,
                role=role,
                accuracy=accuracy_stats(stats[name]["acc"]),
                params=n_net,
                bytes=4 * n_net if name == "fp" else int(mean[name]["bytes"]),
                bits=32.0 if name == "fp" else 1.0,
            )
        )
    m = {name: mean[name] for name in ("pq", "lsq", "lsqpp")}
    figure = _plot(m, ctx)

    def lower(a: str, b: str, key: str) -> bool:  # a's values are lower than b's beyond seed noise
        return beats([-v for v in stats[a][key]], [-v for v in stats[b][key]])

    recall_half = beats(stats["lsqpp"]["recall1"], stats["lsq"]["recall1"]) and lower("lsqpp", "lsq", "error")
    speed_half = lower("lsqpp", "lsq", "train_s")
    above_pq = all(beats(stats[n]["recall1"], stats["pq"]["recall1"]) for n in ("lsq", "lsqpp"))
    reproduced = recall_half and speed_half and above_pq
    w_lsq, w_pq = stats["weights_lsqpp"]["acc"], stats["weights_pq"]["acc"]
    verdict = (
        "Yes, in this small test: "
        if beats(w_lsq, w_pq)
        else ("No, PQ was better here: " if beats(w_pq, w_lsq) else "No clear difference in this small test: ")
    )
    return {
        "id": "lsqpp_martinez2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"Vectors: last-stage features (flattened, {dim}-d) of a {s['model']} width {s['width']} trained "
            f"{epochs} epochs with CE per seed; learning set = database = the training series, queries = the test "
            f"series, ground truth = exact Euclidean nearest neighbour in the database. 'accuracy' of the PQ/LSQ/"
            f"LSQ++ rows is recall@1 in percent (true NN ranked first by the quantized distance); extra: relative "
            f"quantization error |x - x_hat|^2 / |x|^2 on the database, recall@10/100, 1-NN label accuracy "
            f"through the quantized search (knn_acc), training time (CPU time of the single training thread, "
            f"train_s). Equal code length {bits} bits: "
            f"M={cfg.codebooks} codebooks x K={cfg.codewords}; the additive quantizers' |x_hat|^2 is computed from "
            f"the codes with pairwise tables instead of a stored norm. LSQ and LSQ++ start from the PQ solution "
            f"and run {cfg.iterations} rounds ({cfg.ils_iterations} ILS x {cfg.icm_iterations} ICM sweeps, "
            f"{cfg.perturbations} codes perturbed), database re-encoded with {cfg.base_ils_iterations} ILS "
            f"iterations; LSQ++ adds SR-D noise (p={cfg.sr_power}) and the count-based B^T B. Search rows: bytes "
            f"= database codes + fp32 codebooks (extra.code_bytes: codes only), params = codebook entries; "
            f"latency_ms = search time of one query against the whole database (first seed; quantized rows: "
            f"lookup tables + M gathers, with |x_hat|^2 decoded from the codes once beforehand; exact row: "
            f"exhaustive float distances), torch.utils.benchmark on one thread, best of interleaved rounds; "
            f"extra.search_ms_per_query_batched: all queries at once, divided by their number. Weight rows: "
            f"network test accuracy after replacing every conv/linear weight but the first conv by its quantized "
            f"version (rows cut into 8-value sub-vectors, 2 codebooks x 16 = 1 bit per weight, no retraining); "
            f"bytes = 1-bit codes + fp32 codebooks of each quantized layer + every other parameter in fp32.",
        },
        "rows": rows,
        "claim": {
            "text": "LSQ++ (SR-D stochastic relaxation and the count-based codebook update) gives lower running time "
            "and higher recall than plain LSQ at equal code length (lower quantization error, higher recall@1), "
            "both local-search quantizers above PQ. Both halves, speed and recall, are checked.",
            "reproduced": bool(reproduced),
            "evidence": "; ".join(
                f"{name.upper()}: error {m[name]['error']:.4f}, recall@1/10/100 {m[name]['recall1']:.1f}/"
                f"{m[name]['recall10']:.1f}/{m[name]['recall100']:.1f}%, train {m[name]['train_s']:.2f} s CPU"
                for name in ("pq", "lsq", "lsqpp")
            )
            + f"; mean over {len(ctx.seeds)} seed(s). Recall half (LSQ++ beats LSQ in recall@1 and in error, "
            f"beyond one paired standard error): {'reproduced' if recall_half else 'not reproduced'}. Speed half "
            f"(LSQ++ trains in less CPU time than LSQ, same rule): {'reproduced' if speed_half else 'not reproduced'}"
            f" ({m['lsqpp']['train_s']:.2f} vs {m['lsq']['train_s']:.2f} s for D={dim}, {data.n_train} vectors). "
            f"Both above PQ in recall@1: {above_pq}. Search per query: {search_ms['lsqpp'][0] * 1e3:.0f} us with "
            f"lookup tables vs {search_ms['exact'][0] * 1e3:.0f} us exhaustive float.",
        },
        "answers": [
            {
                "question": OPEN_QUESTION,
                "answer": verdict
                + f"quantizing the network's weights at 1 bit per weight with LSQ++ additive codebooks gave "
                f"{mean['weights_lsqpp']['acc']:.2f}% test accuracy vs {mean['weights_pq']['acc']:.2f}% with PQ "
                f"at the same code length (fp32 {mean['fp']['acc']:.2f}%), without any retraining; the additive "
                f"codebooks hold twice as many floats as PQ's, which the bytes column counts.",
                "evidence": f"Every conv/linear weight except the first conv cut into 8-value sub-vectors along the "
                f"rows; one quantizer per layer, {WEIGHT_CFG['codebooks']} codebooks x {WEIGHT_CFG['codewords']} "
                f"codewords (PQ: 2 subspaces of 4 values); {len(ctx.seeds)} seed(s).",
            }
        ],
        "figures": [figure],
    }


def _search_times(searched: dict[str, tuple[Tensor, ...]], quick: bool) -> dict[str, tuple[float, float]]:
    """Per method (and `exact` float search), `(ms for one query, ms per query when all go at once)`."""
    base, queries = searched["pq"][0], searched["pq"][1]
    base_norms = (base**2).sum(-1)  # (N,)

    def call(name: str, n: int | None):
        q = queries[:n]
        if name == "exact":  # |q - x|^2 - |q|^2 = |x|^2 - 2 <q, x>, as the quantized rows rank
            return lambda: base_norms[None] - 2 * q @ base.t()
        _, _, codes, codebooks = searched[name]
        norms = (decode(codes, codebooks) ** 2).sum(-1)  # decoded once, not stored in the code
        return lambda: adc_distances(q, codes, codebooks, norms)

    names = ["exact", *searched]
    rounds, run_time = (1, 0.01) if quick else (3, 0.05)
    one = interleaved_time_ms({n: call(n, 1) for n in names}, rounds, run_time)
    batched = interleaved_time_ms({n: call(n, None) for n in names}, rounds, run_time)
    return {n: (one[n], batched[n] / len(queries)) for n in names}


def _search(base: Tensor, queries: Tensor, codes: Tensor, codebooks: Tensor, truth: Tensor, data: Any) -> dict:
    ranking = adc_distances(queries, codes, codebooks).topk(max(RECALL_AT), dim=1, largest=False).indices  # (Q, 100)
    hits = ranking == truth[:, None]
    out = {f"recall{k}": 100 * float(hits[:, :k].any(1).float().mean()) for k in RECALL_AT}
    out["error"] = float(quantization_error(base, codes, codebooks).mean() / (base**2).sum(-1).mean())
    out["knn_acc"] = 100 * float((data.y_train[ranking[:, 0]] == data.y_test).float().mean())
    out["dim"] = float(base.shape[1])
    return out


@torch.no_grad()
def _weight_experiment(model: nn.Module, data: Any, cfg: Config, seed: int) -> dict[str, tuple[float, int]]:
    """Open question: quantize weight sub-vectors with PQ vs LSQ++ at the same bits, evaluate the network.

    Returns `{name: (test accuracy, bytes)}`; bytes = codes + fp32 codebooks of each quantized layer, and every
    other parameter (first conv, BN, biases) in fp32."""
    import copy

    from implementations._harness import evaluate
    from implementations.quantization._base import quantizable_layers

    out = {}
    weight_cfg = replace(cfg, codebooks=WEIGHT_CFG["codebooks"], codewords=WEIGHT_CFG["codewords"])
    code_bits = weight_cfg.codebooks * (weight_cfg.codewords - 1).bit_length()
    for name in ("weights_pq", "weights_lsqpp"):
        net = copy.deepcopy(model)
        size = 4 * sum(p.numel() for p in net.parameters())
        for _, layer in quantizable_layers(net)[1:]:
            w = layer.weight
            vectors = w.reshape(-1, WEIGHT_CFG["group"])  # (N, 8): consecutive values of each row
            gen = torch.Generator().manual_seed(seed)
            if name == "weights_pq":
                codes, codebooks = pq_train(vectors, weight_cfg.codebooks, weight_cfg.codewords, gen)
            else:
                quantizer = LSQPlusPlus(WEIGHT_CFG["group"], weight_cfg)
                quantizer.fit(vectors, gen)
                codebooks = quantizer.codebooks
                codes = quantizer.encode(vectors, gen, quantizer.train_codes)
            w.copy_(decode(codes, codebooks).view_as(w))
            # PQ codebooks are non-zero only in their own subspace: K x group values in all
            values = codebooks.shape[1] * codebooks.shape[2] * (1 if name == "weights_pq" else codebooks.shape[0])
            size += -4 * w.numel() + code_bits * len(vectors) // 8 + 4 * values
        out[name] = (evaluate(net, data), size)
    return out


def _plot(mean: dict[str, dict[str, float]], ctx: RunContext) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.2))
    colors = {"pq": "#1f77b4", "lsq": "#ff7f0e", "lsqpp": "#d62728"}
    for name, values in mean.items():
        axes[0].plot(RECALL_AT, [values[f"recall{k}"] for k in RECALL_AT], "o-", color=colors[name], label=name)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("N")
    axes[0].set_ylabel("recall@N (%)")
    axes[0].legend(fontsize=7)
    axes[1].bar(list(mean), [v["error"] for v in mean.values()], color=[colors[k] for k in mean])
    axes[1].set_ylabel("relative quantization error")
    fig.suptitle("MCQ on MNIST-1D CNN features, 32-bit codes", fontsize=9)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / "lsqpp_martinez2018_recall.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"{ctx.results_dir.resolve().name}/figures/{path.name}"
