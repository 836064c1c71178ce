#!/usr/bin/env python3
"""Build the course's website from the notebooks' stored outputs (`make site`).

    python site/build.py                # stage, build with Sphinx, check: build/site/index.html
    python site/build.py --check-only   # only check an existing build/site

1. Stage: copy the lessons (notebooks/), labs, solutions, the GPU reports (reports/) and the
   workshop guide (docs/workshop/) into build/site-src/, laid out as in the repository so that
   every relative link between them resolves as it does on GitHub. The repository's files are
   never changed; the copies are adjusted for the web:
   * the "Open in Colab" badge image is the site's own copy (pages load nothing from outside);
   * a stored widget (it needs a kernel) becomes a sentence that says so;
   * a lab page says where its worked solutions are; a solutions page folds each solved cell;
   * a link to a folder goes to its README.md, or to a generated page listing its files;
   * the home page is site/index.md with the README's module map and course sections.
   A copy is rewritten only when its text changes, so Sphinx rebuilds only what changed.
2. Build: sphinx-build -W --keep-going -n with site/conf.py (myst-nb, notebooks not executed),
   into build/site/ (doctrees in build/site-doctrees/).
3. Check the output: every relative href/src resolves to a file (and every #fragment to an id
   in it), no page loads a script, stylesheet or image from the internet, every staged page
   was rendered, each lesson page shows its plots, its provenance line, an "Open in Colab"
   link and a link to its lab. Any failure exits with status 1.
"""

from __future__ import annotations

import argparse
import html.parser
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "site"
STAGE = REPO / "build" / "site-src"
OUT = REPO / "build" / "site"
DOCTREES = REPO / "build" / "site-doctrees"
STAMP = REPO / "build" / "site.stamp"  # written after a build whose checks all passed
INPUTS = ["README.md", "notebooks", "labs", "solutions", "reports", "docs/workshop", "site"]

# The public repository: "Open in Colab" links, the theme's repository button, and links to
# files of the repository that the site does not publish (code, data) point there.
REPOSITORY_URL = "https://github.com/cuda-graph-lab/cuda-graph-lab"
REPOSITORY_BRANCH = "main"
PUBLISHED = ("notebooks/", "labs/", "solutions/", "reports/", "docs/workshop/")
COLAB = "https://colab.research.google.com"
# Badge images the pages show, and the site's own copies of them (site/badges/), staged in _site/.
BADGES = {f"{COLAB}/assets/colab-badge.svg": "colab.svg", "https://mybinder.org/badge_logo.svg": "binder.svg"}
MAIN_REPORT_HUB = "reports/gpu/README.md"  # report pages with no README above them hang here
README_SECTIONS = ["What this course is", "Modules", "Labs and checks", "Backends",
                   "Results on a real GPU", "Teaching it"]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
RECORD_MIME_PREFIX = "application/vnd.graphlab."  # machine-readable records in outputs (check results)
WIDGET_NOTE = ('<p class="graphlab-widget-note">An interactive control (ipywidgets) appears here '
               "when the notebook runs in JupyterLab or Colab.</p>")
PROVENANCE = re.compile(r"modelled|measured on", re.IGNORECASE)
MD_LINK = re.compile(r"(\]\()([^)\s]+)(\s+\"[^\"]*\")?(\))")
SOLUTION_MARK = re.compile(r"### BEGIN SOLUTION|#\s*SOLUTION\s*$", re.MULTILINE)
MD_SOLUTION = re.compile(r"^### BEGIN SOLUTION[^\n]*\n(.*?)^### END SOLUTION[^\n]*$", re.MULTILINE | re.DOTALL)


class SiteError(Exception):
    """A problem that must fail the build; the message says where."""


# -- staging ------------------------------------------------------------------------------


class Stage:
    """Writes files under STAGE only when their content changes, and removes stale ones."""

    def __init__(self) -> None:
        self.written: set[Path] = set()

    def write(self, rel: str, data: bytes | str) -> None:
        path = STAGE / rel
        raw = data.encode("utf-8") if isinstance(data, str) else data
        self.written.add(path)
        if path.is_file() and path.read_bytes() == raw:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)

    def prune(self) -> None:
        for path in sorted(STAGE.rglob("*"), reverse=True):
            if path.is_file() and path not in self.written:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def is_external(target: str) -> bool:
    return bool(urlsplit(target).scheme) or target.startswith("//")


