r"""Rocket Launching: A Universal and Efficient Framework for Training Well-performing Light Net (Zhou et al., 2018).

Paper: [arXiv:1708.04106](https://arxiv.org/abs/1708.04106) · notes: `papers/rocket_zhou2018.md`

A light net and a booster net share their lower layers $W_S$ and are trained *together*. With $l(x)$ and $z(x)$ the
light and booster logits, $p = \mathrm{softmax}(l)$ and $q = \mathrm{softmax}(z)$,

$$
\mathcal{L}(W_S, W_L, W_B) = H\big(y, p(x)\big) + H\big(y, q(x)\big) + \lambda \,\big\lVert l(x) - z(x) \big\rVert_2^2 .
$$

*Gradient block*: in the hint term $z(x)$ is a constant, $\partial\, \lambda \lVert l - z \rVert^2 / \partial W_B = 0$,
so only $W_L$ and $W_S$ move towards the booster and the booster is trained by its own task loss alone. At test
time the booster is dropped and the light net (shared layers + light head) is deployed.
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

__all__ = ["Config", "RocketLaunching", "hint_loss", "reproduce"]


@dataclass(frozen=True)
class Config:
    """Hyperparameters."""

    hint_weight: float = 0.1  # $\lambda$ (our choice; the paper tunes it per task)
    gradient_block: bool = True  # treat $z(x)$ as a constant in the hint term (Sec. 3.2)


def hint_loss(light_logits: Tensor, booster_logits: Tensor, gradient_block: bool = True) -> Tensor:
    r"""$\frac{1}{B}\sum_b \lVert l_b - z_b \rVert_2^2$, with $z$ detached when `gradient_block`.

    Args:
        light_logits: Light-net logits $l$, shape `(B, K)`.
        booster_logits: Booster logits $z$, shape `(B, K)`.
        gradient_block: Stop the gradient into the booster (the paper's gradient block).

    Returns:
        A scalar tensor.
    """
    target = booster_logits.detach() if gradient_block else booster_logits  # (B, K)
    return (light_logits - target).pow(2).sum(dim=-1).mean()


class RocketLaunching(Distiller):
    r"""Joint training of a light net (`student`) and a booster (`teacher`) on top of optional `shared` layers.

    Unlike other distillers the booster is *trained* (its parameters require gradients and it follows `train()`);
    `forward(x)` is the light net, $l(\text{shared}(x))$.
    """

    def __init__(
        self, student: nn.Module, teacher: nn.Module, cfg: Config | None = None, shared: nn.Module | None = None
    ) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg or Config()
        self.shared = shared if shared is not None else nn.Identity()
        self.teacher.requires_grad_(True)  # the booster learns alongside the light net

    def train(self, mode: bool = True) -> RocketLaunching:
        """Set every part, booster included, to `mode`."""
        nn.Module.train(self, mode)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Shared, light and booster parameters."""
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, x: Tensor) -> Tensor:
        """Light-net logits `(B, K)`: what is deployed."""
        return self.student(self.shared(x))

    def forward_booster(self, x: Tensor) -> Tensor:
        """Booster logits `(B, K)`."""
        return self.teacher(self.shared(x))

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Light logits `(B, K)` and the `light`, `booster` and `hint` terms."""
        h = self.shared(x)  # $W_S$: computed once, used by both nets
        light, booster = self.student(h), self.teacher(h)  # (B, K), (B, K)
        losses = {
            "light": F.cross_entropy(light, y),
            "booster": F.cross_entropy(booster, y),
            "hint": self.cfg.hint_weight * hint_loss(light, booster, self.cfg.gradient_block),
        }
        return light, losses


# ---------------------------------------------------------------------------------------------------------------------
# Reproduction: `kb run rocket_zhou2018`
# ---------------------------------------------------------------------------------------------------------------------

#: Shared stem width, light-head and booster-head conv widths (MNIST-1D, length 40 -> 20 after the stem).
SETTING = dict(dataset="mnist1d", shared=16, light=(8,), booster=(32, 32), epochs=10, lr=0.05)


class _OfflineHint(Distiller):
    """Offline baseline: light net + frozen, already trained booster, same CE + hint loss."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Config) -> None:
        super().__init__(student, teacher)
        self.cfg = cfg

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        light = self.student(x)
        with torch.no_grad():
            booster = self.teacher(x)
        return light, {"light": F.cross_entropy(light, y), "hint": self.cfg.hint_weight * hint_loss(light, booster)}


