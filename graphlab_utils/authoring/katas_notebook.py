"""``graphlab build-lesson10``: write lab 10's solution notebook from the failure katas.

``solutions/10_interview_drills.ipynb`` is generated: the symptom, snippet, task, hint, fix
and explanation of every kata come from its module in ``graphlab_utils/drills/katas/``, so
the lab and the package cannot drift apart. The command writes the notebook and runs it on
the simulator (in a kernel of this Python environment), because solutions are committed
with their outputs; ``graphlab build-labs`` then makes ``labs/10_interview_drills.ipynb``
from it. On a GPU the same outputs must come out, apart from the cells marked
``# NBVAL_IGNORE_OUTPUT``.

    graphlab build-lesson10                  # write and run the solution notebook
    graphlab build-lesson10 --no-execute     # write it without outputs
    graphlab build-lesson10 --check          # exit 1 when the committed sources differ

``--check`` compares the sources of the cells only (no kernel starts): outputs, execution
counts and metadata are what a run produced.
"""
from __future__ import annotations

import sys
from pathlib import Path

from graphlab_utils.authoring.generated import GITHUB, Generator, setup_cell

__all__ = ["COMMAND", "STEM", "GENERATOR", "build", "main"]

STEM = "10_interview_drills"
COMMAND = "graphlab build-lesson10"
DEFAULT_SOLUTION = Path("solutions") / f"{STEM}.ipynb"

def colab(path: str) -> str:
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{GITHUB}/blob/main/{path})")


GENERATED_TEXT = f"""\
*A generated notebook.* `{COMMAND}` writes `solutions/{STEM}.ipynb`
from the katas in `graphlab_utils/drills/katas/` (one file per kata: its symptom, snippet,
fix and check), and `graphlab build-labs` makes `labs/{STEM}.ipynb` from that
solution. To change a kata, edit its file and run both commands: an edit made in the
notebook is lost at the next build."""

SETUP_CODE = setup_cell("""\
import torch
import graphlab_utils as gl
""")

IMPORTS_CODE = """\
from graphlab_utils.drills import katas
from graphlab_utils.drills.katas import cfg_batch  # the batch a diffusion server feeds its denoiser
from graphlab_utils.recipes import capture  # warm up, capture, return (graph, output)

katas.catalogue()"""

# How each kata's symptom is shown: "inprocess" (katas.show with the snippet just defined),
# "isolated" (a %%run_isolated cell: the capture fails), "gpu-only" (a child process on a GPU,
# a skip line on the simulator).
DEMO_TEXT = {
    "inprocess": "Run it: the demo drives the snippet through the scenario of the report and prints what it sees.",
    "isolated": (
        "Run it. Its failure is a failed capture, which damages a GPU process, so this cell runs the "
        "snippet in a child process (`%%run_isolated`) and prints how it ended:"),
    "gpu-only": (
        "Run it. On a GPU the capture fails, in a child process so that this notebook stays usable. The "
        "simulator cannot show this failure: there the cell says so (the check below enforces the rule on "
        "both backends)."),
}


def _katas():
    from graphlab_utils.drills import katas

    return katas


def demo_kind(kata) -> str:
    if kata.demo_needs_gpu:
        return "gpu-only"
    return "isolated" if kata.isolated else "inprocess"


def _title_cell(katas):
    from nbformat.v4 import new_markdown_cell

    rows = "\n".join(f"{i + 2}. Kata {k.number}: {k.title}" for i, k in enumerate(katas.KATAS.values()))
    last = len(katas.KATAS) + 2
    return new_markdown_cell(f"""\
# Lab 10 · Interview drills: failure katas

{colab(f"labs/{STEM}.ipynb")}

Eleven broken snippets, each modelled on a public bug report about CUDA graphs (PyTorch,
SGLang, vLLM and other serving stacks). Each kata gives the **symptom** as the reporter saw
it, the **snippet** that produces it, the symptom **reproduced** here, an exercise where you
**fix** it, a **check**, and the **explanation**. The code and sentences are the course's own;
each kata links the reports it is modelled on.

**Learning objectives.** After this lab you can:

* **diagnose** a CUDA-graph failure from the symptom a user reports: stale results, a capture
  that fails, memory that runs out, a speed-up that never comes;
* **reproduce** each failure in a few lines, on a GPU or on the simulator;
* **fix** it and **prove** the fix with a check that runs;
* **explain** each fix with the course's ideas: baked addresses and scalars, what a capture
  forbids, private memory pools, shape specialisation, graph-safe random numbers.

**As an interview drill**: read the symptom and say what you would look at first, before you
read the snippet (about a minute); then find the line, fix it, and explain the fix in two
sentences. The questions with runnable proofs are in [lesson 10](../notebooks/{STEM}.ipynb);
figures measured on a real GPU are in the [GPU report](../reports/gpu/README.md).

Each exercise cell has `# YOUR CODE HERE` and a `raise NotImplementedError(...)` line:
replace both with your fix, then run the check below it. A check prints one line when your fix
is right; otherwise what it expected, what it saw, and the idea behind the difference. Checks
refuse, before it reaches PyTorch, anything that would fail a capture and damage the notebook.

**Contents**

1. Setup
{rows}
{last}. Done""")


