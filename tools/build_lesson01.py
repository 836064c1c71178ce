"""Write lesson 01 and its solution notebook (and, with --execute, run them on the simulator).

    python tools/build_lesson01.py --execute

Writes notebooks/01_capture_instantiate_launch.ipynb (the lesson) and
solutions/01_capture_instantiate_launch.ipynb (the lab's single source; `graphlab build-labs`
generates labs/ from it). Both are committed with their outputs, produced on the simulator
backend so that `make test` (nbval) passes in CI; on a GPU the same outputs must come out,
apart from the cells marked `# NBVAL_IGNORE_OUTPUT`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]
STEM = "01_capture_instantiate_launch"
LESSON = REPO / "notebooks" / f"{STEM}.ipynb"
SOLUTION = REPO / "solutions" / f"{STEM}.ipynb"
GITHUB = "cuda-graph-lab/cuda-graph-lab"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def colab(folder: str) -> str:
    return f"https://colab.research.google.com/github/{GITHUB}/blob/main/{folder}/{STEM}.ipynb"


SETUP_CODE = f"""\
# NBVAL_IGNORE_OUTPUT
import sys

if "google.colab" in sys.modules:  # Colab: install the course package into the runtime
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "cuda-graph-lab[gpu] @ git+https://github.com/{GITHUB}"], check=True)

import json
import statistics
from concurrent.futures import ThreadPoolExecutor

import matplotlib.pyplot as plt
import numpy as np
import torch
import graphlab_utils as gl
from graphlab_utils import timing, workloads
from graphlab_utils.isolation import run_isolated

S = gl.setup()
DEVICE = S.device"""

# =======================================================================================
# The lesson
# =======================================================================================
L_TITLE = f"""\
# 01 · Capture, instantiate, launch

[![Open In Colab]({BADGE})]({colab("notebooks")})

A CUDA graph lives through three phases, and each one has its own cost. **Capture** records
the work without running it. **Instantiate** turns the recording into an executable graph:
the slow, one-off step. **Launch** (PyTorch calls it *replay*) runs all of it with one call.
This lesson times each phase, shows what warm-up is for, and measures where graphs win and
where they do not.

**Learning objectives.** After this notebook you can:

* **name** the three phases of a CUDA graph and **time** each one on its own;
* **prove** that a capture runs nothing;
* **explain** what the first call of a process pays, and **move** capture and instantiation
  off the first request;
* **measure** where graphs win (many small kernels) and where they do not (one large kernel);
* **estimate** the per-kernel launch cost and the per-node replay cost from a fit.

Every timing says where it comes from: *measured on &lt;GPU&gt;*, or *modelled (calibrated on
&lt;GPU&gt;)* on the simulator. The [figures measured on a real GPU](../reports/gpu/README.md)
for this lesson are in the course's GPU report.

**Contents**

1. Setup
2. The three phases
3. Warm-up: what the first call pays
4. Where graphs win, and where they do not
5. Summary
6. Exercises
"""

L_SETUP_MD = """\
---
## 1. Setup

The same first cell as in every notebook: it picks the backend and prints one line saying
what runs. `timing` is the course's timing helper (CUDA events on a GPU, the modelled clock
on the simulator); `workloads` holds the course's standard workloads.
"""

L_PHASES_MD = """\
---
## 2. The three phases

| phase | PyTorch | CUDA underneath | what happens |
|---|---|---|---|
| capture | `with torch.cuda.graph(g):` | `cudaStreamBeginCapture` … `cudaStreamEndCapture` | every kernel launched on the capturing stream is **recorded** as a node of a `cudaGraph_t`; nothing runs on the GPU |
| instantiate | `g.instantiate()` | `cudaGraphInstantiate` gives a `cudaGraphExec_t` | CUDA checks the graph and prepares every node for launch, once |
| launch (replay) | `g.replay()` | `cudaGraphLaunch` | the whole graph is submitted with **one** call; the GPU runs the nodes back to back |

A `torch.cuda.CUDAGraph()` created with the defaults is instantiated at the end of its
capture, inside the `with` block. Created with `keep_graph=True`, it keeps the captured
`cudaGraph_t` and leaves `instantiate()` to you: each phase gets a cell, and a timing, of
its own.

The work to capture is `N_KERNELS` tiny kernels. `step()` first adds 1 to a device counter,
`runs`, so that we can see when the work really runs; then it adds 1.0 to a vector of 1024
floats, `N_KERNELS - 1` times. Each `+` is one kernel that takes about a microsecond on the
GPU, less than the time the CPU needs to launch it.
"""

L_WORK_CODE = """\
N_KERNELS = 200
static_x = torch.zeros(1024, device=DEVICE)  # the graph's input buffer: its address is baked in
runs = torch.zeros((), device=DEVICE)        # +1 each time the work really runs on the device


def work(x):
    for _ in range(N_KERNELS - 1):
        x = x + 1.0
    return x


def step():
    runs.add_(1)
    return work(static_x)


def close(a, b):
    return bool(torch.allclose(a, b))


def instantiated(graph):
    \"\"\"Whether the graph has its executable (PyTorch raises until instantiate() has run).\"\"\"
    try:
        graph.raw_cuda_graph_exec()
        return True
    except RuntimeError:
        return False"""

L_WARM_MD = """\
**Warm up first.** PyTorch's recipe runs the work a few times on a side stream before it is
captured (section 3 says why; lesson 02 is about streams). The warm-up runs on dummy data:
`static_x` still holds zeros.
"""

L_WARM_CODE = """\
side = torch.cuda.Stream()
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):
    for _ in range(3):
        step()
