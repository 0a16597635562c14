r"""Mutual-learning and self-distillation leaderboards under ONE protocol: no pretrained teacher, same network.

Both families train a small network without a pretrained teacher, so the one fair comparison is the network that
gets *deployed*, trained for the same epochs from the same initialisation, against the same network trained alone
with cross-entropy. The harness contracts make this possible:

* mutual learning: `entrypoint(peers)` with two copies of the quarter-width 1-D CNN (different initialisations);
  `forward(x)` is what the method deploys (the first peer, or a fused/ensemble classifier where the paper deploys
  that), and `peers[0]` alone is scored too, since a single peer is what runs at the cost of the baseline;
* self-distillation: `entrypoint(backbone, in_shape)` around one quarter-width 2-D CNN on 8x8 digits (label
  augmentation rotates images, which a 1-D signal does not have); `forward(x)` is the backbone's own deepest
  classifier, so the deployed network has the baseline's exact cost.

A method whose entry point does not follow its family's contract (MutualNet trains one slimmable network over widths
and input resolutions) is listed with the reason instead.
"""

from __future__ import annotations

import importlib
import inspect
import time
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["CohortConfig", "bench_mutual_learning", "bench_self_distillation"]


@dataclass(frozen=True)
class CohortConfig:
    """The shared protocol; `quick` shrinks it to a smoke run."""

    dataset: str = "mnist1d"
    network: tuple[str, float] = ("cnn1d", 0.25)  # channels 8-16-16, the distillation leaderboard's student
    n_train: int | None = None  # None: the dataset's whole training split
    peers: int = 2
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 8
    lr: float = 0.05  # SGD momentum 0.9, cosine schedule, weight decay 5e-4 (the harness defaults)
    batch_size: int = 64


QUICK = CohortConfig(seeds=(0,), epochs=1)
#: Self-distillation includes label augmentation by image rotations, so its protocol is on 8x8 digits; 400 training
#: images (of 1,437) keep the task hard enough that methods differ (the whole split puts every method near 98%).
IMAGES = CohortConfig(dataset="digits", network=("cnn2d", 0.25), n_train=400, epochs=15)
IMAGES_QUICK = CohortConfig(dataset="digits", network=("cnn2d", 0.25), n_train=400, seeds=(0,), epochs=1)

NOT_IN_PROTOCOL = {
    "mutualnet_yang2020": "trains one slimmable network over widths and input resolutions, not a cohort of "
                          "fixed networks; its page compares widths",
}


def _entries(registry: Any, category: str, base: type) -> list[tuple[str, type]]:
    out = []
    for paper in registry.papers:
        if paper.status != "implemented" or paper.category != category or paper.id in NOT_IN_PROTOCOL:
            continue
        entry = getattr(importlib.import_module(paper.module), paper.implementation.entrypoint)
        if inspect.isclass(entry) and issubclass(entry, base):
            out.append((paper.id, entry))
    return out


def _bench(registry: Any, family: str, quick: bool, progress: bool) -> dict[str, Any]:
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, count_params
    from implementations._models import build_model
    from implementations.mutual_learning._base import MutualLearner
    from implementations.self_distillation._base import SelfDistiller

    mutual = family == "mutual-learning"
    cfg = (QUICK if quick else CohortConfig()) if mutual else (IMAGES_QUICK if quick else IMAGES)
    data = load_dataset(cfg.dataset, n_train=cfg.n_train)
    methods = _entries(registry, family, MutualLearner if mutual else SelfDistiller)

    def network(seed: int) -> nn.Module:
        seed_everything(seed)
        return build_model(cfg.network[0], data.num_classes, data.input_shape, width=cfg.network[1])

    acc: dict[str, list[float]] = {"alone": []}
    peer_acc: dict[str, list[float]] = {}
    failures: dict[str, str] = {}
    started = time.perf_counter()
    for seed in cfg.seeds:
        train = dict(lr=cfg.lr, batch_size=cfg.batch_size, seed=seed, progress=progress)
        alone = network(seed)
        fit(Supervised(alone), alone.parameters(), data, epochs=cfg.epochs, **train)
        acc["alone"].append(evaluate(alone, data))
        for name, entry in methods:
            if name in failures:
                continue
            try:
                if mutual:  # peer 0 starts from the baseline's weights, the others from the next seeds
                    task = entry([network(seed + 1000 * k) for k in range(cfg.peers)])
                else:
                    task = entry(network(seed), data.input_shape)
                trainable = getattr(task, "trainable_parameters", None)
                params = trainable() if callable(trainable) else task.parameters()
                fit(task, params, data, epochs=cfg.epochs, **train)
            except Exception as exc:  # noqa: BLE001 - one method's failure must not hide the others
                failures[name] = f"{type(exc).__name__}: {exc}"
                acc.pop(name, None)
                peer_acc.pop(name, None)
                continue
            acc.setdefault(name, []).append(evaluate(task, data))
            if mutual:
                peer_acc.setdefault(name, []).append(evaluate(task.peers[0], data))
    n_params = count_params(network(0))
    labels = {pid: entry.__name__ for pid, entry in methods}
    rows = []
    for name, values in acc.items():
        if name == "alone":
            continue
        row = {"paper": name, "method": labels[name], "accuracy": accuracy_stats(values)}
        if name in peer_acc:
            row["peer_accuracy"] = accuracy_stats(peer_acc[name])
        rows.append(row)
    rows.sort(key=lambda r: -r["accuracy"]["mean"])
    known = {p.id for p in registry.papers if p.category == family}
    what = (f"{cfg.peers} peers of {cfg.network[0]} w={cfg.network[1]:g} ({n_params:,} parameters each)" if mutual
            else f"{cfg.network[0]} w={cfg.network[1]:g} ({n_params:,} parameters) as the backbone")
    return {
        "family": family,
        "kind": "cohort",
        "profile": "quick" if quick else "default",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "teacher": "none (no pretrained teacher)",
            "student": what,
            "seeds": list(cfg.seeds),
            "teacher_epochs": cfg.epochs,
            "epochs": cfg.epochs,
            "notes": f"SGD momentum 0.9, cosine lr {cfg.lr}, batch {cfg.batch_size}, weight decay 5e-4; each "
            "method's default Config; the baseline is the same network trained alone with cross-entropy from the "
            "same initialisation; last epoch reported.",
        },
        "baseline": accuracy_stats(acc["alone"]),
        "rows": rows,
        "failures": failures,
        "excluded": {pid: why for pid, why in NOT_IN_PROTOCOL.items() if pid in known},
        "wall_time_s": round(time.perf_counter() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def bench_mutual_learning(registry: Any, quick: bool = False, progress: bool = False) -> dict[str, Any]:
    """Every mutual learner's deployed network (and its first peer) against one network trained alone."""
    return _bench(registry, "mutual-learning", quick, progress)


def bench_self_distillation(registry: Any, quick: bool = False, progress: bool = False) -> dict[str, Any]:
    """Every self-distiller's deployed backbone against the same backbone trained alone."""
    return _bench(registry, "self-distillation", quick, progress)
