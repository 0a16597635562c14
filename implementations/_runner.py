r"""Run one paper's `reproduce(ctx)` and write `results/<id>.json` atomically.

Profiles:

- `quick`: a smoke run of a few seconds (1 seed, a tiny training subset, ~10% of the epochs); used by the tests.
- `default`: the small-data reproduction, at most ~60 s per paper on a 2-core CPU, 3 seeds.
- `full`: the paper-scale setting (e.g. CIFAR on a GPU); modules raise `DataMissingError` when the data is absent.
  Only modules that declare `FULL = "<one-line description>"` have one; `run_paper` refuses the others.

Checkpoints: with a `checkpoint_dir`, `ctx.checkpoint(name)` gives each training a file for `fit(checkpoint=...)`.
A run that finds checkpoints of an earlier, interrupted run refuses to start unless `resume` (continue from them) or
`fresh` (delete them) is given; a run that finishes deletes its checkpoints.

Multi-GPU: under `torchrun --nproc-per-node N -m kb.cli run <id> --full ...` every process runs the same
`reproduce(ctx)` on its own device (`cuda:<LOCAL_RANK>`), `fit()` shards the batches over the process group, and
only rank 0 writes checkpoints, figures and the results file.

The CLI (`kb run <id> [--quick|--full] [--data-dir D] [--download] [--resume]`) imports `run_paper` lazily.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from implementations._distributed import barrier, get_dist_info, init_distributed, is_main_process
from implementations._harness import RunContext, on_fit_end, resolve_device

__all__ = [
    "OVERRIDABLE",
    "PROFILES",
    "CheckpointsExistError",
    "ProfileError",
    "make_context",
    "run_paper",
    "save_accuracy_plot",
]

ROOT = Path(__file__).resolve().parents[1]

#: Profile -> (seeds, epoch_scale, n_train).
PROFILES: dict[str, tuple[tuple[int, ...], float, int | None]] = {
    "quick": ((0,), 0.1, 500),
    "default": ((0, 1, 2), 1.0, None),
    "full": ((0, 1, 2), 1.0, None),
}

#: RunContext fields a trial run may override (`kb run --seeds/--epoch-scale/--n-train`, or the tests).
OVERRIDABLE = ("seeds", "epoch_scale", "n_train")


class ProfileError(ValueError):
    """The module has no setting for the requested profile (`full` needs a `FULL = "..."` declaration)."""


class CheckpointsExistError(RuntimeError):
    """The checkpoint folder holds files of an earlier run and neither `resume` nor `fresh` was given."""


def make_context(
    profile: str,
    results_dir: str | Path = "results",
    data_dir: str | Path | None = None,
    download: bool = False,
    device: str = "auto",
    progress: bool = False,
    checkpoint_dir: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RunContext:
    """The `RunContext` of a profile (`quick`, `default` or `full`), with some fields optionally overridden.

    Args:
        overrides: New values for fields in `OVERRIDABLE`, e.g. `{"seeds": (0,), "epoch_scale": 0.01}` to try a
            paper-scale run in minutes.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    seeds, epoch_scale, n_train = PROFILES[profile]
    ctx = RunContext(
        profile=profile,
        seeds=seeds,
        epoch_scale=epoch_scale,
        data_dir=str(data_dir) if data_dir is not None else None,
        download=download,
        device=resolve_device(device),
        progress=progress,
        n_train=n_train,
        results_dir=Path(results_dir),
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
    )
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(f"cannot override {', '.join(unknown)}; only {', '.join(OVERRIDABLE)}")
    if "seeds" in overrides:
        overrides["seeds"] = tuple(int(seed) for seed in overrides["seeds"])
    return dataclasses.replace(ctx, **overrides)


def _import(module_path: str) -> ModuleType:
    """Import a dotted module name, or a `.py` file (as a dotted name when it lies under the repository)."""
    path = Path(module_path)
    if module_path.endswith(".py") or path.is_file():
        path = path.resolve()
        try:
            module_path = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        except ValueError:
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot import {path}") from None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(module_path)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _environment(device: str) -> dict[str, Any]:
    """Versions and device; call it where the run's thread count is in force (the CPU entry records it)."""
    name = device
    if device.startswith("cuda") and torch.cuda.is_available():
        name = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    elif device == "cpu":
        threads = torch.get_num_threads()
        name = f"cpu ({threads} thread{'s' if threads != 1 else ''}, {platform.processor() or platform.machine()})"
    world_size = get_dist_info().world_size
    if world_size > 1:
        name += f", {world_size} processes (torchrun, DDP)"
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": name,
        "git_commit": _git_commit(),
        "platform": platform.platform(),
    }


