"""``graphlab build-labs``: generate ``labs/`` from ``solutions/``, the single source.

The markers are nbgrader's and otter-grader's, so a solution notebook reads as either tool
expects: ``### BEGIN SOLUTION`` / ``### END SOLUTION`` and ``### BEGIN HIDDEN TESTS`` /
``### END HIDDEN TESTS`` are nbgrader's delimiters (its ``ClearSolutions`` and
``ClearHiddenTests`` preprocessors, with the same ``# YOUR CODE HERE`` stub); a single line
ending with ``# SOLUTION`` is otter-assign's. The build is a chain of nbconvert preprocessors:
``ClearSolutions`` (this module: both kinds of marker, the hidden tests, cells left empty),
nbconvert's own ``ClearOutputPreprocessor`` (outputs, execution counts, run timestamps), and
``ClearWidgetState`` (the notebook's saved widget state). nbgrader itself is not used: it
needs per-cell metadata, does not support text after ``BEGIN SOLUTION`` or otter's suffix, and
brings a database.

A solution notebook marks what the learner writes:

* a block between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` becomes, at the
  indentation of the markers::

      # YOUR CODE HERE
      raise NotImplementedError("Exercise: ... (see the hint above)")

  Text after ``### BEGIN SOLUTION`` (``### BEGIN SOLUTION capture the step``) names the
  exercise in that message. In a markdown cell the block becomes ``*Your answer here.*``.
* a single-line statement ending with ``# SOLUTION`` keeps its indentation and, if it is
  an assignment, its left-hand side: ``x = torch.zeros(3)  # SOLUTION`` becomes
  ``x = ...``; any other statement becomes ``...``.
* blocks between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` are removed;
  a cell left empty is dropped.

Every output and execution count is cleared; notebook and cell metadata are kept, except
the notebook's saved widget state and the cells' run timestamps (outputs too). The result is deterministic: the same
solution gives the same bytes.

``--check`` regenerates in memory and compares with ``labs/``: stale, missing and
orphaned labs are named and the exit status is 1. Malformed markers raise
:class:`LabBuildError` naming the notebook and the cell (exit status 2 from the command).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from graphlab_utils.authoring.generated import command_parser
from graphlab_utils.errors import GraphlabError

__all__ = [
    "LabBuildError",
    "LabStatus",
    "build_labs",
    "check_labs",
    "lab_from_solution",
    "main",
    "render_lab",
    "stub_code",
]

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
BEGIN_HIDDEN = "### BEGIN HIDDEN TESTS"
END_HIDDEN = "### END HIDDEN TESTS"
SOLUTION_SUFFIX = re.compile(r"\s*#\s*SOLUTION\s*$")
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
DEFAULT_EXERCISE = "write the missing code"
MARKDOWN_ANSWER = "*Your answer here.*"
REGENERATE = "run `graphlab build-labs`; labs are generated from solutions/ and never edited by hand"


class LabBuildError(GraphlabError, ValueError):
    """A solution notebook's markers cannot be turned into a lab."""


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _marker(line: str) -> str | None:
    stripped = line.strip()
    for marker in (BEGIN_SOLUTION, END_SOLUTION, BEGIN_HIDDEN, END_HIDDEN):
        if stripped == marker or stripped.startswith(marker + " "):
            return marker
    return None


def _stub_statement(line: str) -> str:
    """``x = f(y)  # SOLUTION`` -> ``x = ...``; any other statement -> ``...``."""
    indent = _indent(line)
    code = SOLUTION_SUFFIX.sub("", line).strip()
    try:
        tree = ast.parse(code)
    except SyntaxError:
        tree = None
    if tree is not None and len(tree.body) == 1:
        node = tree.body[0]
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            offset = node.value.col_offset  # in UTF-8 bytes
            target = code.encode("utf-8")[:offset].decode("utf-8").rstrip()
            return f"{indent}{target} ..."
    return f"{indent}..."


