"""Write lesson 02 (notebooks/) and its solved lab (solutions/); --execute runs them on the simulator.

    python tools/build_lesson02.py --execute
    graphlab build-labs          # then regenerate labs/02 from the solution

Both notebooks are committed with their outputs, produced on the simulator backend; on a
GPU the same outputs must come out, apart from the cells marked `# NBVAL_IGNORE_OUTPUT`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]
STEM = "02_streams_and_capture"
LESSON = REPO / "notebooks" / f"{STEM}.ipynb"
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
import matplotlib.pyplot as plt
import graphlab_utils as gl
from graphlab_utils import graphinfo, timing, viz

S = gl.setup()
DEVICE = S.device"""

# =======================================================================================
# The lesson
# =======================================================================================
L_TITLE = f"""\
# 02 · Streams and capture

{colab(f"notebooks/{STEM}.ipynb")}

A capture records what is queued on **one stream**. This lesson shows what that means in
practice: where PyTorch captures, how work on a second stream gets into the graph as a
**parallel branch**, what happens when it does not, and which calls a capture refuses.

**Learning objectives.** After this notebook you can:

* **explain** why a capture belongs to one stream, and **capture** on a side stream, by
  hand or with `torch.cuda.graph`;
* **fork** a second stream from the capturing one and **join** it back, so that its work
  becomes a parallel branch of the graph, and **draw** the resulting DAG;
* **diagnose** the two stream errors of capture: work on a stream never joined back, and
  work on a stream never forked;
* **name** the calls a capture forbids (`.item()`, printing a tensor, `.cpu()`,
  `torch.cuda.synchronize()`) and the error they raise;
* **choose** a capture mode (`global`, `thread_local`, `relaxed`) and say what each allows.

**Contents**

1. Setup
2. A capture belongs to one stream
3. Fork and join: parallel branches
4. When fork/join goes wrong
5. What a capture forbids
6. Capture modes
7. Summary and exercises

The cells print verdicts that read the same on a GPU and on the simulator; the figures of
a real GPU run are in the [results on a real GPU](../reports/gpu/README.md).
"""

L_SETUP_MD = """\
---
## 1. Setup

The same first cell as in every notebook. `graphinfo` reads the nodes and edges of a
captured graph, `viz` draws them, `timing` times replays.

Some cells below **fail a capture on purpose**. They start with `%%run_isolated`: their
code runs in a fresh Python process on the same backend, which prints one line saying how
it ended. On a GPU a failed capture damages the process that ran it (section 5 shows how),
so the lesson never fails a capture in its own kernel.
"""

L_STREAM_MD = """\
---
## 2. A capture belongs to one stream

A CUDA **stream** is a queue of work for the GPU: what is queued on one stream runs in
order, and work on different streams may overlap. Capture is a **state of a stream**:
`cudaStreamBeginCapture(s)` switches stream `s` into recording mode; from then on, work
queued on `s` becomes nodes of a graph instead of running, until
`cudaStreamEndCapture(s)` hands the graph back.

PyTorch queues each op on the **current stream**, `torch.cuda.current_stream()`, which is
the default stream unless you switch. The context manager `torch.cuda.graph` switches to
a side stream of its own for the time of the capture:
"""

L_STREAM_CODE = """\
x = torch.ones(1024, device=DEVICE)
g = torch.cuda.CUDAGraph()

print("before: current stream is the default one:", torch.cuda.current_stream() == torch.cuda.default_stream())
with torch.cuda.graph(g):
    on_default = torch.cuda.current_stream() == torch.cuda.default_stream()
    capturing = torch.cuda.is_current_stream_capturing()
    y = x * 2
print("inside: current stream is the default one:", on_default, "| capturing:", capturing)
print("after:  current stream is the default one:", torch.cuda.current_stream() == torch.cuda.default_stream(),
      "| capturing:", torch.cuda.is_current_stream_capturing())"""

L_DEFAULT_MD = """\
Under the context manager are two raw calls, `g.capture_begin()` and `g.capture_end()`.
Called on the **default stream**, PyTorch refuses: the default ("legacy") stream
synchronises with every other stream of the device, so CUDA does not let it record. This
cell fails on purpose, in a child process:
"""

L_DEFAULT_CODE = """\
%%run_isolated
x = torch.ones(1024, device=DEVICE)
g = torch.cuda.CUDAGraph()
g.capture_begin()        # on the default stream
y = x * 2
g.capture_end()"""

L_SIDE_MD = """\
The fix is to switch to a side stream for the whole capture, from `capture_begin()` to
`capture_end()`: a capture also has to **end on the stream it began on**. Make the side
stream wait for the default one first (`wait_stream`, explained in the next section), so
that it sees `x` ready. The finished graph can be replayed from any stream, the default
one included. `torch.cuda.graph` does exactly this for you, plus a `synchronize()` and an
`empty_cache()` before the capture begins.
"""