torch.cuda.current_stream().wait_stream(side)

print("runs after warm-up:", int(runs.item()))"""

L_CAPTURE_MD = """\
### Phase 1: capture

A request arrives. Load it into the static input, then capture one call of `step()`.
`timing.measure_host` times a call on the host's clock; capture is host work.
"""

L_CAPTURE_CODE = """\
request = torch.randn(1024, device=DEVICE)
static_x.copy_(request)

graph = torch.cuda.CUDAGraph(keep_graph=True)
captured = {}


def capture():
    with torch.cuda.graph(graph):
        captured["out"] = step()  # recorded, not run


t_capture = timing.measure_host(capture)
static_out = captured["out"]   # the graph's output buffer
expected = work(request)       # eager PyTorch, for comparison

print("runs after capture:", int(runs.item()))
print("graph output holds the result after capture:", close(static_out, expected))
print("executable graph exists after capture:", instantiated(graph))"""

L_CAPTURE_AFTER = """\
The counter did not move and the output is not the result: the capture recorded
`N_KERNELS` kernels and ran none of them. Until the first replay, `static_out` holds
whatever its memory held before; never read a graph's output before a replay. And there
is no executable graph yet.
"""

L_INST_MD = """\
### Phase 2: instantiate

`cudaGraphInstantiate` checks the graph (it must be a valid DAG of supported nodes) and
prepares each node for launch, so that a later launch has nothing left to decide. It runs on
the host, once per graph, and its cost grows with the number of nodes.
"""

L_INST_CODE = """\
t_instantiate = timing.measure_host(graph.instantiate)

print("executable graph exists after instantiate:", instantiated(graph))
print("runs after instantiate:", int(runs.item()))"""

L_REPLAY_MD = """\
### Phase 3: launch (replay)

One call launches all `N_KERNELS` kernels. (The first launch of an executable graph can cost
more than later ones: unless the graph was uploaded beforehand, CUDA uploads its work to the
GPU then. The next cell times this first replay; below we also take the median of many.)
"""

L_REPLAY_CODE = """\
t_first_replay = timing.measure_host(graph.replay)

print("runs after one replay:", int(runs.item()))
print("graph output holds the result after replay:", close(static_out, expected))"""

L_NEW_MD = """\
A new request, the same graph: copy it into the static input and replay. (Rebinding the
name, `static_x = new_request`, would leave the graph reading the old buffer: lesson 04.)
"""

L_NEW_CODE = """\
new_request = torch.randn(1024, device=DEVICE)
static_x.copy_(new_request)
graph.replay()

print("runs after the second replay:", int(runs.item()))
print("graph output holds the result for the new request:", close(static_out, work(new_request)))"""

L_COST_MD = """\
### What each phase costs

Side by side with one eager pass of the same `N_KERNELS` kernels (`timing.measure`: device
time per call, from CUDA events on a GPU). The figures vary from run to run and between
backends, so this cell's output is not compared by the tests.
"""

L_COST_CODE = """\
# NBVAL_IGNORE_OUTPUT
t_replay = timing.measure_host(graph.replay, warmup=1, repeat=20)  # median of 20 replays
t_eager = timing.measure(step)

phases = {
    "capture": t_capture,
    "instantiate": t_instantiate,
    "first replay": t_first_replay,
    "replay (median)": t_replay,
    "eager pass": t_eager,
}
for name, t in phases.items():
    print(f"{name:16s} {t}")
print("instantiate / replay:", timing.format_ratio(timing.speedup(t_instantiate, t_replay)))
print("eager pass / replay: ", timing.format_ratio(timing.speedup(t_eager, t_replay)))"""

L_COST_PLOT = """\
# NBVAL_IGNORE_OUTPUT
fig, ax = plt.subplots(figsize=(7, 2.8))
ax.barh(list(phases), [t.ms for t in phases.values()],
        color=["tab:purple", "tab:red", "tab:green", "tab:green", "tab:orange"])
ax.set_xscale("log")
ax.invert_yaxis()
ax.set_xlabel("ms (log scale)")
ax.set_title(f"{N_KERNELS} tiny kernels: the cost of each phase, {timing.label()}", fontsize=10)
fig.tight_layout()
plt.show()"""

L_COST_VERDICT = """\
print("replay is the cheapest phase:", t_replay.ms < min(t_capture.ms, t_instantiate.ms))
print("instantiate costs more than a replay:", t_instantiate.ms > t_replay.ms)
print("a replay costs less than an eager pass:", t_replay.ms < t_eager.ms)"""

L_COST_AFTER = """\
Reading the figures:

* **capture** costs about as much host time as an eager pass: PyTorch runs the same Python
  and dispatcher code for every op and only records the launch instead of making it; on
  entry `torch.cuda.graph` also synchronises the device and empties the allocator's cache
  (older PyTorch versions also ran Python's garbage collector there).
* **instantiate** is CUDA's own one-off work, per node.
* **replay** is one call, and the GPU runs the nodes back to back.

Capture and instantiation are paid once per graph (and per input shape: lesson 05);
the saving comes back at every replay.
"""

L_WARMUP_MD = """\
---
## 3. Warm-up: what the first call pays

The first time a process runs some GPU work, it pays for things that later calls find ready:

* **lazy initialisation**: the CUDA context; kernel modules, which CUDA loads on their first
  launch; library handles and workspaces (the first matrix product creates a cuBLAS handle,
  the first convolution a cuDNN one);
* **allocator growth**: PyTorch's caching allocator asks CUDA for memory (`cudaMalloc`)
  until its cache holds enough blocks; later calls reuse them;
* **autotuning**: `torch.backends.cudnn.benchmark`, `torch.compile` and Triton try several
  kernels at the first call of each shape.

*Warm-up* runs the work before traffic arrives, so that the first real request does not pay
for any of this. With graphs it matters twice: the work must be warm **before** it is
captured (initialisation has no place in a recording that will be replayed), and capture +
instantiate should happen at start-up too, not when the first request arrives.

Three small servers show it. Each runs in a **fresh Python process**, a server that has just
started, and serves 21 requests to a small MLP (3 × Linear + ReLU, batch 8, width 512):

| server | at start-up | each request |
|---|---|---|
| eager | nothing | eager forward |
| graph built on the first request | nothing | the first request warms up, captures and instantiates; every request replays |
| graph built at start-up | warm-up, capture, instantiate | replay |

The eager server's later requests show what a warmed-up eager server would serve from the
start.

A request's latency is the host time from its arrival to its result (`timing.measure_host`).
"""

L_SERVER_CODE = '''\
SERVER = """
import json
from graphlab_utils import timing

torch.manual_seed(0)
layers = []
for _ in range(3):
    layers += [torch.nn.Linear(512, 512), torch.nn.ReLU()]
model = torch.nn.Sequential(*layers).to(DEVICE).eval()
static_x = torch.zeros(8, 512, device=DEVICE)                  # the request's input buffer
requests = [torch.randn(8, 512, device=DEVICE) for _ in range(21)]


def forward():
    with torch.no_grad():
        return model(static_x)


def build_graph():
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            forward()                                           # warm-up passes
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = forward()
    return g, out


graph = static_out = None
if STRATEGY == "graph built at start-up":
    graph, static_out = build_graph()


def serve(request):
    global graph, static_out
    static_x.copy_(request)
    if STRATEGY == "eager":
        return forward()
    if graph is None:                                           # the first request builds it
        graph, static_out = build_graph()
    graph.replay()
    return static_out


latency_ms = [timing.measure_host(lambda: serve(r)).median_ms for r in requests]
print(json.dumps(latency_ms))
"""

SERVERS = ["eager", "graph built on the first request", "graph built at start-up"]


def serve_in_fresh_process(strategy):
    """Start a new Python process (same backend), serve the requests, return their latencies."""
    result = run_isolated(f"STRATEGY = {strategy!r}\\n" + SERVER)
    if not result.ok:
        raise RuntimeError(result.summary())
    return json.loads(result.stdout.strip().splitlines()[-1])


# On a GPU the servers take turns, so that they do not disturb each other's timings. On the
# simulator each process has its own modelled clock, so they may run side by side.
with ThreadPoolExecutor(max_workers=1 if S.is_real else len(SERVERS)) as pool:
    latency = dict(zip(SERVERS, pool.map(serve_in_fresh_process, SERVERS)))
first = {name: ms[0] for name, ms in latency.items()}
steady = {name: statistics.median(ms[1:]) for name, ms in latency.items()}'''

L_SERVER_TABLE = """\
# NBVAL_IGNORE_OUTPUT
print(f"{'server':34s} {'first request':>14s} {'steady state':>13s} {'first/steady':>13s}")
for name in SERVERS:
    print(f"{name:34s} {timing.format_ms(first[name]):>14s} {timing.format_ms(steady[name]):>13s}"
          f" {timing.format_ratio(first[name] / steady[name]):>13s}")
print(f"figures {timing.label()}; steady state: the median of requests 2 to 21")
if timing.is_modelled():
    print("note: the simulator models no lazy initialisation: the eager server's first request costs what the others do")"""

L_SERVER_PLOT = """\
# NBVAL_IGNORE_OUTPUT
fig, ax = plt.subplots(figsize=(8, 3.2))
for name in SERVERS:
    ax.plot(range(1, len(latency[name]) + 1), latency[name], marker="o", ms=3, label=name)
ax.set_yscale("log")
ax.set_xlabel("request")
ax.set_ylabel("latency (ms, log scale)")
ax.set_title(f"latency per request in a fresh process, {timing.label()}", fontsize=10)
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()"""

L_SERVER_VERDICT = """\
LAZY, READY = "graph built on the first request", "graph built at start-up"
print("first request: graph built at start-up faster than graph built on the first request:",
      first[READY] < first[LAZY])
print("first request: graph built at start-up faster than eager:", first[READY] < first["eager"])
print("graph built on the first request: first request slower than its steady state:",
      first[LAZY] > steady[LAZY])
print("steady state: graph faster than eager:", steady[READY] < steady["eager"])"""

L_SERVER_AFTER = """\
What to take away:

* The server that builds its graph on the first request makes that request pay for the
  warm-up passes, the capture and the instantiation: its first latency is many times its
  steady state. Built at start-up, the graph serves the first request like every other.
* On a GPU the **eager** server also pays a first-call price (the first cuBLAS call, kernel
  loading, the allocator's first `cudaMalloc`s): its first request is slower than its later
  ones. One dummy pass at start-up moves that cost before the traffic.
* **What the simulator models.** Its cost model charges launches, kernels, captures and
  instantiations, so the lazy graph's expensive first request shows on both backends. It
  has no term for lazy initialisation or `cudaMalloc`, so on the simulator the eager server's
  first request costs what its later ones do; the cells that show this are not compared by
  the tests. The [figures measured on a real GPU](../reports/gpu/README.md) show the real
  first-call costs.

In production this is why inference servers capture their graphs while starting up (SGLang
and vLLM capture one per batch size, before they accept traffic), after a few warm-up passes.
"""

L_WIN_MD = """\
---
## 4. Where graphs win, and where they do not

**Many small kernels.** The course's standard chain, `workloads.chain(n, DEVICE)`: `n`
additions on 1024 floats, the same kind of work as `step()` above. For `n` from 1 to 1000 we
time one eager pass and one replay of its graph, with `timing.measure`: device time per
call, which on a GPU includes the gaps in which the GPU waits for the CPU to launch the next
kernel. That waiting is what makes eager execution of small kernels slow.
"""

L_WIN_CODE = """\
COUNTS = [1, 3, 10, 30, 100, 300, 1000]


def eager_and_replay(fn, repeat=10):
    \"\"\"Device time per call of fn, eagerly and as a graph (warmed up, captured, instantiated).\"\"\"
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return timing.measure(fn, repeat=repeat), timing.measure(g.replay, repeat=repeat)


sweep = {}
for n in COUNTS:
    fn, _ = workloads.chain(n, DEVICE)
    sweep[n] = eager_and_replay(fn)"""

L_WIN_PLOT = """\
# NBVAL_IGNORE_OUTPUT
eager_ms = [sweep[n][0].ms for n in COUNTS]
replay_ms = [sweep[n][1].ms for n in COUNTS]

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
ax1.loglog(COUNTS, eager_ms, "o-", color="tab:orange", label="eager")
ax1.loglog(COUNTS, replay_ms, "o-", color="tab:green", label="graph replay")
ax1.set_xlabel("kernels per iteration")
ax1.set_ylabel("time per iteration (ms)")
ax1.legend()
ax1.grid(alpha=0.3, which="both")
ax2.semilogx(COUNTS, [e / r for e, r in zip(eager_ms, replay_ms)], "o-", color="tab:blue")
ax2.axhline(1.0, color="grey", lw=0.8)
ax2.set_xlabel("kernels per iteration")
ax2.set_ylabel("speed-up (eager / replay)")
ax2.grid(alpha=0.3, which="both")
fig.suptitle(f"a chain of tiny kernels, {timing.label()}", fontsize=10)
fig.tight_layout()
plt.show()"""

L_FIT_MD = """\
Both curves are straight lines in `n`: a fixed cost plus a cost per kernel. A straight-line
fit over `n ≥ 10` gives the two figures that decide everything in this lesson. (The fit is
Theil–Sen's: the median of the slopes between pairs of points, so that one noisy
measurement cannot pull the line.)

* the slope of the eager line is the **per-kernel CPU launch cost** (Python, PyTorch's
  dispatcher, `cudaLaunchKernel`): the GPU finishes each tiny kernel sooner, so the CPU sets
  the pace;
* the slope of the replay line is the **per-node replay cost**: how fast the GPU's front end
  moves from one tiny node to the next, with no CPU in the loop.
"""

L_FIT_CODE = """\
# NBVAL_IGNORE_OUTPUT
def line_fit(xs, ys):
    \"\"\"Theil-Sen: the median pairwise slope, then the median intercept.\"\"\"
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i])
              for i in range(len(xs)) for j in range(i + 1, len(xs))]
    slope = float(np.median(slopes))
    return slope, float(np.median([y - slope * x for x, y in zip(xs, ys)]))