def stub_code(source: str, where: str = "cell", markdown: bool = False) -> str:
    """The lab version of one cell's source; ``where`` names the cell in errors."""
    out: list[str] = []
    block: tuple[str, int, str, str] | None = None  # (marker, line number, indent, text)
    for number, line in enumerate(source.split("\n"), start=1):
        marker = _marker(line)
        if marker in (BEGIN_SOLUTION, BEGIN_HIDDEN):
            if block is not None:
                raise LabBuildError(
                    f"{where}: `{marker}` on line {number} is nested inside the "
                    f"`{block[0]}` of line {block[1]}; close that block with its END marker first"
                )
            text = line.strip()[len(marker):].strip()
            block = (marker, number, _indent(line), text)
            continue
        if marker in (END_SOLUTION, END_HIDDEN):
            begin = BEGIN_SOLUTION if marker == END_SOLUTION else BEGIN_HIDDEN
            if block is None or block[0] != begin:
                raise LabBuildError(
                    f"{where}: `{marker}` on line {number} has no matching `{begin}` before it"
                )
            if begin == BEGIN_SOLUTION:
                indent, text = block[2], block[3]
                if markdown:
                    out.append(f"{indent}{MARKDOWN_ANSWER}")
                else:
                    exercise = (text or DEFAULT_EXERCISE).replace("\\", "\\\\").replace('"', '\\"')
                    out.append(f"{indent}# YOUR CODE HERE")
                    out.append(
                        f'{indent}raise NotImplementedError("Exercise: {exercise} (see the hint above)")'
                    )
            block = None
            continue
        if block is not None:
            continue  # inside a solution or hidden-tests block: left out of the lab
        if not markdown and SOLUTION_SUFFIX.search(line):
            out.append(_stub_statement(line))
            continue
        out.append(line)
    if block is not None:
        end = END_SOLUTION if block[0] == BEGIN_SOLUTION else END_HIDDEN
        raise LabBuildError(
            f"{where}: `{block[0]}` on line {block[1]} has no matching `{end}`"
        )
    return "\n".join(out)


def _preprocessors(name: str) -> list:
    """The chain that turns a solution notebook into its lab (nbconvert Preprocessors)."""
    from nbconvert.preprocessors import ClearOutputPreprocessor, Preprocessor

    class ClearSolutions(Preprocessor):
        """Solutions become stubs, hidden tests go; a cell that only held hidden tests is dropped."""

        def preprocess(self, nb, resources):
            cells = []
            for index, cell in enumerate(nb.cells):
                if cell.cell_type in ("code", "markdown"):
                    before = cell.source
                    cell.source = stub_code(before, f"{name} cell {index} (counting from 0)",
                                            markdown=cell.cell_type == "markdown")
                    if not cell.source.strip() and cell.source != before:
                        continue
                cells.append(cell)
            nb.cells = cells
            return nb, resources

    class ClearWidgetState(Preprocessor):
        """The notebook's saved widget state belongs to the outputs."""

        def preprocess(self, nb, resources):
            nb.metadata.pop("widgets", None)
            return nb, resources

    # Run timestamps (cell metadata "execution") belong to the outputs; other cell metadata stays.
    return [ClearSolutions(), ClearOutputPreprocessor(remove_metadata_fields={"execution"}), ClearWidgetState()]


def lab_from_solution(nb, name: str = "notebook"):
    """A new notebook node: the lab generated from the solution notebook ``nb``."""
    import copy

    lab, resources = copy.deepcopy(nb), {}
    for step in _preprocessors(name):
        lab, resources = step.preprocess(lab, resources)
    _fill_missing_ids(lab, name)
    return lab


def _fill_missing_ids(nb, name: str) -> None:
    """nbformat 4.5+ wants cell ids; give missing ones stable values (never random)."""
    if (nb.nbformat, nb.get("nbformat_minor", 0)) < (4, 5):
        return
    used = {cell.get("id") for cell in nb.cells}
    stem = re.sub(r"[^A-Za-z0-9-]", "-", Path(name).stem)[:40] or "lab"
    for index, cell in enumerate(nb.cells):
        if not cell.get("id"):
            candidate = f"{stem}-{index}"
            while candidate in used:
                candidate += "x"
            cell["id"] = candidate
            used.add(candidate)


