r"""The one training contract every reproduction plugs into.

A *task* is an `nn.Module` with `forward_train(x, y) -> (logits, {name: already_weighted_scalar_loss})` (mdistiller's
contract). `fit()` minimises the sum of the terms, $\mathcal{L} = \sum_i \mathcal{L}_i$, logs each term, and uses
SGD (or AdamW) with a cosine learning rate computed from the global step $t$ out of $T_{\max}$,

$$
\eta_t = \tfrac{1}{2}\,\eta_0 \left(1 + \cos\left(\pi\, t / T_{\max}\right)\right),
$$

so the schedule has no state and a run resumed from a checkpoint follows exactly the same path. On CPU, the same
seed gives identical numbers: the epoch-$e$ shuffle comes from a generator seeded with `seed + e`, and the global
torch RNG state is saved in every checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from implementations._data import TensorData, iterate_batches

__all__ = ["FitResult", "RunContext", "Supervised", "epoch_generator", "evaluate", "fit", "on_fit_end",
           "resolve_device", "seed_everything"]


@dataclass(frozen=True)
class RunContext:
    """What `reproduce(ctx)` gets from the runner: the profile and where/how to run."""

    profile: str = "quick"  # "quick" | "default" | "full"
    seeds: tuple[int, ...] = (0,)  # one training run per seed
    epoch_scale: float = 1.0  # multiply each module's default epoch count by this
    data_dir: str | None = None  # folder of torchvision-format data sets
    download: bool = False  # allow downloading missing data sets
    device: str = "cpu"  # resolved device, never "auto"
    progress: bool = False  # show tqdm bars (the CLI sets it when stderr is a terminal)
    n_train: int | None = None  # training-subset size for the quick profile (None = all)
    results_dir: Path = field(default_factory=lambda: Path("results"))  # figures go to results_dir/figures
    checkpoint_dir: Path | None = None  # where fit() checkpoints go (None: no checkpoints), see `checkpoint`

    def epochs(self, default: int) -> int:
        """Scale a module's default epoch count by the profile, at least 1."""
        return max(1, round(default * self.epoch_scale))

    def checkpoint(self, name: str) -> Path | None:
        """The checkpoint file of one training run of this reproduction, for `fit(checkpoint=...)`; None when the
        run keeps no checkpoints.

        `name` must be unique within the reproduction and the same on every run, e.g. `f"seed{seed}_teacher"`.
        An interrupted `kb run <id> --full` resumes every training from its file with `--resume`.
        """
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
            raise ValueError(f"checkpoint name {name!r}: use letters, digits, '_', '-' and '.' only")
        return None if self.checkpoint_dir is None else Path(self.checkpoint_dir) / f"{name}.pt"


@dataclass
class FitResult:
    """What `fit()` returns: one dict per epoch with the mean of each loss term, lr and wall time."""

    history: list[dict[str, float]]  # [{"epoch", "loss", <term>..., "lr", "time_s"[, "test_acc"]}]
    resumed_from: int = 0  # epochs already done when fit() started (from the checkpoint)


class Supervised(nn.Module):
    """Plain cross-entropy task around a model, for baselines and teachers."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing  # $\epsilon$ of label smoothing, 0 = plain CE

    def forward(self, x: Tensor) -> Tensor:
        """Logits `(B, K)`."""
        return self.model(x)

    def forward_train(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits `(B, K)` and `{"ce": CE(y, softmax(logits))}`."""
        logits = self.model(x)  # (B, K)
        return logits, {"ce": F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)}


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (all devices); optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator that shuffles epoch `epoch` of the run seeded `seed`.

    Seeds the generator with `seed * 1_000_003 + epoch`, so that two runs with different seeds never share an epoch's
    order (with `seed + epoch`, seed 1's first epoch would repeat seed 0's second one).
    """
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def resolve_device(device: str = "auto") -> str:
    """`"auto"` -> `"cuda"` when a GPU is visible, else `"cpu"`; a bare `"cuda"` becomes `"cuda:<LOCAL_RANK>"` when
    torchrun set `LOCAL_RANK`, so that each process of a multi-GPU run uses its own GPU. Anything else is returned
    unchanged."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, batch_size: int = 1000, split: str = "test") -> float:
    """Top-1 accuracy in percent of `model(x)` on the `test` (or `train`) split, on the model's device."""
    x, y = (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)
    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device
    was_training = model.training
    model.eval()
    correct = 0
    for xb, yb in iterate_batches(x.to(device), y.to(device), batch_size):
        correct += (model(xb).argmax(dim=-1) == yb).sum().item()
    model.train(was_training)
    return 100.0 * correct / max(1, len(y))


#: Called with every finished `fit()`'s result; the runner counts trainings for its per-paper progress bar.
_FIT_LISTENERS: list[Callable[[FitResult], None]] = []


@contextlib.contextmanager
def on_fit_end(callback: Callable[[FitResult], None]) -> Iterator[None]:
    """Within the block, call `callback(result)` after every `fit()` returns."""
    _FIT_LISTENERS.append(callback)
    try:
        yield
    finally:
        _FIT_LISTENERS.remove(callback)


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