L_SIDE_CODE = """\
s = torch.cuda.Stream()
s.wait_stream(torch.cuda.current_stream())   # s starts after the work queued so far
g = torch.cuda.CUDAGraph()
with torch.cuda.stream(s):
    g.capture_begin()
    y = x * 2
    g.capture_end()
torch.cuda.current_stream().wait_stream(s)

x.fill_(3.0)
g.replay()                                    # replayed from the default stream
torch.cuda.synchronize()
print("the graph replays on the default stream and computes 2 * x:", torch.equal(y, x * 2))"""

L_FORK_MD = """\
---
## 3. Fork and join: parallel branches

Work on a second stream is recorded too, once that stream has **joined the capture**. A
stream joins when it waits on an event recorded by a capturing stream, and
`side.wait_stream(torch.cuda.current_stream())` does exactly that: it records an event on
the capturing stream and makes `side` wait on it. That is the **fork**. From then on
`side` records into the same graph, and its first nodes depend on what the capturing
stream had recorded before the fork.

The **join** is the mirror image: `torch.cuda.current_stream().wait_stream(side)` makes
the capturing stream's next work depend on the side stream's last node. Every forked
stream must be joined back before the capture ends.

The graph does not keep the streams, only the **dependencies** they imply: two streams
become two **branches** of the DAG, which the GPU may run side by side.

Our example is a block with two independent branches, `x + relu(x @ w1) * sigmoid(x @ w2)`
(the shape of a gated MLP, or of a "parallel" transformer block whose attention and MLP
both read the same input). First on one stream. `capture(fn)` is PyTorch's recipe: warm
up on a side stream, then capture; `keep_graph=True` keeps the graph's nodes readable for
`graphinfo`.
"""

L_SEQ_CODE = """\
torch.manual_seed(0)
x = torch.randn(64, 256, device=DEVICE)
w1 = torch.randn(256, 256, device=DEVICE) / 16
w2 = torch.randn(256, 256, device=DEVICE) / 16

def block_sequential(x, w1, w2):
    a = torch.relu(x @ w1)        # branch A
    b = torch.sigmoid(x @ w2)     # branch B
    return x + a * b              # the branches meet here

def capture(fn):
    \"\"\"Warm fn up on a side stream, then capture it; return (graph, output).\"\"\"
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g):
        out = fn()
    return g, out

def describe(st):
    return (f"{len(st.roots)} root(s), width {st.width}, "
            f"largest in-degree {st.max_in_degree}")

g_seq, out_seq = capture(lambda: block_sequential(x, w1, w2))
st_seq = graphinfo.structure(g_seq)
print("one stream:       ", describe(st_seq))"""

L_FORKED_MD = """\
Now branch B on a side stream, forked before either branch starts and joined before the
two meet:
"""

L_FORKED_CODE = """\
side = torch.cuda.Stream()

def block_forked(x, w1, w2):
    main = torch.cuda.current_stream()
    side.wait_stream(main)            # fork: side joins the capture here
    a = torch.relu(x @ w1)            # branch A, on the capturing stream
    with torch.cuda.stream(side):
        b = torch.sigmoid(x @ w2)     # branch B, on the side stream
    main.wait_stream(side)            # join: what follows waits for branch B
    return x + a * b

g_fork, out_fork = capture(lambda: block_forked(x, w1, w2))
st_fork = graphinfo.structure(g_fork)
print("forked and joined:", describe(st_fork))

x.copy_(torch.randn(64, 256, device=DEVICE))   # a new input, in place
g_seq.replay()
g_fork.replay()
torch.cuda.synchronize()
ref = block_sequential(x, w1, w2)
print("both graphs compute the block of the new x:",
      torch.allclose(out_seq, ref, rtol=1e-4, atol=1e-4) and torch.allclose(out_fork, ref, rtol=1e-4, atol=1e-4))"""

L_DRAW_MD = """\
The two DAGs, drawn from the nodes and edges the graphs hold (numbers are the graphs' own
node order; colours mark the branch a node belongs to, grey the nodes after the join). On a
GPU, cuBLAS may run one matmul as two kernels, so the chains there can be longer: the
number of nodes depends on the libraries, the roots, the width and the join do not.
"""

L_DRAW_CODE = """\
fig, axes = plt.subplots(1, 2, figsize=(8, 4.6))
viz.draw_dag(st_seq, ax=axes[0], title="one stream: a chain", branch_names=["one stream"])
viz.draw_dag(st_fork, ax=axes[1], title="forked and joined: two branches",
             branch_names=["branch A (main)", "branch B (side)"])
fig.tight_layout()
plt.show()"""

