"""The `kb` command: `main(argv) -> exit code`, on the real repository and on a tiny one in tmp."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
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
    (tiny / "implementations/distillation/kd_hinton2015.py").write_text(
        '__all__ = ["KD"]\nKD = 1\n\n\ndef reproduce(ctx):\n    return {}\n', encoding="utf-8")
    (tiny / "tests/implementations/test_kd_hinton2015.py").write_text("def test_x():\n    assert 1\n", encoding="utf-8")
    before = (tiny / "registry.yaml").read_bytes()
    assert main(["status", "kd_hinton2015", "implemented", "--fidelity", "faithful"]) == 2
    assert "needs its headline numbers in `reported`, or `reported_missing`" in capsys.readouterr().err
    assert (tiny / "registry.yaml").read_bytes() == before  # nothing half-written
    _give_reported(tiny)
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


# ---------------------------------------------------------------------------------------------------------------------
# kb status: refuses what is not an implementation yet
# ---------------------------------------------------------------------------------------------------------------------


def _give_reported(tiny: Path) -> None:
    """Record one headline number of kd_hinton2015, as a user would by editing registry.yaml."""
    path = tiny / "registry.yaml"
    row = ("  reported:\n  - {dataset: MNIST, model: distilled 2x800 net, metric: test errors, value: 74, "
           "source: Sec. 3}\n")
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("  notes: papers/kd_hinton2015.md\n", row + "  notes: papers/kd_hinton2015.md\n"),
                    encoding="utf-8")


def _implemented_files(tiny: Path, module: str) -> None:
    assert main(["implement", "kd_hinton2015", "--entrypoint", "KD"]) == 0
    _give_reported(tiny)
    (tiny / "implementations/distillation/kd_hinton2015.py").write_text(module, encoding="utf-8")
    (tiny / "tests/implementations/test_kd_hinton2015.py").write_text("def test_x():\n    assert 1\n", encoding="utf-8")


def test_status_refuses_a_module_without_reproduce(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    _implemented_files(tiny, '__all__ = ["KD"]\n\n\nclass KD:\n    pass\n')
    assert main(["status", "kd_hinton2015", "implemented"]) == 2
    assert "defines no `reproduce(ctx)`" in capsys.readouterr().err
    assert load_registry(tiny).get("kd_hinton2015").status == "scaffolded"


def test_status_refuses_notes_still_equal_to_the_template(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    _implemented_files(tiny, '__all__ = ["KD"]\nKD = 1\n\n\ndef reproduce(ctx):\n    return {}\n')
    template = (ROOT / "src/kb/templates/notes.md.tmpl").read_text(encoding="utf-8")
    (tiny / "papers/kd_hinton2015.md").write_text(template + "\n", encoding="utf-8")
    assert main(["status", "kd_hinton2015", "implemented"]) == 2
    assert "papers/kd_hinton2015.md is still the TODO template" in capsys.readouterr().err
    (tiny / "papers/kd_hinton2015.md").write_text(template.replace("Not implemented yet.", "Faithful."), "utf-8")
    assert main(["status", "kd_hinton2015", "implemented"]) == 0


# ---------------------------------------------------------------------------------------------------------------------
# kb add: one clear line per problem, ASCII keys, unreadable inputs, file modes
# ---------------------------------------------------------------------------------------------------------------------

ADD = ["--title", "T", "--author", "A Y", "--year", "2015", "--venue", "V", "--category", "other", "--notes-only"]


def test_add_validation_error_is_one_line_naming_the_entry(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["add", "x_y2015", *ADD, "--arxiv", "not-an-id"]) == 2
    err = capsys.readouterr().err
    assert err.count("kb: error:") == 1 and "errors.pydantic.dev" not in err and "input_value" not in err
    assert "new entry 'x_y2015': field 'arxiv': String should match pattern" in err


def test_add_duplicate_bibtex_key_names_the_new_entry(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    before = _snapshot(tiny)
    assert main(["add", "x_y2015", *ADD, "--arxiv", "1503.02531", "--bibtex-key", "hinton2015distilling"]) == 2
    err = capsys.readouterr().err
    assert "new entry 'x_y2015': bibtex_key 'hinton2015distilling' is already used by entry 'kd_hinton2015'" in err
    assert _snapshot(tiny) == before


@pytest.mark.parametrize(("author", "title", "key"), [
    ("Pat O'Brien", "Über kleine Netze", "obrien2015uber"),
    ("José Álvarez-Núñez", "-- A study", "alvareznunez2015a"),
])
def test_add_default_bibtex_key_is_ascii(tiny: Path, author: str, title: str, key: str) -> None:
    args = ["--title", title, "--author", author, "--year", "2015", "--venue", "V", "--arxiv", "1503.02531",
            "--category", "other", "--notes-only"]
    assert main(["add", "x_obrien2015", *args]) == 0
    assert load_registry(tiny).get("x_obrien2015").bibtex_key == key


def test_add_from_bib_folder_and_non_utf8_file_exit_2(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    (tiny / "refs").mkdir()
    (tiny / "latin1.bib").write_bytes(GOOD_BIB.replace("Romero", "Rom\xe9ro").encode("latin-1"))
    before = _snapshot(tiny)
    for source, needle in (("refs", "refs: cannot read"), ("latin1.bib", "latin1.bib: not UTF-8 text")):
        assert main(["add", "--from-bib", source, "romero2015fitnets", "--method", "fitnets",
                     "--category", "distillation"]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and err.count("kb: error:") == 1
    assert _snapshot(tiny) == before


def test_non_utf8_registry_exit_2(tiny: Path, capsys: pytest.CaptureFixture) -> None:
    (tiny / "registry.yaml").write_bytes(TINY_REGISTRY.replace("Soft targets.", "Soft \xe9.").encode("latin-1"))
    assert main(["check"]) == 2
    assert "registry.yaml: not UTF-8 text (byte 0xe9" in capsys.readouterr().err


def test_rewritten_and_new_files_keep_normal_permissions(tiny: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        (tiny / "registry.yaml").chmod(0o664)  # a group-writable registry stays group-writable
        assert main(["add", "x_y2015", "--title", "T", "--author", "A Y", "--year", "2015", "--venue", "V",
                     "--arxiv", "1503.02531", "--category", "distillation"]) == 0
        assert main(["status", "x_y2015", "scaffolded", "--fidelity", "faithful"]) == 0
        assert main(["fmt"]) == 0
    finally:
        os.umask(old_umask)
    mode = {rel: stat.S_IMODE((tiny / rel).stat().st_mode) for rel in [
        "registry.yaml", "papers/x_y2015.md", "implementations/distillation/x_y2015.py",
        "tests/implementations/test_x_y2015.py", "implementations/distillation/__init__.py"]}
    assert mode == {"registry.yaml": 0o664, **{rel: 0o644 for rel in list(mode)[1:]}}


# ---------------------------------------------------------------------------------------------------------------------
# kb run: --full only where a paper-scale setting exists; checkpoints and --resume; progress; README examples
# ---------------------------------------------------------------------------------------------------------------------


def test_full_is_refused_for_a_paper_without_a_full_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(ROOT)
    code = "import sys; from kb.cli import main; assert main(sys.argv[1:]) == 2; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code, "run", "transparent_tan2018", "--full", "--data-dir", str(tmp_path)],
                   check=True)  # refused before anything runs: torch is not even imported, nothing is written
    assert main(["run", "transparent_tan2018", "--full", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("kb: error:") == 1 and "transparent_tan2018 has no paper-scale setting" in err
    assert "Papers that define one (a `FULL` declaration in their module): dml_zhang2018, kd_hinton2015" in err


def test_cli_does_not_import_torch() -> None:
    code = "import sys, kb.cli; assert 'torch' not in sys.modules, 'kb.cli imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_all_full_runs_only_the_papers_with_a_full_setting(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("torch")
    import implementations._runner as runner

    calls = []
    monkeypatch.setattr(runner, "run_paper", lambda pid, module, profile, results_dir, **kw: calls.append(
        (pid, profile, kw["checkpoint_dir"])))
    monkeypatch.chdir(ROOT)
    assert main(["run", "--all", "--full", "--data-dir", "/nonexistent"]) == 0
    checkpoints = ROOT / "checkpoints"  # git-ignored; used by every --full run
    assert calls == [("dml_zhang2018", "full", checkpoints / "dml_zhang2018"),
                     ("kd_hinton2015", "full", checkpoints / "kd_hinton2015")]
    assert "other(s) have none" in capsys.readouterr().err


def test_progress_follows_the_terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("torch")
    import implementations._runner as runner

    progress = []
    monkeypatch.setattr(runner, "run_paper", lambda pid, module, profile, results_dir, **kw: progress.append(
        kw["progress"]))
    monkeypatch.chdir(ROOT)
    assert main(["run", "kd_hinton2015", "dml_zhang2018", "--quick"]) == 0
    assert progress == [False, False] and "papers:" not in capsys.readouterr().err  # not a terminal: no bars
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["run", "kd_hinton2015", "dml_zhang2018", "--quick"]) == 0
    assert progress[2:] == [True, True] and "papers: 100%" in capsys.readouterr().err  # the bar over papers


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ddp_worker import write_tiny_cifar100

    return write_tiny_cifar100(tmp_path_factory.mktemp("cifar"))


def _run_full(cifar: Path, tmp: Path, *extra: str) -> int:
    from ddp_worker import TINY_FULL

    return main(["run", "kd_hinton2015", *TINY_FULL, "--data-dir", str(cifar), "--results-dir", str(tmp / "results"),
                 "--checkpoint-dir", str(tmp / "checkpoints"), *extra])


@pytest.fixture(scope="module")
def straight_full_run(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`kb run kd_hinton2015 --full` on tiny CIFAR-100 files: crop+flip augmentation, resnet32x4 -> resnet8x4."""
    tmp = tmp_path_factory.mktemp("full")
    old = Path.cwd()
    os.chdir(ROOT)
    try:
        assert _run_full(cifar, tmp) == 0
    finally:
        os.chdir(old)
    assert not (tmp / "checkpoints" / "kd_hinton2015").exists()  # removed once the run finished
    return json.loads((tmp / "results" / "kd_hinton2015.json").read_text(encoding="utf-8"))


