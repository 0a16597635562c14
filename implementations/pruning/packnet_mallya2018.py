r"""PackNet: Adding Multiple Tasks to a Single Network by Iterative Pruning (Mallya & Lazebnik, 2018).

Paper: [arXiv:1711.05769](https://arxiv.org/abs/1711.05769) · notes: `papers/packnet_mallya2018.md`

Every weight of the shared layers has an owner: task $k \ge 1$, or $0$ (free). Task $k$ trains only the free
weights $F_k$ (earlier tasks' weights take part in the forward pass, frozen). Then a fraction $p$ of them, the
smallest in magnitude per layer, is released (set to zero and freed) and the rest become task $k$'s,

$$
M_k = F_k \odot \mathbf{1}\big[\,|W| > \tau_k\,\big], \qquad \tau_k = p\text{-quantile of } \{|W_i| : F_{k,i} = 1\},
$$

followed by a short retraining of the weights in $M_k$ alone. Task $k$ is evaluated with its own head and

$$
W^{(k)} = W \odot \sum_{j \le k} M_j ,
$$

so later tasks reuse earlier weights but never change them: no forgetting, by construction. Batch norm (when the
backbone has it) is learned with the first task and frozen afterwards, so it cannot drift either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from implementations._models import CNN1d
from implementations.pruning._base import prunable_layers, topk_mask

if TYPE_CHECKING:
    from implementations._data import TensorData
    from implementations._harness import RunContext

__all__ = ["Config", "PackNet", "class_split", "release_mask", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters (the paper prunes 50-75% per step; epochs are ours)."""

    prune_ratio: float = 0.75  # $p$, fraction of a task's free weights released after it (Sec. 3)
    epochs: int = 8  # training of each task on its free weights
    retrain_epochs: int = 4  # retraining of the kept weights after pruning
    lr: float = 0.05  # SGD learning rate of both phases (no weight decay: frozen weights must not move)


def release_mask(weight: Tensor, free: Tensor, prune_ratio: float) -> Tensor:
    r"""$M_k$: the free weights that task $k$ keeps, i.e. all but the fraction $p$ with the smallest $|W|$.

    Args:
        weight: Layer weight $W$, any shape.
        free: Boolean mask $F_k$ of the weights task $k$ trained, same shape.
        prune_ratio: $p$; exactly $\lfloor p\,|F_k| \rfloor$ free weights are released.

    Returns:
        Boolean mask, True where task $k$ keeps the weight (always inside `free`).
    """
    keep = torch.zeros_like(free)
    keep[free] = topk_mask(weight.detach()[free].abs(), prune_ratio).bool()
    return keep


class _OwnerMask(nn.Module):
    r"""Parametrization $W \mapsto W \odot \mathbf{1}[\text{owner usable by the active task}]$."""

    def __init__(self, weight: Tensor, state: dict[str, int]) -> None:
        super().__init__()
        self.register_buffer("owner", torch.zeros_like(weight, dtype=torch.long))  # 0 = free, k = task k
        self.state = state  # shared: {"task": active task, "train_free": 1 while the free weights are trained}

    def usable(self) -> Tensor:
        task, owner = self.state["task"], self.owner
        used = (owner >= 1) & (owner <= task)
        return used | (owner == 0) if self.state["train_free"] else used

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.usable().to(weight.dtype)


