"""The `kb` command: `main(argv) -> exit code`, on the real repository and on a tiny one in tmp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kb.cli import main
from kb.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]

TINY_REGISTRY = """\
# a comment that must survive rewrites
papers:
- id: kd_hinton2015
  title: Distilling the Knowledge in a Neural Network
  authors: [Geoffrey Hinton, Oriol Vinyals, Jeff Dean]
  year: 2015
  venue: NIPS 2014 Deep Learning Workshop
  arxiv: '1503.02531'
  bibtex_key: hinton2015distilling
  category: distillation
  summary: Soft targets.  # inline comment
  notes: papers/kd_hinton2015.md
"""

GOOD_BIB = """\
@inproceedings{romero2015fitnets,
  title = {FitNets: Hints for Thin Deep Nets},
  author = {Romero, Adriana and Ballas, Nicolas and Bengio, Yoshua},
  booktitle = {ICLR},
  year = {2015},
  eprint = {1412.6550},
  archiveprefix = {arXiv}
}
"""


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A minimal repository: one registry entry and its notes page; cwd inside it."""
    (tmp_path / "registry.yaml").write_text(TINY_REGISTRY, encoding="utf-8")
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "kd_hinton2015.md").write_text("## TL;DR\nx\n", encoding="utf-8")
    monkeypatch.delenv("KB_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_check_passes_on_the_repository(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["check"]) == 0
    assert "kb check: OK" in capsys.readouterr().out


def test_check_fails_with_exit_2_and_names_the_entry(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    (tiny / "papers" / "kd_hinton2015.md").unlink()
    assert main(["check"]) == 2
    assert "entry 'kd_hinton2015': missing file papers/kd_hinton2015.md" in capsys.readouterr().err


def test_bad_arguments_exit_2(tiny: Path) -> None:
    assert main(["no-such-command"]) == 2
    assert main(["run"]) == 2  # no id and no --all
    assert main(["run", "nope_nobody2020"]) == 2
    assert main(["run", "kd_hinton2015"]) == 2  # noted: nothing to run


def test_add_scaffolds_four_files_sorted_and_keeps_comments(tiny: Path) -> None:
    code = main(["add", "fitnets_romero2015", "--title", "FitNets: Hints for Thin Deep Nets", "--author",
                 "Adriana Romero", "--author", "Yoshua Bengio", "--year", "2015", "--venue", "ICLR 2015",
                 "--arxiv", "1412.6550", "--category", "distillation", "--entrypoint", "FitNet"])
    assert code == 0
    for rel in ["papers/fitnets_romero2015.md", "implementations/distillation/fitnets_romero2015.py",
                "implementations/distillation/__init__.py", "tests/implementations/test_fitnets_romero2015.py"]:
        assert (tiny / rel).is_file(), rel
    text = (tiny / "registry.yaml").read_text(encoding="utf-8")
    assert "# a comment that must survive rewrites" in text and "# inline comment" in text
    registry = load_registry(tiny)
    assert [p.id for p in registry.papers] == ["fitnets_romero2015", "kd_hinton2015"]
    paper = registry.get("fitnets_romero2015")
    assert paper.status == "scaffolded" and paper.implementation.entrypoint == "FitNet"
    assert main(["check"]) == 0
    # The scaffolded module's docstring keeps `$$` (templates must not eat dollar signs).
    assert "$$" in (tiny / "implementations/distillation/fitnets_romero2015.py").read_text(encoding="utf-8")


def test_add_refuses_existing_id_and_writes_nothing(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    before = _snapshot(tiny)
    code = main(["add", "kd_hinton2015", "--title", "T", "--author", "A B", "--year", "2015", "--venue", "V",
                 "--arxiv", "1503.02531", "--category", "distillation"])
    assert code == 2
    assert "entry 'kd_hinton2015' already exists" in capsys.readouterr().err
    assert _snapshot(tiny) == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["Bad-Id", "--title", "T", "--author", "A B", "--year", "2015", "--venue", "V", "--arxiv", "1503.02531"],
         "String should match pattern"),
        (["x_y2015", "--title", "T", "--author", "A B", "--year", "2015", "--venue", "V"], "at least one link"),
        (["x_y2015", "--title", "T"], "needs --author, --year, --venue"),
    ],
)
def test_add_bad_input_exit_2_nothing_written(tiny: Path, capsys: pytest.CaptureFixture, args: list, needle: str):
    before = _snapshot(tiny)
    assert main(["add", *args, "--category", "distillation"]) == 2
    assert needle in capsys.readouterr().err
    assert _snapshot(tiny) == before