def rewrite_links(text: str, src_rel: str, folders: dict[str, str]) -> str:
    """Point each Markdown link to a published folder at the folder's README.md or generated
    index.md, each link to a file the site does not publish at the repository, and each badge
    image at the site's copy. A link to nothing is left as it is: the build then fails on it."""
    for url, badge in BADGES.items():
        text = text.replace(url, posixpath.relpath(f"_site/{badge}", posixpath.dirname(src_rel) or "."))

    def fix(match: re.Match) -> str:
        target = match.group(2)
        if is_external(target) or target.startswith("#"):
            return match.group(0)
        path, _, fragment = target.partition("#")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(src_rel), unquote(path)))
        if not (REPO / resolved).exists() or resolved.startswith("../"):
            return match.group(0)
        if not (resolved + "/").startswith(PUBLISHED):
            kind = "tree" if (REPO / resolved).is_dir() else "blob"
            return f"{match.group(1)}{REPOSITORY_URL}/{kind}/{REPOSITORY_BRANCH}/{resolved}{match.group(3) or ''}{match.group(4)}"
        if not (REPO / resolved).is_dir():
            return match.group(0)
        page = folder_page(resolved, folders)
        new = posixpath.relpath(page, posixpath.dirname(src_rel) or ".")
        new += f"#{fragment}" if fragment else ""
        return f"{match.group(1)}{new}{match.group(3) or ''}{match.group(4)}"

    return MD_LINK.sub(fix, text)


def folder_page(folder: str, folders: dict[str, str]) -> str:
    readme = f"{folder}/README.md"
    if (REPO / readme).is_file():
        return readme
    folders[folder] = f"{folder}/index.md"
    return folders[folder]