def _command(paper_id: str, ctx: RunContext, data_dir: str | Path | None, overridden: Mapping[str, Any]) -> str:
    parts = ["kb", "run", paper_id] + {"quick": ["--quick"], "full": ["--full"]}.get(ctx.profile, [])
    if data_dir is not None:
        parts += ["--data-dir", str(data_dir)]
    if ctx.download:
        parts.append("--download")
    if overridden.get("seeds") is not None:
        parts += ["--seeds", ",".join(map(str, ctx.seeds))]
    if overridden.get("epoch_scale") is not None:
        parts += ["--epoch-scale", f"{ctx.epoch_scale:g}"]
    if overridden.get("n_train") is not None:
        parts += ["--n-train", str(ctx.n_train)]
    world_size = get_dist_info().world_size
    command = " ".join(parts)
    return f"torchrun --nproc-per-node {world_size} -m kb.cli {command[3:]}" if world_size > 1 else command


def _checkpoint_files(folder: Path | None) -> list[Path]:
    return sorted(folder.glob("*.pt")) if folder is not None and folder.is_dir() else []


def _remove_checkpoints(folder: Path | None) -> None:
    """Delete the checkpoint files (and the folder, once empty); other files are left alone. Rank 0 only."""
    if folder is None or not is_main_process():
        return
    for path in _checkpoint_files(folder):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def _prepare_checkpoints(folder: Path | None, paper_id: str, resume: bool, fresh: bool) -> None:
    """Refuse to mix with an earlier run's checkpoints unless told to resume from them or to delete them."""
    if fresh:
        _remove_checkpoints(folder)
        barrier()  # every rank waits, so no rank lists the folder while rank 0 empties it
        return
    found = _checkpoint_files(folder)
    if found and not resume:
        raise CheckpointsExistError(
            f"{folder} holds {len(found)} checkpoint(s) of an earlier, unfinished run of {paper_id}: pass --resume "
            f"to continue it, or --fresh to delete them and start over"
        )


@contextlib.contextmanager
def _training_bar(paper_id: str, enabled: bool) -> Iterator[None]:
    """A per-paper tqdm bar that counts the trainings (`fit()` calls) of `reproduce`, on rank 0 only."""
    if not enabled or not is_main_process():
        yield
        return
    from tqdm.auto import tqdm

    with tqdm(desc=f"{paper_id}: trainings", unit="fit", file=sys.stderr, leave=False) as bar:

        def update(result: Any) -> None:
            bar.update(1)
            if result.history:
                bar.set_postfix(epochs=len(result.history), resumed=result.resumed_from or None)

        with on_fit_end(update):
            yield


