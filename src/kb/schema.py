r"""The registry schema: what one paper entry in `registry.yaml` may and must contain.

The models check data only. Facts about the file system that need the repository root
(does the notes page exist, is the path inside the repo) are checked in `kb.registry`,
which uses `PathStr` here to reject absolute paths and `..` before it ever looks at the disk.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "CATEGORIES",
    "FIDELITIES",
    "ID_PATTERN",
    "Implementation",
    "OpenQuestion",
    "Paper",
    "Registry",
    "Reported",
    "STATUSES",
]

#: `<method>_<firstauthor><year>`, with an optional letter suffix on collision.
ID_PATTERN = r"^[a-z][a-z0-9]*(_[a-z0-9]+)*_[a-z]+\d{4}[a-z]?$"
#: New-style arXiv ids (`1503.02531`, optionally versioned) or old-style (`cs/0112017`).
ARXIV_PATTERN = r"^(\d{4}\.\d{4,5}(v\d+)?|[a-z\-]+(\.[A-Z]{2})?/\d{7}(v\d+)?)$"
BIBTEX_KEY_PATTERN = r"^[A-Za-z][A-Za-z0-9_:\-]*$"

Category = Literal[
    "distillation",
    "mutual-learning",
    "self-distillation",
    "pruning",
    "quantization",
    "low-rank",
    "automl",
    "architecture",
    "other",
]
CATEGORIES: tuple[str, ...] = Category.__args__  # type: ignore[attr-defined]

Fidelity = Literal["faithful", "simplified", "partial"]
FIDELITIES: tuple[str, ...] = Fidelity.__args__  # type: ignore[attr-defined]

#: `noted`: registry entry and notes page only; `scaffolded`: `kb implement` wrote the module and
#: test templates, which still have to be filled in; `implemented`: module and tests are written.
#: Whether a paper is reproduced is read from `results/<id>.json`, never typed here.
Status = Literal["noted", "scaffolded", "implemented"]
STATUSES: tuple[str, ...] = Status.__args__  # type: ignore[attr-defined]


def _relative_path(value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or "\\" in value or re.match(r"^[A-Za-z]:", value):
        raise ValueError(f"path {value!r} must be relative to the repository root")
    if ".." in path.parts:
        raise ValueError(f"path {value!r} points outside the repository")
    return value


PathStr = Annotated[str, Field(min_length=1), AfterValidator(_relative_path)]
Text = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class OpenQuestion(_Model):
    """A question the notes raise, with the notes' own answer and, later, an experiment's."""

    question: Text
    notes_answer: Text | None = None  # what the reading notes answer, in our words
    experiment_answer: Text | None = None  # what our small-scale experiment found


class Reported(_Model):
    """One headline number as printed in the paper (never a number we measured)."""

    dataset: Text
    model: Text
    metric: Text
    value: float | str  # a number, or a string such as "49x" when the paper states it so
    source: Text  # where in the paper: "Table 2", "Sec. 4.1"
    setting: str | None = None  # e.g. "teacher ResNet-110, student ResNet-20"
    quoted_from: str | None = None  # the other paper this number is copied from, when not read off this paper


class Implementation(_Model):
    """Where the paper's code lives and how closely it follows the paper."""

    path: PathStr  # implementations/<family>/<id>.py
    entrypoint: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    fidelity: Fidelity
    test: PathStr  # tests/implementations/test_<id>.py