class PackNet(nn.Module):
    """One backbone shared by a sequence of tasks, each with its own head and its own slice of the weights.

    Usage per task `k` (1-based): `start_task(k)`, train, `prune()`, retrain, `finish_task()`; then
    `set_task(j)` selects the weights and head of any finished task `j <= k` for evaluation.
    """

    def __init__(self, backbone: nn.Module, num_tasks: int, classes_per_task: int, cfg: Config | None = None):
        super().__init__()
        self.cfg = cfg or Config()
        self.backbone = backbone
        features = backbone.head.in_features
        backbone.head = nn.Identity()  # the backbone now returns its flattened features
        self.heads = nn.ModuleList(nn.Linear(features, classes_per_task) for _ in range(num_tasks))
        self.state = {"task": 1, "train_free": 1}
        self.layers = [layer for _, layer in prunable_layers(backbone)]
        for layer in self.layers:
            parametrize.register_parametrization(layer, "weight", _OwnerMask(layer.weight, self.state))
            original = layer.parametrizations.weight.original
            original.register_hook(lambda grad, layer=layer: grad * self._trainable(layer))
        self.norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def _mask(self, layer: nn.Module) -> _OwnerMask:
        return layer.parametrizations.weight[0]

    def _trainable(self, layer: nn.Module) -> Tensor:
        owner = self._mask(layer).owner
        return (owner == (0 if self.state["train_free"] else self.state["task"])).to(torch.float32)

    def set_task(self, task: int) -> None:
        """Evaluate (or keep training) as task `task`: its head, and the weights owned by tasks `<= task`."""
        self.state.update(task=task, train_free=0)

    def start_task(self, task: int) -> None:
        """Start training task `task` on the free weights; batch norm is frozen after the first task."""
        self.state.update(task=task, train_free=1)
        for norm in self.norms:
            norm.requires_grad_(task == 1)

    @torch.no_grad()
    def prune(self) -> None:
        r"""Release the fraction $p$ of the free weights with the smallest $|W|$ per layer; the rest become $M_k$."""
        for layer in self.layers:
            mask = self._mask(layer)
            original = layer.parametrizations.weight.original
            free = mask.owner == 0
            keep = release_mask(original, free, self.cfg.prune_ratio)
            mask.owner[keep] = self.state["task"]
            original[free & ~keep] = 0.0  # released weights restart from zero for the next task
        self.state["train_free"] = 0  # retraining touches M_k only

    def finish_task(self) -> None:
        """Freeze task `k`: from now on only the still-free weights can be trained."""
        self.state["train_free"] = 0

    def free_fraction(self) -> float:
        """Share of the backbone's weights not owned by any task."""
        owners = torch.cat([self._mask(layer).owner.flatten() for layer in self.layers])
        return float((owners == 0).float().mean())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Backbone weights (gradients masked to the trainable ones), the active head, BN for task 1."""
        params = [layer.parametrizations.weight.original for layer in self.layers]
        params += list(self.heads[self.state["task"] - 1].parameters())
        return params + [p for norm in self.norms for p in norm.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> PackNet:
        """Training mode, but batch norm stays in eval mode (frozen statistics) after the first task."""
        super().train(mode)
        if self.state["task"] > 1:
            for norm in self.norms:
                norm.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K_task)` of the active task."""
        return self.heads[self.state["task"] - 1](self.backbone(x))

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and cross-entropy of the active task."""
        logits = self(x)
        return logits, {"ce": F.cross_entropy(logits, y)}

    @classmethod
    def smoke_task(cls) -> tuple[PackNet, Tensor, Tensor]:
        """A tiny CNN1d after task 1 was pruned, training task 2 on the freed weights."""
        torch.manual_seed(0)
        net = cls(CNN1d(1, 40, 10, channels=(4, 8, 8)), num_tasks=2, classes_per_task=5)
        net.prune()
        net.finish_task()
        net.start_task(2)
        return net.train(), torch.randn(8, 1, 40), torch.randint(0, 5, (8,))


def class_split(data: TensorData, classes: Sequence[int]) -> TensorData:
    """The examples of `classes` only, relabelled `0 .. len(classes) - 1` in the given order."""
    lookup = torch.full((data.num_classes,), -1, dtype=torch.long)
    lookup[torch.as_tensor(list(classes))] = torch.arange(len(classes))
    train, test = lookup[data.y_train] >= 0, lookup[data.y_test] >= 0
    return replace(
        data,
        x_train=data.x_train[train],
        y_train=lookup[data.y_train[train]],
        x_test=data.x_test[test],
        y_test=lookup[data.y_test[test]],
        num_classes=len(classes),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run packnet_mallya2018`
# ---------------------------------------------------------------------------------------------------------------------

TASKS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))  # five 2-way MNIST-1D tasks, added in this order
WIDTH = 0.25  # CNN1d width: channels (8, 16, 16), small enough for capacity to matter


def _backbone(num_classes: int = 10) -> nn.Module:
    from implementations._models import build_model

    return build_model("cnn1d", num_classes, (1, 40), width=WIDTH)


def _packnet_run(
    data: TensorData, cfg: Config, seed: int, device: str
) -> tuple[list[float], list[float], PackNet, list[float]]:
    """Train PackNet over `TASKS`: each task's accuracy right after it and at the end, the net, the free shares."""
    from implementations._harness import evaluate, fit, seed_everything

    seed_everything(seed)
    net = PackNet(_backbone(), len(TASKS), 2, cfg)
    train = dict(lr=cfg.lr, weight_decay=0.0, seed=seed, progress=False, device=device)
    after, free = [], []
    for k, classes in enumerate(TASKS, start=1):
        task_data = class_split(data, classes)
        net.start_task(k)
        fit(net, net.trainable_parameters(), task_data, cfg.epochs, **train)
        net.prune()
        fit(net, net.trainable_parameters(), task_data, cfg.retrain_epochs, **train)
        net.finish_task()
        after.append(evaluate(net, task_data))
        free.append(net.free_fraction())
    final = []
    for k, classes in enumerate(TASKS, start=1):
        net.set_task(k)
        final.append(evaluate(net, class_split(data, classes)))
    return after, final, net, free