fit_n = [n for n in COUNTS if n >= 10]
launch_us, eager_fixed_us = line_fit(fit_n, [sweep[n][0].us for n in fit_n])
node_us, replay_fixed_us = line_fit(fit_n, [sweep[n][1].us for n in fit_n])

def modelled_or_measured(us):
    \"\"\"A fitted figure, labelled like every timing of the course.\"\"\"
    return timing.Timing(us / 1e3, [us / 1e3], timing.is_modelled(), timing.device_name())


print("per-kernel CPU launch cost (eager slope):   ", modelled_or_measured(launch_us))
print("per-node replay cost (replay slope):        ", modelled_or_measured(node_us))
print("fixed cost of one replay (replay intercept):", modelled_or_measured(replay_fixed_us))
print("speed-up the slopes promise for long chains:", timing.format_ratio(launch_us / node_us))
for n in COUNTS:
    e, r = sweep[n]
    print(f"{n:5d} kernel{'s' if n > 1 else ' '}: eager {timing.format_ms(e.ms):>9s},"
          f" replay {timing.format_ms(r.ms):>9s}, speed-up {timing.format_ratio(timing.speedup(e, r))}")"""

L_FIT_VERDICT = """\
print("graph replay faster than eager for 1000 tiny kernels:", sweep[1000][1].ms < sweep[1000][0].ms)
print("speed-up larger for 1000 kernels than for 1 kernel:",
      timing.speedup(*sweep[1000]) > timing.speedup(*sweep[1]))
