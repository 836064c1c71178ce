"""The course's website in a real browser: every lesson page, its plots, its links, the search.

Uses build/site when it is fresh (`make site` built it, and passed its checks, after its sources
last changed: `make test` builds it just before the tests), and otherwise builds it with
site/build.py. The site is served from build/site by Python's http.server on a free loopback
port and opened in Debian's Chromium driven by Playwright. Every lesson page must show its
title and section headings, load every image (no broken one), keep the figures' provenance
("modelled ..." / "measured on ...") visible, link to Colab and to its lab; the labs, their
solutions (folded), the workshop guide and the GPU reports load too; the search finds a term;
no page asks the internet for anything. Screenshots of the home page and of a lesson are saved
under build/site-screenshots/ and their paths printed.

Skipped when Chromium (/usr/bin/chromium, or $GRAPHLAB_CHROMIUM), the Python package
`playwright`, or (for a build) the site tools of the `site` extra are missing.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "build" / "site-screenshots"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
LESSONS = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))
LABS = sorted(p.stem for p in (REPO / "labs").glob("*.ipynb"))
SEARCHES = {"cudaGraphExecUpdate": "notebooks/06_exec_update.html", "pointer baking": "notebooks/04_pointer_baking.html"}
SCREENSHOT_LESSON = "01_capture_instantiate_launch"


def _load_site_builder():
    spec = importlib.util.spec_from_file_location("graphlab_site_build", REPO / "site" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


site_build = _load_site_builder()


def _chromium() -> str | None:
    candidate = os.environ.get("GRAPHLAB_CHROMIUM") or "/usr/bin/chromium"
    if os.path.exists(candidate):
        return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _notebook(kind: str, stem: str) -> dict:
    return json.loads((REPO / kind / f"{stem}.ipynb").read_text(encoding="utf-8"))


def _plain(text: str) -> str:
    """A heading as its words: no Markdown marks, no permalink sign, plain quotes, single spaces."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = text.translate(str.maketrans("\u2018\u2019\u201c\u201d\u2013\u2014", "''\"\"--"))
    return " ".join(re.sub(r"[`*_#¶]", "", text).split())


def _markdown_headings(nb: dict, level: str) -> list[str]:
    headings = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        fenced = False
        for line in "".join(cell["source"]).splitlines():
            if line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
            elif not fenced and line.startswith(level + " "):
                headings.append(_plain(line[len(level) + 1:]))
    return headings


# -- the link checker itself, on a small made-up site (no browser) --------------------------


def test_the_build_check_catches_broken_links_and_internet_loads(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "index.html").write_text(
        '<h1 id="top">home</h1><a href="a/page.html#part">ok</a><a href="a/missing.html">broken</a>'
        '<a href="a/page.html#nowhere">bad anchor</a><a href="https://example.org/">external link: fine</a>'
        '<script src="https://cdn.example.org/x.js"></script><img src="a/figure.png">')
    (tmp_path / "a" / "page.html").write_text('<h2 id="part">part</h2><a href="../index.html#top">back</a>')
    problems = site_build.check_output(None, out=tmp_path)
    assert len(problems) == 4, problems
    assert any("a/missing.html" in p and "does not exist" in p for p in problems)
    assert any("nowhere" in p and "no element with id" in p for p in problems)
    assert any("cdn.example.org" in p and "internet" in p for p in problems)
    assert any("a/figure.png" in p for p in problems)


def test_staged_links_point_at_published_pages_or_the_repository():
    folders: dict = {}
    text = site_build.rewrite_links(
        "[make](../../Makefile) [data](../calibration/) [hub](../diffusion/) [gone](missing.md) "
        "[report](../diffusion/README.md#time-first-profile-last) "
        "![badge](https://colab.research.google.com/assets/colab-badge.svg)", "reports/gpu/README.md", folders)
    assert text == (
        f"[make]({site_build.REPOSITORY_URL}/blob/main/Makefile) [data](../calibration/index.md) "
        "[hub](../diffusion/README.md) [gone](missing.md) [report](../diffusion/README.md#time-first-profile-last) "
        "![badge](../../_site/colab.svg)")
    assert folders == {"reports/calibration": "reports/calibration/index.md"}