def _baselines(data: TensorData, cfg: Config, seed: int, device: str) -> dict[str, list[float]]:
    """Sequential fine-tuning of one network (heads per task) and one independent network per task."""
    from implementations._harness import evaluate, fit, seed_everything

    epochs = cfg.epochs + cfg.retrain_epochs  # same number of epochs per task as PackNet
    train = dict(lr=cfg.lr, seed=seed, progress=False, device=device)
    seed_everything(seed)
    shared = _backbone()
    heads = nn.ModuleList(nn.Linear(shared.head.in_features, 2) for _ in TASKS)
    shared.head = nn.Identity()
    out: dict[str, list[float]] = {"finetune_after": [], "finetune_final": [], "independent": []}
    for k, classes in enumerate(TASKS):
        task = _Headed(shared, heads[k])
        fit(task, task.parameters(), class_split(data, classes), epochs, **train)
        out["finetune_after"].append(evaluate(task, class_split(data, classes)))
    for k, classes in enumerate(TASKS):
        out["finetune_final"].append(evaluate(_Headed(shared, heads[k]), class_split(data, classes)))
    for classes in TASKS:
        seed_everything(seed)
        model = _backbone(num_classes=2)
        task = _Headed(model, nn.Identity())
        fit(task, model.parameters(), class_split(data, classes), epochs, **train)
        out["independent"].append(evaluate(task, class_split(data, classes)))
    return out


