"""Export lessons as reveal.js slide decks for a workshop, without touching the lessons.

    python tools/make_slides.py notebooks/01_capture_instantiate_launch.ipynb
    python tools/make_slides.py notebooks/*.ipynb --out build/slides
    python tools/make_slides.py notebooks/04_pointer_baking.ipynb --no-code   # talk only

The lessons carry no slide metadata. This script reads a lesson, gives an in-memory copy
of it the cell metadata `slideshow.slide_type` that jupyter's slides exporter reads, and
writes `<out>/<stem>.slides.html`; sources, outputs and the notebook file itself are left
as they are. The rules follow the lessons' layout:

* a markdown cell with a `##` heading (each lesson section) starts a new slide;
* a markdown cell with a `###` heading starts a sub-slide (reveal.js: down arrow);
* a cell that is only a `<details>` block (hints, answers) becomes speaker notes;
* every other cell continues the current slide (`-`), and the deck scrolls
  (`reveal_scroll`), so long code cells and plots stay readable;
* with --no-code, code cells and their outputs are left out (for a talk given beside the
  notebook, which is run live).

The export runs offline: nbconvert writes the HTML from its own templates, and the deck
loads reveal.js from a CDN when it is opened. (The same export, without slide metadata,
is `jupyter nbconvert --to slides NOTEBOOK --SlidesExporter.reveal_scroll=True`: one slide
per cell.)
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

DETAILS_ONLY = re.compile(r"^\s*<details>.*</details>\s*$", re.DOTALL)


def slide_type(cell, index: int, keep_code: bool = True) -> str:
    """The reveal.js role of one cell: slide, subslide, notes, skip or - (continue)."""
    source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
    if index == 0:
        return "slide"
    if cell.cell_type == "markdown":
        first = source.lstrip()
        if first.startswith("---"):
            first = first[3:].lstrip()
        if first.startswith("## "):
            return "slide"
        if first.startswith("### "):
            return "subslide"
        if DETAILS_ONLY.match(source):
            return "notes"
        return "-"
    if cell.cell_type == "code" and not keep_code:
        return "skip"
    return "-"


def with_slide_metadata(nb, keep_code: bool = True):
    """A copy of the notebook with `slideshow.slide_type` set on every cell (sources and outputs unchanged)."""
    deck = copy.deepcopy(nb)
    for index, cell in enumerate(deck.cells):
        cell.metadata["slideshow"] = {"slide_type": slide_type(cell, index, keep_code)}
    return deck


def export(path, out_dir="build/slides", keep_code: bool = True, scroll: bool = True) -> Path:
    """Write `<out_dir>/<stem>.slides.html` for the notebook at `path`; return its path."""
    import nbformat
    from nbconvert import SlidesExporter

    path = Path(path)
    nb = nbformat.read(str(path), as_version=4)
    deck = with_slide_metadata(nb, keep_code)
    exporter = SlidesExporter()
    exporter.reveal_scroll = scroll
    exporter.reveal_transition = "none"  # a workshop deck, not a show
    body, _resources = exporter.from_notebook_node(deck, resources={"metadata": {"name": path.stem}})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{path.stem}.slides.html"
    target.write_text(body, encoding="utf-8")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", help="lesson notebooks to export")
    parser.add_argument("--out", default="build/slides", help="folder for the decks (default: build/slides)")
    parser.add_argument("--no-code", action="store_true", help="leave code cells out of the deck")
    args = parser.parse_args(argv)
    for name in args.notebooks:
        target = export(name, args.out, keep_code=not args.no_code)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