L_READ_MD = """\
How to read it, and what the numbers above say:

* **roots** are nodes with no parent: what the GPU may start at once. One stream gives one
  root; the fork gives one per branch.
* **width** is the most nodes at one depth: 1 for a chain, 2 for two branches side by side.
* the **join** is a node with two parents (in-degree 2): `a * b` waits for both branches.

`wait_stream` is shorthand for an event: `ev = torch.cuda.Event(); ev.record(main);
side.wait_event(ev)` forks the same way, and `ev2.record(side); main.wait_event(ev2)`
joins. Libraries that overlap work on streams of their own (a communication stream, a
prefetch stream) use this pattern; inside a capture, their work becomes a branch.

Does a branch make the replay faster? Only when each branch leaves the GPU room for the
other (small kernels, as in a decode step); two large matmuls just take turns. The figures
of this cell change from run to run and machine to machine, so the tests do not compare
them:
"""

L_TIME_CODE = """\
# NBVAL_IGNORE_OUTPUT
t_seq = timing.measure(g_seq.replay)
t_fork = timing.measure(g_fork.replay)
print(f"replay, one stream:        {t_seq}")
print(f"replay, forked and joined: {t_fork}")
print(f"ratio: {timing.format_ratio(timing.speedup(t_seq, t_fork))}")"""

L_WRONG_MD = """\
---
## 4. When fork/join goes wrong

Two mistakes, two errors. Both cells fail on purpose, in a child process.

### Work that is never joined back

The side stream is forked, records its work, and the capture ends without the capturing
stream ever waiting for it:
"""

L_UNJOINED_CODE = """\
%%run_isolated
x = torch.randn(1024, device=DEVICE)
side = torch.cuda.Stream()
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    y = x * 2
    side.wait_stream(torch.cuda.current_stream())   # fork
    with torch.cuda.stream(side):
        z = x + 1                                   # a node of the side branch
    # no join: the capturing stream never waits for side"""

L_UNJOINED_AFTER_MD = """\
`cudaErrorStreamCaptureUnjoined`, "capturing stream has unjoined work": the capture ends
on the stream it began on, and CUDA requires every forked stream to lead back into it, so
that the graph has one place where it is finished. The error comes when the `with` block
exits (that is where `capture_end()` runs) and the whole capture is lost. The fix is one
line after the side work, on the capturing stream: `torch.cuda.current_stream().wait_stream(side)`.

### Work on a stream that was never forked

Here the side stream never waited on the capturing stream, so it is **not part of the
capture**:
"""

L_UNFORKED_CODE = """\
%%run_isolated
x = torch.randn(1 << 16, device=DEVICE)
other = torch.cuda.Stream()
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    y = x * 2
    with torch.cuda.stream(other):   # never forked from the capturing stream
        z = x + 1"""

L_UNFORKED_AFTER_MD = """\
Two errors, chained. `other` is not capturing, so `z = x + 1` is ordinary eager work,
launched **now**. It needs memory for `z`, and the caching allocator has to ask CUDA for it
(`torch.cuda.graph` emptied the cache before the capture began). In the default capture
mode, `global`, CUDA refuses such calls while a capture runs: **"operation not permitted
when stream is capturing"** (`cudaErrorStreamCaptureUnsupported`). The refusal also
**invalidates** the capture, so when the `with` block ends PyTorch reports
`cudaErrorStreamCaptureInvalidated`, "operation failed due to a previous error during
capture", while handling the first error.

The fix is the fork: `other.wait_stream(torch.cuda.current_stream())` before the work, and
a join after it. Section 6 shows the one mode in which unforked work is allowed, and why
that does not put it in the graph either.
"""

L_FORBID_MD = """\
---
## 5. What a capture forbids

During capture nothing runs, so no result exists yet. Any call that needs a result **on
the host** is refused: there is nothing to wait for, and a wait could not be recorded in
the graph anyway. Two families, refused in two places:

* **Syncs**, refused by CUDA: `t.item()`, `float(t)`, `int(t)` and `if t:` (a value copied
  to the host); printing a tensor or formatting its value (`print(t)`, `f"{t:.3f}"`);
  `torch.cuda.synchronize()` and `torch.cuda.current_stream().synchronize()`; ops whose
  output size depends on the data, such as `t.nonzero()` or `t[mask]` (lesson 03). Each
  raises `cudaErrorStreamCaptureUnsupported` and **invalidates** the capture: PyTorch
  reports `cudaErrorStreamCaptureInvalidated` when the capture ends, and the process is
  damaged.
* **Copies to the host**, refused by PyTorch itself: `t.cpu()`, `t.tolist()` and
  `t.numpy()` raise a `RuntimeError` ("Cannot copy between CPU and CUDA tensors during CUDA
  graph capture unless the CPU tensor is pinned") before CUDA sees anything. The capture is
  not invalidated, but the exception still leaves the `with` block: the graph ends where
  the copy was, without the rest of your code.

The cell below shows the first family with `.item()`, and then what the failed capture
leaves behind: the process's CUDA random generator is still in capture state, and the next
`torch.randn` on the device fails. This is why the lesson runs failing captures in a child
process; in your own code, restart the process after a failed capture. (On a GPU even the
refused `capture_begin()` of section 2 leaves this damage behind: PyTorch prepares its
random generator for the capture before it checks the stream.)
"""

