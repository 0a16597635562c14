"""The documentation site: MkDocs hooks that generate pages from the registry, plus build and serve.

`mkdocs.yml` names this file under `hooks:`. At build time `on_config` builds the navigation
from the registry and `on_files` adds one virtual page per paper and per category, the home,
questions and bibliography pages, the BibTeX file and the result figures. So `mkdocs.yml`
never changes when a paper is added.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["build_site", "on_config", "on_files", "serve_site"]

_CACHE: dict[str, Any] = {}


def _data(config: Any) -> Any:
    from kb.pages import load_site_data

    root = Path(config.config_file_path).resolve().parent
    key = str(root)
    if key not in _CACHE:
        _CACHE[key] = load_site_data(root)
    return _CACHE[key]


def on_startup(command: str, dirty: bool) -> None:  # noqa: ARG001 - MkDocs hook signature
    """Forget cached data between rebuilds of `mkdocs serve`."""
    _CACHE.clear()


def on_config(config: Any) -> Any:
    """Build the navigation from the registry, grouped by category."""
    from kb.pages import CATEGORY_TITLES, nav_label

    _CACHE.clear()
    data = _data(config)
    sections = []
    for category, title in CATEGORY_TITLES.items():
        papers = sorted((p for p in data.registry.papers if p.category == category), key=lambda p: (p.year, p.id))
        if papers:
            children = [f"categories/{category}.md"] + [{nav_label(p): f"papers/{p.id}.md"} for p in papers]
            sections.append({title: children})
    docs = Path(config.docs_dir)
    benchmarks = sorted(str(p.relative_to(docs)) for p in (docs / "benchmarks").glob("*.md"))
    nav: list[Any] = [{"Home": "index.md"}, {"Papers": sections},
                      {"Open questions": "open-questions.md"}, {"Bibliography": "bibliography.md"}]
    if benchmarks:
        nav.append({"Benchmarks": benchmarks})
    config.nav = nav
    return config


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages, the BibTeX export and the result figures as virtual files."""
    from mkdocs.structure.files import File

    from kb.bibtex import export_bibtex
    from kb.pages import (
        CATEGORY_TITLES,
        bench_points,
        bibliography_page,
        category_page,
        home_page,
        paper_page,
        pareto_points,
        questions_page,
    )
    from kb.plots import leaderboard_png, pareto_png

    data = _data(config)
    generated: dict[str, str | bytes] = {
        "index.md": home_page(data),
        "open-questions.md": questions_page(data),
        "bibliography.md": bibliography_page(data),
        "registry.bib": export_bibtex(data.registry),
    }
    for category in CATEGORY_TITLES:
        if any(p.category == category for p in data.registry.papers):
            generated[f"categories/{category}.md"] = category_page(data, category)
            bench = data.benchmarks.get(category)
            if bench and bench["rows"] and bench.get("kind") == "compression":
                generated[f"figures/bench_{category}.png"] = pareto_png(
                    bench_points(bench), "model size (bytes)",
                    f"{CATEGORY_TITLES[category]}: one protocol ({bench['protocol']['dataset']})")
            elif bench and bench["rows"]:
                rows = bench["rows"]
                generated[f"figures/bench_{category}.png"] = leaderboard_png(
                    [r["method"] for r in rows], [r["accuracy"]["mean"] for r in rows],
                    [r["accuracy"]["std"] for r in rows], bench["baseline"]["mean"], bench["teacher"]["mean"],
                    f"{CATEGORY_TITLES[category]}: one protocol ({bench['protocol']['dataset']})")
            points, xlabel = pareto_points(data, category)
            if points:
                generated[f"figures/pareto_{category}.png"] = pareto_png(points, xlabel, CATEGORY_TITLES[category])
    for paper in data.registry.papers:
        generated[f"papers/{paper.id}.md"] = paper_page(data, paper)
    for result in data.results.values():
        for fig in result.get("figures") or []:
            path = data.root / fig
            if path.is_file():
                generated[f"figures/{path.name}"] = path.read_bytes()
    for src_uri, content in generated.items():
        existing = files.get_file_from_path(src_uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, src_uri, content=content))
    return files


# ---------------------------------------------------------------------------
# build and serve
# ---------------------------------------------------------------------------


def build_site(root: Path, *, strict: bool = True) -> Path:
    """Run `mkdocs build` into `root/site`; raise on failure (warnings fail in strict mode)."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "mkdocs", "build", "--quiet", "-f", str(root / "mkdocs.yml"), "-d", str(root / "site")]
    if strict:
        cmd.append("--strict")
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"mkdocs build failed:\n{proc.stdout}{proc.stderr}".rstrip())
    print(f"kb site: built {root / 'site'} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return root / "site"


def serve_site(site_dir: Path, *, port: int = 8000) -> None:
    """Serve a built site on 127.0.0.1 until interrupted."""
    if not (site_dir / "index.html").is_file():
        raise FileNotFoundError(f"{site_dir}/index.html not found: run `kb site build` first")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(site_dir))
    with ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        print(f"kb site: serving {site_dir} at http://127.0.0.1:{port}/ (Ctrl-C to stop)", file=sys.stderr)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("kb site: stopped", file=sys.stderr)
