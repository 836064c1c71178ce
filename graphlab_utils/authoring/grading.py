"""``graphlab check NOTEBOOK``: run a lab headless and print which exercises pass.

For a learner before an interview, or an instructor collecting a room's labs::

    graphlab check labs/03_static_control_flow.ipynb
    graphlab check my_copy_of_lab_10.ipynb --backend sim --save graded.ipynb

The notebook runs top to bottom in a fresh kernel of the current Python environment (the
one that has the course installed), with ``allow_errors``: a cell that raises, such as an
exercise stub's ``NotImplementedError``, does not stop the cells after it. Each check call
prints one line for the learner (a pass, or a hint with what it expected, what it saw and
the idea) and leaves beside it a record of the same result as data (see
:mod:`graphlab_utils.checks.core`); this command reads the records, never the printed text,
and prints one row per exercise, then the hints.

Exit status: 0 when every exercise passes, 1 when one does not (a hint, a stub not done, a
cell that raised), 2 for bad input (no such file, not a notebook, a notebook without checks,
a backend that cannot run here), with one sentence saying what is wrong.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from graphlab_utils.authoring.generated import kernel_manager
from graphlab_utils.errors import GraphlabError


__all__ = ["GradingError", "Exercise", "Report", "grade_notebook", "parse_outputs", "format_report", "main"]

STUB = "NotImplementedError"
DEMO_MARKER = "#graphlab-check:demo"  # a cell that shows a check on purpose-broken code


class GradingError(GraphlabError, ValueError):
    """The notebook given to ``graphlab check`` cannot be graded (one sentence says why)."""


@dataclass
class Exercise:
    """One row of the report: a check that ran, or a cell that raised before its check could."""

    name: str
    status: str  # "pass", "hint", "not done", "error"
    expected: str = ""
    seen: str = ""
    idea: str = ""
    cell: int | None = None  # index of the code cell (counting from 0 among all cells)

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@dataclass
class Report:
    path: str
    exercises: list = field(default_factory=list)
    backend: str | None = None
    stopped: str | None = None  # the kernel died or a cell timed out: why
    seconds: float = 0.0

    @property
    def graded(self) -> list:
        return [e for e in self.exercises if e.status != "demo"]

    @property
    def passed(self) -> int:
        return sum(e.passed for e in self.graded)

    @property
    def exit_code(self) -> int:
        return 0 if self.graded and self.passed == len(self.graded) and not self.stopped else 1


# ---------------------------------------------------------------------------------------
# Reading a notebook's outputs
# ---------------------------------------------------------------------------------------
def _records(cell) -> list[dict]:
    """The check records a code cell's outputs hold, in the order the checks ran."""
    from graphlab_utils.checks.core import RECORD_MIME

    found = []
    for out in cell.get("outputs", []):
        data = out.get("data") or {}
        if out.get("output_type") in ("display_data", "execute_result") and RECORD_MIME in data:
            record = data[RECORD_MIME]
            if isinstance(record, dict) and "name" in record and "passed" in record:
                found.append(record)
    return found


BACKEND_WORDS = {"sim": "simulator backend", "real": "real backend"}


def _error(cell):
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return out.get("ename", "Error"), str(out.get("evalue", "")).splitlines()[0] if out.get("evalue") else ""
    return None


def _cell_label(source: str) -> str:
    """What to call a cell that raised: the check it calls, else its first code line."""
    calls = re.findall(r"\b((?:\w+\.)?check\w*)\(\s*([\"'][^\"']+[\"'])?", source)
    if calls:
        func, first = calls[-1]
        return f"{func}({first})" if first else f"{func}(...)"
    for line in source.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "%")):
            return line if len(line) <= 60 else line[:57] + "..."
    return "a code cell"


def _is_demo(source: str) -> bool:
    return any(line.strip().lower().replace(" ", "") == DEMO_MARKER for line in source.splitlines())


CHECK_CALL = re.compile(r"^(?:\w[\w, ]*=\s*)?((?:\w+\.)?check\w*)\(", re.MULTILINE)


