r"""Piggyback: Adapting a Single Network to Multiple Tasks by Learning to Mask Weights (Mallya et al., 2018).

Paper: [arXiv:1801.06519](https://arxiv.org/abs/1801.06519) · notes: `papers/piggyback_mallya2018.md`

The backbone weights $W$ stay frozen. For a new task every masked layer learns real-valued scores $m^r$ of $W$'s
shape, thresholded to a binary mask in the forward pass,

$$
m = \mathbf{1}\big[\, m^r \ge \tau \,\big], \qquad y = (W \odot m)\, x ,
$$

and the step gets the straight-through gradient, so the scores are updated with the gradient the mask would get,

$$
\frac{\partial L}{\partial m^r} \approx \frac{\partial L}{\partial m} = \Big(\frac{\partial L}{\partial y}\,
x^\top\Big) \odot W .
$$

Only the scores, a new classifier and (optionally, as here) the batch-norm parameters are trained; a task then
costs one bit per masked weight, and the shared backbone never changes, so tasks cannot interfere.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from implementations._models import build_model
from implementations.pruning._base import prunable_layers

if TYPE_CHECKING:
    from implementations._harness import RunContext

__all__ = ["Config", "Piggyback", "binarize", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters; the score initialisation and threshold are the paper's defaults."""

    init: float = 1e-2  # initial real-valued score $m^r$ of every weight (all masks start at 1)
    threshold: float = 5e-3  # $\tau$
    train_bn: bool = True  # learn task-specific batch-norm scale/shift and statistics
    lr: float = 1e-3  # Adam learning rate of scores, BN and classifier (ours: short runs)


def binarize(scores: Tensor, threshold: float) -> Tensor:
    r"""$\mathbf{1}[m^r \ge \tau]$ in the forward pass, identity gradient (STE) in the backward pass."""
    hard = (scores >= threshold).to(scores.dtype)
    return hard + scores - scores.detach()


class _Mask(nn.Module):
    r"""Parametrization $W \mapsto W \odot \mathbf{1}[m^r \ge \tau]$ with learnable scores $m^r$."""

    def __init__(self, weight: Tensor, cfg: Config) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.full_like(weight, cfg.init))  # $m^r$
        self.threshold = cfg.threshold

    def forward(self, weight: Tensor) -> Tensor:
        return weight * binarize(self.scores, self.threshold)


class Piggyback(nn.Module):
    """A frozen copy of `backbone` with a learned binary mask on every hidden layer and a new classifier."""

    def __init__(self, backbone: nn.Module, num_classes: int, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Config()
        self.model = copy.deepcopy(backbone)
        self.model.requires_grad_(False)  # the backbone weights are never updated
        self.layers = [layer for _, layer in prunable_layers(self.model, skip_last=True)]
        for layer in self.layers:
            parametrize.register_parametrization(layer, "weight", _Mask(layer.weight, self.cfg))
        self.model.head = nn.Linear(self.model.head.in_features, num_classes)  # new task, new classifier
        self.norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for norm in self.norms:
            norm.requires_grad_(self.cfg.train_bn)

    def masks(self) -> list[Tensor]:
        """The binary masks $m$, one per masked layer."""
        return [(layer.parametrizations.weight[0].scores >= self.cfg.threshold).detach() for layer in self.layers]

    def mask_bits(self) -> int:
        """Storage of the masks: one bit per masked weight."""
        return sum(m.numel() for m in self.masks())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Scores, classifier and (with `train_bn`) batch-norm parameters."""
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> Piggyback:
        """Batch norm keeps the backbone's statistics (eval mode) unless it is learned per task."""
        super().train(mode)
        if not self.cfg.train_bn:
            for norm in self.norms:
                norm.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)` of the new task."""
        return self.model(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the new task's cross-entropy."""
        logits = self.model(x)
        return logits, {"ce": F.cross_entropy(logits, y)}

    def export(self) -> nn.Module:
        """A plain network with the masks applied to the weights (what runs at inference for this task)."""
        model = copy.deepcopy(self.model)
        for _, layer in prunable_layers(model, skip_last=True):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        return model.requires_grad_(True)

    @classmethod
    def smoke_task(cls) -> tuple[Piggyback, Tensor, Tensor]:
        """Piggyback over a tiny CNN1d, for the generic smoke test."""
        torch.manual_seed(0)
        task = cls(build_model("cnn1d", 10, (1, 40), width=0.125), num_classes=5)
        return task.train(), torch.randn(8, 1, 40), torch.randint(0, 5, (8,))


class _HeadOnly(nn.Module):
    """Feature extraction: a new head on a frozen backbone whose BN statistics stay fixed (always eval mode)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.requires_grad_(False)
        model.head.requires_grad_(True)

    def train(self, mode: bool = True) -> _HeadOnly:
        super().train(False)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.model(x)
        return logits, {"ce": F.cross_entropy(logits, y)}


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run piggyback_mallya2018`
# ---------------------------------------------------------------------------------------------------------------------