class _Headed(nn.Module):
    """`head(backbone(x))` with a cross-entropy `forward_train`."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self(x)
        return logits, {"ce": F.cross_entropy(logits, y)}


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Five 2-way MNIST-1D tasks added to one CNN1d by PackNet (p = 0.75 and 0.5), against sequential
    fine-tuning and one independent network per task, all with the same epochs per task."""
    from implementations._data import load_dataset
    from implementations._measure import accuracy_stats, latency_ms, model_row

    data = load_dataset("mnist1d", n_train=ctx.n_train)
    base = Config()
    cfg = replace(base, epochs=ctx.epochs(base.epochs), retrain_epochs=ctx.epochs(base.retrain_epochs))
    half = replace(cfg, prune_ratio=0.5)
    runs: dict[str, list[list[float]]] = {}
    free: dict[str, list[list[float]]] = {}
    net = None
    for seed in ctx.seeds:
        for name, c in (("packnet", cfg), ("packnet_p50", half)):
            after, final, trained, shares = _packnet_run(data, c, seed, ctx.device)
            runs.setdefault(f"{name}_after", []).append(after)
            runs.setdefault(name, []).append(final)
            free.setdefault(name, []).append(shares)
            net = trained if net is None else net
        for name, values in _baselines(data, cfg, seed, ctx.device).items():
            runs.setdefault(name, []).append(values)

    def per_task(name: str) -> list[float]:  # per task, mean over seeds
        return [sum(col) / len(col) for col in zip(*runs[name], strict=True)]

    pairs = [
        (a, b)
        for name in ("packnet", "packnet_p50")
        for s, t in zip(runs[f"{name}_after"], runs[name], strict=True)
        for a, b in zip(s, t, strict=True)
    ]
    packnet_forgetting = max(abs(a - b) for a, b in pairs)  # over tasks, seeds and both ratios
    ft_drop = [a - b for a, b in zip(per_task("finetune_after")[:-1], per_task("finetune_final")[:-1], strict=True)]
    finetune_forgetting = sum(ft_drop) / len(ft_drop)
    mean_free = {k: [sum(c) / len(c) for c in zip(*v, strict=True)] for k, v in free.items()}

    # Sizes. At inference a task runs the plain backbone (its mask folded in) plus its head: one latency for all.
    shape, n_tasks = data.input_shape, len(TASKS)
    single_net = _Headed(_backbone(num_classes=2), nn.Identity())
    single = model_row(single_net, shape)
    latency = latency_ms(single_net, shape, min_run_time=0.02 if ctx.profile == "quick" else 0.1)
    net.set_task(1)
    bits_owner = n_tasks.bit_length()  # owner id 0..T per backbone weight
    n_backbone = sum(layer.weight.numel() for layer in net.layers)
    count_all = sum(p.numel() for p in net.parameters())
    cols = {
        "packnet": dict(
            params=count_all,
            nonzero_params=sum(int(p.count_nonzero()) for p in net.parameters()),
            bytes=4 * count_all + (bits_owner * n_backbone + 7) // 8,
        ),
        "finetune_final": dict(params=count_all, nonzero_params=count_all, bytes=4 * count_all),
        "independent": dict(
            params=n_tasks * single["params"],
            nonzero_params=n_tasks * single["params"],
            bytes=n_tasks * single["bytes"],
        ),
    }
    cols["packnet_p50"] = cols["packnet"]
    specs = {
        "packnet": (f"PackNet, p={cfg.prune_ratio:g}", "method"),
        "packnet_p50": ("PackNet, p=0.5", "ablation"),
        "finetune_final": ("Sequential fine-tuning (heads per task)", "baseline"),
        "independent": (f"{n_tasks} independent networks", "baseline"),
    }
    rows = []
    for name, (label, role) in specs.items():
        extra = {f"task{k + 1}": v for k, v in enumerate(per_task(name))}
        if name in mean_free:
            extra["free_left"] = mean_free[name][-1]
        rows.append(
            dict(
                name=name,
                label=label,
                role=role,
                flops=single["flops"],
                latency_ms=latency,
                **cols[name],
                accuracy=accuracy_stats([sum(v) / len(v) for v in runs[name]]),
                extra=extra,
            )
        )
    rows[0]["extra"]["max_forgetting"] = packnet_forgetting
    rows[2]["extra"]["mean_forgetting"] = finetune_forgetting
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    figure = _plot(ctx, {name: per_task(name) for name in specs}, mean_free)
    old = {name: sum(per_task(name)[:-1]) / (n_tasks - 1) for name in ("packnet", "finetune_final")}
    reproduced = packnet_forgetting == 0.0 and old["packnet"] > old["finetune_final"]
    last = {name: per_task(name)[-1] for name in specs}
    behind = last["independent"] - last["packnet"]  # the last task's gap to its own network
    binds = last["packnet"] - last["packnet_p50"] > 0.5 * behind  # does shrinking the free share explain most of it?
    return {
        "id": "packnet_mallya2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": cfg.epochs + cfg.retrain_epochs,
            "selection": "last",
            "notes": f"Tasks: MNIST-1D classes {list(TASKS)} (2-way, about 800 training examples each), added in "
            f"that order to one CNN1d (width {WIDTH}: channels 8/16/16, BN) with one head per task; epochs = per "
            f"task. PackNet: {cfg.epochs} epochs on the free weights, release p of them per layer by magnitude, "
            f"{cfg.retrain_epochs} epochs on the kept ones; BN learned with task 1 then frozen (the authors' "
            f"default); SGD momentum 0.9, cosine lr {cfg.lr}, batch 128, no weight decay. Baselines: "
            f"{cfg.epochs + cfg.retrain_epochs} epochs per task, wd 5e-4: one network fine-tuned task after task, and "
            f"one network per task. Accuracy = mean over the 5 tasks at the end of the sequence. PackNet bytes "
            f"include a {bits_owner}-bit owner id per backbone weight; latency is one task's plain network (batch 1).",
        },
        "rows": rows,
        "claim": {
            "text": "PackNet adds several tasks to one network without forgetting: every earlier task keeps exactly "
            "its accuracy after later tasks are added, whereas sequential fine-tuning of the same network forgets.",
            "reproduced": reproduced,
            "evidence": f"largest change of any task's accuracy after later tasks were added (all seeds, both "
            f"ratios): PackNet {packnet_forgetting:.2f} points; fine-tuning loses {finetune_forgetting:.2f} points "
            f"per old task on average. Tasks 1-4 at the end: PackNet {old['packnet']:.2f}% vs fine-tuning "
            f"{old['finetune_final']:.2f}%. All 5 tasks: PackNet {mean['packnet']:.2f}% vs independent networks "
            f"{mean['independent']:.2f}% ({n_tasks}x the parameters); the paper reports PackNet close to separately "
            "fine-tuned networks.",
        },
        "answers": [
            {
                "question": "The notes file PackNet under both pruning and transfer learning; how quickly does free "
                "capacity run out, i.e. how does accuracy on the k-th added task fall as k grows for a fixed pruning "
                "ratio?",
                "answer": (
                    "Capacity binds: most of the last task's gap comes from the smaller free share"
                    if binds
                    else "The last task falls behind its own network, but little of that is running out of free "
                    "weights: a 5x smaller free share changes it much less than the gap, so the frozen features of "
                    "earlier tasks (and BN fixed after task 1) limit it more"
                )
                + f": task 5 trains on {100 * mean_free['packnet'][3]:.0f}% of the weights at p={cfg.prune_ratio:g} "
                f"and on {100 * mean_free['packnet_p50'][3]:.1f}% at p=0.5, reaching {last['packnet']:.1f}% and "
                f"{last['packnet_p50']:.1f}%, against {last['independent']:.1f}% for its own network.",
                "evidence": "per-task accuracy at the end (tasks 1..5), PackNet p=0.75: "
                + ", ".join(f"{v:.1f}" for v in per_task("packnet"))
                + "; p=0.5: "
                + ", ".join(f"{v:.1f}" for v in per_task("packnet_p50"))
                + "; independent: "
                + ", ".join(f"{v:.1f}" for v in per_task("independent"))
                + "; free share after each task, p=0.75: "
                + ", ".join(f"{100 * v:.0f}%" for v in mean_free["packnet"])
                + "; p=0.5: "
                + ", ".join(f"{100 * v:.1f}%" for v in mean_free["packnet_p50"])
                + ".",
            }
        ],
        "figures": [figure],
    }


def _plot(ctx: RunContext, per_task: dict[str, list[float]], free: dict[str, list[float]]) -> str:
    """Accuracy of each task at the end of the sequence, and the free share of weights after each task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.3))
    tasks = list(range(1, len(TASKS) + 1))
    for name, values in per_task.items():
        axes[0].plot(tasks, values, marker="o", label=name)
    axes[0].set_xlabel("task k (order added)")
    axes[0].set_ylabel("test accuracy at the end (%)")
    axes[0].legend(fontsize=7)
    for name, values in free.items():
        axes[1].plot(tasks, [100 * v for v in values], marker="o", label=name)
    axes[1].set_xlabel("after task k")
    axes[1].set_ylabel("free weights (%)")
    axes[1].legend(fontsize=7)
    fig.suptitle("PackNet: five 2-way MNIST-1D tasks in one CNN1d", fontsize=9)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / "packnet_mallya2018_tasks.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"{ctx.results_dir.resolve().name}/figures/{path.name}"