def test_full_profile_runs_end_to_end(straight_full_run: dict) -> None:
    result = straight_full_run
    assert result["profile"] == "full" and result["protocol"]["dataset"] == "cifar100"
    assert (result["protocol"]["n_train"], result["protocol"]["n_test"], result["protocol"]["epochs"]) == (8, 8, 1)
    assert "resnet32x4" in result["protocol"]["notes"] and result["protocol"]["seeds"] == [0]
    assert result["command"].startswith("kb run kd_hinton2015 --full --data-dir ")
    assert result["command"].endswith("--seeds 0 --epoch-scale 0.004 --n-train 8")


def test_interrupted_full_run_resumes(cifar: Path, straight_full_run: dict, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import implementations._harness as harness

    real_fit, trainings = harness.fit, []

    def crash_on_third(*args, **kwargs):  # the teacher and the first student finish, then the machine "crashes"
        if len(trainings) == 2:
            raise RuntimeError("simulated crash")
        trainings.append(real_fit(*args, **kwargs).resumed_from)
        return None

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(harness, "fit", crash_on_third)
    assert _run_full(cifar, tmp_path) == 2
    err = capsys.readouterr().err
    assert "simulated crash" in err and "rerun with --resume to continue" in err
    ckpt = tmp_path / "checkpoints" / "kd_hinton2015"
    assert sorted(p.name for p in ckpt.iterdir()) == ["seed0_student.pt", "seed0_teacher.pt"]
    assert not (tmp_path / "results" / "kd_hinton2015.json").exists()

    def record(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        trainings.append(result.resumed_from)
        return result

    monkeypatch.setattr(harness, "fit", record)
    assert _run_full(cifar, tmp_path) == 2  # checkpoints of an unfinished run: refused without --resume/--fresh
    assert "pass --resume to continue it, or --fresh" in capsys.readouterr().err
    trainings.clear()
    assert _run_full(cifar, tmp_path, "--resume") == 0
    assert trainings == [1, 1, 0, 0]  # teacher and student from their checkpoints (1 of 1 epochs), then the rest
    assert not ckpt.exists()
    resumed = json.loads((tmp_path / "results" / "kd_hinton2015.json").read_text(encoding="utf-8"))
    assert [r["accuracy"] for r in resumed["rows"]] == [r["accuracy"] for r in straight_full_run["rows"]]


def test_readme_examples_use_new_ids() -> None:
    """`kb add <id>` examples must name papers not yet registered, and `kb implement` one that an example adds."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    known = {p.id for p in load_registry(ROOT).papers}
    added = re.findall(r"^kb add ([a-z][a-z0-9_]*)\b", text, flags=re.MULTILINE)
    implemented = re.findall(r"^kb implement ([a-z][a-z0-9_]*)\b", text, flags=re.MULTILINE)
    assert added and implemented
    assert not set(added) & known, f"README adds ids that exist: {sorted(set(added) & known)}"
    assert set(implemented) <= set(added)
    keys = re.findall(r"^kb add --from-bib \S+ (\S+) --method (\S+)", text, flags=re.MULTILINE)
    assert keys and not {k for k, _ in keys} & {p.bibtex_key for p in load_registry(ROOT).papers}