print("a kernel costs more to launch eagerly than to replay as a graph node:", launch_us > node_us)"""

L_BIG_MD = """\
**One large kernel.** A square fp32 matrix product, `workloads.big_matmul(DEVICE, size)`, from
256 to 2048. Once the kernel itself takes far longer than its launch, the launch is hidden
behind the previous kernel (or is a sliver of one long one) and a graph has nothing left to
save.
"""

L_BIG_CODE = """\
SIZES = [256, 512, 1024, 2048]
big = {}
for size in SIZES:
    fn, _ = workloads.big_matmul(DEVICE, size=size)
    big[size] = eager_and_replay(fn, repeat=3)"""

L_BIG_TABLE = """\
# NBVAL_IGNORE_OUTPUT
print(f"{'matmul':>11s} {'GFLOP':>7s} {'eager':>10s} {'replay':>10s} {'speed-up':>9s}")
for size in SIZES:
    e, r = big[size]
    print(f"{size:>4d} x {size:<4d} {2 * size**3 / 1e9:7.2f} {timing.format_ms(e.ms):>10s}"
          f" {timing.format_ms(r.ms):>10s} {timing.format_ratio(timing.speedup(e, r)):>9s}")
print(f"figures {timing.label()}")"""

L_BIG_VERDICT = """\
gain = {size: timing.speedup(*big[size]) for size in SIZES}
print("one 2048x2048 matmul: replay within 10% of eager:", abs(gain[2048] - 1.0) < 0.10)
print("the gain shrinks as the kernel grows (256 vs 2048):", gain[256] > gain[2048])"""

L_BIG_AFTER = """\
The rule of thumb: a graph saves about *(launch cost − per-node cost)* per kernel, and only
where the CPU, not the GPU, sets the pace. Decode steps of an LLM at small batch, diffusion
steps at small resolution, and optimizer steps with many small tensors are launch-bound: graphs
pay there. A step dominated by a few large matrix products is not: a graph changes little.
"""

L_SUMMARY = """\
---
## 5. Summary

* **Capture** records and runs nothing (the counter did not move); it costs about an eager
  pass of host time, once.
* **Instantiate** (`cudaGraphInstantiate`) is the one-off preparation, per node;
  `CUDAGraph(keep_graph=True)` makes it a separate call you can time.
* **Replay** is one launch for the whole graph; inputs go in by `copy_` into the static
  input, results come out in the static output.
* **Warm-up** pays lazy initialisation before traffic and before capture; build graphs at
  start-up, not on the first request.
* Graphs win when many small kernels make the work **launch-bound**; for one large kernel
  the gain vanishes.
"""

L_EXERCISES = """\
---
## 6. Exercises

The [lab for this lesson](../labs/01_capture_instantiate_launch.ipynb) has four exercises,
each with a check:

1. **Capture by hand**: write `warm_up(fn)` (a side stream) and `capture(fn)` (a
   `CUDAGraph(keep_graph=True)`, captured but not instantiated).
2. **Replay with new inputs**: copy a new input into the static buffer and replay.
3. **Time the three phases**: capture, instantiate and replay, each on its own, next to eager.
4. **When graphs start to pay**: the kernel count from which a graph wins back its capture
   and instantiation over a given number of calls.

Questions to think about (answers folded):

<details><summary>Why can you not time instantiation on its own with <code>torch.cuda.CUDAGraph()</code>?</summary>

With the defaults PyTorch instantiates at the end of the capture, inside `capture_end()`,
and destroys the `cudaGraph_t`; timing the `with` block times both phases at once.
`keep_graph=True` keeps the `cudaGraph_t` and makes `instantiate()` a separate call.
</details>

<details><summary>A service captures a graph for each batch size the first time it sees it. What do users notice, and what is the fix?</summary>

The first request of every batch size pays the warm-up passes, the capture and the
instantiation (and, if the process is new, lazy initialisation): a latency spike of many
times the steady state. The fix is to warm up and capture every batch size at start-up,
before accepting traffic, as SGLang and vLLM do (lesson 05 builds such a runner).
</details>

<details><summary>Your model's step is one large matrix product and an activation. Will a graph help?</summary>

Hardly: with two kernels and a long one, the launch cost is a sliver of the step. Use the
fitted per-kernel launch cost: the saving is about that much per kernel, compared with the
step's total time.
</details>