# -- the real site in a real browser ------------------------------------------------------------


@pytest.fixture(scope="module")
def built_site():
    if _chromium() is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium): site browser test skipped")
    pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed: site browser test skipped")
    if not site_build.is_fresh():
        for module in ("sphinx", "myst_nb", "sphinx_book_theme"):
            pytest.importorskip(module, reason="the site tools are not installed (make site installs the `site` extra)")
        result = subprocess.run([sys.executable, str(REPO / "site" / "build.py")], cwd=REPO,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"site/build.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert site_build.is_fresh()
    return site_build.OUT


@pytest.fixture(scope="module")
def site_url(built_site):
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(built_site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(site_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


class Visit:
    """A browser page that records what went wrong: script errors, failed requests, and any
    request that leaves the local server (the site must work offline)."""

    def __init__(self, browser, site_url: str):
        self.base = site_url
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.problems: list[str] = []
        host = urlsplit(site_url).netloc

        def route(r):
            if urlsplit(r.request.url).netloc == host:
                r.continue_()
            else:
                self.problems.append(f"asked the internet for {r.request.url}")
                r.abort()

        self.context.route("**/*", route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda exc: self.problems.append(f"script error: {exc}"))
        self.page.on("requestfailed", lambda req: None if urlsplit(req.url).netloc != host
                     else self.problems.append(f"request failed: {req.url}"))
        self.page.on("response", lambda resp: None if resp.status < 400
                     else self.problems.append(f"HTTP {resp.status}: {resp.url}"))

    def open(self, path: str):
        self.problems.clear()
        response = self.page.goto(f"{self.base}/{path}", wait_until="load")
        assert response is not None and response.ok, f"{path}: HTTP {response and response.status}"
        return self.page

    def broken_images(self) -> list[str]:
        return self.page.evaluate(
            "() => Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
            ".map(i => i.getAttribute('src'))")

    def close(self):
        self.context.close()


@pytest.fixture
def visit(browser, site_url):
    v = Visit(browser, site_url)
    try:
        yield v
    finally:
        v.close()


def _article_text(page) -> str:
    return page.locator("article").first.inner_text()


def _check_page_loaded(visit: Visit, path: str) -> None:
    assert not visit.problems, f"{path}: " + "; ".join(visit.problems)
    assert visit.broken_images() == [], f"{path}: broken images {visit.broken_images()}"


@pytest.mark.parametrize("stem", LESSONS)
def test_lesson_page(visit, stem):
    nb = _notebook("notebooks", stem)
    path = f"notebooks/{stem}.html"
    page = visit.open(path)
    _check_page_loaded(visit, path)

    title = _markdown_headings(nb, "#")[0]
    assert _plain(page.locator("article h1").first.inner_text()) == title
    shown = {_plain(t) for t in page.locator("article h2").all_inner_texts()}
    missing = [h for h in _markdown_headings(nb, "##") if h not in shown]
    assert not missing, f"{path}: headings not on the page: {missing}"

    plots = sum(1 for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    figures = page.locator("article img[src$='.png']").count()
    assert figures >= plots, f"{path}: {plots} stored plots, {figures} shown"

    stored = json.dumps([c.get("outputs", []) for c in nb["cells"]])
    text = _article_text(page)
    for provenance in ("modelled", "measured on"):
        if provenance in stored:
            assert provenance in text, f"{path}: the outputs say {provenance!r}, the page does not"

    colab = page.locator(f"a[href^='https://colab.research.google.com/github/'][href$='/notebooks/{stem}.ipynb']")
    assert colab.count() >= 1, f"{path}: no 'Open in Colab' link"
    if stem in LABS:
        assert page.locator(f"a[href^='../labs/{stem}.html']").count() >= 1, f"{path}: no link to its lab"

    # relative links to the other lessons resolve on the site
    hrefs = page.eval_on_selector_all("article a[href]", "els => els.map(e => e.getAttribute('href'))")
    for href in {h.split("#")[0] for h in hrefs if re.fullmatch(r"\d\d_[\w]+\.html(#.*)?", h)}:
        assert page.request.get(f"{visit.base}/notebooks/{href}").ok, f"{path}: link {href} is broken"


@pytest.mark.parametrize("stem", LABS)
def test_lab_and_its_folded_solutions(visit, stem):
    page = visit.open(f"labs/{stem}.html")
    _check_page_loaded(visit, f"labs/{stem}.html")
    assert _plain(page.locator("article h1").first.inner_text()).startswith("Lab ")
    text = _article_text(page)
    assert "YOUR CODE HERE" in text or "YOUR ANSWER HERE" in text or "NotImplementedError" in text
    assert "BEGIN SOLUTION" not in text
    link = page.locator(f"article a[href='../solutions/{stem}.html']")
    assert link.count() >= 1, f"labs/{stem}.html does not link its solutions page"

    link.first.click()
    page.wait_for_load_state("load")
    assert page.url.endswith(f"/solutions/{stem}.html")
    _check_page_loaded(visit, f"solutions/{stem}.html")
    assert "worked solutions" in page.locator("article h1").first.inner_text()
    folds = page.locator("article details")
    assert folds.count() >= 1, f"solutions/{stem}.html folds no answer"
    assert page.locator("article details[open]").count() == 0, "an answer is shown unfolded"


def test_workshop_guide_and_gpu_reports(visit, built_site):
    pages = ["index.html"] + sorted(
        p.relative_to(built_site).as_posix()
        for p in [*(built_site / "docs").rglob("*.html"), *(built_site / "reports").rglob("*.html")])
    assert "reports/gpu/README.html" in pages and "docs/workshop/README.html" in pages
    for path in pages:
        page = visit.open(path)
        _check_page_loaded(visit, path)
        assert page.locator("article h1").count() == 1, f"{path}: no title"
    # the GPU report keeps its provenance and shows its figures
    page = visit.open("reports/gpu/2026-11-24-nvidia-h100-80gb-hbm3.html")
    assert "measured on" in _article_text(page).lower()
    assert page.locator("article img[src$='.png']").count() >= 10


def test_home_page_has_the_module_map(visit):
    page = visit.open("index.html")
    _check_page_loaded(visit, "index.html")
    table = page.locator("article table").filter(has_text="what you can do afterwards")
    assert table.count() == 1, "the module map is on the home page"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    modules = readme[readme.index("## Modules"):].split("\n## ", 1)[0]
    linked = re.findall(r"\]\(((?:notebooks|labs)/\w+)\.ipynb\)", modules)
    assert linked, "the README's module map links the lessons"
    for target in linked:
        assert table.locator(f"a[href='{target}.html']").count() == 1, f"the module map lost its link to {target}"
    nav = page.locator("nav.bd-docs-nav")
    for kind, stems in (("notebooks", LESSONS), ("labs", LABS)):
        for stem in stems:
            assert nav.locator(f"a[href='{kind}/{stem}.html']").count() == 1, f"{kind}/{stem} is not in the navigation"


@pytest.mark.parametrize("term", sorted(SEARCHES))
def test_search_finds_a_term(visit, term):
    page = visit.open(f"search.html?q={term.replace(' ', '+')}")
    page.wait_for_selector("#search-results ul.search li", timeout=30_000)
    results = page.eval_on_selector_all("#search-results ul.search li a", "els => els.map(e => e.getAttribute('href'))")
    assert any(SEARCHES[term] in (href or "") for href in results), f"searching {term!r} gave {results}"
    assert not visit.problems, "; ".join(visit.problems)


def test_screenshots(visit, capsys):
    SHOTS.mkdir(parents=True, exist_ok=True)
    saved = []
    for path, name in (("index.html", "home.png"), (f"notebooks/{SCREENSHOT_LESSON}.html", f"{SCREENSHOT_LESSON}.png")):
        page = visit.open(path)
        _check_page_loaded(visit, path)
        page.screenshot(path=str(SHOTS / name))
        saved.append(SHOTS / name)
        assert (SHOTS / name).stat().st_size > 10_000
    with capsys.disabled():
        print("\nsite screenshots: " + ", ".join(str(p.relative_to(REPO)) for p in saved))
