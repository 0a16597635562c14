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


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Deep Compression of LeNet-300-100 (and of a compact 64-32-16 MLP) on digits, over `ctx.seeds`.

    The run is in `experiment.py`.
    """
    from implementations.pruning.deepcompression_han2016.experiment import reproduce as run

    return run(ctx)
