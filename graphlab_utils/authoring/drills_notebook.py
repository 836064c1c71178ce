"""``graphlab build-lesson10``: write lesson 10, the interview drills, from the question bank.

``notebooks/10_interview_drills.ipynb`` is generated: every question of
``graphlab_utils/drills/questions.json`` gets a section, its quiz widget and a "prove it"
cell (claims that start a child process run in the notebook for the questions of
``RUN_SLOW`` only; the others are one click away, on the widget's Prove it button). The
command writes the notebook and runs it on the simulator, in a kernel of this Python
environment, because lessons are committed with their outputs. After the run the widget
cells keep only their text form (the question card) and the notebook's widget state is
dropped: the widget views' model ids change at every run, and a fresh run in Jupyter draws
the widgets again; consecutive prints of a cell are stored as one output.

    graphlab build-lesson10                  # write and run the lesson
    graphlab build-lesson10 --no-execute     # write it without outputs
    graphlab build-lesson10 --check          # exit 1 when the committed sources differ

(``python -m graphlab_utils.authoring.drills_notebook`` takes the same options.) ``--check``
compares the cells' sources only, so it starts no kernel: outputs, execution counts and
metadata are what a run produced.
"""
from __future__ import annotations

import sys
from pathlib import Path

from graphlab_utils.authoring.generated import GITHUB, GeneratedNotebookError, Generator, setup_cell

__all__ = ["COMMAND", "DEFAULT_NOTEBOOK", "GENERATOR", "build", "main", "coalesce_streams", "strip_widget_state"]

STEM = "10_interview_drills"
COMMAND = "graphlab build-lesson10"
DEFAULT_NOTEBOOK = Path("notebooks") / f"{STEM}.ipynb"
COLAB = f"https://colab.research.google.com/github/{GITHUB}/blob/main/notebooks/{STEM}.ipynb"
RUN_SLOW = ("q02_item_in_capture",)  # questions whose slow claim (a child process each) runs in the notebook

NO_PROOF = {
    "q02_capture_modes": "it is about other threads, which the simulator does not model; lesson 02 "
                         "quotes what an H100 did (section 6).",
    "q05_above_max": "it is a design rule of a runner; lesson 05 builds one with an eager fallback "
                     "(section 4).",
    "q06_sglang_instances": "it is a fact about SGLang's code; lesson 06 walks through it (section 8).",
}

GENERATED_TEXT = f"""\
*A generated notebook.* `{COMMAND}` writes `notebooks/{STEM}.ipynb` from the question bank,
`graphlab_utils/drills/questions.json`, whose questions name the claims of `graphlab_utils/claims/`
that prove them, and runs it on the simulator. To change a question, edit the bank and run the
command: an edit made in this notebook is lost at the next build."""

TITLE = f"""\
# 10 · Interview drills

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB})

The questions interviewers ask about CUDA graphs, and a way to practise them. Answer each one
in a quiz widget and get feedback at once; reveal the model answer and the reason behind it;
then **prove it**: every answer that can be shown is shown by a few lines of PyTorch that run
here, on a GPU or on the simulator, and print the same verdicts on both.

The questions cover modules 01 to 09 and 13. Many come from the study guide the course grew from,
and its Chinese originals are quoted (原文). They are kept as data in the course package
(`graphlab_utils/drills/questions.json`): the same bank drives this notebook, the
`graphlab drill` command in a terminal, and the [workshop guide](../docs/workshop/README.md).

**Learning objectives.** After this notebook you can:

* **answer** the classic CUDA-graph interview questions in about a minute each: the claim, the
  mechanism, the fix;
* **prove** each answer with a runnable snippet, and **read** its verdicts;
* **drill** yourself in a terminal with `graphlab drill`, by module or at random, and **time**
  yourself for a mock interview;
* **find** the lesson that explains each answer in depth.

**Contents**

1. Setup
2. How the drills work
{{contents}}
{{n_mock}}. A mock interview
{{n_ex}}. Exercises

The proofs print verdicts, not figures; the [figures measured on a real GPU](../reports/gpu/README.md)
are in the GPU report.
"""

SETUP_MD = """\
---
## 1. Setup

The same first cell as every notebook: it picks the backend (a real GPU, or the CPU
simulator) and prints one line saying which. `quiz` is the course's `graphlab_utils.drills`:
the question bank, the grading, the widgets and the proofs; `terminal` is `graphlab drill`,
the same questions in a terminal.
"""

SETUP = setup_cell("""\
import io

import torch
import graphlab_utils as gl
from graphlab_utils import drills as quiz
from graphlab_utils.drills import terminal
""")

HOW_MD = """\
---
## 2. How the drills work

Each question below is a widget. Choose an option or write your answer (as you would say it,
in English or Chinese), then:

* **Check** grades it at once;
* **Reveal** shows the model answer, the study guide's answer where there is one, and **why**;
* **Prove it** runs the question's proof on this backend.

Under each widget a *prove it* cell runs the same proof, so that the notebook shows every
verdict even before you click. (In a static view of the notebook, GitHub's for instance, a
widget shows as the question's text.)

The bank at a glance:
"""

