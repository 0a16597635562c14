r"""Distilling Word Embeddings: An Encoding Approach (Mou, Jia, Xu, Li, Zhang & Jin, 2016).

Paper: [arXiv:1506.04488](https://arxiv.org/abs/1506.04488) · notes: `papers/wordembed_mou2016.md`

Large ("cumbersome") pretrained word embeddings $e_w \in \mathbb{R}^{D}$ are mapped by a learned encoding layer to
small ones,

$$
\tilde{e}_w = f\big(W_{\mathrm{enc}}\, e_w + b_{\mathrm{enc}}\big), \qquad W_{\mathrm{enc}} \in \mathbb{R}^{d \times D},
\ d \ll D,
$$

trained through the task network on the task's labels and, optionally, the soft targets $q^{(T)}$ of a teacher that
uses the large embeddings,

$$
\mathcal{L} = (1 - \alpha)\,\mathrm{CE}\big(y, p^{(1)}\big)
    + \alpha\, T^2\, \mathrm{KL}\big(q^{(T)} \,\|\, p^{(T)}\big).
$$

After training, $\tilde{e}_w$ is precomputed for every word: the deployed model keeps a $V \times d$ table and the
small task network, and both the $V \times D$ table and the encoder are discarded.
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

__all__ = ["BagOfEmbeddings", "Config", "EmbeddingDistiller", "EncodedEmbedding", "embedding_distill_loss", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Sizes and loss weights (the paper distils to small task-specific embeddings)."""

    small_dim: int = 8  # $d$
    temperature: float = 2.0  # $T$ of the teacher's soft targets
    alpha: float = 0.5  # $\alpha$: weight of the soft-target term; 0 = encoding trained on labels only


def embedding_distill_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float, alpha: float
) -> dict[str, Tensor]:
    r"""$(1-\alpha)\,\mathrm{CE}(y, p^{(1)})$ and $\alpha T^2\,\mathrm{KL}(q^{(T)} \| p^{(T)})$, batch means.

    Args:
        student_logits: $z_s$, shape `(B, K)`.
        teacher_logits: $z_t$, shape `(B, K)`.
        labels: $y$, shape `(B,)`.
        temperature: $T$.
        alpha: $\alpha \in [0, 1]$.
    """
    log_p = F.log_softmax(student_logits / temperature, dim=-1)  # (B, K)
    log_q = F.log_softmax(teacher_logits / temperature, dim=-1)  # (B, K)
    return {
        "ce": (1 - alpha) * F.cross_entropy(student_logits, labels),
        "kd": alpha * temperature**2 * F.kl_div(log_p, log_q, reduction="batchmean", log_target=True),
    }


class EncodedEmbedding(nn.Module):
    r"""$\tilde{e}_w = \tanh(W_{\mathrm{enc}} e_w + b_{\mathrm{enc}})$ on a frozen table $E$ of shape $V \times D$."""

    def __init__(self, large: Tensor, small_dim: int) -> None:
        super().__init__()
        self.register_buffer("large", large)  # (V, D), frozen, never deployed
        self.encoder = nn.Linear(large.shape[1], small_dim)  # $W_{\mathrm{enc}}, b_{\mathrm{enc}}$

    def forward(self, tokens: Tensor) -> Tensor:
        """Small embeddings `(B, L, d)` of token ids `(B, L)`."""
        return torch.tanh(self.encoder(self.large[tokens]))

    @torch.no_grad()
    def precompute(self) -> nn.Embedding:
        r"""The deployed $V \times d$ table of all $\tilde{e}_w$."""
        return nn.Embedding.from_pretrained(torch.tanh(self.encoder(self.large)), freeze=True)


