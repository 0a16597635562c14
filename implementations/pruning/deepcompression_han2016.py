r"""Deep Compression: Pruning, Trained Quantization and Huffman Coding (Han, Mao & Dally, 2016).

Paper: [arXiv:1510.00149](https://arxiv.org/abs/1510.00149) · notes: `papers/deepcompression_han2016.md`

Three stages shrink the *storage* of a network. (1) Magnitude pruning with retraining; the survivors are stored
in CSR form with $b$-bit *relative* indices (gaps), inserting a filler zero when a gap exceeds $2^b$. (2) Trained
quantization: per layer, 1-D k-means with linear initialisation between $\min w$ and $\max w$,

$$
\min_{c_1..c_k} \sum_{i=1}^{k} \sum_{w \in c_i} \lvert w - c_i \rvert^2 ,
$$

so each weight stores a $\log_2 k$-bit index $I_{ij}$, and the shared centroids are fine-tuned with the summed
gradient of their weights (Eq. 3):

$$
\frac{\partial \mathcal{L}}{\partial C_k} = \sum_{i,j} \frac{\partial \mathcal{L}}{\partial W_{ij}}\,
\mathbb{1}(I_{ij} = k) .
$$

(3) Huffman coding of the weight indices and of the index gaps. Here every stage's size is the byte count of a
real encoded stream (fixed-width codes, or canonical Huffman codes built with `heapq`), plus codebooks, code
tables and fp32 biases.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from implementations.pruning._base import apply_masks, layer_masks, prunable_layers, remove_masks

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = [
    "Config",
    "DeepCompression",
    "huffman_code_lengths",
    "huffman_decode",
    "huffman_encode",
    "kmeans_1d",
    "pack_bits",
    "relative_indices",
    "reproduce",
    "stream_bytes",
]


@dataclass(frozen=True)
class Config:
    """LeNet-300-100 settings of Table 2 of the paper."""

    keep: tuple[float, ...] = (0.08, 0.09, 0.26)  # fraction of weights kept per layer (Table 2)
    weight_bits: int = 6  # $\log_2 k$ bits per weight index (Table 2: 6 for LeNet-300-100)
    index_bits: int = 5  # $b$ bits per relative index (Table 2: 5 for LeNet-300-100)
    hidden: tuple[int, ...] = (300, 100)  # LeNet-300-100
    epochs: int = 30  # dense training
    retrain_epochs: int = 20  # retraining with the pruning masks
    finetune_epochs: int = 10  # centroid fine-tuning
    lr: float = 0.05  # SGD learning rate of training and retraining
    finetune_lr: float = 0.002  # centroid learning rate (the gradient is a sum over a cluster's weights)


# ---------------------------------------------------------------------------------------------------------------------
# Stage 1 and 2: sparse format and weight sharing
# ---------------------------------------------------------------------------------------------------------------------


def relative_indices(nonzero: Tensor, index_bits: int) -> tuple[Tensor, Tensor]:
    r"""CSR relative indices of the non-zeros of a flat mask, with filler zeros where a gap exceeds $2^b$.

    Args:
        nonzero: Boolean mask of the stored entries in storage order, shape `(n,)`.
        index_bits: $b$; a gap $d \in [1, 2^b]$ is stored as the code $d - 1$.

    Returns:
        `(positions, gaps)`, shapes `(m,)`: every stored entry (non-zeros and fillers) and its gap to the previous
        stored entry (the first one counts from position $-1$). Fillers are the positions where `nonzero` is False.
    """
    span = 2**index_bits
    positions, gaps, previous = [], [], -1
    for pos in nonzero.nonzero().flatten().tolist():
        while pos - previous > span:  # filler zero at the end of the largest representable gap
            previous += span
            positions.append(previous)
            gaps.append(span)
        positions.append(pos)
        gaps.append(pos - previous)
        previous = pos
    return torch.tensor(positions, dtype=torch.long), torch.tensor(gaps, dtype=torch.long)


def kmeans_1d(values: Tensor, k: int, iters: int = 50) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means in one dimension with the paper's linear initialisation (Sec. 3.2).

    Args:
        values: Weights to cluster, shape `(n,)`.
        k: Number of clusters.
        iters: Maximum Lloyd iterations (stops earlier when the assignment no longer changes).

    Returns:
        `(centroids, assignment)`, shapes `(k,)` and `(n,)`; an empty cluster keeps its centroid.
    """
    centroids = torch.linspace(float(values.min()), float(values.max()), k)  # linear init keeps large weights
    assignment = torch.full_like(values, -1, dtype=torch.long)
    for _ in range(iters):
        new = (values[:, None] - centroids[None, :]).abs().argmin(dim=1)  # (n,)
        if torch.equal(new, assignment):
            break
        assignment = new
        sums = torch.zeros(k).index_add_(0, assignment, values)
        counts = torch.bincount(assignment, minlength=k)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    return centroids, assignment


