"""Paper properties of distilling word embeddings with an encoding layer (Mou et al., 2016), and the quick run."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from implementations.distillation.wordembed_mou2016 import (
    BagOfEmbeddings,
    Config,
    EmbeddingDistiller,
    EncodedEmbedding,
    embedding_distill_loss,
    synthetic_corpus,
)
from implementations.distillation.wordembed_mou2016.experiment import SMALL


def test_precomputed_small_table_replaces_large_table_and_encoder() -> None:
    torch.manual_seed(0)
    large = torch.randn(50, 20)  # V = 50 words, D = 20
    encoded = EncodedEmbedding(large, small_dim=4)
    table = encoded.precompute()
    tokens = torch.tensor([[0, 7, 49], [3, 3, 1]])
    assert torch.allclose(table(tokens), encoded(tokens))
    assert torch.allclose(encoded(tokens), torch.tanh(large[tokens] @ encoded.encoder.weight.T + encoded.encoder.bias))
    assert table.weight.shape == (50, 4) and not table.weight.requires_grad
    # Training touches only the encoder: the large table is a buffer, not a parameter.
    assert {name for name, _ in encoded.named_parameters()} == {"encoder.weight", "encoder.bias"}
    deployed = BagOfEmbeddings(table, 4, 2, hidden=8)
    assert sum(p.numel() for p in deployed.parameters()) == 50 * 4 + (4 * 8 + 8) + (8 * 2 + 2)


def test_loss_terms_follow_alpha_and_vanish_at_the_teacher() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    labels_only = embedding_distill_loss(student, teacher, labels, temperature=2.0, alpha=0.0)
    assert torch.allclose(labels_only["ce"], F.cross_entropy(student, labels)) and labels_only["kd"].item() == 0.0
    same = embedding_distill_loss(teacher, teacher, labels, temperature=2.0, alpha=0.5)
    assert same["kd"].abs().item() < 1e-6
    task = EmbeddingDistiller(nn.Linear(4, 3), nn.Linear(4, 3), Config(temperature=2.0, alpha=0.5))
    _, losses = task.forward_train(torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0]))
    assert set(losses) == {"ce", "kd"} and losses["kd"].item() > 0


def test_labels_are_the_sign_of_the_summed_polarity() -> None:
    corpus = synthetic_corpus(SMALL, n_train=300)
    polarity, x, y = corpus["polarity"], corpus["x_train"], corpus["y_train"]
    total = polarity[x].sum(-1)
    assert torch.equal(y, (total > 0).long())
    assert torch.all(total.abs() % 2 == 1)  # 1 or 3 polar words: never a tie
    assert corpus["large"].shape == (SMALL["vocab"], SMALL["large_dim"])


def test_quick_reproduction_is_schema_valid(tmp_path: Path) -> None:
    from implementations._runner import make_context
    from implementations.distillation.wordembed_mou2016 import reproduce
    from kb.results import Result

    ctx = make_context("quick", results_dir=tmp_path / "results", device="cpu")
    environment = {"torch": torch.__version__, "python": "3", "device": "cpu", "platform": "test"}
    result = Result.model_validate(
        {
            **reproduce(ctx),
            "profile": "quick",
            "command": "kb run wordembed_mou2016 --quick",
            "environment": environment,
            "wall_time_s": 1.0,
            "created": "2025-01-01T00:00:00",
        }
    )
    m = {row.name: row.accuracy.mean for row in result.rows}
    assert result.claim.reproduced == (m["encoded_soft"] > m["direct"] and m["encoded_labels"] > m["direct"])
    # The deployed distilled model is exactly as large as the directly trained one.
    assert result.row("encoded_soft").params == result.row("direct").params < result.row("teacher").params
    assert "probe_unseen_words" in result.row("direct").extra
