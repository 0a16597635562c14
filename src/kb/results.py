r"""Schema of the machine-written reproduction results, `results/<id>.json`.

Written by `kb run <id>` (through `implementations._runner.run_paper`), never by hand, and read by the site to
render the "Reported (paper) | Reproduced (ours) | Command" table. Accuracies are top-1 in percent; `std` is the
sample standard deviation over the seeds. This module uses pydantic only (no torch), so the docs build can
import it.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from kb.schema import ID_PATTERN

__all__ = [
    "SCHEMA_VERSION",
    "Accuracy",
    "Answer",
    "Benchmark",
    "Claim",
    "Environment",
    "Protocol",
    "Result",
    "ResultError",
    "Row",
    "load_benchmark",
    "load_result",
    "write_benchmark",
    "write_result",
]

SCHEMA_VERSION = 1


class ResultError(ValueError):
    """A results file is missing, is not JSON, or does not match the schema."""


def _figure_path(value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or "\\" in value:
        raise ValueError(f"figure path must be relative and inside the repository, got {value!r}")
    if path.suffix not in (".png", ".svg"):
        raise ValueError(f"figure must be a .png or .svg file, got {value!r}")
    return value


def _iso_timestamp(value: str) -> str:
    datetime.fromisoformat(value)  # raises ValueError on a malformed timestamp
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Percent = Annotated[float, Field(ge=0.0, le=100.0)]


class Accuracy(_Model):
    """Top-1 accuracy in percent over seeds."""

    mean: Percent
    std: Annotated[float, Field(ge=0.0)]
    values: Annotated[list[Percent], Field(min_length=1)]

    @model_validator(mode="after")
    def _mean_matches(self) -> Accuracy:
        mean = sum(self.values) / len(self.values)
        if abs(mean - self.mean) > 1e-6 * max(1.0, abs(mean)):
            raise ValueError(f"mean {self.mean} is not the mean of values {self.values}")
        return self


class Row(_Model):
    """One trained variant (method, baseline, teacher or ablation)."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]
    label: str
    role: Literal["method", "baseline", "teacher", "ablation"]
    accuracy: Accuracy
    params: Annotated[int, Field(ge=0)] | None = None
    nonzero_params: Annotated[int, Field(ge=0)] | None = None
    bytes: Annotated[int, Field(ge=0)] | None = None
    flops: Annotated[int, Field(ge=0)] | None = None
    latency_ms: Annotated[float, Field(ge=0.0)] | None = None
    bits: Annotated[float, Field(gt=0.0)] | None = None
    extra: dict[str, float | str] = Field(default_factory=dict)


class Protocol(_Model):
    """How the numbers were obtained."""

    dataset: str
    n_train: Annotated[int, Field(ge=1)]
    n_test: Annotated[int, Field(ge=1)]
    seeds: Annotated[list[int], Field(min_length=1)]
    epochs: Annotated[int, Field(ge=1)]
    selection: Literal["last", "best"]
    notes: str = ""


class Claim(_Model):
    """The paper's headline claim and whether our numbers support it."""

    text: str
    reproduced: bool
    evidence: str


class Answer(_Model):
    """A small experiment answering an open question from the notes."""

    question: str
    answer: str
    evidence: str


class Environment(_Model):
    """Where the run happened."""

    torch: str
    python: str
    device: str
    git_commit: str | None = None
    platform: str


class Result(_Model):
    """The contents of `results/<id>.json`."""

    id: Annotated[str, Field(pattern=ID_PATTERN)]
    schema_version: Literal[1] = SCHEMA_VERSION
    profile: Literal["quick", "default", "full"]
    command: str
    protocol: Protocol
    rows: Annotated[list[Row], Field(min_length=1)]
    claim: Claim
    answers: list[Answer] = Field(default_factory=list)
    figures: list[Annotated[str, AfterValidator(_figure_path)]] = Field(default_factory=list)
    environment: Environment
    wall_time_s: Annotated[float, Field(ge=0.0)]
    created: Annotated[str, AfterValidator(_iso_timestamp)]

    @model_validator(mode="after")
    def _unique_rows(self) -> Result:
        names = [row.name for row in self.rows]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate row names: {', '.join(duplicates)}")
        return self

    def row(self, name: str) -> Row:
        """The row called `name`; `KeyError` if there is none."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)


def load_result(path: str | Path) -> Result:
    """Read and validate a results file.

    Raises:
        ResultError: The file is missing, is not valid JSON, or does not match the schema; the message names it.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ResultError(f"{path}: cannot read results file ({err})") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ResultError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
    try:
        return Result.model_validate(data)
    except ValidationError as err:
        raise ResultError(f"{path}: does not match the results schema:\n{err}") from err


