"""The built site in a real browser: headless Chromium (Debian's package) driven by Playwright.

Checks what a reader sees: math typeset by the vendored KaTeX, a paper page's results panel with its plot, search
finding a paper by a word of its summary, and no request leaving 127.0.0.1. Skipped when Chromium is missing,
unless KB_REQUIRE_BROWSER=1 (set by .ci/run, which installs Chromium), where a missing browser fails.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kb.pages import load_site_data

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

if CHROMIUM is None:
    if os.environ.get("KB_REQUIRE_BROWSER") == "1":
        raise RuntimeError("KB_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
    pytest.skip("chromium is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    site = tmp_path_factory.mktemp("browser_site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(site)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def page(base_url: str):
    external: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        context = browser.new_context()

        def guard(route, request) -> None:  # noqa: ANN001 - Playwright objects
            if request.url.startswith(base_url) or request.url.startswith("data:"):
                route.continue_()
            else:
                external.append(request.url)
                route.abort()

        context.route("**/*", guard)
        tab = context.new_page()
        tab.external_requests = external  # type: ignore[attr-defined]
        yield tab
        browser.close()


def test_math_is_typeset(page, base_url: str) -> None:
    page.goto(f"{base_url}/papers/fsp_yim2017/")
    page.wait_for_selector(".arithmatex .katex", timeout=15000)
    assert page.locator(".arithmatex .katex").count() >= 3
    assert page.locator(".katex-error").count() == 0
    assert page.external_requests == []


def test_paper_page_shows_results_panel_and_plot(page, base_url: str) -> None:
    data = load_site_data(ROOT)
    with_figures = [pid for pid, r in data.results.items() if r.get("figures")]
    assert with_figures, "no results file has a figure; run `kb run kd_hinton2015`"
    paper_id = "kd_hinton2015" if "kd_hinton2015" in with_figures else with_figures[0]
    page.goto(f"{base_url}/papers/{paper_id}/")
    page.wait_for_selector("h3#reproduced-here")
    assert page.locator(".kb-badge.reproduced, .kb-badge.not-reproduced").count() >= 1
    image = page.locator(".kb-figure img").first
    image.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=10000)
    # the vendored highlight.js coloured the source (inside a collapsed block, so attached, not visible)
    page.wait_for_selector("pre code.hljs", state="attached", timeout=10000)
    assert page.external_requests == []


def test_search_finds_a_paper_by_a_summary_word(page, base_url: str) -> None:
    data = load_site_data(ROOT)
    words = lambda text: set(re.findall(r"[a-z]{5,}", text.lower()))  # noqa: E731
    others = [words(p.summary + " " + p.title) for p in data.registry.papers if p.id != "fsp_yim2017"]
    # the summary word that the fewest other papers use, so the expected hit is near the top
    word = min(sorted(words(data.registry.get("fsp_yim2017").summary)), key=lambda w: sum(w in o for o in others))
    page.goto(f"{base_url}/")
    page.locator("label.md-search__icon, .md-search__input").first.click()
    page.locator(".md-search__input").fill(word)
    page.wait_for_selector(".md-search-result__item", timeout=15000)
    links = page.locator(".md-search-result__item a").evaluate_all("els => els.map(e => e.href)")
    assert any("/papers/fsp_yim2017/" in href for href in links), (word, links[:10])