# ---------------------------------------------------------------------------------------------------------------------
# Stage 3: Huffman coding
# ---------------------------------------------------------------------------------------------------------------------


def huffman_code_lengths(counts: dict[int, int]) -> dict[int, int]:
    """Code length of each symbol of an optimal prefix code (Huffman's algorithm on a `heapq`).

    Args:
        counts: Symbol -> frequency (symbols with count 0 are left out).

    Returns:
        Symbol -> code length in bits (1 for a single-symbol alphabet).
    """
    heap = [(count, symbol, [symbol]) for symbol, count in sorted(counts.items()) if count > 0]
    lengths = {symbol: 0 for _, symbol, _ in heap}
    if len(heap) == 1:
        return {heap[0][1]: 1}
    heapq.heapify(heap)
    while len(heap) > 1:
        count_a, tie_a, members_a = heapq.heappop(heap)
        count_b, tie_b, members_b = heapq.heappop(heap)
        for symbol in members_a + members_b:  # every merge adds one bit to the codes below it
            lengths[symbol] += 1
        heapq.heappush(heap, (count_a + count_b, min(tie_a, tie_b), members_a + members_b))
    return lengths


def _canonical_codes(lengths: dict[int, int]) -> dict[int, str]:
    """Canonical prefix codes (shorter first, then by symbol): decodable from the lengths alone."""
    codes, code, previous = {}, 0, 0
    for symbol, length in sorted(lengths.items(), key=lambda item: (item[1], item[0])):
        code <<= length - previous
        codes[symbol] = format(code, f"0{length}b")
        code, previous = code + 1, length
    return codes


def pack_bits(bits: str) -> bytes:
    """Pack a string of '0'/'1' into bytes, zero-padding the last byte."""
    if not bits:
        return b""
    return int(bits + "0" * (-len(bits) % 8), 2).to_bytes(math.ceil(len(bits) / 8), "big")


def huffman_encode(symbols: list[int]) -> tuple[bytes, int, dict[int, int]]:
    """Huffman-encode a symbol stream.

    Returns:
        `(payload, n_bits, lengths)`: the packed stream, its length in bits, and the code lengths (the table).
    """
    lengths = huffman_code_lengths(Counter(symbols))
    codes = _canonical_codes(lengths)
    bits = "".join(codes[s] for s in symbols)
    return pack_bits(bits), len(bits), lengths


STREAM_HEADER_BYTES = 1 + 4  # per stored stream: a format flag (Huffman or fixed width) and a uint32 symbol count


def stream_bytes(symbols: list[int], symbol_bits: int) -> int:
    r"""Stored size of one symbol stream: the smaller of its Huffman coding and its fixed-width coding, plus a header.

    The Huffman form counts its full table: for every symbol present, its id ($\lceil b/8 \rceil$ bytes) and its
    code length (1 byte), from which the canonical code is rebuilt. The fixed form stores $b$ bits per symbol.
    Either way the stream carries `STREAM_HEADER_BYTES` (format flag + symbol count), so a decoder can split the
    layers' streams and knows which form it reads.
    """
    fixed = math.ceil(len(symbols) * symbol_bits / 8)
    payload, _, lengths = huffman_encode(symbols)
    table = len(lengths) * (math.ceil(symbol_bits / 8) + 1)
    return STREAM_HEADER_BYTES + min(fixed, len(payload) + table)