class BagOfEmbeddings(nn.Module):
    """Task network: mean of the word embeddings, one ReLU layer, logits. `embedding` maps `(B, L)` to `(B, L, d)`."""

    def __init__(self, embedding: nn.Module, dim: int, num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.embedding = embedding
        self.classifier = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits `(B, K)` from token ids `(B, L)`."""
        return self.classifier(self.embedding(tokens).mean(dim=1))


class EmbeddingDistiller(Distiller):
    """Trains a student (e.g. a `BagOfEmbeddings` over an `EncodedEmbedding`) on labels + the teacher's soft targets.

    The distiller treats its inputs generically: any student and teacher mapping `x` to logits `(B, K)`.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and the weighted `ce` and `kd` terms."""
        logits_s = self.student(x)  # (B, K)
        with torch.no_grad():
            logits_t = self.teacher(x)  # (B, K)
        return logits_s, embedding_distill_loss(logits_s, logits_t, y, self.cfg.temperature, self.cfg.alpha)


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run wordembed_mou2016`
# ---------------------------------------------------------------------------------------------------------------------

SMALL = dict(vocab=2000, n_polar=500, large_dim=64, nuisance=16, signal=1.0, noise=1.0, length=10, n_train=1000,
             n_test=2000, epochs=20, lr=1e-2, batch_size=64)  # fmt: skip


def synthetic_corpus(s: dict, n_train: int, seed: int = 0) -> dict[str, Tensor]:
    r"""A toy language with "pretrained" large embeddings.

    Word $w$ has a polarity $s_w \in \{-1, 0, +1\}$ (the first `n_polar` words are polar) and 16 nuisance
    attributes $a_w$; its large embedding is $e_w = r_w s_w u + A a_w + \sigma \varepsilon_w$ with fixed random $u$,
    $A$, a per-word reliability $r_w \sim U(0, 2)$, $\lVert u \rVert \approx$ `signal` and $\sigma \approx$ `noise`.
    A sentence has 1 or 3 polar words among fillers (Zipfian frequencies within each group); its label is the sign of
    the sum of the polarities.
    """
    gen = torch.Generator().manual_seed(seed)
    v, polar, dim = s["vocab"], s["n_polar"], s["large_dim"]
    polarity = torch.zeros(v)
    polarity[:polar] = torch.where(torch.rand(polar, generator=gen) < 0.5, -1.0, 1.0)
    attributes = torch.randn(v, s["nuisance"], generator=gen)
    direction = s["signal"] * torch.randn(dim, generator=gen) / dim**0.5
    mixing = torch.randn(s["nuisance"], dim, generator=gen) / dim**0.5
    noise = s["noise"] * torch.randn(v, dim, generator=gen) / dim**0.5
    reliability = 2 * torch.rand(v, 1, generator=gen)  # $r_w$: how well the "pretraining" captured the polarity
    large = reliability * polarity[:, None] * direction + attributes @ mixing + noise

    def zipf(n: int) -> Tensor:
        return 1.0 / torch.arange(1, n + 1).float()

    def sentences(n: int) -> tuple[Tensor, Tensor]:
        tokens = polar + torch.multinomial(zipf(v - polar), n * s["length"], replacement=True, generator=gen)
        tokens = tokens.view(n, s["length"])
        k = 1 + 2 * torch.randint(0, 2, (n,), generator=gen)  # 1 or 3 polar words: no ties
        words = torch.multinomial(zipf(polar), n * 3, replacement=True, generator=gen).view(n, 3)
        slots = torch.argsort(torch.rand(n, s["length"], generator=gen), dim=1)[:, :3]  # 3 distinct positions
        use = torch.arange(3)[None, :] < k[:, None]  # (n, 3)
        tokens.scatter_(1, slots, torch.where(use, words, tokens.gather(1, slots)))
        score = (polarity[words] * use).sum(-1)
        return tokens, (score > 0).long()

    x_train, y_train = sentences(n_train)
    x_test, y_test = sentences(s["n_test"])
    return dict(large=large, polarity=polarity, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Large-embedding teacher; small students: direct, PCA-initialised, encoded (labels), encoded + soft targets."""
    return _reproduce(ctx)


def _probe(table: Tensor, polarity: Tensor, words: Tensor, seen: Tensor) -> tuple[float, float]:
    """Linear-probe accuracy (%) for the sign of polar words, fit on half of them, scored on the other half's
    seen / unseen words."""
    from sklearn.linear_model import LogisticRegression

    perm = words[torch.randperm(len(words), generator=torch.Generator().manual_seed(0))]
    fit_words, eval_words = perm[: len(perm) // 2], perm[len(perm) // 2 :]
    probe = LogisticRegression(max_iter=500).fit(table[fit_words].numpy(), polarity[fit_words].numpy())
    correct = torch.as_tensor(probe.predict(table[eval_words].numpy()) == polarity[eval_words].numpy())
    in_train = seen[eval_words]
    return 100.0 * float(correct[in_train].float().mean()), 100.0 * float(correct[~in_train].float().mean())


def _reproduce(ctx: RunContext) -> dict[str, Any]:
    from implementations._data import TensorData
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, count_params
    from implementations._runner import save_accuracy_plot

    s, cfg = SMALL, Config()
    n_train = min(s["n_train"], ctx.n_train or s["n_train"])
    corpus = synthetic_corpus(s, n_train)
    large, polarity, d = corpus["large"], corpus["polarity"], cfg.small_dim
    data = TensorData(corpus["x_train"], corpus["y_train"], corpus["x_test"], corpus["y_test"], 2, (s["length"],),
                      name="synthetic bag-of-words sentiment")  # fmt: skip
    seen = torch.zeros(s["vocab"], dtype=torch.bool)
    seen[data.x_train.flatten()] = True
    epochs = ctx.epochs(s["epochs"])
    train = dict(epochs=epochs, lr=s["lr"], batch_size=s["batch_size"], device=ctx.device, progress=False,
                 optimizer="adamw", weight_decay=0.0)  # fmt: skip
    # PCA of the large table, for the "is it just a good initialisation?" control.
    centred = large - large.mean(0)
    pca = centred @ torch.linalg.svd(centred, full_matrices=False).Vh[:d].T  # (V, d)
    pca = pca / pca.std()

    def build(kind: str) -> nn.Module:
        if kind == "teacher":
            return BagOfEmbeddings(nn.Embedding.from_pretrained(large, freeze=True), large.shape[1], 2)
        if kind == "encoded":
            return BagOfEmbeddings(EncodedEmbedding(large, d), d, 2)
        table = nn.Embedding(s["vocab"], d)
        if kind == "pca_init":
            table.weight.data.copy_(pca)
        return BagOfEmbeddings(table, d, 2)

    acc: dict[str, list[float]] = {}
    probes: dict[str, list[tuple[float, float]]] = {}
    for seed in ctx.seeds:
        seed_everything(seed)
        teacher = build("teacher")
        fit(Supervised(teacher), teacher.parameters(), data, seed=seed, **train)
        teacher.eval()
        acc.setdefault("teacher", []).append(evaluate(teacher, data))
        students = [("direct", "direct", None), ("pca_init", "pca_init", None),
                    ("encoded_labels", "encoded", 0.0), ("encoded_soft", "encoded", cfg.alpha)]  # fmt: skip
        for name, kind, alpha in students:
            seed_everything(seed)  # every student's task network starts from the same initialisation
            student = build(kind)
            if alpha is None:
                task: nn.Module = Supervised(student)
            else:
                task = EmbeddingDistiller(student, teacher, Config(d, cfg.temperature, alpha))
            fit(task, [p for p in student.parameters() if p.requires_grad], data, seed=seed, **train)
            if kind == "encoded":  # deploy: precompute the small table, drop the large one and the encoder
                student.embedding = student.embedding.precompute()
            acc.setdefault(name, []).append(evaluate(student, data))
            table = student.embedding.weight.detach()
            probes.setdefault(name, []).append(_probe(table, polarity, torch.arange(s["n_polar"]), seen))

    n = len(ctx.seeds)
    deployed = count_params(build("direct"))
    t_params = count_params(build("teacher"))
    labels = {
        "teacher": ("Teacher: large embeddings (D=64), frozen", "teacher", t_params),
        "direct": (f"Small embeddings (d={d}) trained directly", "baseline", deployed),
        "pca_init": ("Small embeddings, PCA of large, fine-tuned", "ablation", deployed),
        "encoded_labels": ("Encoded (distilled) embeddings, labels only", "ablation", deployed),
        "encoded_soft": ("Encoded embeddings + teacher soft targets", "method", deployed),
    }
    rows = []
    for name, (label, role, params) in labels.items():
        extra: dict[str, float | str] = {}
        if name in probes:
            extra = {"probe_seen_words": sum(p[0] for p in probes[name]) / n,
                     "probe_unseen_words": sum(p[1] for p in probes[name]) / n}  # fmt: skip
        rows.append(dict(name=name, label=label, role=role, accuracy=accuracy_stats(acc[name]), params=params,
                         bytes=4 * params, extra=extra))  # fmt: skip
    m = {r["name"]: r["accuracy"]["mean"] for r in rows}
    pr = {r["name"]: r["extra"] for r in rows if r["extra"]}
    figure = save_accuracy_plot(rows, ctx, "wordembed_mou2016", title=f"Distilled vs direct {d}-d word embeddings")
    unseen_share = 100.0 * float((~seen[: s["n_polar"]]).float().mean())
    answer = (
        f"Here, knowledge about rare words: a linear probe reads a polar word's sign from the distilled embeddings "
        f"with {pr['encoded_soft']['probe_unseen_words']:.0f}% accuracy for words absent from the training sentences "
        f"({unseen_share:.0f}% of polar words) vs {pr['direct']['probe_unseen_words']:.0f}% for directly trained ones, "
        f"which never receive a gradient for them; for seen words the gap is "
        f"{pr['encoded_soft']['probe_seen_words']:.0f}% vs {pr['direct']['probe_seen_words']:.0f}%. The paper's "
        "syntactic-information finding cannot be tested on this toy language."
    )
    return {
        "id": "wordembed_mou2016",
        "protocol": {
            "dataset": data.name,
            "n_train": n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"vocabulary {s['vocab']} words ({s['n_polar']} polar), Zipfian frequencies; large embeddings "
            f"D={s['large_dim']} built from each word's polarity and {s['nuisance']} nuisance attributes (stand-in for "
            f"pretrained vectors); task: sign of the summed polarity of a {s['length']}-word sentence, mean-of-"
            f"embeddings classifier; small d={d}; teacher = the same classifier on the frozen large table, one per "
            f"seed; encoder tanh(W e + b) precomputed into a {s['vocab']}x{d} table after training; soft targets "
            f"T={cfg.temperature:g}, alpha={cfg.alpha}; AdamW lr {s['lr']}, batch {s['batch_size']}, {epochs} epochs "
            "for every model; probes: logistic regression on half of the polar words, scored on the other half.",
        },
        "rows": rows,
        "claim": {
            "text": "Small embeddings distilled from large ones through an encoding layer beat small embeddings of "
            "the same size trained directly on the task.",
            "reproduced": beats(acc["encoded_soft"], acc["direct"]) and beats(acc["encoded_labels"], acc["direct"]),
            "evidence": f"encoded + soft targets {m['encoded_soft']:.2f}%, encoded with labels only "
            f"{m['encoded_labels']:.2f}%, direct {m['direct']:.2f}%, PCA-initialised {m['pca_init']:.2f}%, large-"
            f"embedding teacher {m['teacher']:.2f}%; deployed students have {deployed} parameters vs {t_params}; "
            f"mean over {n} seed(s).",
        },
        "answers": [
            {
                "question": "What exactly do directly trained small embeddings lose that distilled ones keep?",
                "answer": answer,
                "evidence": "; ".join(
                    f"{k}: probe seen {v['probe_seen_words']:.1f}%, unseen {v['probe_unseen_words']:.1f}%"
                    for k, v in pr.items()
                ),  # fmt: skip
            }
        ],
        "figures": [figure],
    }
