"""The notebook tests' own set-up: the sanitizer file and stderr left out of the comparison.

Runs nbval, as `make test` does, on two small notebooks written under build/ (so the
repository's conftest.py applies): one whose stored figures differ from the fresh ones
only where the sanitizer replaces them, and one whose verdict differs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

REPO = Path(__file__).resolve().parents[1]
SANITIZE = REPO / "tests" / "nbval_sanitize.cfg"


def sanitize(text: str) -> str:
    pairs = re.findall(r"^regex: (.*)$\n^replace: (.*)$", SANITIZE.read_text(), flags=re.MULTILINE)
    for regex, replace in pairs:
        text = re.sub(regex, replace, text)
    return text


@pytest.mark.parametrize(
    ("fresh", "stored"),
    [
        ("graph at 0x7f3a12bc0040", "graph at 0x55d0"),
        ("ptr=140213423423488", "ptr=9"),
        ("eager 12.34 ms, graphed 950 us, node 1.2 µs, 3 ns", "eager 1.5 ms, graphed 9 us, node 8 µs, 4 ns"),
        ("capture took 1.25 s", "capture took 0.9 s"),
        ("speed-up 11.2x", "speed-up 3x"),
        ("pool 12.3 MiB, 4 MB, 512 KiB, 1024 bytes", "pool 1.0 MiB, 5 MB, 1 KiB, 8 bytes"),
        ("1.20 ms (measured on NVIDIA H100 80GB HBM3)", "0.85 ms (modelled, calibrated on NVIDIA H100 80GB HBM3)"),
        ("timings measured on NVIDIA A10G", "timings modelled (calibrated on NVIDIA H100 80GB HBM3)"),
    ],
)
def test_sanitizer_makes_varying_figures_equal(fresh, stored):
    assert sanitize(fresh) == sanitize(stored)


@pytest.mark.parametrize(
    "verdict",
    ["stale result: True", "batch sizes 1, 2, 4, 8", "shape 8x8", "check passed",
     "capture failed with cudaErrorStreamCaptureUnsupported", "<Figure size 900x360 with 2 Axes>"],
)
def test_sanitizer_keeps_verdicts(verdict):
    assert sanitize(verdict) == verdict


def notebook(stored_stdout: str) -> nbformat.NotebookNode:
    code = (
        "import sys\n"
        "print('eager 12.34 ms at 0x7f00aa, ptr=123456, 11.2x faster, pool 12.3 MiB: stale result: True')\n"
        "print('a warning that differs per backend', file=sys.stderr)"
    )
    return new_notebook(
        cells=[
            new_code_cell(code, id="figures", execution_count=1, outputs=[
                new_output("stream", name="stdout", text=stored_stdout),
                new_output("stream", name="stderr", text="another warning\n"),
            ]),
            new_code_cell("# NBVAL_IGNORE_OUTPUT\nimport random\nprint(random.random())",
                          id="ignored", execution_count=2,
                          outputs=[new_output("stream", name="stdout", text="0.5\n")]),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )


def test_nbval_with_the_course_settings():
    work = REPO / "build" / f"nbval-selftest-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        passing = work / "passing.ipynb"
        failing = work / "failing.ipynb"
        nbformat.write(notebook("eager 0.5 ms at 0x1, ptr=7, 3.0x faster, pool 1 MiB: stale result: True\n"),
                       str(passing))
        nbformat.write(notebook("eager 0.5 ms at 0x1, ptr=7, 3.0x faster, pool 1 MiB: stale result: False\n"),
                       str(failing))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
             "--nbval-sanitize-with", str(SANITIZE), "--nbval-cell-timeout=120", "-rA",
             str(passing), str(failing)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = result.stdout
    assert re.search(r"PASSED .*passing\.ipynb::Cell 0", out), out
    assert re.search(r"PASSED .*passing\.ipynb::Cell 1", out), out
    assert re.search(r"FAILED .*failing\.ipynb::Cell 0", out), out
    assert re.search(r"1 failed, 3 passed", out), out