L_ITEM_CODE = """\
%%run_isolated
x = torch.randn(1024, device=DEVICE)
g = torch.cuda.CUDAGraph()
try:
    with torch.cuda.graph(g):
        total = x.sum()
        value = total.item()       # waits for a result that does not exist yet
except Exception as exc:
    print("the capture failed with", type(exc).__name__)
torch.randn(4, device=DEVICE)      # the next random tensor: the process is damaged"""

L_TABLE_MD = """\
Three more calls from the lists, each in a child process of its own. `run_isolated` is the
function behind `%%run_isolated`; it returns the child's error and, for a capture that
CUDA invalidated, the first error in its chain:
"""

L_TABLE_CODE = """\
from graphlab_utils.isolation import run_isolated

ATTEMPT = '''
x = torch.randn(1024, device=DEVICE)
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    total = x.sum()
    {line}
'''
forbidden = {
    "print(total)": "print(total)",
    "total.cpu()": "on_host = total.cpu()",
    "torch.cuda.synchronize()": "torch.cuda.synchronize()",
}
for name, line in forbidden.items():
    r = run_isolated(ATTEMPT.format(line=line))
    if r.cuda_error:   # refused by CUDA: the capture is invalidated
        print(f"{name:25} {r.error_type}: {r.cuda_error}, first error {r.cause['cuda_error']}")
    else:              # refused by PyTorch before CUDA sees it
        print(f"{name:25} {r.error_type}: {r.first_line.split('. ')[0]}")"""

L_INSTEAD_MD = """\
What to do instead: keep the value **on the device** inside the graph, and read it on the
host **after the replay**, outside the capture. The graph writes the sum into the same
tensor at every replay:
"""

L_INSTEAD_CODE = """\
x = torch.zeros(1024, device=DEVICE)
g_sum, total = capture(lambda: x.sum())
for step in range(3):
    x.fill_(float(step))
    g_sum.replay()
    print(f"replay {step}: total = {total.item():.1f}")   # read after the replay"""

L_MODES_MD = """\
---
## 6. Capture modes

`torch.cuda.graph(g, capture_error_mode=...)` (or `g.capture_begin(capture_error_mode=...)`)
picks the `cudaStreamCaptureMode` of the capture. The mode decides where CUDA refuses
**potentially unsafe calls**, such as `cudaMalloc`, made outside the capturing stream
while the capture runs: from another stream that is not part of the capture, or from
another thread.

| mode | unsafe calls refused while the capture runs | when to use it |
|---|---|---|
| `global` (default) | in every thread of the process | the safe default: a stray allocation anywhere fails loudly |
| `thread_local` | in the capturing thread only | other threads of the process keep using CUDA while you capture (a data loader, a communication library's watchdog thread, another thread capturing its own graph) |
| `relaxed` | nowhere | you know the other work is safe: it never touches memory the graph uses |

Two things no mode allows:

* a **sync or a copy to the host on the capturing stream** (`.item()`, `print(t)`,
  `synchronize()`, `.cpu()`): there is still nothing to wait for;
* putting **unforked work into the graph**. In `relaxed` mode the unforked stream of
  section 4 is allowed, but its work runs eagerly, once, during the capture, and the
  graph does not contain it:
"""

L_RELAXED_CODE = """\
x = torch.randn(1 << 16, device=DEVICE)
other = torch.cuda.Stream()
g_relaxed = torch.cuda.CUDAGraph(keep_graph=True)
with torch.cuda.graph(g_relaxed, capture_error_mode="relaxed"):
    y = x * 2
    with torch.cuda.stream(other):   # never forked: allowed in relaxed mode...
        z = x + 1                    # ...but this runs now, outside the graph
torch.cuda.synchronize()
print("the capture succeeded; nodes in the graph:", graphinfo.node_count(g_relaxed))
print("z was computed during the capture:", torch.equal(z, x + 1))

x.fill_(0.0)
g_relaxed.replay()
torch.cuda.synchronize()
print("after a replay on a new x, y follows it:", torch.equal(y, x * 2), "| z does not:", torch.equal(z, x + 1))"""

L_MODES_TABLE_MD = """\
`global` refused the unforked stream in section 4 and `.item()` in section 5. The other
two modes keep refusing what concerns the capturing thread and stream. `thread_local`
refuses the unforked stream of the capturing thread:
"""

L_MODES_TL_CODE = """\
%%run_isolated
x = torch.randn(1 << 16, device=DEVICE)
other = torch.cuda.Stream()
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g, capture_error_mode="thread_local"):
    y = x * 2
    with torch.cuda.stream(other):   # never forked, in the capturing thread
        z = x + 1"""

