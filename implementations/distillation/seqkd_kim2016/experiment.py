"""The small-scale reproduction of Kim & Rush (2016) on a toy translation task: small LSTM students trained on
references, word-level KD, sequence-level KD and both, decoded greedily and with beam search."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from implementations.distillation.seqkd_kim2016 import BOS, EOS, PAD, Config, LSTMSeq2Seq, SequenceKD, sequence_nll

if TYPE_CHECKING:
    from implementations._harness import RunContext


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run seqkd_kim2016`
# ---------------------------------------------------------------------------------------------------------------------

SMALL = dict(n_train=2000, n_test=1000, min_len=3, max_len=6, p_style_a=0.65, p_noise=0.1, teacher_hidden=64,
             student_hidden=16, teacher_epochs=15, epochs=15, lr=1e-2, batch_size=100, beam=5)  # fmt: skip

N_SYMBOLS = 6  # source symbols; the target has two spellings ("styles") of each


def translation_task(n: int, s: dict, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    r"""Toy translation with several valid outputs and noisy references.

    The source is $L \in [3, 6]$ symbols $v$, left-padded; a valid translation is the reversed source written in one
    *style* (style A ids $3 + v$, style B ids $3 + 6 + v$) followed by `EOS`. Each reference picks style A with
    probability `p_style_a`, then every token is replaced by a random one with probability `p_noise`.

    Returns:
        `(src (n, 6), reference (n, 7), valid (n, 2, 7))`: the two valid translations of each source.
    """
    length = torch.randint(s["min_len"], s["max_len"] + 1, (n,), generator=generator)
    symbols = torch.randint(0, N_SYMBOLS, (n, s["max_len"]), generator=generator)
    src = torch.full((n, s["max_len"]), PAD, dtype=torch.long)
    valid = torch.full((n, 2, s["max_len"] + 1), PAD, dtype=torch.long)
    for i in range(n):
        seq = symbols[i, : int(length[i])]
        src[i, s["max_len"] - len(seq) :] = seq + 1  # left padding: the encoder ends on the last symbol
        for style, offset in enumerate((3, 3 + N_SYMBOLS)):
            valid[i, style, : len(seq)] = seq.flip(0) + offset
            valid[i, style, len(seq)] = EOS
    style_b = torch.rand(n, generator=generator) >= s["p_style_a"]
    reference = torch.where(style_b[:, None], valid[:, 1], valid[:, 0])
    noise = (torch.rand(reference.shape, generator=generator) < s["p_noise"]) & (reference > EOS)
    random_tokens = torch.randint(3, 3 + 2 * N_SYMBOLS, reference.shape, generator=generator)
    return src, torch.where(noise, random_tokens, reference), valid


class _ReferenceTask(nn.Module):
    r"""Teacher training: the likelihood of the references, $-\log q(t \mid s)$."""

    def __init__(self, model: LSTMSeq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.model(x, torch.cat([torch.full_like(y[:, :1], BOS), y[:, :-1]], 1))  # (B, J, V)
        return logits, {"nll": sequence_nll(logits, y)}


def _valid_rate(out: Tensor, valid: Tensor) -> float:
    """Percent of outputs `(N, J)` equal to one of the valid translations `(N, 2, J)`."""
    return 100.0 * float((out[:, None] == valid).all(-1).any(-1).float().mean())


def _score(model: LSTMSeq2Seq, src: Tensor, valid: Tensor, beam: int) -> tuple[float, Tensor]:
    """Exact-match accuracy of the model's decoded outputs, and the outputs `(N, J)`."""
    out = model.generate(src, beam, max_len=valid.shape[-1])  # (N, J)
    return _valid_rate(out, valid), out