---
**Next:** [02 · Streams and capture](02_streams_and_capture.ipynb): why capture happens on a
side stream, how work forked to other streams becomes parallel branches of the graph, and
what a capture forbids.
"""


def build_lesson() -> nbformat.NotebookNode:
    md, code = new_markdown_cell, new_code_cell
    cells = [
        md(L_TITLE, id="l01-title"),
        md(L_SETUP_MD, id="l01-setup-md"),
        code(SETUP_CODE, id="l01-setup"),
        md(L_PHASES_MD, id="l01-phases-md"),
        code(L_WORK_CODE, id="l01-work"),
        md(L_WARM_MD, id="l01-warm-md"),
        code(L_WARM_CODE, id="l01-warm"),
        md(L_CAPTURE_MD, id="l01-capture-md"),
        code(L_CAPTURE_CODE, id="l01-capture"),
        md(L_CAPTURE_AFTER, id="l01-capture-after"),
        md(L_INST_MD, id="l01-instantiate-md"),
        code(L_INST_CODE, id="l01-instantiate"),
        md(L_REPLAY_MD, id="l01-replay-md"),
        code(L_REPLAY_CODE, id="l01-replay"),
        md(L_NEW_MD, id="l01-new-md"),
        code(L_NEW_CODE, id="l01-new"),
        md(L_COST_MD, id="l01-cost-md"),
        code(L_COST_CODE, id="l01-cost"),
        code(L_COST_PLOT, id="l01-cost-plot"),
        code(L_COST_VERDICT, id="l01-cost-verdict"),
        md(L_COST_AFTER, id="l01-cost-after"),
        md(L_WARMUP_MD, id="l01-warmup-md"),
        code(L_SERVER_CODE, id="l01-servers"),
        code(L_SERVER_TABLE, id="l01-servers-table"),
        code(L_SERVER_PLOT, id="l01-servers-plot"),
        code(L_SERVER_VERDICT, id="l01-servers-verdict"),
        md(L_SERVER_AFTER, id="l01-servers-after"),
        md(L_WIN_MD, id="l01-win-md"),
        code(L_WIN_CODE, id="l01-win"),
        code(L_WIN_PLOT, id="l01-win-plot"),
        md(L_FIT_MD, id="l01-fit-md"),
        code(L_FIT_CODE, id="l01-fit"),
        code(L_FIT_VERDICT, id="l01-fit-verdict"),
        md(L_BIG_MD, id="l01-big-md"),
        code(L_BIG_CODE, id="l01-big"),
        code(L_BIG_TABLE, id="l01-big-table"),
        code(L_BIG_VERDICT, id="l01-big-verdict"),
        md(L_BIG_AFTER, id="l01-big-after"),
        md(L_SUMMARY, id="l01-summary"),
        md(L_EXERCISES, id="l01-exercises"),
    ]
    return new_notebook(cells=cells, metadata=metadata())


# =======================================================================================
# The lab, with its solutions
# =======================================================================================
S_TITLE = f"""\
# Lab 01 · Capture, instantiate, launch

[![Open In Colab]({BADGE})]({colab("labs")})

Exercises for [lesson 01](../notebooks/01_capture_instantiate_launch.ipynb). You will:

* **capture** a function by hand: warm it up on a side stream, record it in a graph that is
  not yet instantiated;
* **replay** the graph with new inputs;
* **time** the three phases, each on its own, with the course's timing helper;
* **find** the kernel count at which a graph starts to pay for itself.

Each exercise cell holds `# YOUR CODE HERE` and a `raise NotImplementedError(...)`: replace
both with your code, run the cell, then run the check below it. A check prints one line when
your answer is right; otherwise it says what it expected, what it saw, and the idea that
explains the difference. Hints are folded under *Hint*.
"""

S_SETUP_MD = """\
---
## Setup
"""

S_SETUP_CODE = SETUP_CODE.replace(
    "from graphlab_utils.isolation import run_isolated\n",
    "from graphlab_utils.checks.lesson01 import (check_capture, check_first_paying_count,\n"
    "                                            check_replay, check_time_phases)\n",
).replace("import json\nimport statistics\nfrom concurrent.futures import ThreadPoolExecutor\n\n", "").replace(
    "import matplotlib.pyplot as plt\nimport numpy as np\n", "")

S_HELPERS_MD = """\
The function you will capture in exercises 1 and 2 reads its input from a **static** tensor,
`static_x`: a graph bakes in the addresses of the tensors it reads, so new inputs must be
copied into that same tensor.
"""

S_HELPERS_CODE = """\
def small_layer(x):
    return torch.tanh(x * 2.0 + 1.0) * 0.5


static_x = torch.zeros(1024, device=DEVICE)


def layer():
    return small_layer(static_x)


def close(a, b):
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5))"""

S_EX1_MD = """\
---
## Exercise 1 · Capture by hand

Write two functions.

* `warm_up(fn, iters=3)`: call `fn()` `iters` times on a **side stream**, a
  `torch.cuda.Stream()` that first waits for the current stream; afterwards make the current
  stream wait for the side stream.
* `capture(fn)`: record **one** call of `fn()` in a new `torch.cuda.CUDAGraph(keep_graph=True)`
  and return `(graph, static_out)`, where `static_out` is what `fn()` returned inside the
  capture. Do **not** instantiate the graph: instantiation is the next phase, and you will time
  it on its own in exercise 3.

`fn` takes no argument: it reads its inputs from static tensors.

<details><summary>Hint</summary>

The side-stream warm-up is PyTorch's own recipe:

```python
side = torch.cuda.Stream()
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):
    ...                      # call fn() here
torch.cuda.current_stream().wait_stream(side)
```

For the capture, `with torch.cuda.graph(graph):` records everything launched inside the
block on its capture stream. Keep what `fn()` returns there: that tensor is the graph's
output buffer, rewritten by every replay. `graph.raw_cuda_graph_exec()` raises until the
graph is instantiated; the check uses it to see that your capture left instantiation alone.
</details>
"""

S_EX1_CODE = """\
def warm_up(fn, iters=3):
    \"\"\"Run fn() `iters` times on a side stream, then make the current stream wait for it.\"\"\"
    ### BEGIN SOLUTION warm up on a side stream
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(iters):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    ### END SOLUTION


def capture(fn):
    \"\"\"Capture one call of fn() in a CUDAGraph(keep_graph=True), not instantiated.
    Return (graph, static_out).\"\"\"
    ### BEGIN SOLUTION capture without instantiating
    graph = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(graph):
        static_out = fn()
    return graph, static_out
    ### END SOLUTION"""

S_EX1_CHECK = "check_capture(warm_up, capture)"

S_EX1_USE_MD = """\
Now use your two functions, one phase per cell: warm up on dummy data, load a request,
capture; then instantiate; then replay.
"""

