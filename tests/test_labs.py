"""graphlab build-labs: labs generated from solutions, and the check that they are fresh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from graphlab_utils.authoring import labs
from graphlab_utils.authoring.labs import LabBuildError, build_labs, check_labs, stub_code

REPO = Path(__file__).resolve().parents[1]

SOLUTION_CELL = '''\
import torch

def make_static(x):
    """Copy x into the static buffer."""
    ### BEGIN SOLUTION
    static = torch.empty_like(x)
    static.copy_(x)
    return static
    ### END SOLUTION
'''


def solution_notebook() -> nbformat.NotebookNode:
    nb = new_notebook(metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "accelerator": "GPU",
        "colab": {"provenance": []},
    })
    nb.cells = [
        new_markdown_cell("# 04 · Pointer baking\n\nFill the static buffer.", id="intro"),
        new_code_cell(SOLUTION_CELL, id="exercise", execution_count=3,
                      outputs=[new_output("stream", name="stdout", text="done\n")],
                      metadata={"tags": ["exercise"]}),
        new_code_cell("out = graph_output.clone()  # SOLUTION\n"
                      "    total: float = out.sum().item()  # SOLUTION\n"
                      "print(out)  # SOLUTION",
                      id="one-liners", execution_count=4),
        new_code_cell("### BEGIN HIDDEN TESTS\nassert make_static(1) == 1\n### END HIDDEN TESTS\n",
                      id="hidden-only", execution_count=5),
        new_code_cell("check_static(make_static)\n### BEGIN HIDDEN TESTS\nassert True\n"
                      "### END HIDDEN TESTS",
                      id="check", execution_count=6,
                      outputs=[new_output("stream", name="stdout", text="check passed\n")]),
    ]
    return nb


def write(nb: nbformat.NotebookNode, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def course(tmp_path, monkeypatch):
    """A course folder with one solution; the working directory is its root."""
    write(solution_notebook(), tmp_path / "solutions" / "04_pointer_baking.ipynb")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "graphlab_utils", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def read_lab(course: Path) -> nbformat.NotebookNode:
    return nbformat.read(str(course / "labs" / "04_pointer_baking.ipynb"), as_version=4)


# --- stubbing -----------------------------------------------------------------------


def test_solution_block_becomes_stub_at_the_markers_indentation():
    lab = stub_code(SOLUTION_CELL)
    assert lab == (
        "import torch\n\n"
        "def make_static(x):\n"
        '    """Copy x into the static buffer."""\n'
        "    # YOUR CODE HERE\n"
        '    raise NotImplementedError("Exercise: write the missing code (see the hint above)")\n'
    )


def test_text_after_begin_marker_names_the_exercise():
    src = "### BEGIN SOLUTION copy the new input into the \"static\" buffer\nx = 1\n### END SOLUTION"
    lab = stub_code(src)
    assert lab.splitlines() == [
        "# YOUR CODE HERE",
        'raise NotImplementedError("Exercise: copy the new input into the \\"static\\" buffer '
        '(see the hint above)")',
    ]
    compile(lab, "<lab>", "exec")  # still valid Python


def test_stubbed_cell_is_valid_python_that_raises():
    namespace: dict = {}
    exec(compile(stub_code(SOLUTION_CELL), "<lab>", "exec"), namespace)
    with pytest.raises(NotImplementedError, match="see the hint above"):
        namespace["make_static"](None)


def test_solution_lines_keep_assignment_targets():
    src = ("out = graph_output.clone()  # SOLUTION\n"
           "    total: float = out.sum().item()  # SOLUTION\n"
           "a, b = b, a # SOLUTION\n"
           "static[:] = new  #SOLUTION\n"
           "print(out)  # SOLUTION\n"
           "        g.replay()  # SOLUTION\n"
           "x == y  # SOLUTION\n"
           "kept = 1  # not a solution")
    assert stub_code(src).split("\n") == [
        "out = ...",
        "    total: float = ...",
        "a, b = ...",
        "static[:] = ...",
        "...",
        "        ...",
        "...",
        "kept = 1  # not a solution",
    ]


def test_code_without_markers_is_unchanged():
    src = "x = 1\nif x:\n    print('### not a marker')\n"
    assert stub_code(src) == src


def test_markdown_solution_block_becomes_answer_placeholder():
    src = "Why is the result stale?\n\n### BEGIN SOLUTION\nThe address was baked in.\n### END SOLUTION"
    assert stub_code(src, markdown=True) == "Why is the result stale?\n\n*Your answer here.*"


def test_hidden_tests_removed_from_a_cell():
    src = "check(x)\n### BEGIN HIDDEN TESTS\nassert x == 1\n### END HIDDEN TESTS\nprint('ok')"
    assert stub_code(src) == "check(x)\nprint('ok')"


# --- whole notebooks ----------------------------------------------------------------


def test_build_writes_lab_with_stubs_cleared_outputs_and_kept_metadata(course):
    status = build_labs()
    assert status.written == [str(Path("labs") / "04_pointer_baking.ipynb")]
    assert status.problems == []
    lab = read_lab(course)
    solution = solution_notebook()

    assert [c.get("id") for c in lab.cells] == ["intro", "exercise", "one-liners", "check"]
    assert lab.metadata["accelerator"] == "GPU"
    assert lab.metadata["colab"] == {"provenance": []}
    assert lab.metadata["kernelspec"] == solution.metadata["kernelspec"]
    assert lab.cells[0].source == solution.cells[0].source
    exercise = lab.cells[1]
    assert exercise.metadata == {"tags": ["exercise"]}
    assert "static.copy_(x)" not in exercise.source
    assert "    # YOUR CODE HERE" in exercise.source
    assert lab.cells[2].source == "out = ...\n    total: float = ...\n..."
    assert lab.cells[3].source == "check_static(make_static)"
    for cell in lab.cells:
        if cell.cell_type == "code":
            assert cell.outputs == []
            assert cell.execution_count is None


def test_cell_with_only_hidden_tests_is_dropped(course):
    build_labs()
    sources = [c.source for c in read_lab(course).cells]
    assert not any("HIDDEN" in s or "assert" in s for s in sources)
    assert len(sources) == len(solution_notebook().cells) - 1


def test_empty_cells_of_the_solution_are_kept(course):
    nb = solution_notebook()
    nb.cells.append(new_code_cell("", id="scratch"))
    write(nb, course / "solutions" / "04_pointer_baking.ipynb")
    build_labs()
    assert read_lab(course).cells[-1].get("id") == "scratch"


def test_build_is_deterministic_and_idempotent(course):
    build_labs()
    first = (course / "labs" / "04_pointer_baking.ipynb").read_bytes()
    build_labs()
    second = (course / "labs" / "04_pointer_baking.ipynb").read_bytes()
    assert first == second
    assert first.endswith(b"}\n")
    assert labs.render_lab(course / "solutions" / "04_pointer_baking.ipynb").encode() == first
    assert check_labs().problems == []


def test_missing_cell_ids_get_stable_ids(course):
    text = (course / "solutions" / "04_pointer_baking.ipynb").read_text()
    import json

    data = json.loads(text)
    for cell in data["cells"]:
        del cell["id"]
    (course / "solutions" / "04_pointer_baking.ipynb").write_text(json.dumps(data))
    build_labs()
    first = (course / "labs" / "04_pointer_baking.ipynb").read_bytes()
    build_labs()
    assert (course / "labs" / "04_pointer_baking.ipynb").read_bytes() == first
    ids = [c["id"] for c in read_lab(course).cells]
    assert len(set(ids)) == len(ids) == 4


# --- the freshness check ------------------------------------------------------------


def test_check_names_a_missing_lab(course):
    status = check_labs()
    assert status.exit_code == 1
    assert status.problems == [
        "labs/04_pointer_baking.ipynb is missing: run `graphlab build-labs`; "
        "labs are generated from solutions/ and never edited by hand"
    ]


def test_check_names_a_stale_lab_and_writes_nothing(course):
    build_labs()
    lab_path = course / "labs" / "04_pointer_baking.ipynb"
    edited = read_lab(course)
    edited.cells[1].source = "make_static = lambda x: x  # edited by hand"
    nbformat.write(edited, str(lab_path))
    before = lab_path.read_bytes()
    status = check_labs()
    assert status.problems == [
        "labs/04_pointer_baking.ipynb is stale: run `graphlab build-labs`; "
        "labs are generated from solutions/ and never edited by hand"
    ]
    assert lab_path.read_bytes() == before


def test_check_notices_a_changed_solution(course):
    build_labs()
    nb = solution_notebook()
    nb.cells[0].source += "\nNew sentence."
    write(nb, course / "solutions" / "04_pointer_baking.ipynb")
    assert "is stale" in check_labs().problems[0]


def test_check_names_a_lab_without_solution(course):
    build_labs()
    write(solution_notebook(), course / "labs" / "07_graph_memory.ipynb")
    problems = check_labs().problems
    assert problems == [
        "labs/07_graph_memory.ipynb has no solution: solutions/07_graph_memory.ipynb is its "
        "source; add that solution or delete the lab"
    ]


def test_check_without_solutions_or_labs_passes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_labs().exit_code == 0


# --- malformed markers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x = 1\n### BEGIN SOLUTION\ny = 2\n", "`### BEGIN SOLUTION` on line 2 has no matching `### END SOLUTION`"),
        ("y = 2\n### END SOLUTION\n", "`### END SOLUTION` on line 2 has no matching `### BEGIN SOLUTION` before it"),
        ("### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n### END SOLUTION\n",
         "`### BEGIN SOLUTION` on line 2 is nested inside the `### BEGIN SOLUTION` of line 1; "
         "close that block with its END marker first"),
        ("### BEGIN HIDDEN TESTS\nassert x\n", "`### BEGIN HIDDEN TESTS` on line 1 has no matching `### END HIDDEN TESTS`"),
        ("### BEGIN SOLUTION\nx = 1\n### END HIDDEN TESTS\n", "`### END HIDDEN TESTS` on line 3 has no matching `### BEGIN HIDDEN TESTS` before it"),
    ],
)
def test_malformed_markers_raise(source, expected):
    with pytest.raises(LabBuildError) as err:
        stub_code(source, where="solutions/04_x.ipynb cell 2 (counting from 0)")
    assert str(err.value) == f"solutions/04_x.ipynb cell 2 (counting from 0): {expected}"


def test_malformed_marker_error_names_notebook_and_cell_and_writes_nothing(course):
    nb = solution_notebook()
    nb.cells[2].source = "### BEGIN SOLUTION\nx = 1"
    write(nb, course / "solutions" / "04_pointer_baking.ipynb")
    with pytest.raises(LabBuildError, match=r"solutions/04_pointer_baking\.ipynb cell 2 \(counting from 0\)"):
        build_labs()
    assert not (course / "labs").exists()


# --- the command --------------------------------------------------------------------


def test_cli_build_then_check(course):
    built = run_cli("build-labs", cwd=course)
    assert built.returncode == 0, built.stderr
    assert "wrote 1 lab(s)" in built.stdout
    checked = run_cli("build-labs", "--check", cwd=course)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 lab(s) up to date" in checked.stdout


def test_cli_check_reports_stale_lab_with_exit_1(course):
    run_cli("build-labs", cwd=course)
    lab_path = course / "labs" / "04_pointer_baking.ipynb"
    lab_path.write_text(lab_path.read_text().replace("YOUR CODE HERE", "my answer"))
    result = run_cli("build-labs", "--check", cwd=course)
    assert result.returncode == 1
    assert ("labs/04_pointer_baking.ipynb is stale: run `graphlab build-labs`; labs are "
            "generated from solutions/ and never edited by hand") in result.stdout


def test_cli_custom_folders(tmp_path):
    write(solution_notebook(), tmp_path / "src" / "01_capture.ipynb")
    result = run_cli("build-labs", "--solutions", "src", "--labs", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "01_capture.ipynb").is_file()
    assert run_cli("build-labs", "--check", "--solutions", "src", "--labs", "out",
                   cwd=tmp_path).returncode == 0


def test_cli_malformed_marker_is_one_sentence_with_exit_2(course):
    nb = solution_notebook()
    nb.cells[1].source = "### END SOLUTION"
    write(nb, course / "solutions" / "04_pointer_baking.ipynb")
    result = run_cli("build-labs", cwd=course)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "graphlab build-labs: solutions/04_pointer_baking.ipynb cell 1 (counting from 0): "
        "`### END SOLUTION` on line 1 has no matching `### BEGIN SOLUTION` before it."
    ]


def test_repository_labs_are_fresh():
    """The same check `make test` runs, on this repository's own solutions/ and labs/."""
    status = check_labs(REPO / "solutions", REPO / "labs")
    assert status.problems == []
