r"""Run one paper's `reproduce(ctx)` and write `results/<id>.json` atomically.

Profiles:

- `quick`: a smoke run of a few seconds (1 seed, a tiny training subset, ~10% of the epochs); used by the tests.
- `default`: the small-data reproduction, at most ~60 s per paper on a 2-core CPU, 3 seeds.
- `full`: the paper-scale setting (e.g. CIFAR on a GPU); modules raise `DataMissingError` when the data is absent.

The lead's CLI (`kb run <id> [--quick|--full] [--data-dir D] [--download]`) imports `run_paper` lazily.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from implementations._harness import RunContext, resolve_device

__all__ = ["PROFILES", "make_context", "run_paper", "save_accuracy_plot"]

ROOT = Path(__file__).resolve().parents[1]

#: Profile -> (seeds, epoch_scale, n_train).
PROFILES: dict[str, tuple[tuple[int, ...], float, int | None]] = {
    "quick": ((0,), 0.1, 500),
    "default": ((0, 1, 2), 1.0, None),
    "full": ((0, 1, 2), 1.0, None),
}


def make_context(
    profile: str,
    results_dir: str | Path = "results",
    data_dir: str | Path | None = None,
    download: bool = False,
    device: str = "auto",
    progress: bool = False,
) -> RunContext:
    """The `RunContext` of a profile (`quick`, `default` or `full`)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    seeds, epoch_scale, n_train = PROFILES[profile]
    return RunContext(
        profile=profile,
        seeds=seeds,
        epoch_scale=epoch_scale,
        data_dir=str(data_dir) if data_dir is not None else None,
        download=download,
        device=resolve_device(device),
        progress=progress,
        n_train=n_train,
        results_dir=Path(results_dir),
    )


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
    import torch

    name = device
    if device.startswith("cuda") and torch.cuda.is_available():
        name = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    elif device == "cpu":
        name = f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": name,
        "git_commit": _git_commit(),
        "platform": platform.platform(),
    }


def _command(paper_id: str, profile: str, data_dir: str | Path | None, download: bool) -> str:
    parts = ["kb", "run", paper_id] + {"quick": ["--quick"], "full": ["--full"]}.get(profile, [])
    if data_dir is not None:
        parts += ["--data-dir", str(data_dir)]
    return " ".join(parts + (["--download"] if download else []))


def run_paper(
    paper_id: str,
    module_path: str,
    profile: str,
    results_dir: str | Path,
    data_dir: str | Path | None = None,
    download: bool = False,
    device: str = "auto",
    progress: bool = False,
) -> Path:
    """Run `reproduce(ctx)` of a paper module and write `<results_dir>/<paper_id>.json`.

    Args:
        paper_id: The registry id; the returned dict's `id` must match it.
        module_path: Dotted module (`implementations.distillation.kd_hinton2015`) or path to its `.py` file.
        profile: `quick`, `default` or `full`.
        results_dir: Folder of the results files; figures go to `<results_dir>/figures/`.
        data_dir: Folder of torchvision-format data sets.
        download: Allow downloads of missing data sets.
        device: `auto`, `cpu`, `cuda`, ...
        progress: Show progress bars.

    Returns:
        Path of the written results file.

    Raises:
        kb.results.ResultError: The returned dict does not match the schema (nothing is written).
    """
    from kb.results import SCHEMA_VERSION, ResultError, write_result

    ctx = make_context(profile, results_dir, data_dir, download, device, progress)
    module = _import(module_path)
    if not hasattr(module, "reproduce"):
        raise AttributeError(f"{module.__name__} has no reproduce(ctx) function")
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if ctx.device == "cpu":
        torch.set_num_threads(1)  # the reference models are tiny: one thread is faster and runs are repeatable
    try:
        data = dict(module.reproduce(ctx))
    finally:
        torch.set_num_threads(threads)
    if data.setdefault("id", paper_id) != paper_id:
        raise ResultError(f"{module.__name__}.reproduce returned id {data['id']!r}, expected {paper_id!r}")
    data.setdefault("schema_version", SCHEMA_VERSION)
    data.setdefault("profile", profile)
    data.setdefault("command", _command(paper_id, profile, data_dir, download))
    data["environment"] = _environment(ctx.device)
    data["wall_time_s"] = round(time.perf_counter() - started, 3)
    data["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    out = Path(results_dir) / f"{paper_id}.json"
    try:
        write_result(data, out)
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise ResultError(f"{out}: reproduce() of {module.__name__} returned an invalid result:\n{err}") from err
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return (Path(ctx.results_dir.resolve().name) / "figures" / path.name).as_posix()