def run_paper(
    paper_id: str,
    module_path: str,
    profile: str,
    results_dir: str | Path,
    data_dir: str | Path | None = None,
    download: bool = False,
    device: str = "auto",
    progress: bool = False,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    fresh: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> Path | None:
    """Run `reproduce(ctx)` of a paper module and write `<results_dir>/<paper_id>.json`.

    Under torchrun (`WORLD_SIZE` > 1) it first joins the process group (NCCL on GPUs, gloo on the CPU); every rank
    runs `reproduce`, and only rank 0 writes.

    Args:
        paper_id: The registry id; the returned dict's `id` must match it.
        module_path: Dotted module (`implementations.distillation.kd_hinton2015`) or path to its `.py` file.
        profile: `quick`, `default` or `full` (`full` only for modules that declare `FULL`).
        results_dir: Folder of the results files; figures go to `<results_dir>/figures/`.
        data_dir: Folder of torchvision-format data sets.
        download: Allow downloads of missing data sets.
        device: `auto`, `cpu`, `cuda`, ... (`auto` and `cuda` pick `cuda:<LOCAL_RANK>` under torchrun).
        progress: Show progress bars (a per-paper bar over trainings, and `ctx.progress` for the modules).
        checkpoint_dir: Folder of this paper's training checkpoints (`ctx.checkpoint(name)`); None: none kept.
        resume: Continue from the checkpoints an interrupted run left in `checkpoint_dir`.
        fresh: Delete such checkpoints and start over.
        overrides: Replace profile fields (see `OVERRIDABLE`), for trial runs.

    Returns:
        Path of the written results file; None on the ranks other than 0, which write nothing.

    Raises:
        ProfileError: `profile` is `full` and the module declares no paper-scale setting.
        CheckpointsExistError: `checkpoint_dir` holds an earlier run's files and neither `resume` nor `fresh` is set.
        kb.results.ResultError: The returned dict does not match the schema (nothing is written).
    """
    from kb.results import SCHEMA_VERSION, ResultError, write_result

    ctx = make_context(profile, results_dir, data_dir, download, device, progress, checkpoint_dir, overrides)
    module = _import(module_path)
    if not hasattr(module, "reproduce"):
        raise AttributeError(f"{module.__name__} has no reproduce(ctx) function")
    if profile == "full" and not (isinstance(getattr(module, "FULL", None), str) and module.FULL.strip()):
        raise ProfileError(f"{paper_id} has no paper-scale setting: {module.__name__} declares no `FULL`")
    init_distributed("nccl" if ctx.device.startswith("cuda") else "gloo")  # no-op outside torchrun
    _prepare_checkpoints(ctx.checkpoint_dir, paper_id, resume, fresh)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if ctx.device == "cpu":
        torch.set_num_threads(1)  # the reference models are tiny: one thread is faster and runs are repeatable
    try:
        environment = _environment(ctx.device)  # inside the pinned section: it records the thread count used
        with _training_bar(paper_id, ctx.progress):
            data = dict(module.reproduce(ctx))
    finally:
        torch.set_num_threads(threads)
    if data.setdefault("id", paper_id) != paper_id:
        raise ResultError(f"{module.__name__}.reproduce returned id {data['id']!r}, expected {paper_id!r}")
    data.setdefault("schema_version", SCHEMA_VERSION)
    data.setdefault("profile", profile)
    data.setdefault("command", _command(paper_id, ctx, data_dir, overrides or {}))
    data["environment"] = environment
    data["wall_time_s"] = round(time.perf_counter() - started, 3)
    data["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    out = Path(results_dir) / f"{paper_id}.json"
    if not is_main_process():
        barrier()  # wait until rank 0 has written (or failed), then leave the writing to it
        return None
    try:
        write_result(data, out)
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise ResultError(f"{out}: reproduce() of {module.__name__} returned an invalid result:\n{err}") from err
    finally:
        barrier()
    _remove_checkpoints(ctx.checkpoint_dir)  # the run is complete: its checkpoints have served their purpose
    return out


def save_accuracy_plot(rows: Sequence[dict[str, Any]], ctx: RunContext, paper_id: str, title: str = "") -> str:
    """Bar chart of mean accuracy (+- std, seeds as dots) per row; returns the path to list in `figures`.

    The file is `<results_dir>/figures/<paper_id>_accuracy.png`; the returned path is relative to the parent of
    `results_dir` (so `results/figures/<paper_id>_accuracy.png` for the default folder).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"teacher": "#7f7f7f", "baseline": "#1f77b4", "method": "#d62728", "ablation": "#ff7f0e"}
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 2, 3.5))
    for i, row in enumerate(rows):
        acc = row["accuracy"]
        ax.bar(i, acc["mean"], yerr=acc["std"], color=colors.get(row["role"], "#999999"), capsize=4)
        ax.plot([i] * len(acc["values"]), acc["values"], "k.", markersize=4)
    ax.set_xticks(range(len(rows)), [row["label"] for row in rows], rotation=20, ha="right", fontsize=8)
    low = min(v for row in rows for v in row["accuracy"]["values"])
    ax.set_ylim(max(0.0, low - 10.0), 100.0)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or paper_id, fontsize=9)
    fig.tight_layout()
    path = ctx.results_dir / "figures" / f"{paper_id}_accuracy.png"
    if is_main_process():  # under torchrun every rank draws the same figure; one writes it
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return (Path(ctx.results_dir.resolve().name) / "figures" / path.name).as_posix()