def render_lab(solution_path: str | Path, display_name: str | None = None) -> str:
    """The exact text of the lab generated from ``solution_path``."""
    import nbformat
    import nbformat.reader

    path = Path(solution_path)
    name = display_name or str(path)
    try:
        # nbformat.reader does not "repair" the notebook (nbformat.reads would give cells
        # without an id random ones, and the lab would change at every build).
        nb = nbformat.reader.reads(path.read_text(encoding="utf-8"))
    except Exception as exc:
        raise LabBuildError(f"{name} is not a readable notebook ({exc})") from exc
    if nb.get("nbformat") != 4:
        nb = nbformat.convert(nb, 4)
    lab = lab_from_solution(nb, name)
    nbformat.validate(lab)
    text = nbformat.writes(lab)
    return text if text.endswith("\n") else text + "\n"


@dataclass
class LabStatus:
    """The outcome of a build or a check: what was written and what is wrong."""

    written: list[str]
    problems: list[str]

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0


def _pairs(solutions_dir: Path, labs_dir: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    solutions = sorted(solutions_dir.glob(NOTEBOOK_GLOB)) if solutions_dir.is_dir() else []
    pairs = [(s, labs_dir / s.name) for s in solutions]
    names = {s.name for s in solutions}
    labs = sorted(labs_dir.glob(NOTEBOOK_GLOB)) if labs_dir.is_dir() else []
    orphans = [lab for lab in labs if lab.name not in names]
    return pairs, orphans


def _orphan_problem(lab: Path, solutions_dir: Path) -> str:
    return (
        f"{lab} has no solution: {solutions_dir / lab.name} is its source; "
        f"add that solution or delete the lab"
    )


def _render_all(pairs: list[tuple[Path, Path]]) -> list[tuple[Path, str]]:
    """Render every lab first, so a malformed solution stops the build before any write."""
    return [(lab, render_lab(solution)) for solution, lab in pairs]


def build_labs(solutions_dir: str | Path = "solutions", labs_dir: str | Path = "labs") -> LabStatus:
    """Write every lab from its solution; report labs that have no solution."""
    solutions_dir, labs_dir = Path(solutions_dir), Path(labs_dir)
    pairs, orphans = _pairs(solutions_dir, labs_dir)
    rendered = _render_all(pairs)
    written = []
    for lab, text in rendered:
        data = text.encode("utf-8")
        if not lab.is_file() or lab.read_bytes() != data:
            lab.parent.mkdir(parents=True, exist_ok=True)
            lab.write_bytes(data)
        written.append(str(lab))
    return LabStatus(written, [_orphan_problem(lab, solutions_dir) for lab in orphans])


def check_labs(solutions_dir: str | Path = "solutions", labs_dir: str | Path = "labs") -> LabStatus:
    """Compare the labs on disk with what their solutions generate; write nothing."""
    solutions_dir, labs_dir = Path(solutions_dir), Path(labs_dir)
    pairs, orphans = _pairs(solutions_dir, labs_dir)
    problems = []
    for lab, text in _render_all(pairs):
        if not lab.is_file():
            problems.append(f"{lab} is missing: {REGENERATE}")
        elif lab.read_bytes() != text.encode("utf-8"):
            problems.append(f"{lab} is stale: {REGENERATE}")
    problems += [_orphan_problem(lab, solutions_dir) for lab in orphans]
    return LabStatus([], problems)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("graphlab build-labs", "Generate labs/ from solutions/ (the single source of every lab).",
                            "compare labs/ with what solutions/ generate; write nothing")
    parser.add_argument("--solutions", default="solutions", metavar="DIR",
                        help="folder of solution notebooks (default: solutions)")
    parser.add_argument("--labs", default="labs", metavar="DIR",
                        help="folder of generated labs (default: labs)")
    args = parser.parse_args(argv)
    if args.check:
        status = check_labs(args.solutions, args.labs)
        for problem in status.problems:
            print(problem)
        if not status.problems:
            count = len(_pairs(Path(args.solutions), Path(args.labs))[0])
            print(f"build-labs --check: {count} lab(s) up to date with {args.solutions}/")
        return status.exit_code
    status = build_labs(args.solutions, args.labs)
    for problem in status.problems:
        print(problem)
    print(f"build-labs: wrote {len(status.written)} lab(s) from {args.solutions}/ to {args.labs}/")
    return status.exit_code
