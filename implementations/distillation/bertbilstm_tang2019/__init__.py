r"""Distilling Task-Specific Knowledge from BERT into Simple Neural Networks (Tang et al., 2019).

Paper: [arXiv:1903.12136](https://arxiv.org/abs/1903.12136) · notes: `papers/bertbilstm_tang2019.md`

A fine-tuned transformer teacher (BERT) is distilled into a single-layer BiLSTM by regressing the student's logits
$z^{S}$ onto the teacher's $z^{B}$, mixed with the label loss where a label exists:

$$
\mathcal{L} = \alpha\, \mathrm{CE}\big(y, \mathrm{softmax}(z^{S})\big)
    + (1 - \alpha)\, \big\lVert z^{B} - z^{S} \big\rVert_2^2 .
$$

The transfer set is the labelled set plus rule-based perturbations of it, labelled by the teacher only: each word is
replaced by `[MASK]` with probability $p_{\mathrm{mask}}$, or by a word of the same part of speech (drawn from the
unigram distribution) with probability $p_{\mathrm{pos}}$; then, with probability $p_{\mathrm{ng}}$, the sentence is
cut to a random $n$-gram, $n \in \{1, \dots, 5\}$.
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

__all__ = ["BiLSTM", "BiLSTMDistiller", "Config", "augment_sentences", "logit_mse", "reproduce"]

PAD, MASK = 0, 1  # reserved token ids


@dataclass(frozen=True)
class Config:
    r"""Loss weight and augmentation probabilities; `copies` is the paper's $n_{\mathrm{iter}}$, cut for the CPU."""

    alpha: float = 0.0  # $\alpha$: weight of the label loss (0: teacher logits only, on every example)
    p_mask: float = 0.1  # $p_{\mathrm{mask}}$
    p_pos: float = 0.1  # $p_{\mathrm{pos}}$: same-POS replacement
    p_ng: float = 0.25  # $p_{\mathrm{ng}}$: n-gram sampling
    max_ngram: int = 5  # largest $n$
    copies: int = 3  # perturbed copies per labelled sentence, $n_{\mathrm{iter}}$ (far fewer than the paper's)


def logit_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    r"""$\frac{1}{B}\sum_b \lVert z^{B}_b - z^{S}_b \rVert_2^2$.

    Args:
        student_logits: $z^S$, shape `(B, K)`.
        teacher_logits: $z^B$, shape `(B, K)`.
    """
    return (teacher_logits - student_logits).pow(2).sum(dim=-1).mean()


def augment_sentences(
    tokens: Tensor, pos_of: Tensor, unigram: Tensor, cfg: Config, generator: torch.Generator | None = None
) -> Tensor:
    r"""One perturbed copy of each sentence: masking, same-POS replacement, then n-gram sampling.

    Args:
        tokens: Right-padded token ids, shape `(N, L)` (`PAD` = 0).
        pos_of: Part-of-speech id of every vocabulary entry, shape `(V,)`.
        unigram: Unigram probability of every vocabulary entry, shape `(V,)` (0 for `PAD` and `MASK`).
        cfg: $p_{\mathrm{mask}}$, $p_{\mathrm{pos}}$, $p_{\mathrm{ng}}$, max $n$.
        generator: CPU random generator.

    Returns:
        Right-padded perturbed token ids, shape `(N, L)`.
    """
    n, length = tokens.shape
    real = tokens != PAD  # (N, L)
    u = torch.rand(n, length, generator=generator)
    out = tokens.clone()
    # Replacement word for every position: a draw from the unigram distribution restricted to the word's POS.
    num_pos = int(pos_of.max()) + 1
    by_pos = unigram[None, :] * (pos_of[None, :] == torch.arange(num_pos)[:, None])  # (P, V)
    by_pos[by_pos.sum(-1) == 0] = 1.0  # reserved tokens (POS 0): any draw, it is never used
    by_pos = by_pos / by_pos.sum(-1, keepdim=True)
    draws = torch.multinomial(by_pos[pos_of[tokens.flatten()]], 1, generator=generator).view(n, length)
    swap = real & (u >= cfg.p_mask) & (u < cfg.p_mask + cfg.p_pos)
    out = torch.where(swap, draws, out)
    out = torch.where(real & (u < cfg.p_mask), torch.full_like(out, MASK), out)
    # n-gram sampling: keep a random window of n words, moved to the front.
    lengths = real.sum(-1)  # (N,)
    cut = torch.rand(n, generator=generator) < cfg.p_ng
    ngram = torch.randint(1, cfg.max_ngram + 1, (n,), generator=generator).minimum(lengths)
    start = (torch.rand(n, generator=generator) * (lengths - ngram + 1)).long()
    keep_len = torch.where(cut, ngram, lengths)
    keep_start = torch.where(cut, start, torch.zeros_like(start))
    index = (keep_start[:, None] + torch.arange(length)).clamp_max(length - 1)  # (N, L)
    shifted = out.gather(1, index)
    return torch.where(torch.arange(length)[None, :] < keep_len[:, None], shifted, torch.full_like(out, PAD))