S_EX1_USE_CODE = """\
static_x.zero_()                  # dummy data for the warm-up
warm_up(layer)
request = torch.randn(1024, device=DEVICE)
static_x.copy_(request)
graph, static_out = capture(layer)

try:
    graph.raw_cuda_graph_exec()
    print("instantiated after capture: True")
except RuntimeError:
    print("instantiated after capture: False")"""

S_EX1_INST = """\
graph.instantiate()
print("instantiated after instantiate():", graph.raw_cuda_graph_exec() is not None)"""

S_EX1_REPLAY = """\
graph.replay()
print("graph output equals eager after replay:", close(static_out, small_layer(request)))"""

S_EX2_MD = """\
---
## Exercise 2 · Replay with new inputs

Write `replay(graph, static_x, static_out, new_x)`: run the captured graph on the values of
`new_x` and return its result. The graph reads the **memory** of `static_x` and writes its
result into the memory of `static_out`. Replay the graph exactly once per call.

<details><summary>Hint</summary>

Two lines and a `return`: put the new values into the static input's memory
(`static_x.copy_(new_x)`), then `graph.replay()`, then return `static_out` (or a clone of it,
if the caller keeps results across replays: the next replay overwrites `static_out`). A
rebinding such as `static_x = new_x` only changes what the Python name points to; the graph
still reads the old buffer.
</details>
"""

S_EX2_CODE = """\
def replay(graph, static_x, static_out, new_x):
    \"\"\"Run the graph on the values of new_x (copied into static_x) and return its output.\"\"\"
    ### BEGIN SOLUTION copy the input in, replay, return the output
    static_x.copy_(new_x)
    graph.replay()
    return static_out
    ### END SOLUTION"""

S_EX2_CHECK = "check_replay(replay)"

S_EX2_USE = """\
requests = [torch.randn(1024, device=DEVICE) for _ in range(3)]
same = [close(replay(graph, static_x, static_out, r), small_layer(r)) for r in requests]
print(f"{len(requests)} requests, each equal to eager:", all(same))"""

S_EX3_MD = """\
---
## Exercise 3 · Time the three phases

Write `time_phases(fn)` that returns a dict of four timings from the course's timing helper:

| key | what | how |
|---|---|---|
| `"capture"` | your `capture(fn)` alone, after `warm_up(fn)` | `timing.measure_host` |
| `"instantiate"` | `graph.instantiate()` alone | `timing.measure_host` |
| `"replay"` | one `graph.replay()` | `timing.measure` (device time per call) |
| `"eager"` | one eager call `fn()` | `timing.measure` |

The check times the same phases itself, side by side, on a chain of 100 tiny kernels: each of
your timings must be within 3x of its own (on the simulator the clock is modelled, so they
agree exactly), and phases must not be swapped.

<details><summary>Hint</summary>

`timing.measure_host(f)` calls `f()` and discards what it returns, so keep the graph that
your capture makes in a dict (or a list) that `f` fills:

```python
box = {}
def do_capture():
    box["graph"], box["out"] = capture(fn)
t_capture = timing.measure_host(do_capture)
```

Warm up **before** you start the capture's clock: the warm-up is eager work, not capture.
</details>
"""

S_EX3_CODE = """\
def time_phases(fn):
    \"\"\"Warm up, then time capture, instantiate and replay of fn, and one eager call.\"\"\"
    ### BEGIN SOLUTION time each phase on its own
    warm_up(fn)
    box = {}

    def do_capture():
        box["graph"], box["out"] = capture(fn)

    t_capture = timing.measure_host(do_capture)
    graph = box["graph"]
    t_instantiate = timing.measure_host(graph.instantiate)
    return {
        "capture": t_capture,
        "instantiate": t_instantiate,
        "replay": timing.measure(graph.replay),
        "eager": timing.measure(fn),
    }
    ### END SOLUTION"""

S_EX3_CHECK = "check_time_phases(time_phases)"

S_EX3_USE_MD = """\
Your timings for a chain of 200 tiny kernels (they vary, so the tests do not compare this
cell's output):
"""

S_EX3_USE = """\
# NBVAL_IGNORE_OUTPUT
chain200, _ = workloads.chain(200, DEVICE)
mine = time_phases(chain200)
for name, t in mine.items():
    print(f"{name:12s} {t}")"""

S_EX3_VERDICT = """\
print("replay is the cheapest phase:", mine["replay"].ms < min(mine["capture"].ms, mine["instantiate"].ms))
print("replay faster than eager:", mine["replay"].ms < mine["eager"].ms)"""

S_EX4_MD = """\
---
## Exercise 4 · When do graphs start to pay?

Per call, a replay of tiny kernels beats an eager pass from the first few kernels on
(lesson 01, section 4). But capture and instantiation are paid once, up front, and a graph
that serves few calls may never win them back. Over `calls` calls a graph **pays** when

$$\\text{capture} + \\text{instantiate} + \\text{calls} \\times \\text{replay} \\;<\\; \\text{calls} \\times \\text{eager}.$$

Write `first_paying_count(sweep, calls)`. `sweep` maps a kernel count `n` to the dict your
`time_phases` returns for a chain of `n` kernels. Return the smallest count **from which**
the graph pays at that count and at every larger count of the sweep (measured sweeps are
noisy: one small count may pay by luck), or `None` if it does not pay at the largest count.
A `Timing` gives its median in ms as `.ms`.

<details><summary>Hint</summary>

Sort the counts and walk down from the largest: while the graph pays, remember the count;
stop at the first count that does not pay.
</details>
"""