@torch.no_grad()
def _entropy(model: LSTMSeq2Seq, src: Tensor, out: Tensor) -> float:
    """Mean entropy (nats) of the model's next-token distribution along its own greedy output."""
    decoder_in = torch.cat([torch.full_like(out[:, :1], BOS), out[:, :-1]], 1)
    log_p = F.log_softmax(model(src, decoder_in), -1)  # (N, J, V)
    entropy = -(log_p.exp() * log_p).sum(-1)
    mask = out != PAD
    return float((entropy * mask).sum() / mask.sum())


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher LSTM; small LSTM students on references, word-level KD, sequence-level KD, both; greedy and beam."""
    from dataclasses import replace

    from implementations._data import TensorData
    from implementations._harness import fit, seed_everything
    from implementations._measure import accuracy_stats, beats, count_params

    s = SMALL
    n_train = min(s["n_train"], ctx.n_train or s["n_train"])
    gen = torch.Generator().manual_seed(0)
    src, ref, valid_train = translation_task(n_train, s, gen)
    src_test, _, valid_test = translation_task(s["n_test"], s, gen)
    vocab_src, vocab_tgt = N_SYMBOLS + 1, 3 + 2 * N_SYMBOLS
    data = TensorData(src, ref, src_test, valid_test[:, 0], vocab_tgt, tuple(src.shape[1:]), name="toy translation")
    train = dict(batch_size=s["batch_size"], device=ctx.device, progress=False, optimizer="adamw", weight_decay=0.0)

    seed_everything(0)
    teacher = LSTMSeq2Seq(vocab_src, vocab_tgt, s["teacher_hidden"])
    fit(_ReferenceTask(teacher), teacher.parameters(), data, epochs=ctx.epochs(s["teacher_epochs"]), lr=s["lr"],
        **train)  # fmt: skip
    teacher.requires_grad_(False).eval()
    # Sequence-level KD data: the teacher's beam output for every training source, decoded once (Sec. 3.2).
    y_hat = teacher.generate(src, s["beam"], max_len=ref.shape[1])
    distilled = replace(data, y_train=y_hat)

    epochs = ctx.epochs(s["epochs"])
    runs = {
        "references": (Config(mode="none"), data),
        "word_kd": (Config(mode="word"), data),
        "seq_kd": (Config(mode="seq", offline=True), distilled),
    }
    greedy: dict[str, list[float]] = {}
    beam: dict[str, list[float]] = {}
    entropy: dict[str, list[float]] = {}  # model -> per-seed values
    for seed in ctx.seeds:
        for name, (cfg, train_data) in runs.items():
            seed_everything(seed)
            student = LSTMSeq2Seq(vocab_src, vocab_tgt, s["student_hidden"])
            fit(SequenceKD(student, teacher, cfg), student.parameters(), train_data, epochs=epochs, lr=s["lr"],
                seed=seed, **train)  # fmt: skip
            student.eval()
            acc, out = _score(student, src_test, valid_test, 1)
            greedy.setdefault(name, []).append(acc)
            beam.setdefault(name, []).append(_score(student, src_test, valid_test, s["beam"])[0])
            entropy.setdefault(name, []).append(_entropy(student, src_test, out))
    n = len(ctx.seeds)
    t_greedy, t_out = _score(teacher, src_test, valid_test, 1)
    greedy["teacher"], beam["teacher"] = (
        [t_greedy],
        [_score(teacher, src_test, valid_test, s["beam"])[0]],
    )  # one shared teacher
    entropy["teacher"] = [_entropy(teacher, src_test, t_out)]
    ref_valid, hat_valid = _valid_rate(ref, valid_train), _valid_rate(y_hat, valid_train)

    mean = {k: sum(v) / n for k, v in {**{f"{k}_beam": v for k, v in beam.items()}, **greedy}.items()}
    ent = {k: sum(v) / n for k, v in entropy.items()}
    labels = {
        "teacher": (f"Teacher LSTM {s['teacher_hidden']}", "teacher", teacher),
        "references": (f"Student LSTM {s['student_hidden']}, references", "baseline", None),
        "word_kd": ("Student, word-level KD", "ablation", None),
        "seq_kd": ("Student, sequence-level KD", "method", None),
    }
    s_params = count_params(LSTMSeq2Seq(vocab_src, vocab_tgt, s["student_hidden"]))
    rows = []
    for name, (label, role, model) in labels.items():
        params = count_params(model) if model is not None else s_params
        extra = {f"beam{s['beam']}_accuracy": mean[f"{name}_beam"], "greedy_entropy_nats": ent[name]}
        rows.append(dict(name=name, label=f"{label} (greedy)", role=role, accuracy=accuracy_stats(greedy[name]),
                         params=params, bytes=4 * params, extra=extra))  # fmt: skip
    figure = _plot(rows, ctx, s["beam"])
    gap = {k: mean[f"{k}_beam"] - mean[k] for k in labels}
    gain_greedy, gain_beam = mean["seq_kd"] - mean["references"], mean["seq_kd_beam"] - mean["references_beam"]
    answer = (
        f"Because the student trained on the teacher's beam outputs puts its mass on one output: its per-step "
        f"entropy along its greedy output is {ent['seq_kd']:.3f} nats vs {ent['references']:.3f} for the student "
        f"trained on references, and beam search adds {gap['seq_kd']:+.1f} points to its greedy accuracy vs "
        f"{gap['references']:+.1f} for the baseline."
        if ent["seq_kd"] < ent["references"] and gap["seq_kd"] < gap["references"]
        else f"Not confirmed at our scale: per-step entropy {ent['seq_kd']:.3f} (seq-KD) vs {ent['references']:.3f} "
        f"(references), beam-minus-greedy gap {gap['seq_kd']:+.1f} vs {gap['references']:+.1f} points."
    )
    return {
        "id": "seqkd_kim2016",
        "protocol": {
            "dataset": "toy translation: reverse 3-6 symbols, two output styles, noisy references",
            "n_train": n_train,
            "n_test": s["n_test"],
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"references pick style A with p={s['p_style_a']} and carry {s['p_noise']:.0%} random tokens "
            f"({ref_valid:.0f}% of training references are valid translations; {hat_valid:.0f}% of the teacher's "
            f"beam-{s['beam']} outputs are); LSTM encoder-decoders without attention, teacher hidden "
            f"{s['teacher_hidden']} (seed 0), students hidden {s['student_hidden']}; word-level weight alpha=0.5; "
            f"AdamW lr {s['lr']}, batch {s['batch_size']}, cosine, {epochs} epochs for every student; accuracy = "
            f"percent of test outputs that exactly equal one of the two valid translations, decoded greedily "
            f"(extra: with beam {s['beam']}; entropy of the next-token distribution along the greedy output).",
        },
        "rows": rows,
        "claim": {
            "text": "Sequence-level KD (training on the teacher's beam outputs) makes a small student better than "
            "training it on the references, with a larger gain under greedy decoding than under beam search "
            "(paper: +4.2 BLEU greedy, +1.7 beam).",
            "reproduced": beats(greedy["seq_kd"], greedy["references"])
            and beats(beam["seq_kd"], beam["references"])
            and gain_greedy >= gain_beam,
            "evidence": f"exact match, seq-KD vs references: greedy {mean['seq_kd']:.2f}% vs {mean['references']:.2f}% "
            f"({gain_greedy:+.2f}), beam {s['beam']} {mean['seq_kd_beam']:.2f}% vs {mean['references_beam']:.2f}% "
            f"({gain_beam:+.2f}); word-KD greedy {mean['word_kd']:.2f}% (beam {mean['word_kd_beam']:.2f}%), teacher "
            f"{mean['teacher']:.2f}% (beam {mean['teacher_beam']:.2f}%); mean over {n} seed(s).",
        },
        "answers": [
            {
                "question": "Why does sequence-level distillation make beam search almost unnecessary for the student?",
                "answer": answer,
                "evidence": "; ".join(
                    f"{k}: greedy {mean[k]:.1f}%, beam {mean[k + '_beam']:.1f}%, entropy {ent[k]:.3f}" for k in labels
                ),  # fmt: skip
            }
        ],
        "figures": [figure],
    }


def _plot(rows: list[dict], ctx: RunContext, beam: int) -> str:
    """Grouped bars: greedy and beam exact-match accuracy per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["accuracy"]["mean"] for r in rows], 0.4, yerr=[r["accuracy"]["std"] for r in rows],
           label="greedy", color="#1f77b4", capsize=3)  # fmt: skip
    ax.bar([x + 0.2 for x in xs], [r["extra"][f"beam{beam}_accuracy"] for r in rows], 0.4, label=f"beam {beam}",
           color="#d62728")  # fmt: skip
    ax.set_xticks(list(xs), [r["label"].replace(" (greedy)", "") for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("exact-match accuracy (%)")
    ax.set_title("Sequence-level KD on a toy translation task", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / "seqkd_kim2016_decoding.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"{ctx.results_dir.resolve().name}/figures/{path.name}"
