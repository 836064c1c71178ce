"""Write notebooks/00_welcome.ipynb (and, with --execute, run it on the simulator).

    python tools/build_welcome.py --execute

The notebook is committed with its outputs, produced on the simulator backend so that
`make test` (nbval) passes in CI; on a GPU the same outputs must come out, apart from the
cells marked `# NBVAL_IGNORE_OUTPUT`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "notebooks" / "00_welcome.ipynb"
GITHUB = "cuda-graph-lab/cuda-graph-lab"
COLAB = f"https://colab.research.google.com/github/{GITHUB}/blob/main/notebooks/00_welcome.ipynb"

MODULES = [
    ("01", "01_capture_instantiate_launch", "Capture, instantiate, launch",
     "the three phases and their costs; warm-up; where graphs win and where they do not"),
    ("02", "02_streams_and_capture", "Streams and capture",
     "capture on one stream, fork/join side streams, capture modes, what capture forbids"),
    ("03", "03_static_control_flow", "Static control flow",
     "Python `if`/`for` are frozen at capture; device-side selection; device vs CPU RNG"),
    ("04", "04_pointer_baking", "Pointer baking",
     "addresses are baked in: `copy_` vs rebinding, overwritten outputs, the moved KV cache"),
    ("05", "05_shape_bucketing", "Shape bucketing",
     "one graph per batch bucket, pad and slice, one shared pool, an SGLang-style runner"),
    ("06", "06_exec_update", "Exec update",
     "`cudaGraphExecUpdate` vs re-capture, and when the update fails"),
    ("07", "07_graph_memory", "Graph memory",
     "capture-time allocations, private pools, what a graph costs in memory"),
    ("08", "08_debugging_and_profiling", "Debugging and profiling",
     "profiler traces, Nsight Systems, drawing the DAG, a diagnosis checklist"),
    ("09", "09_diffusion_warmup", "Diffusion warm-up (capstone)",
     "warm up and graph a small UNet sampler; the timestep trap; a graph runner"),
    ("10", "10_interview_drills", "Interview drills",
     "the classic questions with a runnable proof each, and bug-fix katas"),
]

TITLE = f"""\
# 00 · Welcome to CUDA Graph Lab

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB})

A hands-on course on **CUDA Graphs through PyTorch**, for engineers who build inference and
training systems. Every claim is shown by a cell that runs, every trap is reproduced and
then fixed, and every exercise is checked by code.

**Learning objectives.** After this notebook you can:

* **run** the setup cell and **read** which backend runs your code (a real GPU or the simulator);
* **explain** in one sentence what a CUDA graph saves, using a launch timeline;
* **tell** a measured timing from a modelled one;
* **find** your way through lessons, labs, checks and solutions.

**Contents**

1. Setup
2. What CUDA graphs solve
3. How the course runs
4. The module map
"""

SETUP_MD = """\
---
## 1. Setup

The first cell of every notebook is the same: it picks the backend, fixes the random
seeds and print options, and prints **one line** saying what runs. `DEVICE` is where the
lesson puts its tensors: use it, never a literal `"cuda"`. (On Colab the cell first
installs the course package; choose a GPU runtime under *Runtime > Change runtime type*.)
"""

SETUP_CODE = f"""\
# NBVAL_IGNORE_OUTPUT
import sys

if "google.colab" in sys.modules:  # Colab: install the course package into the runtime
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "cuda-graph-lab[gpu] @ git+https://github.com/{GITHUB}"], check=True)

import torch
import graphlab_utils as gl

S = gl.setup()
DEVICE = S.device"""

SOLVE_MD = """\
---
## 2. What CUDA graphs solve

Running a model eagerly, the CPU launches every kernel one by one: Python, PyTorch's
dispatcher and `cudaLaunchKernel` cost a few microseconds **per kernel**. When the
kernels are small (a decode step of an LLM, a small batch, a normalisation layer) the GPU
finishes each one before the CPU has launched the next, and it waits: the work is
**launch-bound**.

