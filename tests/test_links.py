"""Every relative link in the course's pages and lessons leads somewhere: the file exists and,
where the link names a section of a Markdown page (``page.md#section``), that section does.

Lessons quote figures measured on a GPU and link the report section they come from; a report
regenerated with other headings, or a lesson renamed, must not leave those links dangling.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")
PAGES = sorted(
    p for p in [REPO / "README.md", *REPO.glob("docs/**/*.md"), *REPO.glob("benchmarks/*.md"), *REPO.glob("reports/**/*.md")]
    if ".venv" not in p.parts
)
NOTEBOOKS = sorted(p for d in ("notebooks", "labs", "solutions") for p in (REPO / d).glob("*.ipynb"))


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set:
    found, seen = set(), {}
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = re.match(r"#{1,6} (.+)", line)
        if m and not in_code:
            slug = github_anchor(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def markdown_of(path: Path) -> str:
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text()


def broken_links(path: Path) -> list:
    problems = []
    for target in LINK.findall(markdown_of(path)):
        if "://" in target or target.startswith(("mailto:", "#")):
            continue
        file_part, _, section = target.partition("#")
        dest = (path.parent / file_part).resolve()
        if not dest.exists():
            problems.append(f"{target}: no such file")
        elif section and dest.suffix == ".md" and section not in anchors(dest):
            problems.append(f"{target}: {dest.name} has no section '{section}'")
    return problems


def test_github_anchor_follows_githubs_rule():
    assert github_anchor("Capstone: the diffusion sampler (lesson 09), every variant side by side") == \
        "capstone-the-diffusion-sampler-lesson-09-every-variant-side-by-side"
    assert github_anchor("06_exec_update") == "06_exec_update"
    assert github_anchor("Headline figures: measured on this GPU, modelled by the simulator") == \
        "headline-figures-measured-on-this-gpu-modelled-by-the-simulator"


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Only section\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#only-section) [bad](other.md#missing) [gone](nowhere.md)\n")
    assert broken_links(page) == ["other.md#missing: other.md has no section 'missing'", "nowhere.md: no such file"]


@pytest.mark.parametrize("path", PAGES + NOTEBOOKS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    assert broken_links(path) == [], f"{path.relative_to(REPO)}: broken links"