def reproduce(ctx: RunContext) -> dict[str, Any]:
    """Light alone, booster alone, offline hint from a trained booster, rocket with and without gradient block."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, beats, model_row
    from implementations._models import CNN1d

    s = SETTING
    data = load_dataset(s["dataset"], ctx.data_dir, ctx.download, n_train=ctx.n_train)
    epochs = ctx.epochs(s["epochs"])
    length = (data.input_shape[-1] - 1) // 2 + 1  # after the stride-2 stem
    train = dict(epochs=epochs, lr=s["lr"], batch_size=128, device=ctx.device, progress=ctx.progress)

    def parts(seed: int) -> tuple[nn.Module, nn.Module, nn.Module]:
        seed_everything(seed)  # every variant of a seed starts from the same initialisation
        shared = nn.Sequential(
            nn.Conv1d(data.input_shape[0], s["shared"], 5, stride=2, padding=2, bias=False),
            nn.BatchNorm1d(s["shared"]),
            nn.ReLU(),
        )
        light = CNN1d(s["shared"], length, data.num_classes, s["light"])
        booster = CNN1d(s["shared"], length, data.num_classes, s["booster"])
        return shared, light, booster

    acc: dict[str, list[float]] = {}
    for seed in ctx.seeds:
        shared, light, _ = parts(seed)
        alone = nn.Sequential(shared, light)
        fit(Supervised(alone), alone.parameters(), data, seed=seed, **train)
        acc.setdefault("light_alone", []).append(evaluate(alone, data))

        shared, _, booster = parts(seed)
        big = nn.Sequential(shared, booster)
        fit(Supervised(big), big.parameters(), data, seed=seed, **train)
        acc.setdefault("booster_alone", []).append(evaluate(big, data))

        shared, light, _ = parts(seed)
        student = nn.Sequential(shared, light)
        fit(_OfflineHint(student, big, Config()), student.parameters(), data, seed=seed, **train)
        acc.setdefault("light_offline", []).append(evaluate(student, data))

        for suffix, block in (("", True), ("_no_block", False)):
            shared, light, booster = parts(seed)
            task = RocketLaunching(light, booster, Config(gradient_block=block), shared=shared)
            fit(task, task.trainable_parameters(), data, seed=seed, **train)
            acc.setdefault(f"light_rocket{suffix}", []).append(evaluate(task, data))
            acc.setdefault(f"booster_rocket{suffix}", []).append(evaluate(nn.Sequential(shared, booster), data))

    shared, light, booster = parts(0)
    light_cols = model_row(nn.Sequential(shared, light), data.input_shape)
    booster_cols = model_row(nn.Sequential(shared, booster), data.input_shape)
    rows = [
        dict(name="booster_alone", label="Booster alone", role="teacher", **booster_cols),
        dict(name="light_alone", label="Light net alone", role="baseline", **light_cols),
        dict(name="light_offline", label="Light net, hint from trained booster", role="ablation", **light_cols),
        dict(name="light_rocket", label="Light net, rocket (gradient block)", role="method", **light_cols),
        dict(name="light_rocket_no_block", label="Light net, rocket without block", role="ablation", **light_cols),
        dict(name="booster_rocket", label="Booster, rocket (gradient block)", role="ablation", **booster_cols),
        dict(name="booster_rocket_no_block", label="Booster, rocket without block", role="ablation", **booster_cols),
    ]
    for row in rows:
        row["accuracy"] = accuracy_stats(acc[row["name"]])
    mean = {row["name"]: row["accuracy"]["mean"] for row in rows}
    from implementations._runner import save_accuracy_plot

    figure = save_accuracy_plot(rows, ctx, "rocket_zhou2018", title=f"Rocket launching on {data.name}")
    cfg = Config()

    block_light = mean["light_rocket"] - mean["light_rocket_no_block"]
    block_booster = mean["booster_rocket"] - mean["booster_rocket_no_block"]
    block_answer = (
        f"With the gradient block the light net changed by {block_light:+.2f} points and the booster by "
        f"{block_booster:+.2f} points relative to letting the hint update the booster, so at our scale the block "
        + ("helped" if block_light > 0 and block_booster >= 0 else "was not clearly necessary")
        + "."
    )
    joint = mean["light_rocket"] - mean["light_offline"]
    joint_answer = (
        f"Joint training gave the light net {joint:+.2f} points over the same hint from an already trained booster "
        + ("(joint training was better)." if joint > 0 else "(offline distillation was as good or better).")
    )
    return {
        "id": "rocket_zhou2018",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "seeds": list(ctx.seeds),
            "epochs": epochs,
            "selection": "last",
            "notes": f"shared stem conv1d(1->{s['shared']}, k5, s2)+BN+ReLU; light head conv widths {s['light']}, "
            f"booster head {s['booster']} (cnn1d stages + linear); every variant trained {epochs} epochs from the "
            f"same seeded init, SGD momentum 0.9, cosine lr {s['lr']}, batch 128, wd 5e-4; hint = lambda "
            f"||l - z||^2 with lambda={cfg.hint_weight}; offline baseline uses the separately trained booster and "
            f"the same hint loss.",
        },
        "rows": rows,
        "claim": {
            "text": "A light net trained jointly with a booster that shares its lower layers (hint loss with gradient "
            "block) beats the same light net trained alone.",
            "reproduced": beats(acc["light_rocket"], acc["light_alone"]),
            "evidence": f"light net: rocket {mean['light_rocket']:.2f}% vs alone {mean['light_alone']:.2f}% "
            f"(booster alone {mean['booster_alone']:.2f}%, in rocket {mean['booster_rocket']:.2f}%), mean over "
            f"{len(ctx.seeds)} seed(s).",
        },
        "answers": [
            {
                "question": "Is the gradient block necessary, i.e. how much worse are the booster and the light net "
                "when the hint loss is allowed to update the booster's private weights?",
                "answer": block_answer,
                "evidence": f"with block: light {mean['light_rocket']:.2f}%, booster {mean['booster_rocket']:.2f}%; "
                f"without: light {mean['light_rocket_no_block']:.2f}%, booster "
                f"{mean['booster_rocket_no_block']:.2f}%.",
            },
            {
                "question": "Does training the booster at the same time as the light net beat ordinary offline "
                "distillation from an already trained teacher of the same size?",
                "answer": joint_answer,
                "evidence": f"rocket light {mean['light_rocket']:.2f}%, offline hint light "
                f"{mean['light_offline']:.2f}%, light alone {mean['light_alone']:.2f}%; the offline teacher "
                f"(booster alone) reached {mean['booster_alone']:.2f}%.",
            },
        ],
        "figures": [figure],
    }