L_MODES_RELAXED_MD = """\
and `relaxed` still refuses a sync on the capturing stream:
"""

L_MODES_ITEM_CODE = """\
%%run_isolated
x = torch.randn(1024, device=DEVICE)
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g, capture_error_mode="relaxed"):
    total = x.sum()
    value = total.item()"""

L_MODES_AFTER_MD = """\
In one thread, `thread_local` refuses what `global` refuses; the two differ only for
**other threads**, which `global` also stops while any global capture runs. (On an H100, a
second thread that allocated device memory during a `global` capture got
`cudaErrorStreamCaptureUnsupported` and invalidated the capture; during a `thread_local`
capture the same allocation went through. The simulator does not model other threads, so
no cell shows it here.) That is why
PyTorch's own compiled graphs (`torch.compile(mode="reduce-overhead")`) capture in
`thread_local` mode: a background thread that queries an event or allocates memory would
otherwise break a capture it knows nothing about. Use `relaxed` only when you know the
unforked work is safe, and never to "fix" a capture error: the error was telling you that
work was missing from the graph.
"""

L_SUMMARY_MD = """\
---
## 7. Summary and exercises

* A capture is a state of **one stream**. `torch.cuda.graph` captures on a side stream of
  its own; `capture_begin()` on the default stream is refused, and a capture must end on
  the stream it began on.
* **Fork** with `side.wait_stream(torch.cuda.current_stream())`, **join** with
  `torch.cuda.current_stream().wait_stream(side)`: the side stream's work becomes a
  **parallel branch** of the graph (several roots, width 2, a join node of in-degree 2).
* A forked stream **never joined** fails the capture with `cudaErrorStreamCaptureUnjoined`.
  Work on a stream **never forked** is outside the capture: refused in `global` and
  `thread_local` mode (`cudaErrorStreamCaptureUnsupported`, then
  `cudaErrorStreamCaptureInvalidated`), run eagerly and left out of the graph in `relaxed`.
* **Syncs** (`.item()`, `print(t)`, `torch.cuda.synchronize()`) are refused by CUDA and
  invalidate the capture; **copies to the host** (`.cpu()`, `.tolist()`) are refused by
  PyTorch. Both in every mode: read results after the replay instead.
* On a GPU a failed capture **damages the process**: restart it; show failures in a child
  process.

### Exercises

The lab [labs/02_streams_and_capture.ipynb](../labs/02_streams_and_capture.ipynb) has four
checked exercises:

1. **Fork and join** the two-branch block; the check reads your graph's roots, width and
   join, and replays it on new inputs.
2. **Repair** a capture helper that captures on the default stream.
3. **Repair** a sampling step that reads its temperature with `.item()`.
4. **Repair** a monitoring side stream whose join is in the wrong place.

Questions to answer before you open it:

1. The join `torch.cuda.current_stream().wait_stream(side)` is written inside
   `with torch.cuda.stream(side):`. Why does the capture still fail as unjoined?

   <details><summary>Answer</summary>

   Inside the block the current stream **is** `side`, so the line makes `side` wait for
   itself. The capturing stream never waits for `side`. Move the line after the block.
   </details>

2. In `relaxed` mode the unforked `z = x + 1` ran. What does `z` hold after ten replays?

   <details><summary>Answer</summary>

   What it held after the capture: `x + 1` of the `x` at capture time. The graph has only
   the node of `y = x * 2`, so replays never touch `z`.
   </details>

3. A logging line `print(f"loss {loss:.3f}")` sits in a training step you want to capture.
   What happens, and what do you do instead?

   <details><summary>Answer</summary>

   Formatting the tensor reads its value: a sync, refused with
   `cudaErrorStreamCaptureUnsupported`, and the capture is invalidated. Keep `loss` as an
   output of the graph and print it after the replay (every N steps, as each read is a sync).
   </details>

---
**Next:** [03 · Static control flow](03_static_control_flow.ipynb): Python `if` and `for`
only act while recording.
"""