A CUDA graph records the sequence of kernels once (*capture*), turns it into an
executable graph (*instantiate*) and then runs the whole sequence with **one launch**
(*replay*). The GPU gets its work back to back, and the CPU is free at once.

The picture below is a **schematic** with round illustrative numbers (8 kernels of 2 µs,
5 µs of CPU per eager launch, 6 µs for one graph launch), not a measurement; lesson 01
measures the real thing.
"""

SOLVE_CODE = """\
import matplotlib.pyplot as plt

# Schematic, illustrative numbers (not a measurement).
N_KERNELS, LAUNCH_US, KERNEL_US, GRAPH_LAUNCH_US = 8, 5.0, 2.0, 6.0

def draw(ax, cpu_bars, gpu_bars, title):
    ax.broken_barh(cpu_bars, (10, 8), facecolors="tab:orange", edgecolors="white")
    ax.broken_barh(gpu_bars, (0, 8), facecolors="tab:blue", edgecolors="white")
    ax.set_yticks([4, 14], labels=["GPU", "CPU"])
    ax.set_title(title, loc="left", fontsize=10)
    ax.grid(axis="x", alpha=0.3)

# Eager: one CPU launch per kernel; a kernel starts when it has been launched.
eager_cpu = [(i * LAUNCH_US, LAUNCH_US) for i in range(N_KERNELS)]
eager_gpu, gpu_free = [], 0.0
for i in range(N_KERNELS):
    start = max((i + 1) * LAUNCH_US, gpu_free)
    eager_gpu.append((start, KERNEL_US))
    gpu_free = start + KERNEL_US

# Graph: one launch, then the kernels run back to back.
graph_cpu = [(0.0, GRAPH_LAUNCH_US)]
graph_gpu = [(GRAPH_LAUNCH_US + i * KERNEL_US, KERNEL_US) for i in range(N_KERNELS)]

fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 3.6), sharex=True)
draw(ax1, eager_cpu, eager_gpu, "eager: 8 launches, the GPU waits for the CPU between kernels")
draw(ax2, graph_cpu, graph_gpu, "CUDA graph: 1 launch, kernels back to back, the CPU is free")
ax2.set_xlabel("time (µs, illustrative)")
fig.suptitle("schematic: CPU launches vs GPU work (illustrative numbers, not a measurement)",
             fontsize=11)
fig.tight_layout()
plt.show()"""

SOLVE_AFTER_MD = """\
In the schematic the eager pass ends when the last of 8 launches has been issued and its
kernel has run; the graph's ends after one launch plus the kernels themselves. The gap
grows with the number of small kernels, and it vanishes when one large kernel dominates:
lesson 01 shows both cases, with real (or modelled) timings.
"""

RUNS_MD = """\
---
## 3. How the course runs

**Two backends, one code.** The line printed by the setup cell names the backend:

* **real**: PyTorch sees an NVIDIA GPU; everything is the real thing and timings are
  CUDA-event measurements, labelled *measured on &lt;GPU&gt;*.
* **simulator**: no GPU (a laptop, CI). A CPU simulator stands in for `torch.cuda.CUDAGraph`,
  `torch.cuda.graph`, streams, events and memory pools, and reproduces what you can
  observe on a GPU. Tensors live on the CPU, and timings are modelled from a cost model
  calibrated on a real GPU, labelled *modelled (calibrated on &lt;GPU&gt;)*.

`GRAPHLAB_BACKEND=real|sim|auto` chooses (default `auto`); `graphlab doctor` in a
terminal (or the cell below) reports the environment and says what to fix.

The same lesson code runs on both, because it uses `DEVICE`:
"""

RUNS_CODE = """\
x = torch.arange(6, dtype=torch.float32, device=DEVICE)
y = (2 * x + 1).sum()
print("(2 * x + 1).sum() =", y.item())
print("x lives on DEVICE:", x.device.type == DEVICE.type)"""

DOCTOR_MD = """\
The environment report (its figures differ from machine to machine, so this cell's output
is not compared by the tests):
"""

DOCTOR_CODE = """\
# NBVAL_IGNORE_OUTPUT
from graphlab_utils import doctor

