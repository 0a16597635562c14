"""The small-scale reproduction of distilling BERT into a BiLSTM (Tang et al., 2019): a transformer teacher and
BiLSTM students on a synthetic sentiment language, {labelled, + augmented} x {hard labels, teacher logits}."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations.distillation.bertbilstm_tang2019 import (
    BiLSTM,
    BiLSTMDistiller,
    Config,
    Transformer,
    augment_sentences,
)

if TYPE_CHECKING:
    from implementations._harness import RunContext


SMALL = dict(n_teacher=6000, n_train=500, n_test=2000, teacher_epochs=6, teacher_dim=48, epochs=15, lr=1e-2,
             batch_size=128)  # fmt: skip


def synthetic_sentiment(n: int, generator: torch.Generator, max_len: int = 14) -> tuple[Tensor, Tensor, dict]:
    """A toy sentiment language: filler words, positive or negative adjectives (Zipfian frequencies), negators.

    Each sentence holds 1 or 3 adjectives; the label is the majority polarity, a negator flipping the adjective
    that follows it. POS ids: 0 = reserved, 1 = filler, 2 = adjective, 3 = negator.

    Returns:
        `(tokens (n, max_len), labels (n,), vocab)` with `vocab` holding `size`, `pos_of`, `unigram`.
    """
    n_fill, n_adj, n_neg = 60, 60, 3
    fill = torch.arange(2, 2 + n_fill)
    adj = torch.arange(2 + n_fill, 2 + n_fill + n_adj)
    neg = torch.arange(2 + n_fill + n_adj, 2 + n_fill + n_adj + n_neg)
    size = 2 + n_fill + n_adj + n_neg
    fixed = torch.Generator().manual_seed(12345)  # the language itself is the same for every call
    polarity = torch.where(torch.rand(n_adj, generator=fixed) < 0.5, -1.0, 1.0)
    zipf = 1.0 / torch.arange(1, n_adj + 1).float()
    pos_of = torch.zeros(size, dtype=torch.long)
    pos_of[fill], pos_of[adj], pos_of[neg] = 1, 2, 3
    unigram = torch.zeros(size)
    unigram[fill], unigram[adj], unigram[neg] = 0.6 / n_fill, 0.3 * zipf / zipf.sum(), 0.1 / n_neg
    tokens = torch.zeros(n, max_len, dtype=torch.long)
    labels = torch.zeros(n, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(8, max_len + 1, (1,), generator=generator))
        words = fill[torch.randint(n_fill, (length,), generator=generator)]
        n_pol = 1 + 2 * int(torch.randint(0, 2, (1,), generator=generator))  # 1 or 3 adjectives: no ties
        slots = 1 + 2 * torch.randperm((length - 1) // 2, generator=generator)[:n_pol]  # odd: a negator never hits one
        which = torch.multinomial(zipf, n_pol, replacement=True, generator=generator)
        score = 0.0
        for slot, a in zip(slots.tolist(), which.tolist(), strict=True):
            words[slot] = adj[a]
            flip = bool(torch.rand(1, generator=generator) < 0.3)
            if flip:
                words[slot - 1] = neg[int(torch.randint(n_neg, (1,), generator=generator))]
            score += float(polarity[a]) * (-1.0 if flip else 1.0)
        tokens[i, :length], labels[i] = words, int(score > 0)
    return tokens, labels, {"size": size, "pos_of": pos_of, "unigram": unigram}


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Transformer teacher, BiLSTM student; 2x2 design {labelled, + augmented} x {hard labels, teacher logits}."""
    from implementations._data import TensorData
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, count_params, latency_ms

    s, cfg = SMALL, Config()
    n_train = min(s["n_train"], ctx.n_train or s["n_train"])
    gen = torch.Generator().manual_seed(0)
    n_teacher = s["n_teacher"] if ctx.n_train is None else min(s["n_teacher"], 4 * n_train)  # smaller when quick
    x_big, y_big, vocab = synthetic_sentiment(n_teacher, gen)
    x_test, y_test, _ = synthetic_sentiment(s["n_test"], gen)
    x_small, y_small = x_big[:n_train], y_big[:n_train]  # the student's labelled set is part of the teacher's

    def dataset(x: Tensor, y: Tensor) -> TensorData:
        return TensorData(x, y, x_test, y_test, 2, tuple(x.shape[1:]), name="synthetic sentiment")

    train = dict(batch_size=s["batch_size"], device=ctx.device, progress=False, optimizer="adamw", weight_decay=0.0)
    # The teacher has seen far more labelled data than the student (stand-in for BERT's pre-training).
    seed_everything(0)
    length = x_big.shape[1]
    teacher = Transformer(vocab["size"], 2, length, dim=s["teacher_dim"])
    fit(Supervised(teacher), teacher.parameters(), dataset(x_big, y_big), epochs=ctx.epochs(s["teacher_epochs"]),
        lr=5e-3, **train)  # fmt: skip
    teacher.to("cpu").eval()

    aug_gen = torch.Generator().manual_seed(1)
    x_aug = torch.cat([augment_sentences(x_small, vocab["pos_of"], vocab["unigram"], cfg, aug_gen)
                       for _ in range(cfg.copies)])  # fmt: skip
    x_all = torch.cat([x_small, x_aug])
    with torch.no_grad():
        z_small, z_all = teacher(x_small), teacher(x_all)  # (n, 2), (n (1 + copies), 2)
    unlabelled = torch.full((len(x_aug),), -1.0)
    data = {  # name -> (training set, distilled?)
        "labels": (dataset(x_small, y_small), False),
        "distil": (dataset(x_small, torch.cat([z_small, y_small[:, None].float()], 1)), True),
        "augmented_pseudo": (dataset(x_all, torch.cat([y_small, z_all[n_train:].argmax(-1)])), False),
        "augmented_distil": (dataset(x_all, torch.cat([z_all, torch.cat([y_small.float(), unlabelled])[:, None]], 1)),
                             True),
    }  # fmt: skip
    epochs = ctx.epochs(s["epochs"])
    acc: dict[str, list[float]] = {
        "teacher": [evaluate(teacher, dataset(x_small, y_small))]
    }  # one shared teacher: a single value
    for seed in ctx.seeds:
        for name, (train_data, distilled) in data.items():
            seed_everything(seed)
            student = BiLSTM(vocab["size"], 2)
            task = BiLSTMDistiller(student, teacher, cfg) if distilled else Supervised(student)
            fit(task, student.parameters(), train_data, epochs=epochs, lr=s["lr"], seed=seed, **train)
            acc.setdefault(name, []).append(evaluate(student, train_data))

    def cols(model: nn.Module) -> dict[str, Any]:
        latency = latency_ms(_TokenInput(model, vocab["size"]), (length,), min_run_time=0.1)  # one sentence
        return {"params": count_params(model), "bytes": 4 * count_params(model), "latency_ms": latency}

    t_cols, s_cols = cols(teacher), cols(BiLSTM(vocab["size"], 2))
    spec = [
        ("teacher", f"Transformer teacher ({n_teacher} labelled)", "teacher", t_cols),
        ("labels", f"BiLSTM, {n_train} labels", "baseline", s_cols),
        ("distil", "BiLSTM, teacher logits (MSE)", "ablation", s_cols),
        ("augmented_pseudo", "BiLSTM, + augmented, teacher argmax", "ablation", s_cols),
        ("augmented_distil", "BiLSTM, + augmented, teacher logits", "method", s_cols),
    ]
    rows = [dict(name=k, label=lab, role=role, accuracy=accuracy_stats(acc[k]), **c) for k, lab, role, c in spec]
    m = {r["name"]: r["accuracy"]["mean"] for r in rows}
    from implementations._runner import save_accuracy_plot

    figure = save_accuracy_plot(rows, ctx, "bertbilstm_tang2019", title="Transformer -> BiLSTM on a toy sentiment task")
    data_gain = 0.5 * (m["augmented_pseudo"] - m["labels"] + m["augmented_distil"] - m["distil"])
    soft_gain = 0.5 * (m["distil"] - m["labels"] + m["augmented_distil"] - m["augmented_pseudo"])
    a1 = (
        f"{'Mostly the augmented data' if data_gain > soft_gain else 'Mostly the logit targets'} at our scale: adding "
        f"the teacher-labelled perturbed sentences is worth {data_gain:+.1f} points on average, regressing logits "
        f"instead of fitting (pseudo-)labels {soft_gain:+.1f} points."
    )
    gap = m["teacher"] - m["augmented_distil"]
    ratio = t_cols["params"] / s_cols["params"]
    speed = t_cols["latency_ms"] / s_cols["latency_ms"]
    a2 = (
        f"At our scale the distilled BiLSTM is {gap:.1f} points below the teacher with {ratio:.0f}x fewer parameters "
        f"and {speed:.1f}x the teacher's single-sentence CPU speed; it gains "
        f"{m['augmented_distil'] - m['labels']:+.1f} "
        "points over the undistilled BiLSTM, most of it from the teacher labelling extra inputs, which supports "
        "reading the method as using the teacher to train a small model rather than compressing the teacher."
        if data_gain > soft_gain
        else f"At our scale the distilled BiLSTM is {gap:.1f} points below the teacher with {ratio:.0f}x fewer "
        f"parameters and {speed:.1f}x the teacher's single-sentence CPU speed."
    )
    return {
        "id": "bertbilstm_tang2019",
        "protocol": {
            "dataset": "synthetic sentiment language (fillers, Zipfian polar adjectives, negators)",
            "n_train": n_train,
            "n_test": len(y_test),
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"teacher: 2-layer transformer, width {s['teacher_dim']} (seed 0) trained on {n_teacher} "
            f"labelled sentences, a stand-in for BERT's pre-training; students: BiLSTM (embedding 16, hidden 24) on "
            f"the first {n_train} of them, plus "
            f"{cfg.copies} perturbed copies each (p_mask={cfg.p_mask}, p_pos={cfg.p_pos}, p_ng={cfg.p_ng}, n <= "
            f"{cfg.max_ngram}) labelled by the teacher; distilled students use alpha={cfg.alpha} (logit MSE only); "
            f"AdamW lr {s['lr']}, batch {s['batch_size']}, cosine, {epochs} epochs for every student.",
        },
        "rows": rows,
        "claim": {
            "text": "A BiLSTM distilled from a transformer teacher's logits on an augmented transfer set beats the "
            "same BiLSTM trained on the labelled data alone.",
            "reproduced": beats(acc["augmented_distil"], acc["labels"]),
            "evidence": f"distilled + augmented {m['augmented_distil']:.2f}% vs labels only {m['labels']:.2f}% "
            f"(teacher {m['teacher']:.2f}%); logits without augmentation {m['distil']:.2f}%, augmentation with "
            f"teacher argmax {m['augmented_pseudo']:.2f}%; mean over {len(ctx.seeds)} seed(s).",
        },
        "answers": [
            {
                "question": "Is the gain over the undistilled BiLSTM due to distillation or simply to the extra "
                "(augmented) training data?",
                "answer": a1,
                "evidence": "; ".join(f"{r['name']} {r['accuracy']['mean']:.2f}%" for r in rows),
            },
            {
                "question": 'Is the result good enough to replace BERT in practice, and is "distilling BERT" a fair '
                "description?",
                "answer": a2,
                "evidence": f"teacher {m['teacher']:.2f}% ({t_cols['params']} params, {t_cols['latency_ms']:.3f} ms), "
                f"student {m['augmented_distil']:.2f}% ({s_cols['params']} params, {s_cols['latency_ms']:.3f} ms)",
            },
        ],
        "figures": [figure],
    }


class _TokenInput(nn.Module):
    """Adapter for `latency_ms`, which feeds random floats: map them to valid token ids."""

    def __init__(self, model: nn.Module, vocab: int) -> None:
        super().__init__()
        self.model, self.vocab = model, vocab

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the wrapped model on `2 + |x| * 1000 mod (V - 2)` token ids."""
        return self.model(2 + (x.abs() * 1000).long() % (self.vocab - 2))
