"""Paper properties of sequence-level knowledge distillation (Kim & Rush, 2016), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation.seqkd_kim2016 import (
    BOS,
    EOS,
    PAD,
    Config,
    LSTMSeq2Seq,
    SequenceKD,
    beam_search,
    sequence_nll,
    word_kd_loss,
)

A, B = 3, 4


class _Bigram(nn.Module):
    """A decoder whose next-token distribution depends only on the previous token (the source is ignored)."""

    def __init__(self) -> None:
        super().__init__()
        probs = torch.full((5, 5), 1e-9)
        probs[BOS, A], probs[BOS, B] = 0.6, 0.4
        probs[A, A], probs[A, EOS], probs[A, B] = 0.5, 0.3, 0.2
        probs[B, EOS], probs[B, A] = 0.9, 0.1
        probs[PAD, PAD] = probs[EOS, PAD] = 1.0
        self.register_buffer("log_probs", probs.log())

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        zeros = torch.zeros(1, src.shape[0], 1)
        return zeros, zeros

    def step(self, tokens: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        return self.log_probs[tokens], state


def test_beam_search_finds_the_better_sequence_that_greedy_misses() -> None:
    model, src = _Bigram(), torch.zeros(2, 3, dtype=torch.long)
    # Greedy follows A (0.6) then A again (0.5 > 0.3): p(A A A A) = 0.6 * 0.5^3 = 0.075.
    assert beam_search(model, src, beam_size=1, max_len=4).tolist() == [[A, A, A, A]] * 2
    # A beam of 2 keeps B (0.4) alive and finds B EOS with p = 0.36, the mode of this distribution.
    assert beam_search(model, src, beam_size=2, max_len=4).tolist() == [[B, EOS, PAD, PAD]] * 2


def test_word_kd_with_a_one_hot_teacher_is_the_likelihood_and_ignores_padding() -> None:
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 4, 6, generator=gen)
    targets = torch.tensor([[3, 4, EOS, PAD], [5, EOS, PAD, PAD]])
    one_hot_teacher = 50.0 * F.one_hot(targets, 6).float()
    assert torch.allclose(word_kd_loss(student, one_hot_teacher, targets), sequence_nll(student, targets), atol=1e-5)
    changed = student.clone()
    changed[targets == PAD] = 7.0  # logits at padded positions never count
    assert torch.allclose(sequence_nll(changed, targets), sequence_nll(student, targets))
    assert torch.allclose(
        word_kd_loss(changed, one_hot_teacher, targets), word_kd_loss(student, one_hot_teacher, targets)
    )


def test_sequence_level_kd_trains_on_the_teachers_beam_output() -> None:
    torch.manual_seed(0)
    teacher, student = LSTMSeq2Seq(5, 9, hidden=8), LSTMSeq2Seq(5, 9, hidden=4)
    src = torch.randint(1, 5, (3, 4))
    reference = torch.tensor([[3, 4, EOS, PAD], [5, 6, 7, EOS], [8, EOS, PAD, PAD]])
    online = SequenceKD(student, teacher, Config(mode="seq", beam_size=3))
    _, online_losses = online.forward_train(src, reference)
    y_hat = teacher.generate(src, 3, max_len=4)
    expected = sequence_nll(student(src, torch.cat([torch.full((3, 1), BOS), y_hat[:, :-1]], 1)), y_hat)
    assert torch.allclose(online_losses["nll"], expected)
    _, offline_losses = SequenceKD(student, teacher, Config(mode="seq", offline=True)).forward_train(src, y_hat)
    assert torch.allclose(offline_losses["nll"], expected)
    _, on_references = SequenceKD(student, teacher, Config(mode="none")).forward_train(src, reference)
    assert not torch.allclose(on_references["nll"], expected)


def test_classifiers_are_length_one_sequences() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    _, seq = SequenceKD(student, teacher, Config(mode="seq")).forward_train(x, y)
    assert torch.allclose(seq["nll"], F.cross_entropy(student(x), teacher(x).argmax(-1)))  # the mode = argmax
    _, word = SequenceKD(student, teacher, Config(mode="word", word_weight=0.5)).forward_train(x, y)
    soft = -(F.softmax(teacher(x), -1) * F.log_softmax(student(x), -1)).sum(-1).mean()
    assert torch.allclose(word["word_kd"], 0.5 * soft) and torch.allclose(
        word["nll"], 0.5 * F.cross_entropy(student(x), y)
    )


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.distillation.seqkd_kim2016 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run seqkd_kim2016 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    m = {row.name: row.accuracy.mean for row in result.rows}
    assert {"teacher", "references", "word_kd", "seq_kd"} == set(m)
    assert all("beam5_accuracy" in row.extra for row in result.rows)
    assert result.figures == ["results/figures/seqkd_kim2016_decoding.png"]
    assert (tmp_path / "results" / "figures" / "seqkd_kim2016_decoding.png").stat().st_size > 1000