def test_add_refuses_to_overwrite_an_untracked_file(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    (tiny / "papers" / "x_y2015.md").write_text("mine", encoding="utf-8")
    before = _snapshot(tiny)
    assert main(["add", "x_y2015", "--title", "T", "--author", "A Y", "--year", "2015", "--venue", "V",
                 "--arxiv", "1503.02531", "--category", "other", "--notes-only"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert _snapshot(tiny) == before


def test_add_from_bib(tiny: Path) -> None:
    (tiny / "refs.bib").write_text(GOOD_BIB, encoding="utf-8")
    assert main(["add", "--from-bib", "refs.bib", "romero2015fitnets", "--method", "fitnets",
                 "--category", "distillation", "--notes-only"]) == 0
    paper = load_registry(tiny).get("fitnets_romero2015")
    assert paper is not None
    assert paper.authors == ["Adriana Romero", "Nicolas Ballas", "Yoshua Bengio"]
    assert (paper.arxiv, paper.year, paper.venue, paper.status) == ("1412.6550", 2015, "ICLR", "noted")


def test_add_from_malformed_bib_reports_blocks_and_writes_nothing(tiny: Path, capsys: pytest.CaptureFixture):
    bad = GOOD_BIB + "\n@article{broken,\n  title = {Unclosed\n" + "\n" + GOOD_BIB  # broken + duplicate key
    (tiny / "bad.bib").write_text(bad, encoding="utf-8")
    before = _snapshot(tiny)
    assert main(["add", "--from-bib", "bad.bib", "romero2015fitnets", "--method", "fitnets",
                 "--category", "distillation"]) == 2
    err = capsys.readouterr().err
    assert "bad.bib: line" in err
    assert _snapshot(tiny) == before
    assert main(["add", "--from-bib", "missing.bib", "k", "--method", "m", "--category", "other"]) == 2


def test_implement_scaffolds_an_existing_entry(tiny: Path) -> None:
    assert main(["implement", "kd_hinton2015", "--entrypoint", "KD"]) == 0
    paper = load_registry(tiny).get("kd_hinton2015")
    assert paper.status == "scaffolded"
    assert (tiny / "implementations/distillation/kd_hinton2015.py").is_file()
    assert main(["implement", "kd_hinton2015"]) == 2  # already has one


def test_fmt_sorts(tiny: Path) -> None:
    text = (tiny / "registry.yaml").read_text(encoding="utf-8")
    extra = text.split("papers:\n", 1)[1].replace("kd_hinton2015", "aa_hinton2015").replace(
        "hinton2015distilling", "aa2015")
    (tiny / "registry.yaml").write_text(text + extra, encoding="utf-8")
    (tiny / "papers" / "aa_hinton2015.md").write_text("x", encoding="utf-8")
    assert main(["check"]) == 2  # unsorted
    assert main(["fmt"]) == 0
    assert [p.id for p in load_registry(tiny).papers] == ["aa_hinton2015", "kd_hinton2015"]


def test_schema_export(tiny: Path) -> None:
    assert main(["schema", "-o", "schema.json"]) == 0
    schema = json.loads((tiny / "schema.json").read_text(encoding="utf-8"))
    assert "papers" in schema["properties"]


def test_bib_export_to_file(tiny: Path) -> None:
    assert main(["bib", "-o", "out.bib"]) == 0
    assert "@inproceedings{hinton2015distilling," in (tiny / "out.bib").read_text(encoding="utf-8")


def test_status_refuses_scaffold_then_accepts_real_code(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["implement", "kd_hinton2015", "--entrypoint", "KD"]) == 0
    assert main(["status", "kd_hinton2015", "implemented"]) == 2
    assert "still the scaffold" in capsys.readouterr().err
    (tiny / "implementations/distillation/kd_hinton2015.py").write_text('__all__ = ["KD"]\nKD = 1\n', encoding="utf-8")
    (tiny / "tests/implementations/test_kd_hinton2015.py").write_text("def test_x():\n    assert 1\n", encoding="utf-8")
    assert main(["status", "kd_hinton2015", "implemented", "--fidelity", "faithful"]) == 0
    paper = load_registry(tiny).get("kd_hinton2015")
    assert (paper.status, paper.implementation.fidelity) == ("implemented", "faithful")
    assert main(["status", "nope_nobody2020", "implemented"]) == 2


def test_quick_runs_never_overwrite_real_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kb run --quick` writes under results/quick/; the default profile writes results/<id>.json."""
    pytest.importorskip("torch")
    import implementations._runner as runner

    calls = []
    monkeypatch.setattr(runner, "run_paper", lambda pid, module, profile, results_dir, **kw: calls.append(
        (pid, module, profile, Path(results_dir))) or Path(results_dir) / f"{pid}.json")
    monkeypatch.chdir(ROOT)
    assert main(["run", "kd_hinton2015", "--quick"]) == 0
    assert main(["run", "kd_hinton2015"]) == 0
    assert calls == [
        ("kd_hinton2015", "implementations.distillation.kd_hinton2015", "quick", ROOT / "results" / "quick"),
        ("kd_hinton2015", "implementations.distillation.kd_hinton2015", "default", ROOT / "results"),
    ]
