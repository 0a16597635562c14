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
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["build_site", "on_config", "on_env", "on_files", "on_post_build", "serve_site"]

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
        GPU_MARKER,
        bench_points,
        bibliography_page,
        category_page,
        gpu_results,
        home_page,
        paper_page,
        pareto_points,
        questions_page,
    )
    from kb.plots import leaderboard_png, pareto_png

    data = _data(config)
    figures: dict[str, Callable[[], bytes]] = {}  # drawn by matplotlib while MkDocs renders the pages
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
            title = f"{CATEGORY_TITLES[category]}: one protocol ({bench['protocol']['dataset']})" if bench else ""
            if bench and bench["rows"] and bench.get("kind") in ("compression", "architecture"):
                figures[f"figures/bench_{category}.png"] = functools.partial(
                    pareto_png, bench_points(bench), "model size (bytes)", title)
            elif bench and bench["rows"]:
                rows = bench["rows"]
                figures[f"figures/bench_{category}.png"] = functools.partial(
                    leaderboard_png, [r["method"] for r in rows], [r["accuracy"]["mean"] for r in rows],
                    [r["accuracy"]["std"] for r in rows], bench["baseline"]["mean"],
                    (bench.get("teacher") or {}).get("mean"), title,
                    "network alone" if bench.get("kind") == "cohort" else "student alone")
            points, xlabel = pareto_points(data, category)
            if points:
                figures[f"figures/pareto_{category}.png"] = functools.partial(
                    pareto_png, points, xlabel, CATEGORY_TITLES[category])
    for paper in data.registry.papers:
        generated[f"papers/{paper.id}.md"] = paper_page(data, paper)
    gpu_page = Path(config.docs_dir) / "benchmarks" / "gpu.md"
    if gpu_page.is_file():  # its results table comes from results/gpu/, never typed into the page
        text = gpu_page.read_text(encoding="utf-8")
        generated["benchmarks/gpu.md"] = text.replace(GPU_MARKER, gpu_results(data.root))
    for result in data.results.values():
        for fig in result.get("figures") or []:
            path = data.root / fig
            if path.is_file():
                generated[f"figures/{path.name}"] = path.read_bytes()
    drawn = _draw_in_background(figures)
    for src_uri in figures:
        generated.pop(src_uri, None)
    for src_uri in [*generated, *figures]:
        existing = files.get_file_from_path(src_uri)
        if existing is not None:
            files.remove(existing)
    for src_uri, content in generated.items():
        files.append(File.generated(config, src_uri, content=content))
    for src_uri in figures:
        files.append(File.generated(config, src_uri, abs_src_path=str(drawn / src_uri)))
    return files


def _draw(jobs: dict[str, Callable[[], bytes]], out: Path) -> None:
    """Write every figure under `out`; on failure leave the traceback in `out/error.txt` and exit non-zero."""
    import traceback

    try:
        for src_uri, draw in jobs.items():
            path = out / src_uri
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(draw())
    except BaseException:  # noqa: BLE001 - reported by on_env in the parent
        (out / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        raise SystemExit(1) from None


def _draw_in_background(jobs: dict[str, Callable[[], bytes]]) -> Path:
    """Start drawing the figures in a forked process (the build's second core) and return their folder.

    MkDocs copies static files only after it has converted every page's Markdown, so the figures are needed at
    `on_env`, which waits for the process. Without `fork` (Windows, macOS default) they are drawn here.
    """
    import multiprocessing
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="kb-figures-"))
    _CACHE["figures"] = (None, out)
    if "fork" not in multiprocessing.get_all_start_methods():
        _draw(jobs, out)
        return out
    process = multiprocessing.get_context("fork").Process(target=_draw, args=(jobs, out), daemon=True)
    process.start()
    _CACHE["figures"] = (process, out)
    return out


def on_env(env: Any, config: Any, files: Any) -> Any:  # noqa: ARG001 - MkDocs hook signature
    """Wait for the figures before MkDocs copies them; a failed drawing fails the build with its traceback."""
    from mkdocs.exceptions import PluginError

    process, out = _CACHE.get("figures", (None, None))
    if process is not None:
        process.join()
        if process.exitcode != 0:
            error = out / "error.txt"
            detail = error.read_text(encoding="utf-8") if error.is_file() else f"exit code {process.exitcode}"
            raise PluginError(f"kb: drawing the result figures failed:\n{detail}")
    return env


def on_post_build(config: Any) -> None:  # noqa: ARG001 - MkDocs hook signature
    """Remove the figures' temporary folder (they are in the site now)."""
    import shutil

    _, out = _CACHE.pop("figures", (None, None))
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)


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