def _is_check_call(node) -> bool:
    func = node.func if isinstance(node, ast.Call) else None
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return name.startswith("check")


def _check_calls(source: str) -> int:
    """How many top-level check calls a cell's source makes (``check_x(...)``, ``r = L.check(...)``).

    This reads the lab's structure, not its outputs, so the number of exercises is the same
    for an unsolved lab, its solution and a learner's half-done copy. A call inside a string,
    a function or a loop is not counted; a cell that does not parse is read line by line.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return len(CHECK_CALL.findall(source))
    return sum(isinstance(stmt, (ast.Expr, ast.Assign, ast.AnnAssign)) and _is_check_call(stmt.value)
               for stmt in tree.body)


def parse_outputs(nb) -> tuple[list, str | None]:
    """The exercises of a lab, read from its structure, with what their checks recorded.

    Each top-level check call in a code cell is one exercise row, whatever the cells printed
    (a check called in two cells gives two rows, the second named "name (cell N)"). A row's
    result is its cell's check record; a check cell that left no record takes the first error
    raised since the previous check cell (an exercise stub's ``NotImplementedError`` is "not
    done"; anything else, a syntax error in the exercise cell, say, is "error"), else it is
    "not run". A cell marked with the comment ``# graphlab-check: demo`` shows a check on
    purpose-broken code (a hint is expected there): its rows are listed as "demo" and not graded.
    """
    rows: list[Exercise] = []
    names: set[str] = set()
    backend = None
    first_error = None  # (cell index, source, (ename, evalue)) since the previous check cell

    def add(row: Exercise) -> None:
        if row.name in names:
            row.name = f"{row.name} (cell {row.cell})"
        names.add(row.name)
        rows.append(row)

    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        demo = _is_demo(cell.source)
        records = _records(cell)
        for record in records:
            if backend is None and record.get("backend"):
                backend = BACKEND_WORDS.get(record["backend"], str(record["backend"]))
        calls = _check_calls(cell.source)
        err = _error(cell)
        if err is not None and first_error is None:
            first_error = (index, cell.source, err)
        if not calls and not records:
            continue
        for record in records:
            if record["passed"]:
                status = "pass"
            else:
                status = "not done" if STUB in str(record.get("seen", "")) else "hint"
            add(Exercise(str(record["name"]), "demo" if demo else status, str(record.get("expected", "")),
                         str(record.get("seen", "")), str(record.get("idea", "")), index))
        for _ in range(calls - len(records)):
            label = f"cell {index}: {_cell_label(cell.source)}"
            if demo:
                add(Exercise(label, "demo", cell=index))
            elif first_error is not None:
                where, source, (ename, evalue) = first_error
                status = "not done" if ename == STUB else "error"
                seen = f"{ename}: {evalue}".rstrip(": ")
                if where != index:
                    seen += f" (in cell {where}: {_cell_label(source)})"
                add(Exercise(label, status, seen=seen, cell=index,
                             idea="the exercise above it is not written yet" if status == "not done"
                             else "this cell raised before any check could run; read the traceback in the notebook"))
            elif cell.get("outputs") or cell.get("execution_count"):
                add(Exercise(label, "error", seen="the cell ran, but its check left no result", cell=index,
                             idea="run the lab from the top (Run All) with the course's checks imported"))
            else:
                add(Exercise(label, "not run", seen="no check result: the cell did not run", cell=index,
                             idea="run the lab from the top (Run All)"))
        first_error = None
    return rows, backend


# ---------------------------------------------------------------------------------------
# Running a notebook
# ---------------------------------------------------------------------------------------
def _read_notebook(path: Path):
    import nbformat

    if not path.exists():
        raise GradingError(f"{path} does not exist: give the path of a lab notebook, "
                           "such as labs/03_static_control_flow.ipynb")
    if not path.is_file():
        raise GradingError(f"{path} is not a file: give the path of a lab notebook (.ipynb)")
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:  # noqa: BLE001 - any reading problem is "not a notebook"
        raise GradingError(f"{path} is not a Jupyter notebook ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
    if not any(cell.cell_type == "code" for cell in nb.cells):
        raise GradingError(f"{path} has no code cells: there is nothing to run")
    return nb


def _check_backend(backend: str | None) -> None:
    """Stop before the run when the backend asked for cannot run here.

    A bad ``GRAPHLAB_BACKEND`` (or ``real`` without a GPU) would make the lab's setup cell
    fail and every later check fail after it; :class:`~graphlab_utils.backend.BackendError`
    carries the one sentence that ``graphlab doctor`` prints instead.
    """
    from graphlab_utils.backend import ENV_VAR, choose_backend, gpu_available

    requested = backend or os.environ.get(ENV_VAR)
    wants_real = (requested or "").strip().lower() == "real"
    choose_backend(requested, gpu_available() if wants_real else False)


def grade_notebook(path, timeout: int = 600, backend: str | None = None, save: str | None = None) -> Report:
    """Run the notebook at ``path`` headless and return what its checks said."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = _read_notebook(path)
    _check_backend(backend)
    report = Report(str(path))
    saved_env = os.environ.get("GRAPHLAB_BACKEND")
    if backend:
        os.environ["GRAPHLAB_BACKEND"] = backend
    start = time.perf_counter()
    try:
        client = NotebookClient(nb, km=kernel_manager(), timeout=timeout, allow_errors=True,
                                resources={"metadata": {"path": str(path.resolve().parent)}})
        try:
            client.execute()
        except Exception as exc:  # noqa: BLE001 - a dead kernel or a timeout: grade what ran
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            report.stopped = f"{type(exc).__name__}{': ' + first if first else ''}"
    finally:
        if backend:
            if saved_env is None:
                os.environ.pop("GRAPHLAB_BACKEND", None)
            else:
                os.environ["GRAPHLAB_BACKEND"] = saved_env
    report.seconds = time.perf_counter() - start
    report.exercises, report.backend = parse_outputs(nb)
    if save:
        nbformat.write(nb, save)
    if not report.graded and not report.stopped:
        raise GradingError(f"{path} ran, but no check printed a result: graphlab check grades labs "
                           "(labs/NN_*.ipynb), whose exercises end with a check call")
    return report


# ---------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------
def format_report(report: Report) -> str:
    width = max([len("exercise")] + [len(e.name) for e in report.exercises])
    where = f" [{report.backend}]" if report.backend else ""
    lines = [f"graphlab check: {report.path}{where}", "", f"  {'exercise':<{width}}  result"]
    for e in report.exercises:
        status = {"hint": "hint (see below)", "demo": "demo (not graded)"}.get(e.status, e.status)
        lines.append(f"  {e.name:<{width}}  {status}")
    details = [e for e in report.graded if not e.passed]
    if details:
        lines += ["", "What the checks said:"]
        for e in details:
            lines.append(f"  {e.name}")
            if e.expected:
                lines.append(f"    expected: {e.expected}")
            if e.seen:
                lines.append(f"    seen:     {e.seen}")
            if e.idea:
                lines.append(f"    idea:     {e.idea}")
    if report.stopped:
        lines += ["", f"The run stopped early: {report.stopped}; the exercises after that point were not graded."]
    total = len(report.graded)
    lines += ["", f"{report.passed} of {total} exercise{'s' if total != 1 else ''} pass."
              + (" All done." if report.exit_code == 0 else "")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="graphlab check",
        description="Run a lab notebook headless and print which exercises pass (exit 0 when all do).",
    )
    parser.add_argument("notebook", help="the lab to grade, e.g. labs/03_static_control_flow.ipynb")
    parser.add_argument("--timeout", type=int, default=600, metavar="SECONDS",
                        help="the longest one cell may run (default: 600)")
    parser.add_argument("--backend", choices=["real", "sim", "auto"],
                        help="set GRAPHLAB_BACKEND for the run (default: as in your environment)")
    parser.add_argument("--save", metavar="PATH", help="also write the executed notebook there")
    args = parser.parse_args(argv)
    report = grade_notebook(args.notebook, timeout=args.timeout, backend=args.backend, save=args.save)
    print(format_report(report))
    sys.stdout.flush()
    return report.exit_code