status = doctor.print_report()"""

LABS_MD = """\
**Lessons, labs, checks, solutions.** Each module comes in three notebooks with the same
name:

* `notebooks/NN_*.ipynb`: the **lesson**, to read and run;
* `labs/NN_*.ipynb`: the **exercises**. An exercise cell looks like this:

  ```python
  def replay_with(graph, static_x, new_x):
      # YOUR CODE HERE
      raise NotImplementedError("Exercise: ... (see the hint above)")
  ```

  Replace the two lines with your code and run the **check** that follows it
  (`check_xxx(...)`). It prints one fixed line when your answer is right; otherwise it
  says what was expected, what it saw, and the idea that explains the difference.
  Any correct answer passes, not only the reference one. Hints are folded under
  *Hint* blocks above each exercise.
* `solutions/NN_*.ipynb`: the exercises solved. Labs are generated from them
  (`graphlab build-labs`), so the two never drift apart.

Timings you read are always labelled *measured* or *modelled*, and speed checks compare two
timings taken side by side in the same run, never an absolute time.
"""


def map_md() -> str:
    rows = [
        "---",
        "## 4. The module map",
        "",
        "| # | lesson | lab | what you will be able to do |",
        "|---|--------|-----|-----------------------------|",
        "| 00 | Welcome (this notebook) | | know the backend, the labs and the checks |",
    ]
    for number, stem, title, what in MODULES:
        rows.append(f"| {number} | [{title}]({stem}.ipynb) | [lab](../labs/{stem}.ipynb) | {what} |")
    return "\n".join(rows) + "\n"


NEXT_MD = """\
---
**Next:** [01 · Capture, instantiate, launch](01_capture_instantiate_launch.ipynb): the
three phases of a CUDA graph, timed.
"""


def build() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(TITLE, id="welcome-title"),
        new_markdown_cell(SETUP_MD, id="welcome-setup-md"),
        new_code_cell(SETUP_CODE, id="welcome-setup"),
        new_markdown_cell(SOLVE_MD, id="welcome-solve-md"),
        new_code_cell(SOLVE_CODE, id="welcome-timeline"),
        new_markdown_cell(SOLVE_AFTER_MD, id="welcome-solve-after"),
        new_markdown_cell(RUNS_MD, id="welcome-runs-md"),
        new_code_cell(RUNS_CODE, id="welcome-device"),
        new_markdown_cell(DOCTOR_MD, id="welcome-doctor-md"),
        new_code_cell(DOCTOR_CODE, id="welcome-doctor"),
        new_markdown_cell(LABS_MD, id="welcome-labs"),
        new_markdown_cell(map_md(), id="welcome-map"),
        new_markdown_cell(NEXT_MD, id="welcome-next"),
    ]
    return new_notebook(
        cells=cells,
        metadata={
            "accelerator": "GPU",
            "colab": {"gpuType": "T4", "provenance": [], "toc_visible": True},
            "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                           "name": "python3"},
            "language_info": {"name": "python"},
        },
    )


def execute(nb: nbformat.NotebookNode) -> None:
    from nbclient import NotebookClient

    os.environ["GRAPHLAB_BACKEND"] = "sim"  # stored outputs come from the simulator
    NotebookClient(nb, timeout=300, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(OUT.parent)}}).execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execute", action="store_true",
                        help="run the notebook on the simulator and store its outputs")
    args = parser.parse_args()
    nb = build()
    if args.execute:
        execute(nb)
    OUT.parent.mkdir(exist_ok=True)
    nbformat.validate(nb)
    nbformat.write(nb, str(OUT))
    print(f"wrote {OUT.relative_to(REPO)}" + (" (executed on the simulator)" if args.execute else ""))


if __name__ == "__main__":
    main()
