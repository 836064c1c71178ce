"""`graphlab check`: reads the checks' records from a notebook's outputs, runs labs headless, and exits
0 (all pass), 1 (some do not) or 2 (bad input, one sentence)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from graphlab_utils.authoring import grading
from graphlab_utils.checks.core import RECORD_MIME, CheckResult

REPO = Path(__file__).resolve().parents[1]
# Lab 06 is one of the quickest labs to run (three checked exercises).
STEM = "06_exec_update"


def graphlab(*args, cwd=REPO):
    env = dict(os.environ, GRAPHLAB_BACKEND="sim")
    return subprocess.run([sys.executable, "-m", "graphlab_utils", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=900)


def cell(source, *results, error=None, text=""):
    """A code cell as a check leaves it: the printed line(s) and, beside each, its record."""
    c = new_code_cell(source)
    printed = text + "".join(r.text() + "\n" for r in results)
    if printed:
        c.outputs.append(new_output("stream", name="stdout", text=printed))
    for r in results:
        c.outputs.append(new_output("display_data", data={"text/plain": "", RECORD_MIME: r.record()}))
    if error:
        c.outputs.append(new_output("error", ename=error[0], evalue=error[1], traceback=[]))
    return c


PASS = CheckResult("device-side selection", True)
HINT = CheckResult("fresh noise per replay", False, "new noise on every replay",
                   "the same noise on all 4 replays", "draw it on the device")
STUB = CheckResult("one graph per branch", False, "your implementation",
                   "the exercise stub still raises NotImplementedError",
                   "replace the `raise NotImplementedError(...)` line with your code")


# ---------------------------------------------------------------------------------------
# Reading outputs (no kernel)
# ---------------------------------------------------------------------------------------
def test_parse_pass_hint_stub_and_backend(sim):
    nb = new_notebook(cells=[
        new_markdown_cell("# Lab"),
        cell("S = gl.setup()", text="graphlab: simulator backend (no NVIDIA GPU): torch.cuda graph API simulated; x\n"),
        cell("r1 = check_device_select(f)", PASS),
        cell("r2 = check_branch_graphs(g)", STUB),
        cell("r3 = check_fresh_noise(h)", HINT),
    ])
    rows, backend = grading.parse_outputs(nb)
    assert backend == "simulator backend"
    assert [(r.name, r.status) for r in rows] == [
        ("device-side selection", "pass"), ("one graph per branch", "not done"), ("fresh noise per replay", "hint")]
    assert rows[2].seen == "the same noise on all 4 replays" and rows[2].idea == "draw it on the device"


def test_grading_reads_records_not_the_printed_text(sim):
    """Whatever the printed lines say (here: nothing a regex could read), the records decide."""
    nb = new_notebook(cells=[
        cell("r1 = check_device_select(f)", PASS, HINT),
    ])
    nb.cells[0].outputs[0].text = "*** a reworded pass line ***\n~~~ and a reworded hint ~~~\n"
    rows, _ = grading.parse_outputs(nb)
    assert [(r.name, r.status) for r in rows] == [("device-side selection", "pass"), ("fresh noise per replay", "hint")]
    assert rows[1].expected == "new noise on every replay"
    text_only = new_notebook(cells=[new_code_cell("check()")])
    text_only.cells[0].outputs.append(new_output("stream", name="stdout", text=PASS.text() + "\n"))
    rows, backend = grading.parse_outputs(text_only)  # printed text alone is never read
    assert [(r.status, r.seen) for r in rows] == [("error", "the cell ran, but its check left no result")]
    assert backend is None


def test_parse_cells_that_raised_and_repeated_checks():
    decoder = CheckResult("decoder", True)
    nb = new_notebook(cells=[
        cell("def f():\n    raise NotImplementedError", error=None),
        cell("GAINS = make()\n", error=("NotImplementedError", "Exercise: write the missing code")),
        cell("result = katas.check(\"kv-cache-reset\", KVCacheFixed)",
             error=("NameError", "name 'KVCacheFixed' is not defined")),
        cell("check_decoder(A)", decoder),
        cell("check_decoder(B)", decoder),
    ])
    rows, _ = grading.parse_outputs(nb)
    # one row per check call: the stub that raised in cell 1 is what the check in cell 2 reports
    assert [(r.name, r.status) for r in rows] == [
        ('cell 2: katas.check("kv-cache-reset")', "not done"),
        ("decoder", "pass"),
        ("decoder (cell 4)", "pass"),
    ]
    assert rows[0].seen == "NotImplementedError: Exercise: write the missing code (in cell 1: GAINS = make())"


def test_a_demo_cell_is_listed_but_not_graded():
    nb = new_notebook(cells=[
        cell("r = check_decoder(Fixed)", CheckResult("decoder", True)),
        cell("# graphlab-check: demo\nr0 = check_decoder(Buggy)  # shows the hint",
             CheckResult("decoder", False, "x", "y", "z")),
    ])
    rows, _ = grading.parse_outputs(nb)
    report = grading.Report("x.ipynb", rows)
    assert [r.status for r in rows] == ["pass", "demo"]
    assert report.exit_code == 0 and report.passed == 1
    text = grading.format_report(report)
    assert "demo (not graded)" in text and "1 of 1 exercise pass. All done." in text


def test_report_exit_codes_and_text():
    rows = [grading.Exercise("a", "pass"), grading.Exercise("b", "hint", "x", "y", "z")]
    report = grading.Report("lab.ipynb", rows, backend="simulator backend")
    assert report.exit_code == 1
    text = grading.format_report(report)
    assert text.splitlines()[0] == "graphlab check: lab.ipynb [simulator backend]"
    assert "    expected: x" in text and "1 of 2 exercises pass." in text
    assert grading.Report("lab.ipynb", [rows[0]]).exit_code == 0
    assert grading.Report("lab.ipynb", []).exit_code == 1
    assert grading.Report("lab.ipynb", [rows[0]], stopped="DeadKernelError").exit_code == 1


def test_nbval_leaves_check_records_out_of_the_comparison():
    import importlib.util

    spec = importlib.util.spec_from_file_location("root_conftest", REPO / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    assert conftest.RECORD_MIME == RECORD_MIME
    record = new_output("display_data", data={"text/plain": "", RECORD_MIME: PASS.record()})
    shown = new_output("display_data", data={"text/plain": "a picture"})
    assert conftest._is_check_record(record) and not conftest._is_check_record(shown)


# ---------------------------------------------------------------------------------------
# Bad input: exit 2 and one sentence
# ---------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    r = graphlab("check", str(tmp_path / "nope.ipynb"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_not_a_notebook(tmp_path):
    bad = tmp_path / "notes.ipynb"
    bad.write_text("this is not JSON")
    r = graphlab("check", str(bad))
    assert r.returncode == 2 and "is not a Jupyter notebook" in r.stderr and "Traceback" not in r.stderr
    r = graphlab("check", str(tmp_path))
    assert r.returncode == 2 and "is not a file" in r.stderr


def test_a_backend_that_cannot_run_is_one_sentence_before_the_run():
    """A bad backend stops ``check`` with doctor's sentence, once, instead of a row per cell."""
    from graphlab_utils.backend import REAL_WITHOUT_GPU, gpu_available

    env = dict(os.environ, GRAPHLAB_BACKEND="bogus")
    r = subprocess.run([sys.executable, "-m", "graphlab_utils", "check", f"labs/{STEM}.ipynb"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == "" and r.stderr.count("\n") == 1
    assert "GRAPHLAB_BACKEND='bogus' is not a backend: use one of real, sim, auto" in r.stderr
    if gpu_available():
        return
    r = graphlab("check", f"labs/{STEM}.ipynb", "--backend", "real")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == "" and r.stderr == f"graphlab check: {REAL_WITHOUT_GPU}.\n"


def test_no_arguments_is_a_usage_error():
    r = graphlab("check")
    assert r.returncode == 2 and "notebook" in r.stderr


# ---------------------------------------------------------------------------------------
# Running labs headless (the simulator backend)
# ---------------------------------------------------------------------------------------
def test_a_solved_lab_passes(tmp_path):
    solved = tmp_path / f"{STEM}.ipynb"
    shutil.copy(REPO / "solutions" / f"{STEM}.ipynb", solved)
    saved = tmp_path / "graded.ipynb"
    r = graphlab("check", str(solved), "--backend", "sim", "--save", str(saved))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[simulator backend" in r.stdout.splitlines()[0]
    assert r.stdout.rstrip().endswith("All done.")
    assert " hint" not in r.stdout and "not done" not in r.stdout
    assert "[PASS]" in saved.read_text() and RECORD_MIME in saved.read_text()


def test_an_unsolved_lab_fails_and_keeps_going():
    r = graphlab("check", f"labs/{STEM}.ipynb", "--backend", "sim")
    assert r.returncode == 1, r.stdout + r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("  ") and line.rstrip().endswith("not done")]
    assert len(rows) >= 3  # every exercise's stub, although the first one raised
    assert "the exercise stub still raises NotImplementedError" in r.stdout
    assert "0 of" in r.stdout.splitlines()[-1]


# ---------------------------------------------------------------------------------------
# Exercises come from the lab's structure, not from what its cells printed
# ---------------------------------------------------------------------------------------
def _graded(nb):
    rows, _ = grading.parse_outputs(nb)
    return [r for r in rows if r.status != "demo"], [r for r in rows if r.status == "demo"]


def test_every_lab_and_its_solution_have_the_same_exercises_before_any_run():
    import nbformat

    for lab_path in sorted((REPO / "labs").glob("[0-9][0-9]_*.ipynb")):
        lab = nbformat.read(str(lab_path), as_version=4)
        solution = nbformat.read(str(REPO / "solutions" / lab_path.name), as_version=4)
        for nb in (lab, solution):
            for c in nb.cells:
                if c.cell_type == "code":
                    c.outputs, c.execution_count = [], None
        lab_rows, lab_demos = _graded(lab)
        solution_rows, solution_demos = _graded(solution)
        assert lab_rows, lab_path.name
        assert [r.cell for r in lab_rows] == [r.cell for r in solution_rows], lab_path.name
        assert {r.status for r in lab_rows} == {"not run"}, lab_path.name
        assert len(lab_demos) == len(solution_demos), lab_path.name
    lab04 = nbformat.read(str(REPO / "labs" / "04_pointer_baking.ipynb"), as_version=4)
    rows, demos = _graded(lab04)
    assert len(rows) == 4 and [d.name for d in demos] == ["cell 27: check_decoder(...)"]


def test_lab_04_solved_passes_and_unsolved_passes_none_with_the_same_rows():
    solved = graphlab("check", "solutions/04_pointer_baking.ipynb", "--backend", "sim")
    assert solved.returncode == 0, solved.stdout + solved.stderr
    assert solved.stdout.rstrip().endswith("4 of 4 exercises pass. All done."), solved.stdout
    assert "demo (not graded)" in solved.stdout
    unsolved = graphlab("check", "labs/04_pointer_baking.ipynb", "--backend", "sim")
    assert unsolved.returncode == 1, unsolved.stdout + unsolved.stderr
    assert unsolved.stdout.rstrip().endswith("0 of 4 exercises pass."), unsolved.stdout

    def table(text):
        return [line for line in text.split("\n\n")[1].splitlines()[1:]]

    assert len(table(solved.stdout)) == len(table(unsolved.stdout)) == 5  # 4 exercises and the demo
    assert sum(line.rstrip().endswith("not done") for line in table(unsolved.stdout)) == 4
