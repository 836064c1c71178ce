"""What every generated notebook of the course shares: run it on the simulator, compare its
sources with what its generator makes, and the command line of a generator.

Lesson 10's notebook (:mod:`.drills_notebook`) and its solution (:mod:`.katas_notebook`) are
written by code; each keeps only what it builds. ``--check`` compares cell types and sources,
never outputs, so it is quick and executes nothing.
"""
from __future__ import annotations

import argparse
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from graphlab_utils.errors import GraphlabError

__all__ = ["CELL_TIMEOUT_S", "GITHUB", "Generator", "setup_cell", "GeneratedNotebookError", "kernel_manager", "execute_on_simulator",
           "source_differences"]

CELL_TIMEOUT_S = 600
GITHUB = "cuda-graph-lab/cuda-graph-lab"
SHOWN = 3  # --check names the first few differences


class GeneratedNotebookError(GraphlabError, RuntimeError):
    """A generated notebook cannot be written (one sentence says why and what to do)."""


def kernel_manager():
    """A kernel of this very Python environment (as nbval's --nbval-current-env does)."""
    import ipykernel.kernelspec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    class CurrentEnvSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES,
                                          **ipykernel.kernelspec.get_kernel_dict())

    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=CurrentEnvSpecs())


def execute_on_simulator(nb, cwd: Path, fix: str) -> None:
    """Run ``nb`` top to bottom on the simulator (the stored outputs are the simulator's);
    a failing cell raises one sentence that ends with ``fix``."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    saved = os.environ.get("GRAPHLAB_BACKEND")
    os.environ["GRAPHLAB_BACKEND"] = "sim"
    try:
        NotebookClient(nb, km=kernel_manager(), timeout=CELL_TIMEOUT_S, record_timing=False,
                       resources={"metadata": {"path": str(cwd)}}).execute()
    except CellExecutionError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise GeneratedNotebookError(f"a cell of the notebook failed ({lines[-1] if lines else 'no message'}); "
                                     f"{fix}") from exc
    finally:
        if saved is None:
            os.environ.pop("GRAPHLAB_BACKEND", None)
        else:
            os.environ["GRAPHLAB_BACKEND"] = saved


def command_parser(prog: str, description: str, check: str) -> argparse.ArgumentParser:
    """The parser of a ``graphlab build-*`` command, with its ``--check`` flag (``check``: what it compares)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--check", action="store_true", help=check)
    return parser


def setup_cell(imports: str) -> str:
    """A generated notebook's first code cell: on Colab, install the course; then ``imports`` and the setup."""
    return (
        "# NBVAL_IGNORE_OUTPUT\n"
        "import sys\n\n"
        'if "google.colab" in sys.modules:  # Colab: install the course package into the runtime\n'
        "    import subprocess\n"
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q",\n'
        f'                    "cuda-graph-lab[gpu] @ git+https://github.com/{GITHUB}"], check=True)\n\n'
        f"{imports}\n"
        "S = gl.setup()\n"
        "DEVICE = S.device"
    )


def _first_line(cell) -> str:
    return repr((cell[1].splitlines() or [""])[0][:60])


def _span(i1: int, i2: int, one: str, many: str) -> str:
    return f"cell {i1} {one}" if i2 - i1 == 1 else f"cells {i1}-{i2 - 1} {many}"


def source_differences(expected, actual, maker: str = "the generator") -> list[str]:
    """How the cells of ``actual`` differ from ``expected`` (types and sources only); empty when equal."""
    have = [(cell.cell_type, cell.source) for cell in actual.cells]
    want = [(cell.cell_type, cell.source) for cell in expected.cells]
    problems = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=have, b=want, autojunk=False).get_opcodes():
        if tag == "replace":
            problems.append(f"{_span(i1, i2, 'differs', 'differ')} from what {maker} makes "
                            f"(now {_first_line(have[i1])}, generated {_first_line(want[j1])})")
        elif tag == "delete":
            problems.append(f"{_span(i1, i2, 'is', 'are')} not made by {maker} (from {_first_line(have[i1])})")
        elif tag == "insert":
            problems.append(f"{maker} makes {j2 - j1} more cell(s) before cell {i1} (from {_first_line(want[j1])})")
    return problems


@dataclass
class Generator:
    """One generated notebook: where it lives, what builds it, and what to say about it."""

    command: str  # the command that writes it
    description: str  # the command's help
    default_path: Path
    path_flag: str  # the option that names another path ("--notebook", "--solution")
    build: Callable  # () -> a new notebook node, not executed
    maker: str  # "the question bank", "the katas"
    source: str  # where it is generated from, for messages
    fix: str  # what to do when a cell fails while it runs
    after: str = ""  # what to run next, if anything
    finish: Callable | None = None  # applied to the notebook after it ran

    def check(self, path: Path) -> int:
        import nbformat

        if not path.is_file():
            print(f"{path} is missing: run `{self.command}` from the repository's root")
            return 1
        problems = source_differences(self.build(), nbformat.read(path, as_version=4), self.maker)
        for problem in problems[:SHOWN]:
            print(f"{path}: {problem}")
        if len(problems) > SHOWN:
            print(f"{path}: and {len(problems) - SHOWN} more differences")
        if problems:
            then = f" (then `{self.after}`)" if self.after else ""
            print(f"{path} is stale: run `{self.command}`{then}; it is generated from {self.source} "
                  "and never edited by hand")
            return 1
        print(f"build-lesson10 --check: {path} is up to date with {self.source}")
        return 0

    def main(self, argv: list[str] | None = None) -> int:
        parser = command_parser(self.command, self.description,
                                f"compare the committed notebook's cell sources with what {self.maker} makes; "
                                "write nothing")
        parser.add_argument("--no-execute", action="store_true", help="write the notebook without running it")
        parser.add_argument(self.path_flag, dest="path", default=str(self.default_path), metavar="PATH",
                            help=f"the notebook (default: {self.default_path})")
        args = parser.parse_args(argv)
        path = Path(args.path)
        if args.check:
            return self.check(path)
        if not path.parent.is_dir():
            raise GeneratedNotebookError(f"{path.parent} is not a folder: run `{self.command}` from the repository's "
                                         f"root, or name the notebook with {self.path_flag}")
        import nbformat

        nb = self.build()
        if not args.no_execute:
            execute_on_simulator(nb, path.resolve().parent, self.fix)
            if self.finish is not None:
                self.finish(nb)
        nbformat.write(nb, path)
        ran = "written" if args.no_execute else "written and run on the simulator"
        then = f"; now run `{self.after}`" if self.after else ""
        print(f"{path}: {len(nb.cells)} cells, {ran}{then}")
        return 0
