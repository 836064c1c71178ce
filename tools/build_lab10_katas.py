"""Write the failure-kata lab (solutions/10_interview_drills.ipynb) from graphlab_utils.katas.

    python tools/build_lab10_katas.py --execute
    graphlab build-labs          # then regenerate labs/10 from the solution

The symptom, snippet, task, hint and explanation of every kata come from
`graphlab_utils.katas`, so the lab and the package cannot drift apart (tests/test_katas.py
checks that every snippet appears verbatim in the lab). The solution notebook is committed
with its outputs, produced on the simulator; on a GPU the same outputs must come out, apart
from the cells marked `# NBVAL_IGNORE_OUTPUT`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from graphlab_utils import katas  # noqa: E402

STEM = "10_interview_drills"
SOLUTION = REPO / "solutions" / f"{STEM}.ipynb"
GITHUB = "cuda-graph-lab/cuda-graph-lab"


def colab(path: str) -> str:
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{GITHUB}/blob/main/{path})")


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

IMPORTS_CODE = """\
from graphlab_utils import katas
from graphlab_utils.katas import capture, cfg_batch  # the helpers the snippets use

katas.catalogue()"""

# The fixed version of every kata, as the solution notebook shows it. `### BEGIN SOLUTION` /
# `### END SOLUTION` mark what the generated lab replaces with a stub.
SOLUTIONS = {
    "kv-cache-reset": '''\
class KVCacheFixed(KVCache):
    def reset(self):
        ### BEGIN SOLUTION empty the cache where the graph reads it
        self.keys.zero_()  # the same memory, now zero: the graph sees it
        ### END SOLUTION''',
    "weight-sync": '''\
def load_weights_fixed(model, state_dict):
    ### BEGIN SOLUTION copy the new values into the parameters' memory
    for name, param in model.named_parameters():
        param.data.copy_(state_dict[name])  # same addresses, new values
    ### END SOLUTION''',
    "mask-sync": '''\
def masked_mean_fixed(hidden, mask):
    ### BEGIN SOLUTION weight the rows by the mask instead of selecting them
    m = mask.to(hidden.dtype)
    return (hidden * m[:, None]).sum(dim=0) / m.sum()
    ### END SOLUTION''',
    "host-list": '''\
# the gains as a device tensor, made once, before any capture
GAINS = torch.tensor(CHANNEL_GAINS, device=DEVICE)  # SOLUTION


def apply_gains_fixed(x):
    ### BEGIN SOLUTION read the device tensor made above
    return x * GAINS
    ### END SOLUTION''',
    "frozen-sigma": '''\
def make_euler_step_fixed(latent, eps, sigmas):
    ### BEGIN SOLUTION keep the coefficient in a static device tensor
    static_latent, static_eps = latent.clone(), eps.clone()
    static_dt = torch.zeros((), device=latent.device)  # read by the graph at every replay
    graph, out = capture(lambda: static_latent + static_dt * static_eps)

    def step(latent, eps, i):
        static_latent.copy_(latent)
        static_eps.copy_(eps)
        static_dt.fill_(sigmas[i + 1] - sigmas[i])
        graph.replay()
        return out.clone()

    return step
    ### END SOLUTION''',
    "overwritten-output": '''\
def generate_fixed(step, first, n_steps):
    ### BEGIN SOLUTION keep a copy of every step's output
    outputs = []
    x = first
    for _ in range(n_steps):
        x = step(x)
        outputs.append(x.clone())  # the next replay overwrites x's memory
    return torch.stack(outputs)
    ### END SOLUTION''',
    "graph-memory": '''\
def capture_all_fixed(layer, sizes):
    ### BEGIN SOLUTION one shared pool, largest size first
    graphs = {}
    pool = torch.cuda.graph_pool_handle()
    for bs in sorted(sizes, reverse=True):
        static_x = torch.zeros(bs, layer.in_features, device=DEVICE)
        graph, out = capture(lambda: layer(static_x), pool=pool)
        graphs[bs] = (graph, static_x, out)
    return graphs
    ### END SOLUTION''',
    "rerecord-every-call": '''\
class GraphCacheFixed:
    def __init__(self, fn):
        self.fn, self.graphs = fn, {}

    def __call__(self, x):
        ### BEGIN SOLUTION pad to a power-of-two bucket, replay its graph, slice
        n = x.shape[0]
        bucket = 1 << (n - 1).bit_length()  # 1, 2, 4, ..., 64
        if bucket not in self.graphs:
            static_x = torch.zeros(bucket, x.shape[1], device=x.device, dtype=x.dtype)
            graph, out = capture(lambda: self.fn(static_x))
            self.graphs[bucket] = (graph, static_x, out)
        graph, static_x, out = self.graphs[bucket]
        static_x[:n].copy_(x)
        static_x[n:].zero_()
        graph.replay()
        return out[:n].clone()
        ### END SOLUTION''',
    "warmup-mismatch": '''\
def warm_up_fixed(runner, batch_sizes, channels, guidance, dtype):
    ### BEGIN SOLUTION build the warm-up inputs the way serving does
    for bs in batch_sizes:
        latents = torch.zeros(bs, channels, device=DEVICE, dtype=dtype)
        runner.capture(cfg_batch(latents, guidance))  # serving's own (batch, dtype)
    ### END SOLUTION''',
    "unregistered-generator": '''\
def make_noisy_step_fixed(latent, generator):
    ### BEGIN SOLUTION register the generator with the graph before capture
    static_latent = latent.clone()
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(generator)  # replays advance this generator
    with torch.cuda.graph(graph):
        noise = torch.randn(static_latent.shape, generator=generator, device=static_latent.device)
        out = static_latent + 0.5 * noise

    def step(latent):
        static_latent.copy_(latent)
        graph.replay()
        return out.clone()

    return step
    ### END SOLUTION''',
    "python-counter": '''\
class RunningMeanFixed(RunningMean):
    def __init__(self, slots, dim, device):
        super().__init__(slots, dim, device)
        ### BEGIN SOLUTION keep the position on the device
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.slot_ids = torch.arange(slots, device=device)
        ### END SOLUTION

    def step(self, token):
        ### BEGIN SOLUTION write, advance and average with kernels only
        self.cache.index_copy_(0, self.pos.view(1), token.view(1, -1))
        self.pos += 1  # a kernel: every replay advances the position
        seen = (self.slot_ids < self.pos).to(self.cache.dtype)
        return (self.cache * seen[:, None]).sum(dim=0) / self.pos
        ### END SOLUTION''',
}

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


def demo_kind(kata) -> str:
    if kata.demo_needs_gpu:
        return "gpu-only"
    return "isolated" if kata.isolated else "inprocess"


def title_cell():
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


def kata_cells(kata, section: int) -> list:
    links = "; ".join(f"[{s.label}]({s.url}): {s.what}" for s in kata.sources)
    cells = [
        new_markdown_cell(f"""\