def lesson() -> nbformat.NotebookNode:
    md, code = new_markdown_cell, new_code_cell
    cells = [
        md(L_TITLE, id="l02-title"),
        md(L_SETUP_MD, id="l02-setup-md"),
        code(SETUP_CODE, id="l02-setup"),
        md(L_STREAM_MD, id="l02-stream-md"),
        code(L_STREAM_CODE, id="l02-stream"),
        md(L_DEFAULT_MD, id="l02-default-md"),
        code(L_DEFAULT_CODE, id="l02-default"),
        md(L_SIDE_MD, id="l02-side-md"),
        code(L_SIDE_CODE, id="l02-side"),
        md(L_FORK_MD, id="l02-fork-md"),
        code(L_SEQ_CODE, id="l02-seq"),
        md(L_FORKED_MD, id="l02-forked-md"),
        code(L_FORKED_CODE, id="l02-forked"),
        md(L_DRAW_MD, id="l02-draw-md"),
        code(L_DRAW_CODE, id="l02-draw"),
        md(L_READ_MD, id="l02-read-md"),
        code(L_TIME_CODE, id="l02-time"),
        md(L_WRONG_MD, id="l02-wrong-md"),
        code(L_UNJOINED_CODE, id="l02-unjoined"),
        md(L_UNJOINED_AFTER_MD, id="l02-unjoined-after"),
        code(L_UNFORKED_CODE, id="l02-unforked"),
        md(L_UNFORKED_AFTER_MD, id="l02-unforked-after"),
        md(L_FORBID_MD, id="l02-forbid-md"),
        code(L_ITEM_CODE, id="l02-item"),
        md(L_TABLE_MD, id="l02-table-md"),
        code(L_TABLE_CODE, id="l02-table"),
        md(L_INSTEAD_MD, id="l02-instead-md"),
        code(L_INSTEAD_CODE, id="l02-instead"),
        md(L_MODES_MD, id="l02-modes-md"),
        code(L_RELAXED_CODE, id="l02-relaxed"),
        md(L_MODES_TABLE_MD, id="l02-modes-tl-md"),
        code(L_MODES_TL_CODE, id="l02-modes-tl"),
        md(L_MODES_RELAXED_MD, id="l02-modes-relaxed-md"),
        code(L_MODES_ITEM_CODE, id="l02-modes-item"),
        md(L_MODES_AFTER_MD, id="l02-modes-after"),
        md(L_SUMMARY_MD, id="l02-summary"),
    ]
    return _notebook(cells)


# =======================================================================================
# The lab (solutions/ is its source; labs/ is generated by `graphlab build-labs`)
# =======================================================================================
S_TITLE = f"""\
# Lab 02 · Streams and capture

{colab(f"labs/{STEM}.ipynb")}

The exercises of [lesson 02](../notebooks/{STEM}.ipynb). Write your code where a cell says
`# YOUR CODE HERE`, then run the check below it: it prints one line when your answer is
right, and otherwise what it expected, what it saw, and the idea behind the difference.

**Learning objectives.** After this lab you can:

* **turn** a two-branch computation into a capture with a forked and joined side stream,
  and **verify** its branches from the graph itself;
* **repair** three broken captures from their error messages: a capture on the default
  stream, a sync inside the capture, and a side stream joined in the wrong place.

**Your notebook stays healthy.** On a GPU a failed capture damages the process that ran it.
The broken captures below run in a child process (`%%run_isolated`), and every check first
tries your capture in a child process too: a wrong answer gives a hint, not a damaged
kernel. If you run a failing capture yourself in this notebook, restart the kernel.

**Contents**

1. Setup
2. Exercise 1: fork and join a two-branch block
3. Repair 1: the capture helper
4. Repair 2: the sampling step
5. Repair 3: the monitoring stream
"""

S_SETUP_CODE = SETUP_CODE + """

from graphlab_utils.checks.lesson02 import (
    block_inputs, capture_with_warmup, check_capture_helper, check_monitored_step,
    check_parallel_block, check_sampling_probs,
)"""

S_EX1_MD = """\
---
## 2. Exercise 1: fork and join a two-branch block

The block of the lesson, on one stream: two independent branches that meet at the end.
"""

S_EX1_GIVEN = """\
x, w1, w2 = block_inputs()   # (64, 256), (256, 256), (256, 256), the check's inputs

def block_sequential(x, w1, w2):
    a = torch.relu(x @ w1)        # branch A
    b = torch.sigmoid(x @ w2)     # branch B
    return x + a * b              # the branches meet here

g_seq, _ = capture_with_warmup(lambda: block_sequential(x, w1, w2))
st = graphinfo.structure(g_seq)
print(f"one stream: {len(st.roots)} root(s), width {st.width}, largest in-degree {st.max_in_degree}")"""

S_EX1_TASK_MD = """\
Write `block_forked(x, w1, w2, side)`: the same block, with one branch on the stream
`side`, so that its capture holds **two parallel branches** (2 roots, width 2) that meet in
a **join** (a node of in-degree 2). It must compute the same values as `block_sequential`.

<details><summary>Hint 1</summary>

Three lines do it: a fork before either branch starts, a `with torch.cuda.stream(side):`
block around one branch, and a join before the branches meet.
</details>

<details><summary>Hint 2</summary>

Fork: `side.wait_stream(torch.cuda.current_stream())`. Join, outside the `with` block:
`torch.cuda.current_stream().wait_stream(side)`. Keep a name for the capturing stream
(`main = torch.cuda.current_stream()`) before you switch.
</details>
"""

S_EX1_CODE = """\
def block_forked(x, w1, w2, side):
    \"\"\"block_sequential with one branch on the stream `side`, forked and joined.\"\"\"
    ### BEGIN SOLUTION fork side, run one branch on it, join it back
    main = torch.cuda.current_stream()
    side.wait_stream(main)            # fork
    a = torch.relu(x @ w1)            # branch A on the capturing stream
    with torch.cuda.stream(side):
        b = torch.sigmoid(x @ w2)     # branch B on the side stream
    main.wait_stream(side)            # join
    return x + a * b
    ### END SOLUTION"""

