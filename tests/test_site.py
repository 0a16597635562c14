"""The documentation site: builds strict and offline, one page per paper, math and results rendered."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kb.pages import gpu_results, home_page, load_site_data, paper_page
from kb.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_every_paper_and_category_has_a_page(built: Path) -> None:
    registry = load_registry(ROOT)
    missing = [p.id for p in registry.papers if not (built / "papers" / p.id / "index.html").is_file()]
    assert missing == []
    for category in {p.category for p in registry.papers}:
        assert (built / "categories" / category / "index.html").is_file()
    for page in ["index.html", "open-questions/index.html", "bibliography/index.html", "registry.bib"]:
        assert (built / page).is_file(), page


def test_site_is_offline(built: Path) -> None:
    """No page loads a script, stylesheet or font from the network."""
    remote = re.compile(r"""<(?:script|link)[^>]+(?:src|href)=["']https?://""", re.IGNORECASE)
    for html in built.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        assert not remote.search(text), html
        assert "fonts.googleapis" not in text, html
    assert (built / "javascripts" / "katex" / "katex.min.js").is_file()
    assert list((built / "javascripts" / "katex" / "fonts").glob("*.woff2"))


def test_paper_page_has_math_metadata_and_bibtex(built: Path) -> None:
    html = (built / "papers" / "kd_hinton2015" / "index.html").read_text(encoding="utf-8")
    assert 'class="arithmatex"' in html
    assert "Distilling the Knowledge in a Neural Network" in html
    assert "arxiv.org/abs/1503.02531" in html
    assert "@misc{hinton2015distilling" in html or "hinton2015distilling" in html


def test_a_packaged_paper_shows_its_method_and_its_experiment(built: Path) -> None:
    """A module grown into a package (method in `__init__.py`, run in `experiment.py`) renders both."""
    paper = load_registry(ROOT).get("kd_hinton2015")
    assert paper.implementation.path.endswith("kd_hinton2015/__init__.py")
    html = (built / "papers" / "kd_hinton2015" / "index.html").read_text(encoding="utf-8")
    assert 'id="implementations.distillation.kd_hinton2015.kd_loss"' in html
    assert 'id="implementations.distillation.kd_hinton2015.experiment.reproduce"' in html
    single = (built / "papers" / "fitnets_romero2015" / "index.html").read_text(encoding="utf-8")
    assert "experiment.reproduce" not in single  # a one-file module has no second section


def test_paper_page_marks_reported_and_reproduced_numbers() -> None:
    data = load_site_data(ROOT)
    for paper in data.registry.papers:
        text = paper_page(data, paper)
        assert text.startswith(f"# {paper.title}\n")
        assert "Reported by the paper" in text and "Reproduced here" in text
        if paper.id not in data.results:
            assert "not yet run" in text
        else:
            verdict = "not reproduced" if not data.results[paper.id]["claim"]["reproduced"] else "reproduced"
            assert f'kb-badge {verdict.replace(" ", "-")}' in text
        for reported in paper.reported:
            assert reported.source in text  # every reported number shows where the paper prints it
        if paper.reported_missing:
            assert paper.reported_missing in text  # an empty table says why it is empty


def test_paper_page_names_the_paper_scale_run_only_where_the_module_declares_one() -> None:
    from kb.registry import full_setting

    data = load_site_data(ROOT)
    with_full = [p for p in data.registry.papers if full_setting(ROOT, p)]
    assert {p.id for p in with_full} >= {"kd_hinton2015"}
    for paper in data.registry.papers:
        text = paper_page(data, paper)
        assert (f"kb run {paper.id} --full" in text) == (paper in with_full), paper.id


def test_home_page_counts_status_across_the_registry() -> None:
    data = load_site_data(ROOT)
    papers = data.registry.papers
    all_row = next(line for line in home_page(data).splitlines() if line.startswith("| **All** |"))
    counts = [int(cell.strip(" *")) for cell in all_row.split("|")[2:-1]]
    tested = sum(p.implementation is not None and (ROOT / p.implementation.test).is_file() for p in papers)
    reproduced = sum(bool(r["claim"]["reproduced"]) for r in data.results.values())
    assert counts == [len(papers), sum(p.status == "implemented" for p in papers), tested, reproduced,
                      len(data.results) - reproduced, len(papers) - len(data.results)]
    assert "(registry.bib)" in home_page(data)