---
## {section}. Kata {kata.number}: {kata.title}

**Symptom.** {kata.symptom}

*Modelled on* {links}.

The snippet, broken on purpose:"""),
        new_code_cell(kata.snippet.rstrip()),
        new_markdown_cell(DEMO_TEXT[demo_kind(kata)]),
    ]
    kind = demo_kind(kata)
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
        new_code_cell(SOLUTIONS[kata.key]),
        new_code_cell(f'result_{kata.number} = katas.check("{kata.key}", {kata.fixed_name})'),
        new_markdown_cell(f"""\
<details><summary>Why it happens, and the fix</summary>

{kata.explanation}
</details>"""),
    ]
    return cells


def done_cells(section: int) -> list:
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
    cells = [title_cell(), new_markdown_cell("""\
---
## 1. Setup

The usual first cell, then the kata module. `katas.catalogue()` lists the katas and the
public reports each one is modelled on. The snippets use two helpers: `capture(fn, pool=None)`
(warm `fn` up on a side stream, capture it, return the graph and its output) and `cfg_batch`
(the batch a diffusion server feeds its denoiser under classifier-free guidance)."""),
             new_code_cell(SETUP_CODE), new_code_cell(IMPORTS_CODE)]
    for i, kata in enumerate(katas.KATAS.values()):
        cells += kata_cells(kata, i + 2)
    cells += done_cells(len(katas.KATAS) + 2)
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "accelerator": "GPU",
        "colab": {"gpuType": "T4", "provenance": [], "toc_visible": True},
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"lab10-{i:02d}"
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execute", action="store_true", help="run the notebook on the simulator afterwards")
    args = parser.parse_args()
    nb = build()
    SOLUTION.parent.mkdir(exist_ok=True)
    nbformat.write(nb, SOLUTION)
    print(f"wrote {SOLUTION.relative_to(REPO)} ({len(nb.cells)} cells)")
    if args.execute:
        env = dict(os.environ, GRAPHLAB_BACKEND="sim")
        subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                        "--inplace", str(SOLUTION)], check=True, env=env, cwd=REPO)
        print(f"executed {SOLUTION.relative_to(REPO)} on the simulator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