def first_heading(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    raise SiteError("a page has no '# ' title")


def folder_listing(folder: str) -> str:
    """A page for a linked folder that has no README: its pages and its files (downloads)."""
    lines = [f"# Folder `{folder}/`", "", "The files of this folder of the repository:", ""]
    for path in sorted(p for p in (REPO / folder).rglob("*") if p.is_file()):
        rel = path.relative_to(REPO / folder).as_posix()
        if path.suffix == ".md":
            lines.append(f"- [{first_heading(path.read_text(encoding='utf-8'))}]({rel}) (`{rel}`)")
        else:
            lines.append(f"- [`{rel}`]({rel}) ({path.stat().st_size / 1024:.0f} KiB)")
    return "\n".join(lines) + "\n"


def notebook_stem_number(name: str) -> str:
    return name.split("_", 1)[0]


def stage_notebook(stage: Stage, rel: str, folders: dict[str, str]) -> dict:
    nb = json.loads((REPO / rel).read_text(encoding="utf-8"))
    kind, name = rel.split("/", 1)
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            cell["source"] = rewrite_links("".join(cell["source"]), rel, folders)
        for output in list(cell.get("outputs", [])):
            data = output.get("data")
            if data is None:
                continue
            for mime in [m for m in data if m.startswith(RECORD_MIME_PREFIX)]:
                del data[mime]  # a record for the course's tools (graphlab check), not for display
            if WIDGET_MIME in data:
                output["data"] = {"text/html": WIDGET_NOTE}
            elif not any(data.values()):
                cell["outputs"].remove(output)  # nothing left to show
    nb["metadata"].pop("widgets", None)  # no widget state: no widget JavaScript on the page

    number = notebook_stem_number(name)
    title = title_cell(nb, rel)
    if kind == "labs" and (REPO / "solutions" / name).is_file():
        nb["cells"].insert(title + 1, markdown_cell(
            ":::{note}\nThe worked solutions of this lab are on "
            f"[a page of their own](../solutions/{name}), each solved cell folded: "
            "try the exercises first.\n:::", "solutions-link"))
    if kind == "solutions":
        cell = nb["cells"][title]
        cell["source"] = re.sub(r"^(# .*?)\s*$", r"\1: worked solutions", cell["source"], count=1, flags=re.MULTILINE)
        nb["cells"].insert(title + 1, markdown_cell(
            ":::{important}\nThis page is [lab " + number + f"](../labs/{name}) with its exercises "
            "solved. Each answer is folded: open it with its *Show code cell source* or *Show the worked "
            "answer* toggle.\n:::", "solutions-note"))
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                cell["source"] = fold_markdown_answer(cell["source"])
            elif SOLUTION_MARK.search("".join(cell["source"])):
                tags = cell.setdefault("metadata", {}).setdefault("tags", [])
                if "hide-input" not in tags:
                    tags.append("hide-input")
    stage.write(rel, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return nb


def title_cell(nb: dict, rel: str) -> int:
    """The index of the markdown cell that holds the notebook's '# ' title."""
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown" and re.search(r"^# ", cell["source"], re.MULTILINE):
            return index
    raise SiteError(f"{rel}: no markdown cell holds a '# ' title")


def markdown_cell(text: str, key: str) -> dict:
    return {"cell_type": "markdown", "id": f"graphlab-site-{key}", "metadata": {}, "source": text}


def fold_markdown_answer(text: str) -> str:
    """A written answer between ### BEGIN SOLUTION and ### END SOLUTION, folded."""
    return MD_SOLUTION.sub(
        lambda m: ('<details class="graphlab-solution">\n<summary>Show the worked answer</summary>\n\n'
                   + m.group(1).strip("\n") + "\n\n</details>"), text)


def readme_sections() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    sections: dict[str, str] = {}
    for block in re.split(r"^(?=## )", text, flags=re.MULTILINE):
        if block.startswith("## "):
            sections[block[3:].split("\n", 1)[0].strip()] = block.rstrip() + "\n"
    missing = [s for s in README_SECTIONS if s not in sections]
    if missing:
        raise SiteError(f"README.md has no section(s) {missing}: update README_SECTIONS in site/build.py")
    return "\n".join(sections[s] for s in README_SECTIONS)


def toctree_lines(entries: list[tuple[str | None, str]]) -> str:
    return "\n".join(f"{title} <{doc}>" if title else doc for title, doc in entries)


def docname(rel: str) -> str:
    return rel.rsplit(".", 1)[0]


def stage_all() -> dict:
    """Copy and adjust every page into STAGE. Returns what was staged, by section."""
    stage = Stage()
    folders: dict[str, str] = {}
    staged: dict[str, list[str]] = {"lessons": [], "labs": [], "solutions": [], "workshop": [], "reports": []}
    notebooks: dict[str, dict] = {}

    for kind, section in (("notebooks", "lessons"), ("labs", "labs"), ("solutions", "solutions")):
        for path in sorted((REPO / kind).glob("*.ipynb")):
            rel = path.relative_to(REPO).as_posix()
            notebooks[rel] = stage_notebook(stage, rel, folders)
            staged[section].append(rel)

    markdown = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs" / "workshop").glob("*.md"))
    staged["workshop"] = sorted(markdown, key=lambda r: (not r.endswith("/README.md"), r))
    reports = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "reports").rglob("*.md"))
    texts = {rel: (REPO / rel).read_text(encoding="utf-8") for rel in staged["workshop"] + reports}
    for path in sorted((REPO / "reports").rglob("*")):  # figures and data the reports link to
        if path.is_file() and path.suffix != ".md":
            stage.write(path.relative_to(REPO).as_posix(), path.read_bytes())

    texts = {rel: rewrite_links(text, rel, folders) for rel, text in texts.items()}
    home = (SITE / "index.md").read_text(encoding="utf-8")
    home = home.replace("<!-- graphlab-site: README sections -->", rewrite_links(readme_sections(), "README.md", folders))
    for folder, page in sorted(folders.items()):  # folder pages found while rewriting links
        texts[page] = rewrite_links(folder_listing(folder), page, folders)
        if folder.startswith("reports/"):
            reports.append(page)
    reports_tree = report_hubs(sorted(set(reports)), texts)
    for rel, children in reports_tree.items():
        if rel in texts and children:
            texts[rel] += "\n```{toctree}\n:hidden:\n\n" + toctree_lines(children) + "\n```\n"
    for rel, text in texts.items():
        stage.write(rel, text)
    staged["reports"] = sorted(set(reports))

    home = home.replace("<!-- graphlab-site: lessons -->", "\n".join(docname(r) for r in staged["lessons"]))
    home = home.replace("<!-- graphlab-site: labs -->", "\n".join(docname(r) for r in staged["labs"]))
    home = home.replace("<!-- graphlab-site: solutions -->", "\n".join(docname(r) for r in staged["solutions"]))
    home = home.replace("<!-- graphlab-site: workshop -->", "\n".join(docname(r) for r in staged["workshop"]))
    home = home.replace("<!-- graphlab-site: reports -->", toctree_lines(reports_tree[""]))
    stage.write("index.md", home)
    for badge in BADGES.values():
        stage.write(f"_site/{badge}", (SITE / "badges" / badge).read_bytes())
    stage.prune()
    staged["notebooks"] = notebooks  # type: ignore[assignment]
    return staged