GRADE_MD = """\
**How answers are graded.** A choice question takes a letter (or the option's text). A free
question is graded by its **key points**: each has a few phrases, in English and Chinese, that
show the answer makes it. That is a quick signal of what your answer covers, not a judgement
of its prose: read the model answer for the rest. The widget calls the same function as these
lines:
"""

GRADE = """\
print(quiz.grade("q03_random_branch", "A"))
print(quiz.grade("q03_random_branch", "b"))
print(quiz.grade("q04_defrag", "The defragmentation moved the KV cache to new addresses, but the "
                 "graph still holds the old pointers: re-capture it, or cudaGraphExecUpdate."))
print(quiz.grade("q04_defrag", "碎片整理移动了物理内存地址，但 Graph 内部还持有旧的指针地址。必须 Re-capture 或 Update Graph。"))
print(quiz.grade("q04_defrag", "The memory pool moved the tensors."))"""

REVEAL_MD = """\
**Reveal** prints the model answer and why, with the proof to run and the lesson to read:
"""

PROOF_MD = """\
**How a proof works.** Each proof is a *claim* of `graphlab_utils.claims` (one file per lesson):
a short function that runs genuine PyTorch CUDA-graph code and returns what it saw as verdicts:
booleans, counts, error names, never tensors, addresses or timings (speed claims are ratios of two
timings taken side by side). So it prints the same lines on a GPU and on the simulator, and
`@claim` records what a real GPU gives; the course's conformance suite runs every claim on both. Proofs that end in a failed capture run in a child process, because a failed capture
damages a real CUDA process (lesson 02). Here is the proof of the question on data-dependent
choices (lesson 03):
"""

TERMINAL_MD = """\
**In a terminal**, `graphlab drill` asks the same questions at random (`--seed` repeats an
order), by module (`--module 04`), as many as you like (`--count 10`), and keeps a score. Here it
runs with scripted answers; in a terminal it reads your keyboard:
"""

TERMINAL = """\
answers = io.StringIO("A\\nB\\nSelect on the device with torch.where, so both paths are computed.\\n\\n")
exit_code = terminal.main(["--id", "q03_random_branch", "--id", "q03_device_branch"], stdin=answers)"""

MOCK_MD = """\
---
## {n}. A mock interview

An interviewer gives you about a minute per question. Practise at that pace:

```bash
graphlab drill --timed 90 --count 8            # 8 questions from every module, 90 s each
graphlab drill --timed 60 --module 04 --module 06 --count 5
graphlab drill --id q04_defrag --prove         # one question, then its proof on this machine
graphlab drill --list                          # every question's id
```

An answer that comes after the limit is accepted but counts as **late**, for no points, and
the drill says so; in a terminal it also tells you when the time is up while you are still
typing. At the end it prints the score and the questions to review.

A good one-minute answer has four parts: **the claim** (what happens), **the mechanism** (why:
addresses, kernels or streams), **the fix** (what production code does), and **the proof** (what
you would run to show it). The model answers follow that order.

The clock below is scripted (the first answer comes after 30 seconds, the second after 150),
so that the cell shows what a late answer looks like:
"""

MOCK = """\
ticks = iter([0.0, 30.0, 100.0, 250.0])  # when each question is asked and answered, in seconds
exit_code = terminal.main(["--id", "q06_content_changed", "--id", "q04_rebind", "--timed", "90"],
                          stdin=io.StringIO("B\\nB\\n"), clock=lambda: next(ticks))"""

EXERCISES_MD = """\
---
## {n}. Exercises

1. **The katas.** Open the lab, [`labs/10_interview_drills.ipynb`](../labs/10_interview_drills.ipynb):
   broken snippets modelled on real bug reports (stale results, capture errors, out of memory
   from too many graphs, frozen scalars, overwritten outputs). Find the bug, fix it, and run the
   check that follows each one.
2. **A timed drill.** In a terminal, `graphlab drill --all --timed 90`. Then drill the questions it
   lists under *to review* with `graphlab drill --id ...`, and read their lessons.
3. **Prove a neighbour.** Pick a question whose proof you have read (`quiz.proof_source(...)`) and
   change one line so that the answer flips: rebind a name instead of `copy_`, keep a reference
   instead of a clone, read a Python float instead of a device tensor. Predict the verdicts, then
   run it. (A change that makes a capture fail belongs in a `%%run_isolated` cell: lesson 02.)

<details><summary>Hint for 3</summary>

Copy the proof's body into a cell, with `device = DEVICE`, and print the dictionary it returns.
In `dummy_then_real`, for instance, replacing `static_x.copy_(request)` by `static_x = request`
turns the last two verdicts to `False`: the name now points to a new tensor at a new address,
while the graph keeps reading the dummy zeros.
</details>

---
That is the course. Figures measured on a real GPU are in the [GPU report](../reports/gpu/README.md);
to teach the course as a workshop, see the [workshop guide](../docs/workshop/README.md).

**Back to the start:** [00 · Welcome](00_welcome.ipynb).
"""