def write_result(data: Result | dict[str, Any], path: str | Path) -> Result:
    """Validate `data` and write it to `path` atomically (temporary file, then `os.replace`).

    Nothing is written when validation fails, and a crash mid-write leaves any previous file intact.
    """
    result = data if isinstance(data, Result) else Result.model_validate(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(result.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Family leaderboards under one shared protocol: results/benchmarks/<family>.json, written by `kb bench <family>`
# ---------------------------------------------------------------------------------------------------------------------


class BenchProtocol(_Model):
    """The one protocol every method of a family leaderboard shares."""

    dataset: str
    n_train: Annotated[int, Field(ge=1)]
    n_test: Annotated[int, Field(ge=1)]
    teacher: str  # distillation: the teacher; pruning/quantization: the dense fp32 reference model
    student: str  # distillation: the student; pruning/quantization: what the budget is applied to
    seeds: Annotated[list[int], Field(min_length=1)]
    teacher_epochs: Annotated[int, Field(ge=1)]  # epochs of the teacher / dense reference model
    epochs: Annotated[int, Field(ge=0)]  # student epochs / fine-tuning epochs after pruning (0: post-training)
    notes: str = ""


class BenchRow(_Model):
    """One paper's method under the shared protocol."""

    paper: Annotated[str, Field(pattern=ID_PATTERN)]
    method: str
    accuracy: Accuracy
    track: str | None = None  # compression benches: e.g. "unstructured weights", "channels removed"
    budget: str | None = None  # the matched budget of this row, e.g. "90% sparsity", "4 bits"
    baseline: bool = False  # the budget's reference criterion (random pruning, round-to-nearest)
    params: Annotated[int, Field(ge=0)] | None = None
    nonzero_params: Annotated[int, Field(ge=0)] | None = None
    bytes: Annotated[int, Field(ge=0)] | None = None
    flops: Annotated[int, Field(ge=0)] | None = None
    bits: Annotated[float, Field(gt=0.0)] | None = None
    peer_accuracy: Accuracy | None = None  # mutual learning: the first peer alone, when the method deploys more


class Benchmark(_Model):
    """The contents of `results/benchmarks/<family>.json`."""

    family: str
    # cohort: no pretrained teacher; architecture: networks trained from scratch, compared by size and FLOPs
    kind: Literal["distillation", "compression", "cohort", "architecture"] = "distillation"
    profile: Literal["quick", "default"]
    protocol: BenchProtocol
    teacher: Accuracy | None = None  # distillation: the teacher; compression: the dense reference model
    baseline: Accuracy | None = None  # distillation, cohort: the network trained alone (compression: baseline rows)
    reference: dict[str, int] = Field(default_factory=dict)  # compression: the dense model's params, bytes, flops
    rows: list[BenchRow]
    failures: dict[str, str] = Field(default_factory=dict)  # paper id -> why its method could not run
    excluded: dict[str, str] = Field(default_factory=dict)  # paper id -> why its mechanism does not fit the protocol
    wall_time_s: Annotated[float, Field(ge=0.0)]
    created: str

    @model_validator(mode="after")
    def _baseline_present(self) -> Benchmark:
        if self.kind in ("distillation", "cohort") and self.baseline is None:
            raise ValueError(f"a {self.kind} benchmark needs the network-alone baseline")
        if self.kind in ("distillation", "compression") and self.teacher is None:
            raise ValueError(f"a {self.kind} benchmark needs the teacher / dense reference accuracy")
        if self.kind in ("compression", "architecture") and self.rows and not any(r.baseline for r in self.rows):
            raise ValueError("a compression benchmark needs at least one baseline row per budget")
        return self


def write_benchmark(data: Benchmark | dict[str, Any], path: str | Path) -> Path:
    """Validate and write a benchmark file atomically; nothing is written when validation fails."""
    bench = data if isinstance(data, Benchmark) else Benchmark.model_validate(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(bench.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_benchmark(path: str | Path) -> Benchmark:
    """Read and validate a benchmark file; errors name the file."""
    path = Path(path)
    try:
        return Benchmark.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as err:
        raise ResultError(f"{path}: invalid benchmark file: {err}") from err
