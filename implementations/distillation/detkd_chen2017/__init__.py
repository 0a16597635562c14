r"""Learning Efficient Object Detection Models with Knowledge Distillation (Chen et al., NIPS 2017).

Paper: [NeurIPS 2017](https://papers.nips.cc/paper/6676-learning-efficient-object-detection-models-with-knowledge-distillation)
· notes: `papers/detkd_chen2017.md`

Over $N$ anchors (cells) with $M$ positives, the detector's loss is

$$
\mathcal{L} = \frac{1}{N}\sum_i \mathcal{L}_{cls} + \lambda \frac{1}{M}\sum_j \mathcal{L}_{reg}
    + \gamma\,\mathcal{L}_{hint}.
$$

Classification mixes the hard loss with a class-weighted soft cross-entropy, where the background class gets its own
weight $w_0$ because most anchors are background:

$$
\mathcal{L}_{cls} = \mu\, \mathcal{L}_{hard}(P_s, y) + (1 - \mu)\, \mathcal{L}_{soft}(P_s, P_t), \qquad
\mathcal{L}_{soft} = -\sum_c w_c\, P_t(c) \log P_s(c).
$$

Regression adds to smooth-L1 a teacher-bounded $L_2$ term, $\mathcal{L}_{reg} = \mathcal{L}_{sL1}(R_s, y_{reg}) + \nu
\mathcal{L}_b$, which is active only while the student is worse than the teacher by the margin $m$:

$$
\mathcal{L}_b = \begin{cases} \lVert R_s - y_{reg} \rVert_2^2 & \text{if } \lVert R_s - y_{reg} \rVert_2^2 + m >
\lVert R_t - y_{reg} \rVert_2^2, \\ 0 & \text{otherwise.} \end{cases}
$$

Hints pass the student's feature $Z$ through an adaptation layer to the teacher's $V$:
$\mathcal{L}_{hint} = \lVert \mathrm{adapt}(Z) - V \rVert_2^2$ (averaged over elements here).
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

__all__ = [
    "Config",
    "DetectionKD",
    "Detector1d",
    "bounded_regression_loss",
    "hint_loss",
    "reproduce",
    "weighted_soft_cross_entropy",
]


@dataclass(frozen=True)
class Config:
    """Loss weights (our choices where the paper's values were not re-verified) and which additions are on."""

    mu: float = 0.5  # $\mu$, weight of the hard loss when the soft loss is on
    background_weight: float = 1.5  # $w_0$ of the soft loss ($w_c = 1$ for objects)
    temperature: float = 1.0  # $T$ softening both distributions in the soft loss
    reg_weight: float = 1.0  # $\lambda$
    bounded_weight: float = 0.5  # $\nu$
    margin: float = 0.0  # $m$
    hint_weight: float = 0.5  # $\gamma$
    box_dims: int = 2  # $R$, regression outputs per anchor (centre offset, log width)
    use_soft: bool = True  # weighted soft cross-entropy
    use_bounded: bool = True  # teacher-bounded regression
    use_hint: bool = True  # hint with adaptation layer
    imitate_boxes: bool = False  # ablation, not the paper: $\nu \lVert R_s - R_t \rVert^2$ instead of the bound


def weighted_soft_cross_entropy(
    student_logits: Tensor, teacher_logits: Tensor, background_weight: float, temperature: float = 1.0
) -> Tensor:
    r"""$-\sum_c w_c P_t(c) \log P_s(c)$ with $w_0$ for class 0 (background), averaged over anchors.

    Args:
        student_logits: `(N, K + 1)`, class 0 is background.
        teacher_logits: `(N, K + 1)`.
        background_weight: $w_0$.
        temperature: $T$.
    """
    weights = torch.ones(student_logits.shape[-1], device=student_logits.device)
    weights[0] = background_weight
    p_t = F.softmax(teacher_logits / temperature, dim=-1)
    return -(weights * p_t * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1).mean()


def bounded_regression_loss(student_reg: Tensor, teacher_reg: Tensor, target: Tensor, margin: float = 0.0) -> Tensor:
    r"""Teacher-bounded $L_2$: $\lVert R_s - y \rVert^2$ where it exceeds $\lVert R_t - y \rVert^2 - m$, else 0.

    Args:
        student_reg: $R_s$, `(M, R)` on the positive anchors.
        teacher_reg: $R_t$, `(M, R)`.
        target: $y_{reg}$, `(M, R)`.
        margin: $m$.

    Returns:
        The mean over the $M$ anchors (0 when $M = 0$).
    """
    err_s = (student_reg - target).pow(2).sum(-1)  # (M,)
    err_t = (teacher_reg - target).pow(2).sum(-1)  # (M,)
    active = (err_s + margin > err_t).to(err_s.dtype)
    return (active * err_s).sum() / max(1, len(err_s))


def hint_loss(adapted: Tensor, hint: Tensor) -> Tensor:
    r"""$\lVert \mathrm{adapt}(Z) - V \rVert_2^2$, averaged over elements."""
    return (adapted - hint).pow(2).mean()


class Detector1d(nn.Module):
    """Dense 1-D detector: three stride-2 conv-BN-ReLU stages and a context conv, then per-cell class and box outputs.

    `forward(x)` returns `(B, A, K + 1 + R)` with $A = L / 8$ cells; `return_features=True` also returns the stage
    feature maps `(B, C_s, L_s)`.
    """

    def __init__(self, num_classes: int, channels: tuple[int, ...] = (32, 64, 64), box_dims: int = 2) -> None:
        super().__init__()
        layers, c_in = [], 1
        for c_out in channels:
            layers.append(nn.Sequential(nn.Conv1d(c_in, c_out, 5, 2, 2, bias=False), nn.BatchNorm1d(c_out), nn.ReLU()))
            c_in = c_out
        # Context at stride 8 so that each cell sees a whole object (receptive field 61 samples).
        layers.append(nn.Sequential(nn.Conv1d(c_in, c_in, 5, 1, 2, bias=False), nn.BatchNorm1d(c_in), nn.ReLU()))
        self.stages = nn.ModuleList(layers)
        self.head = nn.Conv1d(c_in, num_classes + 1 + box_dims, 1)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Per-cell outputs `(B, A, K + 1 + R)` from signals `(B, 1, L)`."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        out = self.head(x).transpose(1, 2)  # (B, A, K + 1 + R)
        return (out, features) if return_features else out


class DetectionKD(Distiller):
    """Weighted soft CE + teacher-bounded regression + adapted hint, on a dense detector.

    Detection batches carry `y` of shape `(B, A, 1 + R)`: the class of each anchor (0 = background) and its box
    targets. With integer labels `y` of shape `(B,)` (the generic smoke test), each input is one region of interest with
    class logits only: the classification and hint terms apply and regression is skipped. The adaptation layer (a 1x1
    convolution from the student's last feature to the teacher's) is built from a probe of shape `in_shape`, or on the
    first call when it is None.
    """

    def __init__(
        self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None, in_shape: tuple[int, ...] | None = None
    ) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()
        self.adapt: nn.Module | None = None
        if in_shape is not None and self.cfg.use_hint:
            self._build(torch.zeros(2, *in_shape))

    @torch.no_grad()
    def _build(self, x: Tensor) -> None:
        was_training = self.student.training
        self.student.eval()
        z = self.student(x, return_features=True)[1][-1]
        self.student.train(was_training)
        v = self.teacher(x, return_features=True)[1][-1]
        conv = {3: nn.Conv1d, 4: nn.Conv2d}[z.dim()]
        self.adapt = conv(z.shape[1], v.shape[1], 1).to(x.device)

    def forward(self, x: Tensor) -> Tensor:
        """The student's raw outputs (class logits, and box offsets for a detector)."""
        return self.student(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Student outputs and `{"cls_hard", "cls_soft", "reg", "bounded", "hint"}` (the terms that are on)."""
        cfg = self.cfg
        if cfg.use_hint and self.adapt is None:
            self._build(x)
        hint = cfg.use_hint  # feature maps are only needed for the hint
        out_s, feats_s = self.student(x, return_features=True) if hint else (self.student(x), None)
        with torch.no_grad():
            out_t, feats_t = self.teacher(x, return_features=True) if hint else (self.teacher(x), None)
        detection = y.dim() == 3
        r = cfg.box_dims if detection else 0
        cls_s, cls_t = out_s[..., : out_s.shape[-1] - r], out_t[..., : out_t.shape[-1] - r]
        classes = (y[..., 0] if detection else y).long()
        cls_s, cls_t, classes = (
            cls_s.reshape(-1, cls_s.shape[-1]),
            cls_t.reshape(-1, cls_t.shape[-1]),
            classes.flatten(),
        )
        mu = cfg.mu if cfg.use_soft else 1.0
        losses = {"cls_hard": mu * F.cross_entropy(cls_s, classes)}
        if cfg.use_soft:
            soft = weighted_soft_cross_entropy(cls_s, cls_t, cfg.background_weight, cfg.temperature)
            losses["cls_soft"] = (1 - mu) * soft
        if detection:
            positive = classes > 0  # (B A,): only anchors that hold an object regress a box
            reg_s = out_s[..., -r:].reshape(-1, r)[positive]  # (M, R)
            reg_t = out_t[..., -r:].reshape(-1, r)[positive]
            target = y[..., 1:].reshape(-1, r)[positive]
            sl1 = F.smooth_l1_loss(reg_s, target, reduction="sum") / max(1, len(target))
            losses["reg"] = cfg.reg_weight * sl1
            if cfg.use_bounded:
                bounded = bounded_regression_loss(reg_s, reg_t, target, cfg.margin)
                losses["bounded"] = cfg.reg_weight * cfg.bounded_weight * bounded
            if cfg.imitate_boxes:
                imitation = (reg_s - reg_t).pow(2).sum(-1).sum() / max(1, len(target))
                losses["imitation"] = cfg.reg_weight * cfg.bounded_weight * imitation
        if cfg.use_hint:
            losses["hint"] = cfg.hint_weight * hint_loss(self.adapt(feats_s[-1]), feats_t[-1])
        return out_s, losses


def make_signals(digits: Tensor, labels: Tensor, n: int, gen: torch.Generator, length: int = 64, stride: int = 8):
    """`n` signals `(n, 1, L)`, anchor targets `(n, A, 3)` = [class (0 = background), dx, log(w / 32)], boxes `(n, 2)`
    = [centre, width] and digit labels `(n,)`."""
    pick = torch.randint(0, len(labels), (n,), generator=gen)
    widths = torch.randint(24, 41, (n,), generator=gen)
    starts = (torch.rand(n, generator=gen) * (length - widths + 1)).long()
    x = 0.3 * torch.randn(n, 1, length, generator=gen)
    # Distractor: a 12-sample fragment of another digit anywhere in the signal (background clutter).
    other, at = torch.randint(0, len(labels), (n,), generator=gen), torch.randint(0, length - 12, (n,), generator=gen)
    offset = torch.randint(0, digits.shape[-1] - 12, (n,), generator=gen)
    for i in range(n):
        x[i, 0, at[i] : at[i] + 12] = digits[other[i], 0, offset[i] : offset[i] + 12]
    for w in widths.unique().tolist():
        rows = (widths == w).nonzero().flatten()
        scaled = F.interpolate(digits[pick[rows]], size=w, mode="linear", align_corners=True)  # (n_w, 1, w)
        for r, row in enumerate(rows.tolist()):
            x[row, 0, starts[row] : starts[row] + w] = scaled[r, 0]
    centres = starts.float() + widths.float() / 2
    cells = (centres / stride).long().clamp_max(length // stride - 1)
    y = torch.zeros(n, length // stride, 3)
    index = torch.arange(n)
    y[index, cells, 0] = labels[pick].float() + 1
    y[index, cells, 1] = (centres - (cells.float() + 0.5) * stride) / stride
    y[index, cells, 2] = torch.log(widths.float() / 32)
    return x, y, torch.stack([centres, widths.float()], 1), labels[pick]


@torch.no_grad()
def detection_accuracy(model: nn.Module, x: Tensor, boxes: Tensor, labels: Tensor, stride: int = 8) -> float:
    """% of signals whose highest-scoring foreground anchor has the right class and IoU >= 0.5 with the true box."""
    model.eval()
    out = model(x)  # (B, A, K + 1 + 2)
    probs = F.softmax(out[..., :-2], dim=-1)
    best = (1 - probs[..., 0]).argmax(dim=1)  # (B,) anchor with the highest object score
    index = torch.arange(len(x))
    digit = probs[index, best, 1:].argmax(dim=-1)
    centre = (best.float() + 0.5 + out[index, best, -2]) * stride
    width = 32 * out[index, best, -1].exp()
    lo, hi = (
        torch.maximum(centre - width / 2, boxes[:, 0] - boxes[:, 1] / 2),
        torch.minimum(centre + width / 2, boxes[:, 0] + boxes[:, 1] / 2),
    )
    inter = (hi - lo).clamp_min(0)
    iou = inter / (width + boxes[:, 1] - inter)
    return 100.0 * float(((digit == labels) & (iou >= 0.5)).float().mean())


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Teacher and student detectors; the student alone, with each addition, with all three, and with a poor teacher.

    The run is in `experiment.py`.
    """
    from implementations.distillation.detkd_chen2017.experiment import reproduce as run

    return run(ctx)