def report_hubs(reports: list[str], texts: dict[str, str]) -> dict[str, list[tuple[str | None, str]]]:
    """Nest the report pages: each page under the README.md (or folder page) nearest above it,
    pages with none under MAIN_REPORT_HUB; the key "" holds the entries of the home page's
    toctree. Children come in the order their hub links them; duplicate titles get their folder."""
    hubs = {r for r in reports if r.endswith(("/README.md", "/index.md"))}
    titles = {r: first_heading(texts[r]) for r in reports}
    counts: dict[str, int] = {}
    for title in titles.values():
        counts[title] = counts.get(title, 0) + 1
    tree: dict[str, list] = {"": [(None, docname(MAIN_REPORT_HUB))]}
    for rel in reports:
        if rel == MAIN_REPORT_HUB:
            continue
        folder = posixpath.dirname(rel if rel not in hubs else posixpath.dirname(rel))
        parent = None
        while folder.startswith("reports"):
            for name in ("README.md", "index.md"):
                if f"{folder}/{name}" in hubs and f"{folder}/{name}" != rel:
                    parent = f"{folder}/{name}"
                    break
            if parent:
                break
            folder = posixpath.dirname(folder)
        parent = parent or MAIN_REPORT_HUB
        tree.setdefault(parent, []).append(rel)
    out: dict[str, list[tuple[str | None, str]]] = {"": tree.pop("")}
    for parent, children in tree.items():
        order = [posixpath.normpath(posixpath.join(posixpath.dirname(parent), m.group(2).partition("#")[0]))
                 for m in MD_LINK.finditer(texts[parent]) if not is_external(m.group(2))]
        children.sort(key=lambda c: (order.index(c) if c in order else len(order), c))
        entries = []
        for child in children:
            title = titles[child]
            if counts[title] > 1:
                title = f"{title} ({posixpath.dirname(child).removeprefix('reports/')})"
            entries.append((title, posixpath.relpath(docname(child), posixpath.dirname(parent))))
        out[parent] = entries
    return out


def newest_input() -> float:
    """The latest modification time among the files (and folders) the site is built from."""
    newest = 0.0
    for name in INPUTS:
        top = REPO / name
        for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
            if "__pycache__" not in path.parts and path.exists():
                newest = max(newest, path.stat().st_mtime)
    return newest


def is_fresh() -> bool:
    """True when build/site was built, and passed its checks, after its sources last changed."""
    return STAMP.is_file() and (OUT / "index.html").is_file() and STAMP.stat().st_mtime >= newest_input()


# -- building -----------------------------------------------------------------------------


def sphinx_build(jobs: str) -> None:
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-n", "-q",
           "-j", jobs, "-c", str(SITE), "-d", str(DOCTREES), str(STAGE), str(OUT)]
    result = subprocess.run(cmd, cwd=REPO)
    if result.returncode != 0:
        raise SiteError(f"sphinx-build failed (exit {result.returncode}): see its messages above")


def publish_original_sources(staged: dict) -> None:
    """The theme's download button offers a page's source: the repository's own file, not the
    staged copy adjusted for the web."""
    for key in ("lessons", "labs", "solutions", "workshop", "reports"):
        for rel in staged[key]:
            for copy in (OUT / "_sources" / rel, OUT / "_sources" / f"{rel}.txt"):
                if copy.is_file() and (REPO / rel).is_file():
                    shutil.copyfile(REPO / rel, copy)


# -- checking the output --------------------------------------------------------------------