def _slug(qid: str) -> str:
    return qid.replace("_", "-")


def build():
    """The lesson, without outputs: a generated-file note, then every section and question."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    from graphlab_utils import claims
    from graphlab_utils.drills import bank

    cells = []
    md = lambda text, cid: cells.append(new_markdown_cell(text.strip("\n"), id=cid))  # noqa: E731
    code = lambda text, cid: cells.append(new_code_cell(text.strip("\n"), id=cid))  # noqa: E731

    first_section = 3
    contents = "\n".join(f"{first_section + i}. {title} (module {m})"
                         for i, (m, (title, _)) in enumerate(bank.MODULES.items()))
    n_mock = first_section + len(bank.MODULES)
    md(GENERATED_TEXT, "drills-generated")
    md(TITLE.replace("{contents}", contents).replace("{n_mock}", str(n_mock)).replace("{n_ex}", str(n_mock + 1)),
       "drills-title")
    md(SETUP_MD, "drills-setup-md")
    code(SETUP, "drills-setup")
    md(HOW_MD, "drills-how")
    code("print(quiz.summary())", "drills-summary")
    md(GRADE_MD, "drills-grade-md")
    code(GRADE, "drills-grade")
    md(REVEAL_MD, "drills-reveal-md")
    code('print(quiz.reveal("q03_random_branch"))', "drills-reveal")
    md(PROOF_MD, "drills-proof-md")
    code('print(quiz.proof_source("q03_device_branch"))', "drills-proof-source")
    md(TERMINAL_MD, "drills-terminal-md")
    code(TERMINAL, "drills-terminal")

    for i, (m, (title, stem)) in enumerate(bank.MODULES.items()):
        n = first_section + i
        questions = bank.select(module=m)
        md(f"---\n## {n}. {title} (module {m})\n\nThe lesson: [{m} · {title}]({stem}.ipynb). "
           f"{len(questions)} questions.", f"drills-module-{m}")
        for j, q in enumerate(questions, 1):
            src = " (from the study guide)" if q.source == "study guide" else ""
            md(f"### {n}.{j} · {q.title}{src}", f"{_slug(q.id)}-title")
            code(f'# NBVAL_IGNORE_OUTPUT\nquiz.widget("{q.id}")', f"{_slug(q.id)}-widget")
            if q.claim is None:
                if q.id not in NO_PROOF:
                    raise GeneratedNotebookError(f"{q.id} names no claim: give it one in the bank, or say in "
                                              "NO_PROOF of graphlab_utils/authoring/drills_notebook.py why it has none")
                md(f"No runnable proof: {NO_PROOF[q.id]}", f"{_slug(q.id)}-no-proof")
            elif claims.get(q.claim).slow and q.id not in RUN_SLOW:
                md(f"*Prove it:* this proof runs in a child process (a few seconds): press **Prove it** "
                   f'above, or run `quiz.prove("{q.id}")` in a cell.', f"{_slug(q.id)}-slow-proof")
            else:
                code(f'quiz.prove("{q.id}")', f"{_slug(q.id)}-prove")

    md(MOCK_MD.format(n=n_mock), "drills-mock-md")
    code(MOCK, "drills-mock")
    md(EXERCISES_MD.format(n=n_mock + 1), "drills-exercises")

    nb = new_notebook(cells=cells)
    nb.metadata = {  # the course's notebook metadata (a run fills language_info in)
        "accelerator": "GPU",
        "colab": {"gpuType": "T4", "provenance": [], "toc_visible": True},
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    return nb


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def strip_widget_state(nb):
    """Keep only the text form of widget outputs, and drop the saved widget state."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data and WIDGET_MIME in data:
                data.pop(WIDGET_MIME)
    return nb


def coalesce_streams(nb):
    """Join consecutive stream outputs of a cell (a flush in the middle of a print splits them)."""
    for cell in nb.cells:
        merged = []
        for out in cell.get("outputs", []):
            last = merged[-1] if merged else None
            if last is not None and out.output_type == last.output_type == "stream" and out.name == last.name:
                last.text += out.text
            else:
                merged.append(out)
        if "outputs" in cell:
            cell.outputs = merged
    return nb


def _finish(nb) -> None:
    coalesce_streams(strip_widget_state(nb))


GENERATOR = Generator(
    command=COMMAND,
    description="Write lesson 10 from the interview question bank and run it on the simulator.",
    default_path=DEFAULT_NOTEBOOK, path_flag="--notebook", build=build, maker="the bank",
    source="graphlab_utils/drills/questions.json",
    fix="fix the question or the claim it names and run the command again", finish=_finish,
)
main = GENERATOR.main


if __name__ == "__main__":
    sys.exit(main())