S_EX1_CHECK = """\
result_1 = check_parallel_block(block_forked)"""

S_EX1_DRAW_MD = """\
Once the check passes, draw your graph next to the one-stream version (the cell draws
nothing until then: a failing capture would damage this notebook's process):
"""

S_EX1_DRAW = """\
if result_1:
    g_forked, _ = capture_with_warmup(lambda: block_forked(x, w1, w2, torch.cuda.Stream()))
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.6))
    viz.draw_dag(graphinfo.structure(g_seq), ax=axes[0], title="block_sequential")
    viz.draw_dag(graphinfo.structure(g_forked), ax=axes[1], title="your block_forked")
    fig.tight_layout()
    plt.show()"""

S_R1_MD = """\
---
## 3. Repair 1: the capture helper

A colleague wrote a helper that captures any function into a graph. It fails at once:
"""

S_R1_BROKEN = """\
%%run_isolated
def capture(graph, fn):
    graph.capture_begin()
    out = fn()
    graph.capture_end()
    return out

x = torch.ones(1024, device=DEVICE)
g = torch.cuda.CUDAGraph()
y = capture(g, lambda: x * 2)"""

S_R1_TASK_MD = """\
Repair `capture(graph, fn)`: it records `fn()` into `graph` and returns what `fn()`
returned, and the caller's stream is current again when it returns. (The check warms `fn`
up before it calls your helper.)

<details><summary>Hint 1</summary>

Read the error: which stream was current when `capture_begin()` ran?
</details>

<details><summary>Hint 2</summary>

Either let PyTorch pick the stream, `with torch.cuda.graph(graph): out = fn()`, or keep the
raw calls and run both inside one `with torch.cuda.stream(s):` block, with
`s.wait_stream(torch.cuda.current_stream())` before it.
</details>
"""

S_R1_CODE = """\
def capture(graph, fn):
    \"\"\"Record fn() into graph; return fn()'s output.\"\"\"
    ### BEGIN SOLUTION capture on a side stream
    with torch.cuda.graph(graph):
        out = fn()
    return out
    ### END SOLUTION"""

S_R1_CHECK = """\
result_2 = check_capture_helper(capture)"""

S_R2_MD = """\
---
## 4. Repair 2: the sampling step

A serving step turns logits into sampling probabilities at a temperature. The temperature
lives in a one-element tensor, so that each request's value can be copied in before a
replay. Captured, the step fails:
"""

S_R2_BROKEN = """\
%%run_isolated
def sampling_probs(logits, temperature):
    t = temperature.item()
    return torch.softmax(logits / t, dim=-1)

logits = torch.randn(4, 32, device=DEVICE)
temperature = torch.tensor([0.7], device=DEVICE)
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    probs = sampling_probs(logits, temperature)"""

S_R2_TASK_MD = """\
Repair `sampling_probs(logits, temperature)` so that it can be captured, and so that a
replay after `temperature.fill_(1.3)` gives the probabilities at temperature 1.3.

<details><summary>Hint 1</summary>

`.item()` copies the value to the host: a sync. What can divide `logits` without leaving
the device?
</details>

<details><summary>Hint 2</summary>

`logits / temperature` broadcasts the one-element tensor over the logits, on the device.
Replacing the `.item()` with a constant `0.7` would capture, but freeze the temperature:
the check changes it between replays.
</details>
"""

S_R2_CODE = """\
def sampling_probs(logits, temperature):
    \"\"\"softmax(logits / temperature) over the last dimension; temperature is a 1-element tensor.\"\"\"
    ### BEGIN SOLUTION divide by the tensor, not by a number read from it
    return torch.softmax(logits / temperature, dim=-1)
    ### END SOLUTION"""

S_R2_CHECK = """\
result_3 = check_sampling_probs(sampling_probs)"""

S_R3_MD = """\
---
## 5. Repair 3: the monitoring stream

A step computes its output on the capturing stream and, beside it on a side stream, a
statistic for monitoring. The author did write a join, yet the capture fails:
"""

S_R3_BROKEN = """\
%%run_isolated
def monitored_step(x, w, side):
    side.wait_stream(torch.cuda.current_stream())        # fork
    h = (x @ w).relu()                                    # the step's output
    with torch.cuda.stream(side):
        stats = x.pow(2).mean(dim=-1)                     # a statistic for monitoring
        torch.cuda.current_stream().wait_stream(side)     # meant as the join
    return h, stats

x = torch.randn(32, 128, device=DEVICE)
w = torch.randn(128, 128, device=DEVICE) / 128 ** 0.5
side = torch.cuda.Stream()
h, stats = monitored_step(x, w, side)   # warm-up, eagerly: cuBLAS sets itself up now (lesson 01)
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    h, stats = monitored_step(x, w, side)"""

