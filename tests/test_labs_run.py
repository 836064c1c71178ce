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


def _lab04_as_a_learner_runs_it(demo: str) -> list:
    """Lab 04's set-up, a step that syncs (int(pos)), the buggy decoder, ``demo`` (a cell that
    captures), then the step fixed and its check: the check's records, after a run with nbclient."""
    path = REPO / "solutions" / "04_pointer_baking.ipynb"
    code = [c for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code"]
    setup, imports, requests, right_step = code[0], code[1], code[2], code[3]
    buggy_decoder = next(c for c in code if c.source.startswith("def write_rows"))
    syncing_step = right_step.source.replace("k_cache.index_copy_(0, pos, k)", "k_cache[int(pos)] = k[0]")
    assert syncing_step != right_step.source
    cells = [setup.source, imports.source, requests.source, syncing_step, buggy_decoder.source, demo,
             right_step.source, "result_1 = check_decode_step(decode_step)"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    NotebookClient(nb, km=kernel_manager(), timeout=300, allow_errors=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def test_a_step_that_syncs_is_refused_by_the_labs_capture_and_the_kernel_stays_usable(monkeypatch):
    """Run All with a syncing step: the lab's guarded capture refuses it before PyTorch sees it, and
    once the step is fixed its check passes in the same kernel."""
    monkeypatch.setenv("GRAPHLAB_BACKEND", "sim")
    nb = _lab04_as_a_learner_runs_it(
        "try:\n    BuggyDecoder(W)\nexcept Exception as exc:\n    print('the capture failed:', type(exc).__name__)")
    assert "the capture failed: Refused" in nb.cells[5].outputs[0]["text"]
    (row,) = grading.parse_outputs(nb)[0]
    assert row.status == "pass", (row.seen, row.idea)


def test_a_capture_that_failed_in_the_kernel_is_named_by_the_next_check(monkeypatch):
    """A capture that fails outside the guard breaks the kernel's random generator; the check of the
    fixed step then says to restart the kernel, not 'not yet'."""
    monkeypatch.setenv("GRAPHLAB_BACKEND", "sim")
    nb = _lab04_as_a_learner_runs_it(
        "g = torch.cuda.CUDAGraph()\ntry:\n    with torch.cuda.graph(g):\n"
        "        decode_step(torch.zeros(1, D, device=DEVICE), torch.zeros(1, dtype=torch.long, device=DEVICE),\n"
        "                    torch.zeros(MAX_LEN, D, device=DEVICE), torch.zeros(MAX_LEN, D, device=DEVICE), W)\n"
        "except Exception as exc:\n    print('the capture failed:', type(exc).__name__)")
    assert "the capture failed: AcceleratorError" in nb.cells[5].outputs[0]["text"]
    (row,) = grading.parse_outputs(nb)[0]
    assert "Offset increment outside graph capture" in row.seen
    assert "an earlier capture failed in this kernel" in row.idea and "restart the kernel" in row.idea
