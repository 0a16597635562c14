r"""Data-Free Knowledge Distillation for Deep Neural Networks (Lopes, Fenu & Starner, 2017).

Paper: [arXiv:1710.07535](https://arxiv.org/abs/1710.07535) · notes: `papers/datafree_lopes2017.md`

The teacher is released with *metadata*: statistics of its activations $a_l(x)$ on the training set, here per-class
means $\mu_{c,l}$ and standard deviations $\sigma_{c,l}$ of a set of recorded signals $\phi_j$ (the top layer, every
layer, or spectral coefficients of consecutive layer pairs). A transfer set is rebuilt without the data: for a class
$c$, draw a target $\hat{\phi}_j \sim \mathcal{N}(\mu_{c,j}, \mathrm{diag}\,\sigma_{c,j}^2)$ and optimise the input
from noise,

$$
\hat{x} = \arg\min_{x} \sum_{j} \frac{1}{D_j} \big\lVert \phi_j(x) - \hat{\phi}_j \big\rVert_2^2 ,
$$

then distil the student on $\{\hat{x}\}$ with the teacher's softened outputs,
$T^2\,\mathrm{KL}(p_t^{(T)} \| p_s^{(T)})$. The spectral record uses the graph of two consecutive layers, with
adjacency $|W_l|$ between their units and Laplacian $L = D - A = U \Lambda U^\top$:
$\phi_l(x) = U_k^\top [a_{l-1}(x); a_l(x)]$ keeps the $k$ smoothest graph-Fourier coefficients. $U_k$ is rebuilt
from the released weights, so only the coefficient statistics are stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from implementations.distillation._base import Distiller
from implementations.distillation.kd_hinton2015 import kd_loss

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = [
    "ActivationRecord",
    "Config",
    "DataFreeKD",
    "layer_pair_basis",
    "reconstruct",
    "reconstruction_loss",
    "record_metadata",
    "reproduce",
    "teacher_activations",
]


@dataclass(frozen=True)
class Config:
    """Hyperparameters of reconstruction and distillation (scaled to an MLP on 8x8 digits)."""

    temperature: float = 4.0  # $T$ of the distillation on the transfer set
    steps: int = 150  # Adam steps on the inputs per reconstruction
    lr: float = 0.1  # Adam step size on the inputs
    spectral_k: int = 32  # $k$ graph-Fourier coefficients kept per layer pair


def teacher_activations(teacher: nn.Module, x: Tensor) -> list[Tensor]:
    """Flattened hidden activations and logits `[(B, H_1), ..., (B, K)]` of a `return_features` model."""
    logits, features = teacher(x, return_features=True)
    return [f.flatten(1) for f in features] + [logits]


def layer_pair_basis(weight: Tensor, k: int) -> Tensor:
    r"""The $k$ eigenvectors of smallest eigenvalue of the bipartite graph Laplacian of one layer pair.

    Args:
        weight: $W_l$, shape `(H_l, H_{l-1})`; the adjacency is $A = [[0, |W_l|^\top], [|W_l|, 0]]$.
        k: Number of eigenvectors kept.

    Returns:
        $U_k$, shape `(H_{l-1} + H_l, k)`, orthonormal columns.
    """
    h_out, h_in = weight.shape
    adjacency = torch.zeros(h_in + h_out, h_in + h_out, dtype=torch.float64)
    adjacency[h_in:, :h_in] = weight.detach().abs().double()
    adjacency[:h_in, h_in:] = adjacency[h_in:, :h_in].T
    laplacian = torch.diag(adjacency.sum(1)) - adjacency
    _, vectors = torch.linalg.eigh(laplacian)  # eigenvalues in ascending order
    return vectors[:, :k].float()


@dataclass
class ActivationRecord:
    """Released metadata: per-class mean and std of each recorded signal, and the class frequencies."""

    kind: str  # "top_layer", "all_layers" or "spectral"
    means: list[Tensor]  # (K, D_j) per signal
    stds: list[Tensor]  # (K, D_j) per signal
    class_counts: Tensor  # (K,)
    bases: list[Tensor]  # spectral only: U_k per layer pair, rebuilt from the weights (not stored)

    def signals(self, activations: list[Tensor]) -> list[Tensor]:
        r"""The recorded signals $\phi_j$ of a list of activations `[(B, H_1), ..., (B, K)]`."""
        if self.kind == "top_layer":
            return [activations[-1]]
        if self.kind == "all_layers":
            return activations
        pairs = zip(activations[:-1], activations[1:], strict=True)
        return [torch.cat(pair, dim=1) @ basis for pair, basis in zip(pairs, self.bases, strict=True)]

    def num_bytes(self) -> int:
        """Storage of the metadata as fp32 (the spectral bases come from the released weights for free)."""
        return 4 * (sum(m.numel() + s.numel() for m, s in zip(self.means, self.stds, strict=True)) + len(self))

    def __len__(self) -> int:
        return len(self.class_counts)


@torch.no_grad()
def record_metadata(
    teacher: nn.Module, x: Tensor, y: Tensor, kind: str, weights: list[Tensor] | None = None, k: int = 32
) -> ActivationRecord:
    """Per-class statistics of the teacher's recorded signals on the (private) training set.

    Args:
        teacher: The trained teacher (a `return_features` model).
        x: Training inputs `(N, ...)`; y: labels `(N,)`.
        kind: `top_layer`, `all_layers` or `spectral`.
        weights: Spectral only: $W_l$ between consecutive recorded activations, `(H_l, H_{l-1})` each.
        k: Spectral only: coefficients kept per pair.
    """
    num_classes = int(y.max()) + 1
    bases = [layer_pair_basis(w, k) for w in weights] if kind == "spectral" and weights else []
    record = ActivationRecord(kind, [], [], torch.bincount(y, minlength=num_classes), bases)
    for signal in record.signals(teacher_activations(teacher, x)):
        record.means.append(torch.stack([signal[y == c].mean(0) for c in range(num_classes)]))  # (K, D_j)
        record.stds.append(torch.stack([signal[y == c].std(0) for c in range(num_classes)]))  # (K, D_j)
    return record


def reconstruction_loss(signals: list[Tensor], targets: list[Tensor]) -> Tensor:
    r"""$\sum_j \frac{1}{D_j} \lVert \phi_j(x) - \hat{\phi}_j \rVert^2$, averaged over the batch."""
    return sum(((s - t) ** 2).mean(dim=1) for s, t in zip(signals, targets, strict=True)).mean()


def reconstruct(
    teacher: nn.Module, record: ActivationRecord, n: int, input_shape: tuple[int, ...], cfg: Config, seed: int
) -> tuple[Tensor, Tensor]:
    """Rebuild `n` inputs from the metadata alone: classes by frequency, targets sampled, inputs optimised.

    Returns:
        `(x_hat, c)`: inputs `(n, *input_shape)` and the classes they were drawn for `(n,)`.
    """
    gen = torch.Generator().manual_seed(seed)
    classes = torch.multinomial(record.class_counts.float(), n, replacement=True, generator=gen)  # (n,)
    targets = [
        m[classes] + s[classes] * torch.randn(m[classes].shape, generator=gen)
        for m, s in zip(record.means, record.stds, strict=True)
    ]  # sampled once per input
    x = torch.randn(n, *input_shape, generator=gen).requires_grad_(True)  # start from noise
    opt = torch.optim.Adam([x], lr=cfg.lr)
    for _ in range(cfg.steps):
        loss = reconstruction_loss(record.signals(teacher_activations(teacher, x)), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return x.detach(), classes


class DataFreeKD(Distiller):
    """KD on a transfer set that may hold no real example: the labels `y` of the batch are never used."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits `(B, K)` and `{"kd": T^2 KL(p_t || p_s)}` on the (reconstructed) inputs."""
        logits_s = self.student(x)  # (B, K)
        with torch.no_grad():
            logits_t = self.teacher(x)  # (B, K)
        return logits_s, {"kd": kd_loss(logits_s, logits_t, self.cfg.temperature)}


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run datafree_lopes2017`
# ---------------------------------------------------------------------------------------------------------------------

#: sklearn digits on a CPU: MLP teacher 64-128-128-10, MLP student 64-8-8-10 (small enough that the teacher-student
#: gap exceeds the seed-to-seed spread, so the transfer sets can be told apart).
SMALL = dict(dataset="digits", teacher_width=0.5, student_width=1 / 32, teacher_epochs=40, epochs=40, lr=0.05)
OPEN_QUESTION = (
    "How close does a student trained only on inputs reconstructed from activation records get to one distilled on "
    "the real data, and which kind of record is worth its storage cost?"
)
RECORDS = ("top_layer", "all_layers", "spectral")


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher, then one student distilled on real data, on noise, and on three reconstructed transfer sets."""
    from dataclasses import replace

    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row
    from implementations._models import build_model
    from implementations._runner import save_accuracy_plot

    s, cfg = SMALL, Config()
    cfg = replace(cfg, steps=ctx.epochs(cfg.steps))
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    train = dict(lr=s["lr"], batch_size=128, device="cpu", progress=False)
    epochs = ctx.epochs(s["epochs"])

    def new(width: float) -> nn.Module:
        return build_model("mlp", data.num_classes, data.input_shape, width=width)

    # One teacher (seed 0) and one release of metadata; every seed rebuilds its own transfer set and student.
    seed_everything(0)
    teacher = new(s["teacher_width"])
    fit(Supervised(teacher), teacher.parameters(), data, epochs=ctx.epochs(s["teacher_epochs"]), **train)
    teacher.eval().requires_grad_(False)
    weights = [layer.weight for layer in teacher.layers[1:]] + [teacher.head.weight]  # hidden-to-hidden pairs
    records = {k: record_metadata(teacher, data.x_train, data.y_train, k, weights, cfg.spectral_k) for k in RECORDS}
    acc: dict[str, list[float]] = {"teacher": [evaluate(teacher, data)]}  # one shared teacher: a single value
    n = data.n_train
    for seed in ctx.seeds:
        sets = {
            "kd_real": data.x_train,
            "kd_noise": torch.randn(n, *data.input_shape, generator=torch.Generator().manual_seed(seed)),
        }
        for kind, record in records.items():
            sets[f"kd_{kind}"] = reconstruct(teacher, record, n, data.input_shape, cfg, seed)[0]
        for name, x_transfer in sets.items():
            seed_everything(seed)
            student = new(s["student_width"])
            transfer = replace(data, x_train=x_transfer, y_train=torch.zeros(n, dtype=torch.long))  # no labels
            fit(DataFreeKD(student, teacher, cfg), student.parameters(), transfer, epochs=epochs, seed=seed, **train)
            acc.setdefault(name, []).append(evaluate(student, data))
        seed_everything(seed)
        student = new(s["student_width"])
        fit(Supervised(student), student.parameters(), data, epochs=epochs, seed=seed, **train)
        acc.setdefault("student_labels", []).append(evaluate(student, data))

    t_cols, s_cols = model_row(teacher, data.input_shape), model_row(new(s["student_width"]), data.input_shape)
    meta_bytes = {kind: record.num_bytes() for kind, record in records.items()}
    spec = [
        ("teacher", "Teacher MLP 64-128-128-10", "teacher", t_cols, {}),
        ("student_labels", "Student on labels (real data)", "ablation", s_cols, {}),
        ("kd_real", "KD on the real training set", "baseline", s_cols, {}),
        ("kd_noise", "KD on Gaussian noise", "baseline", s_cols, {}),
        ("kd_top_layer", "Data-free: top-layer record", "ablation", s_cols, {}),
        ("kd_all_layers", "Data-free: all-layers record", "method", s_cols, {}),
        ("kd_spectral", f"Data-free: layer-pair spectral record (k={cfg.spectral_k})", "ablation", s_cols, {}),
    ]
    rows = []
    for name, label, role, cols, extra in spec:
        kind = name.removeprefix("kd_")
        if kind in meta_bytes:
            extra = {"metadata_bytes": float(meta_bytes[kind])}
        rows.append(dict(name=name, label=label, role=role, accuracy=accuracy_stats(acc[name]), extra=extra, **cols))
    m = {r["name"]: r["accuracy"]["mean"] for r in rows}
    figure = save_accuracy_plot(rows, ctx, "datafree_lopes2017", title=f"Data-free KD on {data.name}")
    best = max(RECORDS, key=lambda k: m[f"kd_{k}"])
    reproduced = beats(acc[f"kd_{best}"], acc["kd_noise"]) and all(
        beats(acc[f"kd_{k}"], acc["kd_top_layer"]) for k in RECORDS[1:]
    )
    per_record = "; ".join(f"{k}: {m[f'kd_{k}']:.2f}% with {meta_bytes[k]} B of metadata" for k in RECORDS)
    answer = (
        f"The best record ({best.replace('_', ' ')}) reaches {m[f'kd_{best}']:.1f}% against {m['kd_real']:.1f}% for "
        f"KD on the real data (gap {m['kd_real'] - m[f'kd_{best}']:.1f} points, noise {m['kd_noise']:.1f}%); "
        + _value_for_bytes(m, meta_bytes)
    )
    return {
        "id": "datafree_lopes2017",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"one MLP teacher (seed 0, {ctx.epochs(s['teacher_epochs'])} epochs); metadata = per-class "
            f"mean/std of the recorded signals on the training set; per seed, {n} inputs reconstructed from N(0, 1) "
            f"noise by {cfg.steps} Adam steps (lr {cfg.lr}) on the input, classes drawn by recorded frequency; "
            f"students MLP 64-8-8-10 distilled with T={cfg.temperature} (no labels), SGD lr {s['lr']} cosine, batch "
            f"128, {epochs} epochs on a transfer set of the same size as the training set.",
        },
        "rows": rows,
        "claim": {
            "text": "Students distilled on inputs reconstructed from activation metadata beat students distilled on "
            "random noise, and richer records (all-layers, spectral) beat the top-layer record.",
            "reproduced": reproduced,
            "evidence": f"{per_record}; noise {m['kd_noise']:.2f}%; real data {m['kd_real']:.2f}%; teacher "
            f"{m['teacher']:.2f}%, mean over {len(ctx.seeds)} seed(s).",
        },
        "answers": [{"question": OPEN_QUESTION, "answer": answer, "evidence": per_record}],
        "figures": [figure],
    }


def _value_for_bytes(m: dict[str, float], meta_bytes: dict[str, int]) -> str:
    """One sentence on which record gives the most accuracy per byte over the top-layer record."""
    top = m["kd_top_layer"]
    gains = {k: (m[f"kd_{k}"] - top) / max(1, meta_bytes[k] - meta_bytes["top_layer"]) for k in RECORDS[1:]}
    best = max(gains, key=gains.get)
    if m[f"kd_{best}"] <= top:
        return "no richer record improved on the top-layer record, so the cheapest record is the one worth storing."
    return (
        f"per extra byte over the top-layer record, the {best.replace('_', ' ')} record buys the most accuracy "
        f"({m[f'kd_{best}'] - top:+.1f} points for {meta_bytes[best] - meta_bytes['top_layer']} extra bytes)."
    )