class PageParser(html.parser.HTMLParser):
    """Collects a page's ids, its links and resources, its images and its visible text."""

    RESOURCE_ATTRS = {("script", "src"), ("img", "src"), ("iframe", "src"), ("source", "src"),
                      ("video", "src"), ("audio", "src"), ("embed", "src"), ("object", "data")}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []  # (tag.attr, url)
        self.resources: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        if tag in ("script", "style"):
            self._skip += 1
        for attr in ("href", "src", "data"):
            value = attrs.get(attr)
            if value is None:
                continue
            self.links.append((f"{tag}.{attr}", value))
            loads = (tag, attr) in self.RESOURCE_ATTRS or (
                tag == "link" and attr == "href"
                and {"stylesheet", "preload", "icon", "modulepreload", "prefetch"} & set((attrs.get("rel") or "").split()))
            if loads:
                self.resources.append(value)
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def check_output(staged: dict | None = None, out: Path = OUT) -> list[str]:
    """Every problem of the built site in `out`, one sentence each (an empty list: all good)."""
    problems: list[str] = []
    pages = {p: parse_page(p) for p in sorted(out.rglob("*.html"))
             if p.relative_to(out).parts[0] not in ("_static", "_sources")}  # theme templates, sources
    if not pages:
        return [f"{out} has no pages: build the site first"]
    for page, parsed in pages.items():
        where = page.relative_to(out).as_posix()
        for url in parsed.resources:
            if is_external(url):
                problems.append(f"{where}: loads {url} from the internet (the site must work offline)")
        for what, url in parsed.links:
            if is_external(url) or url.startswith(("mailto:", "javascript:", "data:")):
                continue
            parts = urlsplit(url)
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if parts.path.endswith("/") or target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                problems.append(f"{where}: {what} {url!r} points to a file that does not exist")
                continue
            fragment = unquote(parts.fragment)
            if fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else parse_page(target).ids
                if fragment not in ids:
                    problems.append(f"{where}: {what} {url!r}: no element with id {fragment!r} there")
    if staged:
        problems += check_pages(staged, pages, out)
    return problems


def check_pages(staged: dict, pages: dict[Path, PageParser], out: Path) -> list[str]:
    """Every staged page was rendered; each lesson shows its plots, provenance and links."""
    problems = []
    sources = [r for key in ("lessons", "labs", "solutions", "workshop", "reports") for r in staged[key]]
    for rel in sources + ["index.md"]:
        if out / f"{docname(rel)}.html" not in pages:
            problems.append(f"{rel}: no page was rendered ({docname(rel)}.html is missing)")
    for rel in staged["lessons"]:
        page = out / f"{docname(rel)}.html"
        if page not in pages:
            continue
        parsed, nb = pages[page], staged["notebooks"][rel]
        name = rel.split("/", 1)[1]
        hrefs = [url for _, url in parsed.links]
        if not any(h.startswith(f"{COLAB}/github/") and h.endswith(f"/{rel}") for h in hrefs):
            problems.append(f"{rel}: its page has no 'Open in Colab' link to {rel}")
        if (REPO / "labs" / name).is_file() and f"../labs/{docname(name)}.html" not in [h.split("#")[0] for h in hrefs]:
            problems.append(f"{rel}: its page has no link to its lab labs/{name}")
        plots = sum(1 for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
        shown = sum(1 for src in parsed.images if src.startswith("../_images/") and not src.endswith(".svg"))
        if shown < plots:
            problems.append(f"{rel}: {plots} stored plots, {shown} on its page")
        stored = json.dumps([c.get("outputs", []) for c in nb["cells"]])
        if PROVENANCE.search(stored) and not PROVENANCE.search(" ".join(parsed.text)):
            problems.append(f"{rel}: the outputs say where their figures come from, its page does not")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check-only", action="store_true", help="only check the existing build/site")
    parser.add_argument("--jobs", default=os.environ.get("SITE_JOBS", "auto"),
                        help="sphinx-build -j (default: auto, every core)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        staged = None
        if not args.check_only:
            STAMP.unlink(missing_ok=True)
            staged = stage_all()
            staged_at = time.monotonic()
            print(f"site: staged the pages in {STAGE.relative_to(REPO)}/ ({staged_at - started:.1f} s)", flush=True)
            sphinx_build(args.jobs)
            publish_original_sources(staged)
            print(f"site: built {OUT.relative_to(REPO)}/ ({time.monotonic() - staged_at:.1f} s)", flush=True)
        problems = check_output(staged)
    except SiteError as exc:
        print(f"site: {exc}", file=sys.stderr)
        return 1
    if problems:
        for problem in problems:
            print(f"site: {problem}", file=sys.stderr)
        print(f"site: {len(problems)} problem(s) in {OUT.relative_to(REPO)}/", file=sys.stderr)
        return 1
    if not args.check_only:
        STAMP.write_text(f"{OUT.relative_to(REPO)} built and checked\n")
    pages = sum(1 for _ in OUT.rglob("*.html"))
    print(f"site: {pages} pages, every link resolves ({time.monotonic() - started:.1f} s in all); "
          f"open {OUT.relative_to(REPO)}/index.html or run: python -m http.server -d {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