TASK_A, TASK_B = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)  # pretraining task and the new task (MNIST-1D classes)
WIDTH = 0.5  # CNN1d width: channels (16, 32, 32)


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Pretrain a CNN1d on MNIST-1D classes 0-4, then learn classes 5-9 by fine-tuning, by a new head on the frozen
    backbone, and by Piggyback masks (over the pretrained and over a random backbone)."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, latency_ms, model_row
    from implementations._runner import save_accuracy_plot
    from implementations.pruning.packnet_mallya2018 import class_split
    from implementations.quantization._base import beats

    data = load_dataset("mnist1d", n_train=ctx.n_train)
    task_a, task_b = class_split(data, TASK_A), class_split(data, TASK_B)
    epochs, cfg = ctx.epochs(10), Config()
    sgd = dict(seed=0, progress=False, device=ctx.device)
    acc: dict[str, list[float]] = {}
    density: dict[str, list[float]] = {}
    exported = None
    for seed in ctx.seeds:
        sgd["seed"] = seed
        seed_everything(seed)
        random_backbone = build_model("cnn1d", len(TASK_A), data.input_shape, width=WIDTH)
        backbone = copy.deepcopy(random_backbone)
        fit(Supervised(backbone), backbone.parameters(), task_a, epochs, lr=0.05, **sgd)
        acc.setdefault("pretrained_task_a", []).append(evaluate(backbone, task_a))
        for name in ("finetune", "head_only", "piggyback", "piggyback_random"):
            seed_everything(seed)  # the same new classifier initialisation for every variant
            if name.startswith("piggyback"):
                task = Piggyback(random_backbone if name.endswith("random") else backbone, len(TASK_B), cfg)
                params, optim = task.trainable_parameters(), dict(lr=cfg.lr, optimizer="adamw", weight_decay=0.0)
            else:
                model = copy.deepcopy(backbone)
                model.head = nn.Linear(model.head.in_features, len(TASK_B))
                task = _HeadOnly(model) if name == "head_only" else Supervised(model)
                params, optim = [p for p in model.parameters() if p.requires_grad], dict(lr=0.01)
            fit(task, params, task_b, epochs, **optim, **sgd)
            acc.setdefault(name, []).append(evaluate(task, task_b))
            if name.startswith("piggyback"):
                masks = torch.cat([m.flatten() for m in task.masks()])
                density.setdefault(name, []).append(float(masks.float().mean()))
                if name == "piggyback":  # the plain masked network must compute the same function
                    plain = task.export()
                    exported = plain if exported is None else exported
                    acc.setdefault("piggyback_exported", []).append(evaluate(plain, task_b))

    shape = data.input_shape
    cols = model_row(backbone, shape)
    cols["latency_ms"] = latency_ms(exported, shape, min_run_time=0.02 if ctx.profile == "quick" else 0.1)
    n_masked = sum(layer.weight.numel() for _, layer in prunable_layers(backbone, skip_last=True))
    n_head = sum(p.numel() for p in backbone.head.parameters())
    n_bn = sum(p.numel() for m in backbone.modules() if isinstance(m, nn.BatchNorm1d) for p in m.parameters())
    task_bytes = {  # storage added by the new task
        "finetune": 4 * cols["params"],
        "head_only": 4 * n_head,
        "piggyback": (n_masked + 7) // 8 + 4 * (n_head + 2 * n_bn),  # mask bits + head + BN (scale, shift, stats)
    }
    task_bytes["piggyback_random"] = task_bytes["piggyback"]
    specs = {
        "pretrained_task_a": ("Backbone on task A (classes 0-4)", "teacher"),
        "finetune": ("Fine-tuning, all weights", "baseline"),
        "head_only": ("Frozen backbone + new head", "baseline"),
        "piggyback": ("Piggyback mask + BN + head", "method"),
        "piggyback_random": ("Piggyback over a random backbone", "ablation"),
    }
    rows = []
    for name, (label, role) in specs.items():
        extra = {"task_bytes": float(task_bytes.get(name, 4 * cols["params"]))}
        if name in density:
            extra["mask_density"] = sum(density[name]) / len(density[name])
        rows.append(dict(name=name, label=label, role=role, accuracy=accuracy_stats(acc[name]), **cols, extra=extra))
    mean = {name: sum(v) / len(v) for name, v in acc.items()}
    figure = save_accuracy_plot(rows, ctx, "piggyback_mallya2018", title="Piggyback on MNIST-1D classes 5-9")
    close = mean["piggyback"] >= mean["finetune"] - 2.0
    reproduced = beats(acc["piggyback"], acc["head_only"]) and close
    exact = max(abs(a - b) for a, b in zip(acc["piggyback"], acc["piggyback_exported"], strict=True))
    return {
        "id": "piggyback_mallya2018",
        "protocol": {
            "dataset": data.name,
            "n_train": task_b.n_train,
            "n_test": task_b.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"Task A: MNIST-1D classes 0-4 ({task_a.n_train} examples), CNN1d width {WIDTH} (channels "
            f"16/32/32, BN) trained {epochs} epochs (SGD lr 0.05). Task B: classes 5-9 ({task_b.n_train} train / "
            f"{task_b.n_test} test), {epochs} epochs for every variant, same new-head initialisation. Fine-tuning "
            f"and head-only: SGD momentum 0.9, cosine lr 0.01, wd 5e-4 (head-only keeps BN statistics frozen). "
            f"Piggyback: scores init {cfg.init}, threshold {cfg.threshold}, masks on the three conv layers; "
            f"Adam lr {cfg.lr}, no wd; BN scale/shift and statistics learned per task. task_bytes = storage the new "
            f"task adds (Piggyback: 1 bit per conv weight + head + BN); latency: the exported masked network.",
        },
        "rows": rows,
        "claim": {
            "text": "Learning only a binary mask (plus BN and classifier) over a frozen pretrained backbone comes "
            "close to fine-tuning the whole network (here within 2 points) and beats training a new classifier on "
            "the frozen features, for 1 bit per weight per task.",
            "reproduced": reproduced,
            "evidence": f"task B accuracy: Piggyback {mean['piggyback']:.2f}%, fine-tuning {mean['finetune']:.2f}%, "
            f"frozen backbone + head {mean['head_only']:.2f}% (mean over {len(ctx.seeds)} seed(s)); masks keep "
            f"{100 * sum(density['piggyback']) / len(density['piggyback']):.1f}% of the weights; per task "
            f"{task_bytes['piggyback']} bytes vs {task_bytes['finetune']} for a fine-tuned copy; exporting the "
            f"masked weights changes accuracy by {exact:.2f} points.",
        },
        "answers": [
            {
                "question": "How much of fine-tuning's accuracy can a mask over frozen random or weakly trained "
                "weights recover, i.e. how much depends on the ImageNet backbone being good?",
                "answer": f"A mask over a random backbone reaches {mean['piggyback_random']:.1f}% against "
                f"{mean['finetune']:.1f}% for fine-tuning and {mean['piggyback']:.1f}% for a mask over the pretrained "
                f"backbone: at this scale pretraining is worth {mean['piggyback'] - mean['piggyback_random']:.1f} "
                "points of Piggyback's accuracy"
                + (
                    ", and the random-weight mask still beats a new head on frozen pretrained features."
                    if mean["piggyback_random"] > mean["head_only"]
                    else "."
                ),
                "evidence": f"task B: Piggyback over random weights {mean['piggyback_random']:.2f}% (mask keeps "
                f"{100 * sum(density['piggyback_random']) / len(density['piggyback_random']):.1f}%), over the "
                f"pretrained backbone {mean['piggyback']:.2f}%, fine-tuning {mean['finetune']:.2f}%, head only "
                f"{mean['head_only']:.2f}%.",
            }
        ],
        "figures": [figure],
    }