def test_shared_leaderboard_renders_a_benchmark() -> None:
    from dataclasses import replace

    from kb.pages import category_page

    data = load_site_data(ROOT)
    acc = {"mean": 80.0, "std": 1.0, "values": [79.0, 81.0]}
    bench = {
        "family": "distillation", "profile": "default",
        "protocol": {"dataset": "digits", "n_train": 1437, "n_test": 360, "teacher": "resnet8 w=1",
                     "student": "resnet8 w=0.5", "seeds": [0, 1], "teacher_epochs": 10, "epochs": 8, "notes": ""},
        "teacher": {"mean": 95.0, "std": 0.0, "values": [95.0, 95.0]}, "baseline": {**acc, "mean": 78.5,
                                                                                   "values": [78.0, 79.0]},
        "rows": [{"paper": "kd_hinton2015", "method": "KD", "accuracy": acc}],
        "failures": {"fsp_yim2017": "RuntimeError: shapes"}, "wall_time_s": 1.0, "created": "2026-01-01T00:00:00",
    }
    page = category_page(replace(data, benchmarks={"distillation": bench}), "distillation")
    assert "## Leaderboard under one protocol" in page
    link = "[Distilling the Knowledge in a Neural Network](../papers/kd_hinton2015.md)"
    assert f"| 1 | {link} | `KD` | 80.00 ± 1.00 | +1.50 |" in page
    assert "`fsp_yim2017` could not run under this protocol" in page


def test_figures_are_drawn_in_the_background_and_failures_fail_the_build() -> None:
    from mkdocs.exceptions import PluginError

    from kb import site

    out = site._draw_in_background({"figures/ok.png": lambda: b"\x89PNG fake"})
    site.on_env(None, None, None)  # waits for the drawing process
    assert (out / "figures" / "ok.png").read_bytes() == b"\x89PNG fake"
    site.on_post_build(None)
    assert not out.exists()  # the temporary folder is gone once the site has its copies

    def broken() -> bytes:
        raise ValueError("no such column: accuracy")

    site._draw_in_background({"figures/bad.png": broken})
    with pytest.raises(PluginError, match="no such column: accuracy"):
        site.on_env(None, None, None)
    site.on_post_build(None)


def test_gpu_page_table_comes_from_cuda_reports_only(built: Path, tmp_path: Path) -> None:
    import json

    assert "No GPU numbers have been measured yet" in gpu_results(tmp_path)
    folder = tmp_path / "results" / "gpu"
    folder.mkdir(parents=True)
    rows = [{"mode": "baseline", "batch_size": 64, "images_per_s": 1000.0, "speedup": 1.0},
            {"mode": "optimized", "batch_size": 1024, "images_per_s": 12000.0, "speedup": 12.0},
            {"mode": "optimized+cache", "batch_size": 1024, "images_per_s": 30000.0, "speedup": 30.0}]
    (folder / "cpu.json").write_text(json.dumps({"device": "cpu (x86_64)", "results": rows}))
    assert "No GPU numbers have been measured yet" in gpu_results(tmp_path)  # a CPU check is not a GPU number
    (folder / "h100.json").write_text(json.dumps({"device": "cuda (NVIDIA H100)", "torch": "2.14.1", "args": {},
                                                  "results": rows}))
    table = gpu_results(tmp_path)
    assert "| cuda (NVIDIA H100) | 2.14.1 | no | 1,000 | 12,000 | 30,000 | 12.0x | 30.0x | `h100.json` |" in table
    assert "cpu.json" not in table
    page = (built / "benchmarks" / "gpu" / "index.html").read_text(encoding="utf-8")
    assert "kb:gpu-results" not in page and ("No GPU numbers have been measured yet" in page) == (
        "No GPU numbers" in gpu_results(ROOT))