def huffman_decode(payload: bytes, n_bits: int, lengths: dict[int, int]) -> list[int]:
    """Inverse of `huffman_encode`."""
    decode = {code: symbol for symbol, code in _canonical_codes(lengths).items()}
    bits = format(int.from_bytes(payload, "big"), f"0{8 * len(payload)}b")[:n_bits]
    out, current = [], ""
    for bit in bits:
        current += bit
        if current in decode:
            out.append(decode[current])
            current = ""
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------------------


def _key(layer: str) -> str:
    return layer.replace(".", "_")  # module names are not valid ParameterDict keys


class DeepCompression(nn.Module):
    """A model that goes through prune -> retrain -> share weights -> fine-tune centroids -> encode.

    After `quantize()`, the forward pass uses $W = C[I]$ (with code 0 reserved for the exact zero of pruned
    entries and fillers), and the only trainable weights are the centroids $C$ (and the biases).
    """

    def __init__(self, model: nn.Module, cfg: Config | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg or Config()
        self.layers = [name for name, _ in prunable_layers(model)]
        self.centroids = nn.ParameterDict()  # layer -> (k - 1,) learned centroids; codes in buffers codes_<layer>

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`; shared weights once quantized."""
        if not self.centroids:
            return self.model(x)
        shared = {}
        for name in self.layers:
            codebook = torch.cat([self.centroids[_key(name)].new_zeros(1), self.centroids[_key(name)]])  # (k,)
            codes = getattr(self, f"codes_{_key(name)}")  # weight-shaped, in [0, k)
            shared[f"{name}.weight"] = codebook[codes]  # backward sums dL/dW over each code's weights (Eq. 3)
        return functional_call(self.model, shared, (x,), strict=False)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the cross-entropy."""
        logits = self(x)
        return logits, {"ce": F.cross_entropy(logits, y)}

    def prune(self, keep: tuple[float, ...]) -> None:
        """Magnitude-prune layer $l$ to keep the largest `keep[l]` of its weights (masks via torch prune)."""
        pairs = prunable_layers(self.model)
        for (name, module), fraction in zip(pairs, keep, strict=True):
            apply_masks(self.model, layer_masks([(name, module)], lambda w, g: w.abs(), 1.0 - fraction))

    @torch.no_grad()
    def quantize(self, bits: int) -> None:
        """Fold the masks and cluster each layer's non-zeros into $2^b - 1$ centroids (code 0 = exact zero)."""
        remove_masks(self.model)
        modules = dict(self.model.named_modules())
        for name in self.layers:
            weight = modules[name].weight
            nonzero = weight != 0
            centroids, assignment = kmeans_1d(weight[nonzero], 2**bits - 1)
            codes = torch.zeros_like(weight, dtype=torch.long)
            codes[nonzero] = assignment + 1
            self.centroids[_key(name)] = nn.Parameter(centroids)
            self.register_buffer(f"codes_{_key(name)}", codes)
            weight.requires_grad_(False)  # the weight is now C[I]; only C trains

    @torch.no_grad()
    def encode(self) -> dict[str, int]:
        r"""Real byte counts of the quantized model's storage after each stage: dense, pruned, quantized, Huffman.

        Every stage also stores the fp32 biases; the pruned stage stores each stored entry as fp32 value + $b$-bit
        gap, the quantized one as $\log_2 k$-bit code + $b$-bit gap plus the fp32 codebook (each with a 4-byte entry
        count per layer), the Huffman one stores the code and gap streams separately, each as the smaller of its
        Huffman coding (with the full table) and its fixed-width coding, plus a flag and count (`stream_bytes`).
        """
        modules = dict(self.model.named_modules())
        cfg = self.cfg
        biases = sum(4 * m.bias.numel() for m in modules.values() if getattr(m, "bias", None) is not None)
        sizes = dict.fromkeys(("dense", "pruned", "quantized", "huffman"), biases)
        for name in self.layers:
            codes = getattr(self, f"codes_{_key(name)}").flatten()  # (n,)
            weight = modules[name].weight.flatten()  # the pruned fp32 weights, before sharing
            positions, gaps = relative_indices(codes > 0, cfg.index_bits)
            symbols, gap_codes = codes[positions].tolist(), (gaps - 1).tolist()  # fillers carry code 0
            value_bits = weight[positions].view(torch.int32).tolist()
            gap_bits = [format(g, f"0{cfg.index_bits}b") for g in gap_codes]
            pruned = "".join(format(v & 0xFFFFFFFF, "032b") + g for v, g in zip(value_bits, gap_bits, strict=True))
            shared = "".join(format(c, f"0{cfg.weight_bits}b") + g for c, g in zip(symbols, gap_bits, strict=True))
            codebook = 4 * self.centroids[_key(name)].numel()
            sizes["dense"] += 4 * weight.numel()
            sizes["pruned"] += 4 + len(pack_bits(pruned))  # uint32 entry count + the stream
            sizes["quantized"] += 4 + len(pack_bits(shared)) + codebook
            sizes["huffman"] += (
                stream_bytes(symbols, cfg.weight_bits) + stream_bytes(gap_codes, cfg.index_bits) + codebook
            )
        return sizes

    @classmethod
    def smoke_task(cls) -> tuple[DeepCompression, Tensor, Tensor]:
        """A tiny pruned and quantized MLP, for the generic smoke test."""
        from implementations._models import MLP

        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        task = cls(MLP(40, 10, hidden=(16,)), Config(keep=(0.5, 0.5), weight_bits=3))
        task.prune(task.cfg.keep)
        task.quantize(task.cfg.weight_bits)
        return task, torch.randn(8, 40, generator=gen), torch.randint(0, 10, (8,), generator=gen)


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run deepcompression_han2016`
# ---------------------------------------------------------------------------------------------------------------------


def _pipeline(data: Any, hidden: tuple[int, ...], cfg: Config, ctx: RunContext, seed: int) -> dict[str, Any]:
    """Train, prune + retrain, share + fine-tune one MLP; accuracies after each stage, byte counts, model."""
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._models import MLP

    seed_everything(seed)
    model = MLP(64, data.num_classes, hidden=hidden)
    train = dict(batch_size=128, seed=seed, progress=False)
    fit(Supervised(model), model.parameters(), data, ctx.epochs(cfg.epochs), lr=cfg.lr, **train)
    out = {"dense": evaluate(model, data)}
    task = DeepCompression(model, cfg)
    task.prune(cfg.keep)
    fit(Supervised(model), model.parameters(), data, ctx.epochs(cfg.retrain_epochs), lr=cfg.lr, **train)
    out["pruned"] = evaluate(model, data)
    task.quantize(cfg.weight_bits)
    out["quantized"] = evaluate(task, data)
    trainable = [p for p in task.parameters() if p.requires_grad]  # centroids and biases
    fit(task, trainable, data, ctx.epochs(cfg.finetune_epochs), lr=cfg.finetune_lr, weight_decay=0.0, **train)
    out["final"] = evaluate(task, data)
    out["bytes"] = task.encode()
    out["model"] = task
    return out


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Deep Compression of LeNet-300-100 (and of a compact 64-32-16 MLP) on digits, over `ctx.seeds`."""
    from implementations._data import load_dataset
    from implementations._measure import accuracy_stats, interleaved_latency, model_row
    from implementations._models import MLP

    cfg = Config()
    data = load_dataset("digits", n_train=ctx.n_train)
    nets = {"wide": cfg.hidden, "compact": (32, 16)}
    runs = {net: [_pipeline(data, hidden, cfg, ctx, seed) for seed in ctx.seeds] for net, hidden in nets.items()}

    def acc(net: str, stage: str) -> dict[str, Any]:
        return accuracy_stats([r[stage] for r in runs[net]])

    def ratio(net: str, stage: str) -> float:
        return sum(r["bytes"]["dense"] / r["bytes"][stage] for r in runs[net]) / len(runs[net])

    rows = []
    stages = [("dense", "dense"), ("pruned", "pruned"), ("quantized", "quantized"), ("final", "huffman")]
    labels = {
        "dense": "Dense",
        "pruned": "Pruned + retrained (CSR)",
        "quantized": "+ k-means sharing, no fine-tune",
        "final": "Deep Compression (fine-tuned centroids + Huffman)",
    }
    # latency (batch 1, fastest of 3 interleaved rounds): every stage runs dense kernels, the compressed ones on
    # the decoded weights C[I] with their zeros, so only the architecture matters
    timed = {}
    for net, hidden in nets.items():
        timed[f"{net}_dense"] = MLP(64, data.num_classes, hidden=hidden)
        timed[f"{net}_compressed"] = runs[net][0]["model"].model
    latency = interleaved_latency(timed, data.input_shape, rounds=3)
    for net, hidden in nets.items():
        first = runs[net][0]
        dense_cols = {**model_row(timed[f"{net}_dense"], data.input_shape), "latency_ms": latency[f"{net}_dense"]}
        sparse_cols = {
            **model_row(first["model"].model, data.input_shape),
            "latency_ms": latency[f"{net}_compressed"],
        }
        arch = f"MLP 64-{'-'.join(map(str, hidden))}-10"
        for stage, size_key in stages:
            cols = dense_cols if stage == "dense" else sparse_cols
            bits = None if stage in ("dense", "pruned") else float(cfg.weight_bits)
            role = {"dense": "baseline", "final": "method"}.get(stage, "ablation") if net == "wide" else "ablation"
            rows.append(
                dict(
                    name=f"{net}_{stage}",
                    label=f"{labels[stage]}, {arch}",
                    role=role,
                    accuracy=acc(net, stage),
                    **{**cols, "bytes": first["bytes"][size_key], "bits": bits},
                    extra={"compression_ratio": ratio(net, size_key)},
                )
            )
    figure = _plot(ctx, runs, nets)

    dense_acc, final_acc = acc("wide", "dense")["mean"], acc("wide", "final")["mean"]
    total = ratio("wide", "huffman")
    split = [
        ratio("wide", "pruned"),
        ratio("wide", "quantized") / ratio("wide", "pruned"),
        total / ratio("wide", "quantized"),
    ]
    shares = [math.log(x) / math.log(total) for x in split]
    compact_total = ratio("compact", "huffman")
    compact_drop = acc("compact", "dense")["mean"] - acc("compact", "final")["mean"]
    return {
        "id": "deepcompression_han2016",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": ctx.epochs(cfg.epochs),
            "selection": "last",
            "notes": f"LeNet-300-100 on 8x8 digits: {ctx.epochs(cfg.epochs)} dense epochs (SGD lr {cfg.lr}, "
            f"batch 128, wd 5e-4), per-layer magnitude pruning keeping {cfg.keep} (Table 2), "
            f"{ctx.epochs(cfg.retrain_epochs)} retraining epochs, k-means with linear init into "
            f"{2**cfg.weight_bits - 1} centroids + a reserved zero code ({cfg.weight_bits}-bit codes), "
            f"{ctx.epochs(cfg.finetune_epochs)} epochs of centroid fine-tuning (summed gradients, lr "
            f"{cfg.finetune_lr}), {cfg.index_bits}-bit relative indices with filler zeros, Huffman coding of "
            f"codes and gaps per layer. Bytes are real encoded streams plus fp32 biases, codebooks and "
            f"code-length tables (first seed's model); compression_ratio is the mean over seeds. The compact "
            f"64-32-16 MLP goes through the same pipeline. 1 CPU thread.",
        },
        "rows": rows,
        "claim": {
            "text": "Pruning, trained quantization and Huffman coding together make the network tens of times "
            "smaller (LeNet-300-100: 40x) at about the same accuracy (within 1 point here).",
            "reproduced": total >= 10.0 and final_acc >= dense_acc - 1.0,
            "evidence": f"{total:.1f}x smaller ({runs['wide'][0]['bytes']['dense']} -> "
            f"{runs['wide'][0]['bytes']['huffman']} bytes for the first seed); test accuracy {dense_acc:.2f}% "
            f"dense vs {final_acc:.2f}% compressed (pruned {acc('wide', 'pruned')['mean']:.2f}%, shared before "
            f"fine-tuning {acc('wide', 'quantized')['mean']:.2f}%), mean over {len(ctx.seeds)} seed(s).",
        },
        "answers": [
            {
                "question": "How much of the final ratio is due to each stage (pruning, trained quantization, "
                "Huffman coding)?",
                "answer": f"Pruning gives {split[0]:.1f}x, weight sharing a further {split[1]:.1f}x and Huffman "
                f"coding {split[2]:.2f}x, i.e. {100 * shares[0]:.0f}% / {100 * shares[1]:.0f}% / "
                f"{100 * shares[2]:.0f}% of the {total:.1f}x on a log scale.",
                "evidence": f"mean ratios to dense after each stage: pruned {ratio('wide', 'pruned'):.1f}x, "
                f"quantized {ratio('wide', 'quantized'):.1f}x, Huffman {total:.1f}x (LeNet-300-100, digits).",
            },
            {
                "question": "Does a 35-49x storage reduction carry over to architectures that are already compact?",
                "answer": f"Not at the same accuracy: the same pipeline shrinks the compact 64-32-16 MLP "
                f"{compact_total:.1f}x but costs it {compact_drop:.1f} points, against {total:.1f}x for "
                f"{dense_acc - final_acc:.1f} points on LeNet-300-100."
                if compact_drop > max(1.0, dense_acc - final_acc)
                else f"Largely: the compact 64-32-16 MLP shrinks {compact_total:.1f}x for {compact_drop:.1f} "
                f"points, against {total:.1f}x for {dense_acc - final_acc:.1f} points on LeNet-300-100.",
                "evidence": f"compact: dense {acc('compact', 'dense')['mean']:.2f}% -> "
                f"{acc('compact', 'final')['mean']:.2f}%, {runs['compact'][0]['bytes']['dense']} -> "
                f"{runs['compact'][0]['bytes']['huffman']} bytes; same keep fractions {cfg.keep} and bits.",
            },
        ],
        "figures": [figure],
    }


def _plot(ctx: RunContext, runs: dict[str, list[dict[str, Any]]], nets: dict[str, tuple[int, ...]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [("dense", "dense"), ("pruned", "pruned"), ("quantized", "quantized"), ("huffman", "final")]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, net in enumerate(nets):
        sizes = [sum(r["bytes"][s] for r in runs[net]) / len(runs[net]) / 1024 for s, _ in stages]
        accs = [sum(r[a] for r in runs[net]) / len(runs[net]) for _, a in stages]
        xs = [j + 0.4 * i for j in range(len(stages))]
        ax.bar(xs, sizes, width=0.4, label=f"MLP 64-{'-'.join(map(str, nets[net]))}-10")
        for x, size, a in zip(xs, sizes, accs, strict=True):
            ax.text(x, size, f"{a:.1f}%", ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks([j + 0.2 for j in range(len(stages))], [s for s, _ in stages])
    ax.set_ylabel("storage (KiB, log scale)")
    ax.set_title("Deep Compression on digits: size after each stage (test accuracy on top)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / "deepcompression_han2016_stages.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"{ctx.results_dir.resolve().name}/figures/{path.name}"
