r"""Sequence-Level Knowledge Distillation (Kim & Rush, 2016).

Paper: [arXiv:1606.07947](https://arxiv.org/abs/1606.07947) · notes: `papers/seqkd_kim2016.md`

For a source $s$ and target $t = (t_1, \dots, t_J)$ over a vocabulary $\mathcal{V}$, with teacher $q$ and student
$p$, **word-level KD** matches the teacher's next-word distribution given the reference prefix:

$$
\mathcal{L}_{\mathrm{word}} = -\sum_{j=1}^{J} \sum_{k \in \mathcal{V}}
    q(t_j = k \mid s, t_{<j}) \log p(t_j = k \mid s, t_{<j}).
$$

**Sequence-level KD** replaces the intractable sequence distribution of the teacher by its mode, found by beam
search, and trains the student on it with the ordinary likelihood:

$$
\hat{y} \approx \arg\max_{t} q(t \mid s), \qquad \mathcal{L}_{\mathrm{seq}} = -\log p(\hat{y} \mid s)
    = -\sum_{j} \log p(\hat{y}_j \mid s, \hat{y}_{<j}).
$$

The two combine as $(1 - \alpha)\,\mathcal{L}_{\mathrm{seq}} + \alpha\,\mathcal{L}_{\mathrm{word}}$ on $\hat{y}$
(and word-level KD alone is $(1-\alpha)\,\mathrm{NLL}(t) + \alpha\,\mathcal{L}_{\mathrm{word}}$ on the references).
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

__all__ = ["Config", "LSTMSeq2Seq", "SequenceKD", "beam_search", "reproduce", "sequence_nll", "word_kd_loss"]


PAD, BOS, EOS = 0, 1, 2  # reserved target ids (PAD is also the source padding id)


@dataclass(frozen=True)
class Config:
    """Training target and weights (Sec. 3 of the paper)."""

    mode: str = "seq"  # "none" (references), "word" (word-level KD), "seq" (teacher beam output), "seq_word" (both)
    word_weight: float = 0.5  # $\alpha$ of the word-level term in "word" and "seq_word"
    beam_size: int = 5  # beam of the teacher's search for $\hat{y}$
    offline: bool = False  # `y` already holds $\hat{y}$ (decoded once before training, as in the paper)


def sequence_nll(logits: Tensor, targets: Tensor) -> Tensor:
    r"""$-\frac{1}{N_{\mathrm{tok}}}\sum_{b,j} \log p(t_{bj} \mid s_b, t_{b,<j})$ over non-`PAD` positions.

    Args:
        logits: Student logits, shape `(B, J, V)`.
        targets: Target ids, shape `(B, J)`, `PAD` where there is no token.
    """
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD)


def word_kd_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor) -> Tensor:
    r"""$-\frac{1}{N_{\mathrm{tok}}}\sum_{b,j}\sum_k q_{bjk} \log p_{bjk}$ over non-`PAD` positions.

    Args:
        student_logits: Student logits on the prefix, shape `(B, J, V)`.
        teacher_logits: Teacher logits on the same prefix, shape `(B, J, V)`.
        targets: Target ids, shape `(B, J)`; only the `PAD` mask is used.
    """
    mask = (targets != PAD).float()  # (B, J)
    cross = -(F.softmax(teacher_logits, -1) * F.log_softmax(student_logits, -1)).sum(-1)  # (B, J)
    return (cross * mask).sum() / mask.sum().clamp_min(1.0)


class LSTMSeq2Seq(nn.Module):
    """One-layer LSTM encoder-decoder without attention: the encoder's last state $(h, c)$ starts the decoder."""

    def __init__(self, src_vocab: int, tgt_vocab: int, hidden: int, embed: int = 32) -> None:
        super().__init__()
        self.src_embed = nn.Embedding(src_vocab, embed, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(tgt_vocab, embed, padding_idx=PAD)
        self.encoder = nn.LSTM(embed, hidden, batch_first=True)
        self.decoder = nn.LSTM(embed, hidden, batch_first=True)
        self.out = nn.Linear(hidden, tgt_vocab)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder start state $(h, c)$, each `(1, B, H)`, from left-padded source ids `(B, S)`."""
        return self.encoder(self.src_embed(src))[1]

    def step(self, tokens: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Next-token log-probabilities `(B, V)` and the new state, from the previous tokens `(B,)`."""
        out, state = self.decoder(self.tgt_embed(tokens)[:, None], state)
        return F.log_softmax(self.out(out[:, 0]), -1), state

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits `(B, J, V)` for decoder inputs `(B, J)` (`BOS` then the target prefix)."""
        out, _ = self.decoder(self.tgt_embed(tgt_in), self.encode(src))
        return self.out(out)

    @torch.no_grad()
    def generate(self, src: Tensor, beam_size: int = 1, max_len: int = 12) -> Tensor:
        """Beam-search (greedy for beam 1) outputs `(B, max_len)`, ending in `EOS`, `PAD` after it."""
        return beam_search(self, src, beam_size, max_len)


@torch.no_grad()
def beam_search(model: LSTMSeq2Seq, src: Tensor, beam_size: int, max_len: int) -> Tensor:
    r"""Approximate $\arg\max_t \log q(t \mid s)$ keeping the `beam_size` best prefixes per source.

    Finished hypotheses (ending in `EOS`) keep their score and only extend with `PAD` at no cost. Scores are
    unnormalised sums of log-probabilities, as in the paper.

    Args:
        model: A `LSTMSeq2Seq` (anything with `encode` and `step`).
        src: Source ids, shape `(B, S)`.
        beam_size: $K$; 1 is greedy decoding.
        max_len: Longest output.

    Returns:
        The best hypothesis per source, shape `(B, max_len)`.
    """
    b, k = src.shape[0], beam_size
    state = tuple(part.repeat_interleave(k, dim=1) for part in model.encode(src))  # 2 x (1, B K, H)
    tokens = torch.full((b * k,), BOS, dtype=torch.long, device=src.device)
    scores = torch.zeros(b, k, device=src.device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one
    out = torch.full((b * k, max_len), PAD, dtype=torch.long, device=src.device)
    done = torch.zeros(b * k, dtype=torch.bool, device=src.device)
    for t in range(max_len):
        log_probs, state = model.step(tokens, state)  # (B K, V)
        vocab = log_probs.shape[-1]
        # A finished hypothesis may only append PAD, at log-probability 0.
        frozen = torch.full_like(log_probs, float("-inf"))
        frozen[:, PAD] = 0.0
        log_probs = torch.where(done[:, None], frozen, log_probs)
        total = (scores.view(-1, 1) + log_probs).view(b, k * vocab)  # (B, K V)
        scores, flat = total.topk(k, dim=-1)  # (B, K)
        parent = (flat // vocab + torch.arange(b, device=src.device)[:, None] * k).flatten()  # (B K,)
        tokens = (flat % vocab).flatten()
        out, done = out[parent], done[parent]
        state = tuple(part[:, parent] for part in state)
        out[:, t] = tokens
        done = done | (tokens == EOS)
        if bool(done.all()):
            break
    best = scores.argmax(-1) + torch.arange(b, device=src.device) * k
    return out[best]


class SequenceKD(Distiller):
    r"""Student training on references, word-level KD, sequence-level KD or both (`Config.mode`).

    For sequence models (with `generate`), `x` is the source `(B, S)` and `y` the reference `(B, J)` (or, with
    `offline=True`, the teacher's beam output $\hat{y}$). Any other student/teacher pair is treated as producing a
    length-1 sequence: the teacher's beam-search output is then exactly its argmax and word-level KD is ordinary KD.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()

    def _targets(self, x: Tensor, y: Tensor, sequential: bool) -> Tensor:
        if self.cfg.mode not in ("seq", "seq_word") or self.cfg.offline:
            return y
        if sequential:
            return self.teacher.generate(x, self.cfg.beam_size, max_len=y.shape[1])  # $\hat{y}$, (B, J)
        with torch.no_grad():
            return self.teacher(x).argmax(-1)  # (B,): the mode of a one-step sequence

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, J, V)` and the weighted `nll` (and `word_kd`) terms."""
        sequential = hasattr(self.student, "generate")
        targets = self._targets(x, y, sequential)  # (B, J) or (B,)
        if sequential:
            decoder_in = torch.cat([torch.full_like(targets[:, :1], BOS), targets[:, :-1]], 1)  # (B, J)
            logits_s = self.student(x, decoder_in)  # (B, J, V)
        else:
            logits_s, targets = self.student(x)[:, None], targets[:, None]  # (B, 1, K), (B, 1)
        word = self.cfg.mode in ("word", "seq_word")
        nll = sequence_nll(logits_s, targets) if sequential else F.cross_entropy(logits_s[:, 0], targets[:, 0])
        losses = {"nll": (1 - self.cfg.word_weight) * nll if word else nll}
        if word:
            with torch.no_grad():
                logits_t = self.teacher(x, decoder_in) if sequential else self.teacher(x)[:, None]
            mask = targets if sequential else torch.ones_like(targets)
            losses["word_kd"] = self.cfg.word_weight * word_kd_loss(logits_s, logits_t, mask)
        return logits_s, losses


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher LSTM; small LSTM students on references, word-level KD, sequence-level KD, both; greedy and beam.

    The run is in `experiment.py`.
    """
    from implementations.distillation.seqkd_kim2016.experiment import reproduce as run

    return run(ctx)