def _kata_cells(kata, section: int) -> list:
    from nbformat.v4 import new_code_cell, new_markdown_cell

    links = "; ".join(f"[{s.label}]({s.url}): {s.what}" for s in kata.sources)
    kind = demo_kind(kata)
    cells = [
        new_markdown_cell(f"""\
---
## {section}. Kata {kata.number}: {kata.title}

**Symptom.** {kata.symptom}

*Modelled on* {links}.

The snippet, broken on purpose:"""),
        new_code_cell(kata.snippet.rstrip()),
        new_markdown_cell(DEMO_TEXT[kind]),
    ]
    if kind == "inprocess":
        cells.append(new_code_cell(f'katas.show("{kata.key}", {kata.entry})'))
    elif kind == "isolated":
        cells.append(new_code_cell("%%run_isolated\n" + kata.isolated_code().rstrip()))
    else:
        cells.append(new_code_cell(f'# NBVAL_IGNORE_OUTPUT\nkatas.show("{kata.key}")'))
    cells += [
        new_markdown_cell(f"""\
**Your fix.** {kata.task}

<details><summary>Hint</summary>

{kata.hint}
</details>"""),
        new_code_cell(kata.fix.rstrip()),
        new_code_cell(f'result_{kata.number} = katas.check("{kata.key}", {kata.fixed_name})'),
        new_markdown_cell(f"""\
<details><summary>Why it happens, and the fix</summary>

{kata.explanation}
</details>"""),
    ]
    return cells


def _done_cells(katas, section: int) -> list:
    from nbformat.v4 import new_code_cell, new_markdown_cell

    names = ", ".join(f"result_{k.number}" for k in katas.KATAS.values())
    return [
        new_markdown_cell(f"""\
---
## {section}. Done

How many katas are fixed:"""),
        new_code_cell(f"""\
results = [{names}]
print(f"{{sum(bool(r) for r in results)}} of {{len(results)}} katas fixed")"""),
        new_markdown_cell(f"""\
To grade the whole lab from a terminal (an instructor, or you before an interview):
`graphlab check labs/{STEM}.ipynb` runs it headless and prints a table of the katas that pass.

**Where next.** The questions and their runnable proofs: [lesson 10](../notebooks/{STEM}.ipynb).
Every kata points back to a lesson: [04 · Pointer baking](../notebooks/04_pointer_baking.ipynb)
(katas 1, 2, 6), [02 · Streams and capture](../notebooks/02_streams_and_capture.ipynb) (3, 4),
[03 · Static control flow](../notebooks/03_static_control_flow.ipynb) (10, 11),
[05 · Shape bucketing](../notebooks/05_shape_bucketing.ipynb) (8),
[07 · Graph memory](../notebooks/07_graph_memory.ipynb) (7) and
[09 · Diffusion warm-up](../notebooks/09_diffusion_warmup.ipynb) (5, 9).
Figures measured on a real GPU: [GPU report](../reports/gpu/README.md)."""),
    ]


def build():
    """The solution notebook, without outputs: a generated-file note, the title, setup, every kata, done."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    katas = _katas()
    cells = [_title_cell(katas), new_markdown_cell("""\
---
## 1. Setup

The usual first cell, then the kata module. `katas.catalogue()` lists the katas and the
public reports each one is modelled on. The snippets use two helpers: `capture(fn, pool=None)`
(warm `fn` up on a side stream, capture it, return the graph and its output) and `cfg_batch`
(the batch a diffusion server feeds its denoiser under classifier-free guidance)."""),
             new_code_cell(SETUP_CODE), new_code_cell(IMPORTS_CODE)]
    for i, kata in enumerate(katas.KATAS.values()):
        cells += _kata_cells(kata, i + 2)
    cells += _done_cells(katas, len(katas.KATAS) + 2)
    for i, cell in enumerate(cells):
        cell["id"] = f"lab10-{i:02d}"
    header = new_markdown_cell(GENERATED_TEXT)
    header["id"] = "lab10-generated"
    nb = new_notebook(cells=[header] + cells)
    nb.metadata = {
        "accelerator": "GPU",
        "colab": {"gpuType": "T4", "provenance": [], "toc_visible": True},
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    return nb


GENERATOR = Generator(
    command=COMMAND,
    description="Write lab 10's solution notebook from the failure katas and run it on the simulator.",
    default_path=DEFAULT_SOLUTION, path_flag="--solution", build=build, maker="the katas",
    source="graphlab_utils/drills/katas/", fix="fix the kata it belongs to and run the command again",
    after="graphlab build-labs",
)
main = GENERATOR.main


if __name__ == "__main__":
    sys.exit(main())