S_R3_TASK_MD = """\
Repair `monitored_step(x, w, side)`: it returns `(h, stats)` as before, captures without
error, and keeps the statistic on the side stream, as a branch parallel to the matmul.

<details><summary>Hint 1</summary>

Inside `with torch.cuda.stream(side):`, which stream does `torch.cuda.current_stream()`
return?
</details>

<details><summary>Hint 2</summary>

The join must run on the capturing stream: move the `wait_stream` line out of the `with`
block (or keep `main = torch.cuda.current_stream()` before the block and call
`main.wait_stream(side)`).
</details>
"""

S_R3_CODE = """\
def monitored_step(x, w, side):
    \"\"\"(relu(x @ w), x.pow(2).mean(dim=-1)), the statistic on the stream `side`.\"\"\"
    ### BEGIN SOLUTION join on the capturing stream
    main = torch.cuda.current_stream()
    side.wait_stream(main)                                # fork
    h = (x @ w).relu()
    with torch.cuda.stream(side):
        stats = x.pow(2).mean(dim=-1)
    main.wait_stream(side)                                # join, on the capturing stream
    return h, stats
    ### END SOLUTION"""

S_R3_CHECK = """\
result_4 = check_monitored_step(monitored_step)"""

S_END_MD = """\
---
## Done

Four checks passed: you can fork and join streams inside a capture, and read the three
errors of this lab from their names (`RuntimeError` about the default stream,
`cudaErrorStreamCaptureUnsupported` then `cudaErrorStreamCaptureInvalidated` for a sync,
`cudaErrorStreamCaptureUnjoined` for a missing join).

Back to [lesson 02](../notebooks/02_streams_and_capture.ipynb), or on to
[03 · Static control flow](../notebooks/03_static_control_flow.ipynb).
"""


def solution() -> nbformat.NotebookNode:
    md, code = new_markdown_cell, new_code_cell
    cells = [
        md(S_TITLE, id="lab02-title"),
        md("---\n## 1. Setup\n", id="lab02-setup-md"),
        code(S_SETUP_CODE, id="lab02-setup"),
        md(S_EX1_MD, id="lab02-ex1-md"),
        code(S_EX1_GIVEN, id="lab02-ex1-given"),
        md(S_EX1_TASK_MD, id="lab02-ex1-task"),
        code(S_EX1_CODE, id="lab02-ex1"),
        code(S_EX1_CHECK, id="lab02-ex1-check"),
        md(S_EX1_DRAW_MD, id="lab02-ex1-draw-md"),
        code(S_EX1_DRAW, id="lab02-ex1-draw"),
        md(S_R1_MD, id="lab02-r1-md"),
        code(S_R1_BROKEN, id="lab02-r1-broken"),
        md(S_R1_TASK_MD, id="lab02-r1-task"),
        code(S_R1_CODE, id="lab02-r1"),
        code(S_R1_CHECK, id="lab02-r1-check"),
        md(S_R2_MD, id="lab02-r2-md"),
        code(S_R2_BROKEN, id="lab02-r2-broken"),
        md(S_R2_TASK_MD, id="lab02-r2-task"),
        code(S_R2_CODE, id="lab02-r2"),
        code(S_R2_CHECK, id="lab02-r2-check"),
        md(S_R3_MD, id="lab02-r3-md"),
        code(S_R3_BROKEN, id="lab02-r3-broken"),
        md(S_R3_TASK_MD, id="lab02-r3-task"),
        code(S_R3_CODE, id="lab02-r3"),
        code(S_R3_CHECK, id="lab02-r3-check"),
        md(S_END_MD, id="lab02-end"),
    ]
    return _notebook(cells)


def _notebook(cells) -> nbformat.NotebookNode:
    return new_notebook(
        cells=cells,
        metadata={
            "accelerator": "GPU",
            "colab": {"gpuType": "T4", "provenance": [], "toc_visible": True},
            "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
    )


def execute(nb: nbformat.NotebookNode, where: Path) -> None:
    from nbclient import NotebookClient

    os.environ["GRAPHLAB_BACKEND"] = "sim"  # stored outputs come from the simulator
    NotebookClient(nb, timeout=300, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(where.parent)}}).execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execute", action="store_true",
                        help="run the notebooks on the simulator and store their outputs")
    args = parser.parse_args()
    for build, path in ((lesson, LESSON), (solution, SOLUTION)):
        nb = build()
        if args.execute:
            execute(nb, path)
        path.parent.mkdir(exist_ok=True)
        nbformat.validate(nb)
        nbformat.write(nb, str(path))
        print(f"wrote {path.relative_to(REPO)}" + (" (executed on the simulator)" if args.execute else ""))


if __name__ == "__main__":
    main()