class BiLSTM(nn.Module):
    """Single-layer BiLSTM classifier: embeddings, BiLSTM, both directions' last states, ReLU layer, logits.

    The two directions are two LSTMs; the backward one reads each sentence reversed within its length, so with
    right padding both final states are exact without packing (which is ~3x slower on a CPU).
    """

    def __init__(self, vocab: int, num_classes: int, embed: int = 16, hidden: int = 24) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed, padding_idx=PAD)
        self.forward_lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.backward_lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, num_classes))

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits `(B, K)` from right-padded token ids `(B, L)`."""
        length = tokens.shape[1]
        lengths = (tokens != PAD).sum(-1).clamp_min(1)  # (B,)
        steps = torch.arange(length, device=tokens.device)[None, :]  # (1, L)
        # Reverse the words of each sentence, keeping the padding at the end.
        reverse = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)  # (B, L)
        last = (lengths - 1)[:, None, None]  # (B, 1, 1): position of the last word
        h_fwd, _ = self.forward_lstm(self.embed(tokens))  # (B, L, H)
        h_bwd, _ = self.backward_lstm(self.embed(tokens.gather(1, reverse)))  # (B, L, H)
        hidden = h_fwd.shape[-1]
        final = [h.gather(1, last.expand(-1, 1, hidden)).squeeze(1) for h in (h_fwd, h_bwd)]  # 2 x (B, H)
        return self.head(torch.cat(final, dim=-1))


class Transformer(nn.Module):
    """Small transformer encoder (the BERT stand-in): token + position embeddings, mean pool over words, linear."""

    def __init__(self, vocab: int, num_classes: int, length: int, dim: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.position = nn.Parameter(0.02 * torch.randn(length, dim))
        block = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits `(B, K)` from right-padded token ids `(B, L)`."""
        pad = tokens == PAD  # (B, L)
        h = self.encoder(self.embed(tokens) + self.position[: tokens.shape[1]], src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()
        return self.head((h * keep).sum(1) / keep.sum(1).clamp_min(1.0))


class BiLSTMDistiller(Distiller):
    """Logit regression onto the teacher plus an optional label term.

    Labels `y == -1` mark unlabelled (augmented) examples, which get only the regression term. A float `y` of shape
    `(B, K + 1)` carries teacher logits computed once offline and the label (or -1) in its last column.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and the weighted `ce` and `mse` terms."""
        logits_s = self.student(x)  # (B, K)
        if y.is_floating_point():
            logits_t, labels = y[:, :-1], y[:, -1].long()  # (B, K), (B,)
        else:
            with torch.no_grad():
                logits_t, labels = self.teacher(x), y
        losses = {"mse": (1 - self.cfg.alpha) * logit_mse(logits_s, logits_t)}
        if self.cfg.alpha > 0 and bool((labels >= 0).any()):
            losses["ce"] = self.cfg.alpha * F.cross_entropy(logits_s, labels, ignore_index=-1)
        return logits_s, losses


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Transformer teacher, BiLSTM student; 2x2 design {labelled, + augmented} x {hard labels, teacher logits}.

    The run is in `experiment.py`.
    """
    from implementations.distillation.bertbilstm_tang2019.experiment import reproduce as run

    return run(ctx)