S_EX4_CODE = """\
def first_paying_count(sweep, calls):
    \"\"\"The smallest kernel count from which a graph serving `calls` calls pays at every larger count.\"\"\"
    ### BEGIN SOLUTION walk down from the largest count
    answer = None
    for n in sorted(sweep, reverse=True):
        t = sweep[n]
        one_off = t["capture"].ms + t["instantiate"].ms
        if one_off + calls * t["replay"].ms >= calls * t["eager"].ms:
            break
        answer = n
    return answer
    ### END SOLUTION"""

S_EX4_CHECK = "check_first_paying_count(first_paying_count)"

S_EX4_SWEEP_MD = """\
Now measure a sweep with your `time_phases` and ask your function, for a graph that serves
1, 3, 10, 100 or 1000 calls before it is thrown away (for example, a rare batch size). The
answers depend on the machine, so this cell's output is not compared by the tests.
"""

S_EX4_SWEEP = """\
# NBVAL_IGNORE_OUTPUT
COUNTS = [1, 2, 5, 10, 20, 50, 100, 200, 500]
CALLS = [1, 3, 10, 100, 1000]
sweep = {}
for n in COUNTS:
    fn, _ = workloads.chain(n, DEVICE)
    sweep[n] = time_phases(fn)

answers = {calls: first_paying_count(sweep, calls) for calls in CALLS}
for calls, n in answers.items():
    print(f"a graph serving {calls:4d} call{'s' if calls > 1 else ' '} pays from",
          "no count of the sweep" if n is None else f"{n} kernel{'s' if n > 1 else ''} on")
print(f"figures {timing.label()}")"""

S_EX4_VERDICT = """\
def as_number(n):
    return float("inf") if n is None else n


ordered = [as_number(answers[calls]) for calls in CALLS]
print("the more calls a graph serves, the fewer kernels it needs to pay:",
      all(a >= b for a, b in zip(ordered, ordered[1:])))
print("a graph serving 1000 calls pays at 500 kernels:", answers[1000] is not None)"""

S_END = """\
---
## Wrap-up

* A capture records and runs nothing; with `keep_graph=True`, instantiation is a phase of its
  own, and replay is one call.
* New inputs go in by `copy_` into the static input; the result comes out in the static output.
* Capture and instantiation are one-off costs: a graph pays when its calls win them back,
  sooner the more kernels each call launches.

**Next:** [lesson 02 · Streams and capture](../notebooks/02_streams_and_capture.ipynb).
"""


def build_solution() -> nbformat.NotebookNode:
    md, code = new_markdown_cell, new_code_cell
    cells = [
        md(S_TITLE, id="lab01-title"),
        md(S_SETUP_MD, id="lab01-setup-md"),
        code(S_SETUP_CODE, id="lab01-setup"),
        md(S_HELPERS_MD, id="lab01-helpers-md"),
        code(S_HELPERS_CODE, id="lab01-helpers"),
        md(S_EX1_MD, id="lab01-ex1-md"),
        code(S_EX1_CODE, id="lab01-ex1", metadata={"tags": ["exercise"]}),
        code(S_EX1_CHECK, id="lab01-ex1-check"),
        md(S_EX1_USE_MD, id="lab01-ex1-use-md"),
        code(S_EX1_USE_CODE, id="lab01-ex1-capture"),
        code(S_EX1_INST, id="lab01-ex1-instantiate"),
        code(S_EX1_REPLAY, id="lab01-ex1-replay"),
        md(S_EX2_MD, id="lab01-ex2-md"),
        code(S_EX2_CODE, id="lab01-ex2", metadata={"tags": ["exercise"]}),
        code(S_EX2_CHECK, id="lab01-ex2-check"),
        code(S_EX2_USE, id="lab01-ex2-use"),
        md(S_EX3_MD, id="lab01-ex3-md"),
        code(S_EX3_CODE, id="lab01-ex3", metadata={"tags": ["exercise"]}),
        code(S_EX3_CHECK, id="lab01-ex3-check"),
        md(S_EX3_USE_MD, id="lab01-ex3-use-md"),
        code(S_EX3_USE, id="lab01-ex3-use"),
        code(S_EX3_VERDICT, id="lab01-ex3-verdict"),
        md(S_EX4_MD, id="lab01-ex4-md"),
        code(S_EX4_CODE, id="lab01-ex4", metadata={"tags": ["exercise"]}),
        code(S_EX4_CHECK, id="lab01-ex4-check"),
        md(S_EX4_SWEEP_MD, id="lab01-ex4-sweep-md"),
        code(S_EX4_SWEEP, id="lab01-ex4-sweep"),
        code(S_EX4_VERDICT, id="lab01-ex4-verdict"),
        md(S_END, id="lab01-end"),
    ]
    return new_notebook(cells=cells, metadata=metadata())


def metadata() -> dict:
    return {
        "accelerator": "GPU",
        "colab": {"gpuType": "T4", "provenance": [], "toc_visible": True},
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                       "name": "python3"},
        "language_info": {"name": "python"},
    }


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
    for path, nb in ((LESSON, build_lesson()), (SOLUTION, build_solution())):
        if args.execute:
            execute(nb, path)
        path.parent.mkdir(exist_ok=True)
        nbformat.validate(nb)
        nbformat.write(nb, str(path))
        print(f"wrote {path.relative_to(REPO)}" + (" (executed on the simulator)" if args.execute else ""))


if __name__ == "__main__":
    main()