class Paper(_Model):
    """One paper from the reading notes."""

    id: Annotated[str, Field(pattern=ID_PATTERN)]
    title: Text
    authors: Annotated[list[Text], Field(min_length=1)]
    year: Annotated[int, Field(ge=1950, le=2100)]
    venue: Text  # of the published version; "arXiv preprint" when there is none
    arxiv: Annotated[str, Field(pattern=ARXIV_PATTERN)] | None = None
    url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    bibtex_key: Annotated[str, Field(pattern=BIBTEX_KEY_PATTERN)]
    category: Category
    tags: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9\-]*$")]] = []
    mentioned_in: list[Annotated[str, Field(pattern=r"^\d{3}_[0-9a-f]{16}\.txt$")]] = []  # notes files
    notes_corrections: list[Text] = []  # where the reading notes got a year, venue or title wrong
    summary: Text
    open_questions: list[OpenQuestion] = []
    reported: list[Reported] = []
    # Why `reported` is empty: the work has no headline number (a talk, a survey), or where we looked for the
    # paper's tables without finding a copy we could read. Required for an implemented paper without numbers.
    reported_missing: Text | None = None
    notes: PathStr  # papers/<id>.md
    implementation: Implementation | None = None
    status: Status = "noted"

    @model_validator(mode="after")
    def _consistent(self) -> Paper:
        if self.arxiv is None and self.url is None:
            raise ValueError("give at least one link: `arxiv` or `url`")
        expected_notes = f"papers/{self.id}.md"
        if self.notes != expected_notes:
            raise ValueError(f"notes must be {expected_notes!r} (one id names every file), got {self.notes!r}")
        impl = self.implementation
        if impl is not None:
            parts = PurePosixPath(impl.path).parts
            module_file = len(parts) == 3 and parts[2] == f"{self.id}.py"
            package = len(parts) == 4 and parts[2] == self.id and parts[3] == "__init__.py"  # a module grown large
            if parts[0] != "implementations" or not (module_file or package):
                raise ValueError(
                    f"implementation.path must be implementations/<family>/{self.id}.py (or "
                    f"implementations/<family>/{self.id}/__init__.py), got {impl.path!r}"
                )
            if impl.test != f"tests/implementations/test_{self.id}.py":
                raise ValueError(
                    f"implementation.test must be tests/implementations/test_{self.id}.py, got {impl.test!r}"
                )
        if self.status != "noted" and impl is None:
            raise ValueError(f"status {self.status!r} needs an `implementation` block")
        if self.status == "noted" and impl is not None:
            raise ValueError("an entry with an `implementation` block has status 'scaffolded' or 'implemented'")
        if self.reported and self.reported_missing is not None:
            raise ValueError("`reported_missing` explains an empty `reported` list; this entry has reported numbers")
        if self.status == "implemented" and not self.reported and self.reported_missing is None:
            raise ValueError(
                "an implemented paper needs its headline numbers in `reported`, or `reported_missing` saying why "
                "there are none"
            )
        return self

    @property
    def family(self) -> str | None:
        """The implementation folder (`distillation`, `pruning`, ...), or None when not implemented."""
        return None if self.implementation is None else PurePosixPath(self.implementation.path).parts[1]

    @property
    def module(self) -> str | None:
        """Dotted import path of the implementation, e.g. `implementations.distillation.kd_hinton2015`."""
        if self.implementation is None:
            return None
        parts = PurePosixPath(self.implementation.path).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class Registry(_Model):
    """The whole `registry.yaml`: a list of papers, unique and sorted by id."""

    papers: list[Paper]

    @model_validator(mode="after")
    def _unique_sorted(self) -> Registry:
        seen: set[str] = set()
        for paper in self.papers:
            if paper.id in seen:
                raise ValueError(f"duplicate id {paper.id!r}")
            seen.add(paper.id)
        keys: set[str] = set()
        for paper in self.papers:
            if paper.bibtex_key in keys:
                raise ValueError(f"duplicate bibtex_key {paper.bibtex_key!r} (entry {paper.id!r})")
            keys.add(paper.bibtex_key)
        ids = [p.id for p in self.papers]
        if ids != sorted(ids):
            first = next(a for a, b in zip(ids, sorted(ids), strict=True) if a != b)
            raise ValueError(f"papers must be sorted by id (run `kb fmt`); first out of place: {first!r}")
        return self

    def get(self, paper_id: str) -> Paper | None:
        """The entry with this id, or None."""
        return next((p for p in self.papers if p.id == paper_id), None)