def fit(
    task: nn.Module,
    params: Iterable[nn.Parameter],
    data: TensorData,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    device: str = "cpu",
    *,
    seed: int = 0,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    eval_every_epoch: bool = False,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    bf16: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    extra_state: dict[Any, Any] | None = None,
) -> FitResult:
    r"""Train `task` by minimising the sum of the losses returned by `task.forward_train`.

    Args:
        task: Module with `forward_train(x, y) -> (logits, {name: weighted scalar loss})`; moved to `device`.
        params: The parameters to optimise (e.g. only the student's).
        data: Training data; moved to `device` once and batched there.
        epochs: Number of epochs $E$; $T_{\max} = E \cdot \lceil N / B \rceil$.
        lr: Peak learning rate $\eta_0$.
        batch_size: Global batch size $B$ (split across ranks under `torch.distributed`).
        device: `"cpu"`, `"cuda"`, `"cuda:1"`, ...
        seed: Seeds the shuffle of every epoch (see `epoch_generator`).
        optimizer: `"sgd"` (momentum, weight decay) or `"adamw"`.
        momentum: SGD momentum.
        weight_decay: L2 / decoupled weight decay.
        checkpoint: File written atomically after each epoch; when it exists, training resumes from it.
        progress: Show a tqdm bar over epochs (rank 0 only).
        eval_every_epoch: Add the test accuracy to each epoch's history entry.
        augment: `augment(x, generator) -> x` applied to each training batch; called positionally with the epoch's
            generator (`_data.augment_crop_flip` fits as is).
        bf16: Run forward passes under bfloat16 autocast.
        channels_last: Use the channels-last memory format for 4-D inputs and the task.
        compile: Wrap `forward_train` with `torch.compile`.
        on_epoch_end: Called as `on_epoch_end(epoch, history_entry)` after each epoch (and its checkpoint; with
            `extra_state`, before it).
        extra_state: A dict that `on_epoch_end` fills (e.g. snapshots of the weights at some epochs). Each epoch's
            checkpoint saves it as the callback left it and, on resume, its saved contents are put back into this
            same dict, so the callback's work from the epochs before the interruption is not lost.

    Returns:
        The per-epoch history.
    """
    from implementations._distributed import DistInfo, TrainStep, get_dist_info, shard_indices, sync_buffers

    dist: DistInfo = get_dist_info()
    params = [p for p in params if p.requires_grad]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    task.to(device)
    if channels_last:
        task.to(memory_format=torch.channels_last)
    data = data.to(device)
    x_all, y_all = data.x_train, data.y_train
    if channels_last and x_all.dim() == 4:
        x_all = x_all.contiguous(memory_format=memory_format)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    local_batch = max(1, batch_size // dist.world_size)
    steps_per_epoch = math.ceil(math.ceil(len(y_all) / dist.world_size) / local_batch)
    total_steps = max(1, epochs * steps_per_epoch)
    fingerprint = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "n_train": len(y_all), "seed": seed}

    history: list[dict[str, float]] = []
    start_epoch = 0
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if ckpt_path is not None and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if state["fingerprint"] != fingerprint:
            raise ValueError(f"checkpoint {ckpt_path} was written by a different run: {state['fingerprint']}")
        task.load_state_dict(state["task"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        history, start_epoch = state["history"], state["epoch"]
        if extra_state is not None:
            extra_state.clear()
            extra_state.update(state.get("extra", {}))

    step_module = TrainStep(task)
    if dist.world_size > 1:
        step_module = dist.wrap(step_module)
    step_fn = torch.compile(step_module) if compile else step_module
    device_type = torch.device(device).type
    bar = tqdm(range(start_epoch, epochs), disable=not progress or dist.rank != 0, desc="epochs", leave=False)
    for epoch in bar:
        started = time.perf_counter()
        task.train()
        gen = epoch_generator(seed, epoch)
        order = shard_indices(len(y_all), dist.rank, dist.world_size, generator=gen).to(x_all.device)
        sums: dict[str, float] = {}
        n_batches = 0
        for start in range(0, len(order), local_batch):
            idx = order[start : start + local_batch]
            xb, yb = x_all[idx], y_all[idx]
            if augment is not None:
                xb = augment(xb, gen)
            step = epoch * steps_per_epoch + n_batches
            lr_now = 0.5 * lr * (1 + math.cos(math.pi * step / total_steps))  # cosine schedule, stateless
            for group in opt.param_groups:
                group["lr"] = lr_now
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                _, losses = step_fn(xb, yb)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for name, value in {"loss": loss, **losses}.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            n_batches += 1
        entry = {"epoch": float(epoch + 1), **{k: v / max(1, n_batches) for k, v in sums.items()}}
        entry.update(lr=lr_now, time_s=time.perf_counter() - started)
        if eval_every_epoch:
            entry["test_acc"] = evaluate(task, data)
        history.append(entry)
        bar.set_postfix(loss=f"{entry['loss']:.3f}")
        if on_epoch_end is not None and extra_state is not None:
            on_epoch_end(epoch + 1, entry)  # first, so that this epoch's checkpoint holds what the callback kept
        if ckpt_path is not None and dist.rank == 0:
            state = {"task": task.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state()}
            state.update(history=history, epoch=epoch + 1, fingerprint=fingerprint, extra=extra_state or {})
            _save_atomic(state, ckpt_path)
        if on_epoch_end is not None and extra_state is None:
            on_epoch_end(epoch + 1, entry)
    sync_buffers(task)  # identical BN statistics on every rank (no-op in a single process)
    task.eval()
    result = FitResult(history=history, resumed_from=start_epoch)
    for listener in list(_FIT_LISTENERS):
        listener(result)
    return result
