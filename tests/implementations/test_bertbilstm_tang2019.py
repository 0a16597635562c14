"""Paper properties of distilling a transformer into a BiLSTM (Tang et al., 2019), and the quick reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from implementations.distillation.bertbilstm_tang2019 import (
    MASK,
    PAD,
    BiLSTM,
    BiLSTMDistiller,
    Config,
    augment_sentences,
    logit_mse,
)


def test_logit_mse_is_the_squared_distance_averaged_over_the_batch() -> None:
    student = torch.tensor([[1.0, -1.0], [0.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    loss = logit_mse(student, teacher)
    assert loss.item() == pytest.approx((1 + 4 + 0 + 4) / 2)
    loss.backward()
    assert torch.allclose(student.grad, (student.detach() - teacher))  # 2 (z_S - z_B) / B with B = 2


def _vocab() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pos_of = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3])  # PAD, MASK, three words of POS 1, two of POS 2, one of POS 3
    unigram = torch.tensor([0.0, 0.0, 0.2, 0.2, 0.2, 0.15, 0.15, 0.1])
    tokens = torch.tensor([[2, 5, 7, 3, 6, 0, 0], [4, 4, 5, 6, 7, 2, 3]])
    return tokens, pos_of, unigram


def test_each_augmentation_rule() -> None:
    tokens, pos_of, unigram = _vocab()
    gen = torch.Generator().manual_seed(0)
    masked = augment_sentences(tokens, pos_of, unigram, Config(p_mask=1.0, p_pos=0.0, p_ng=0.0), gen)
    assert torch.equal(masked, torch.where(tokens == PAD, tokens, torch.full_like(tokens, MASK)))
    swapped = torch.cat([augment_sentences(tokens, pos_of, unigram, Config(p_mask=0.0, p_pos=1.0, p_ng=0.0), gen)
                         for _ in range(20)])  # fmt: skip
    repeated = tokens.repeat(20, 1)
    assert torch.equal(pos_of[swapped], pos_of[repeated])  # every word keeps its part of speech
    assert (swapped != repeated).any() and torch.equal(swapped == PAD, repeated == PAD)
    for _ in range(20):
        cut = augment_sentences(tokens, pos_of, unigram, Config(p_mask=0.0, p_pos=0.0, p_ng=1.0, max_ngram=3), gen)
        for row, source in zip(cut, tokens, strict=True):
            words = row[row != PAD].tolist()
            assert 1 <= len(words) <= 3 and torch.all(row[len(words) :] == PAD)
            real = source[source != PAD].tolist()
            assert any(real[i : i + len(words)] == words for i in range(len(real)))  # a contiguous n-gram


def test_two_lstm_bilstm_equals_packed_bidirectional_lstm() -> None:
    torch.manual_seed(0)
    model = BiLSTM(vocab=12, num_classes=2, embed=5, hidden=4)
    tokens = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 9, 10], [11, 0, 0, 0, 0]])
    reference = nn.LSTM(5, 4, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(reference, name).copy_(getattr(model.forward_lstm, name))
            getattr(reference, f"{name}_reverse").copy_(getattr(model.backward_lstm, name))
    packed = nn.utils.rnn.pack_padded_sequence(
        model.embed(tokens), torch.tensor([3, 5, 1]), batch_first=True, enforce_sorted=False
    )
    _, (h, _) = reference(packed)
    assert torch.allclose(model(tokens), model.head(torch.cat([h[0], h[1]], -1)), atol=1e-6)


def test_unlabelled_examples_only_get_the_regression_term() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(3, 2), nn.Linear(3, 2)
    x = torch.randn(4, 3)
    task = BiLSTMDistiller(student, teacher, Config(alpha=0.25))
    z_t = teacher(x).detach()
    _, unlabelled = task.forward_train(x, torch.cat([z_t, torch.full((4, 1), -1.0)], 1))
    assert set(unlabelled) == {"mse"} and torch.allclose(unlabelled["mse"], 0.75 * logit_mse(student(x), z_t))
    y = torch.tensor([0, 1, -1, -1])
    _, mixed = task.forward_train(x, torch.cat([z_t, y[:, None].float()], 1))
    ce = torch.nn.functional.cross_entropy(student(x)[:2], y[:2])  # mean over the labelled rows only
    assert torch.allclose(mixed["ce"], 0.25 * ce)


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.distillation.bertbilstm_tang2019 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run bertbilstm_tang2019 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    m = {row.name: row.accuracy.mean for row in result.rows}
    assert {"teacher", "labels", "distil", "augmented_pseudo", "augmented_distil"} == set(m)
    assert result.claim.reproduced == (m["augmented_distil"] > m["labels"])
    assert len(result.answers) == 2 and result.row("teacher").params > result.row("labels").params
