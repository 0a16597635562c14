r"""Family leaderboards under ONE protocol: every method on the same data, models, seeds and epochs.

Each paper's own `reproduce()` uses the protocol that suits its claim, so its numbers do not compare across papers.
Here the harness contract makes a common protocol possible: every distillation entry point is a `Distiller` built
as `entrypoint(student, teacher)` (the same call the smoke test makes), and `fit()` minimises the sum of the terms
its `forward_train` returns. So all distillers train the same quarter-width 1-D CNN student from the same
initialisation against the same trained teacher on MNIST-1D, and only the loss differs.

What this does not capture: multi-stage schedules a paper runs outside `forward_train` (FitNets' hint stage, FSP's
first stage, Born-Again generations, TA chains) -- each method enters with its single-stage loss and defaults,
so a method whose `forward_train` is only one stage of a longer recipe (e.g. a hint-only stage with no label loss)
can land near chance here.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import time
from dataclasses import dataclass
from typing import Any

import torch

from implementations._bench_cohort import bench_mutual_learning, bench_self_distillation
from implementations._bench_compression import (
    bench_architecture,
    bench_automl,
    bench_low_rank,
    bench_pruning,
    bench_quantization,
)

__all__ = [
    "BENCHES",
    "BenchConfig",
    "bench_architecture",
    "bench_automl",
    "bench_distillation",
    "bench_low_rank",
    "bench_mutual_learning",
    "bench_pruning",
    "bench_quantization",
    "bench_self_distillation",
    "run_bench",
]

#: family (registry category) -> the function of this module that runs its leaderboard
BENCHES = {
    "distillation": "bench_distillation",
    "mutual-learning": "bench_mutual_learning",
    "self-distillation": "bench_self_distillation",
    "pruning": "bench_pruning",
    "quantization": "bench_quantization",
    "low-rank": "bench_low_rank",
    "architecture": "bench_architecture",
    "automl": "bench_automl",
}


def run_bench(family: str, registry: Any, quick: bool = False, progress: bool = False) -> dict[str, Any]:
    """Run the leaderboard of `family` with one CPU thread (the models are tiny: one thread is faster and repeatable).

    The thread count is pinned here, once for every family, as `kb run` pins it for the papers.
    """
    function = globals()[BENCHES[family]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return function(registry, quick=quick, progress=progress)
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class BenchConfig:
    """The shared protocol; `quick` shrinks it to a smoke run."""

    dataset: str = "mnist1d"  # hard enough that students differ (8x8 digits put every method near 98%)
    teacher: tuple[str, float] = ("cnn1d", 1.0)  # channels 32-64-64
    student: tuple[str, float] = ("cnn1d", 0.25)  # channels 8-16-16, same stages and map lengths
    seeds: tuple[int, ...] = (0, 1)  # one teacher and one student initialisation per seed
    teacher_epochs: int = 10
    epochs: int = 8  # student epochs, the same for every method
    lr: float = 0.05  # SGD momentum 0.9, cosine schedule, weight decay 5e-4 (the harness defaults)
    batch_size: int = 64


QUICK = BenchConfig(seeds=(0,), teacher_epochs=1, epochs=1)


def _distillers(registry: Any) -> list[tuple[str, type]]:
    """(paper id, entry point class) of every implemented distillation paper whose entry point is a Distiller."""
    from implementations.distillation._base import Distiller

    out = []
    for paper in registry.papers:
        if paper.status != "implemented" or paper.family != "distillation" or paper.id in DISTILLERS_NOT_IN_PROTOCOL:
            continue
        entry = getattr(importlib.import_module(paper.module), paper.implementation.entrypoint)
        if inspect.isclass(entry) and issubclass(entry, Distiller):
            out.append((paper.id, entry))
    return out


#: Distillers whose mechanism the shared protocol (one C-class teacher, one student) cannot host: paper id -> why.
DISTILLERS_NOT_IN_PROTOCOL = {
    "subclass_muller2020": "needs a teacher trained with C*s subclass logits and the auxiliary loss; the shared "
                           "protocol trains one C-class teacher (its page compares it with ordinary KD)",
}


def bench_distillation(registry: Any, quick: bool = False, progress: bool = False) -> dict[str, Any]:
    """Train every distiller's student under `BenchConfig`; rows are sorted by mean accuracy."""
    from implementations._data import load_dataset
    from implementations._harness import Supervised, evaluate, fit, seed_everything
    from implementations._measure import accuracy_stats, count_params
    from implementations._models import build_model

    cfg = QUICK if quick else BenchConfig()
    data = load_dataset(cfg.dataset)
    methods = _distillers(registry)
    acc: dict[str, list[float]] = {"teacher": [], "student": []}
    failures: dict[str, str] = {}
    started = time.perf_counter()
    for seed in cfg.seeds:
        seed_everything(seed)
        teacher = build_model(cfg.teacher[0], data.num_classes, data.input_shape, width=cfg.teacher[1])
        train = dict(lr=cfg.lr, batch_size=cfg.batch_size, seed=seed, progress=progress)
        fit(Supervised(teacher), teacher.parameters(), data, epochs=cfg.teacher_epochs, **train)
        acc["teacher"].append(evaluate(teacher, data))
        for name, entry in [("student", None), *methods]:
            if name in failures:
                continue
            seed_everything(seed)  # every student starts from the same weights
            student = build_model(cfg.student[0], data.num_classes, data.input_shape, width=cfg.student[1])
            try:
                # a fresh copy of the teacher: a method may wrap it or train parts attached to it
                task = Supervised(student) if entry is None else entry(student, copy.deepcopy(teacher))
                trainable = getattr(task, "trainable_parameters", None)
                params = trainable() if callable(trainable) else student.parameters()
                fit(task, params, data, epochs=cfg.epochs, **train)
            except Exception as exc:  # noqa: BLE001 - one method's failure must not hide the others
                failures[name] = f"{type(exc).__name__}: {exc}"
                acc.pop(name, None)
                continue
            acc.setdefault(name, []).append(evaluate(task, data))  # the task's forward is its prediction
    student_params = count_params(build_model(cfg.student[0], data.num_classes, data.input_shape, cfg.student[1]))
    labels = {pid: entry.__name__ for pid, entry in methods}
    rows = [
        {"paper": name, "method": labels.get(name, name), "accuracy": accuracy_stats(values)}
        for name, values in acc.items()
        if name not in ("teacher", "student")
    ]
    rows.sort(key=lambda r: -r["accuracy"]["mean"])
    return {
        "family": "distillation",
        "kind": "distillation",
        "profile": "quick" if quick else "default",
        "protocol": {
            "dataset": data.name,
            "n_train": data.n_train,
            "n_test": data.n_test,
            "teacher": f"{cfg.teacher[0]} w={cfg.teacher[1]:g}",
            "student": f"{cfg.student[0]} w={cfg.student[1]:g} ({student_params:,} parameters)",
            "seeds": list(cfg.seeds),
            "teacher_epochs": cfg.teacher_epochs,
            "epochs": cfg.epochs,
            "notes": f"SGD momentum 0.9, cosine lr {cfg.lr}, batch {cfg.batch_size}, weight decay 5e-4; each "
            "method's default Config and single-stage forward_train loss; last epoch reported.",
        },
        "teacher": accuracy_stats(acc["teacher"]),
        "baseline": accuracy_stats(acc["student"]),
        "rows": rows,
        "failures": failures,
        "excluded": {pid: why for pid, why in DISTILLERS_NOT_IN_PROTOCOL.items() if registry.get(pid) is not None},
        "wall_time_s": round(time.perf_counter() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
