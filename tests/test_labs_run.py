"""Run All in an unsolved lab runs to the end: a cell that uses a learner's stub says so in one
sentence instead of stopping the run, so every exercise's check still prints its hint."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from graphlab_utils.authoring.generated import kernel_manager
from graphlab_utils.authoring import grading

REPO = Path(__file__).resolve().parents[1]
# The labs whose cells outside the checks run or read an exercise's code (a few seconds each on the
# simulator); the other labs call a learner's code only through their checks.
LABS = ["01_capture_instantiate_launch", "04_pointer_baking", "06_exec_update", "07_graph_memory", "09_diffusion_warmup",
        "11_decode_engine"]


@pytest.mark.parametrize("stem", LABS)
def test_an_unsolved_lab_runs_to_the_end_with_one_hint_per_exercise(stem, monkeypatch):
    monkeypatch.setenv("GRAPHLAB_BACKEND", "sim")
    path = REPO / "labs" / f"{stem}.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    exercises = [r for r in grading.parse_outputs(nb)[0] if r.status != "demo"]  # before the run
    NotebookClient(nb, km=kernel_manager(), timeout=300, allow_errors=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()  # raises at a failing cell
    rows = [r for r in grading.parse_outputs(nb)[0] if r.status != "demo"]
    assert len(rows) == len(exercises) > 0
    assert [r.status for r in rows] == ["not done"] * len(rows), [(r.name, r.status, r.seen) for r in rows]
    assert all("stub still raises NotImplementedError" in r.seen for r in rows)  # each check's own hint
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []))
    assert "which is not written yet: Exercise:" in text
