"""Write lesson 09 (the capstone) and its solution notebook.

    python tools/build_lesson09.py            # write both notebooks, without outputs
    python tools/build_lesson09.py --lesson   # the lesson only (or --solution)

Then execute them on the simulator, which stores the outputs nbval compares:

    GRAPHLAB_BACKEND=sim jupyter nbconvert --to notebook --execute --inplace notebooks/09_diffusion_warmup.ipynb
    GRAPHLAB_BACKEND=sim jupyter nbconvert --to notebook --execute --inplace solutions/09_diffusion_warmup.ipynb

and regenerate the lab with `graphlab build-labs`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]
STEM = "09_diffusion_warmup"
GITHUB = "cuda-graph-lab/cuda-graph-lab"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
METADATA = {
    "accelerator": "GPU",
    "colab": {"gpuType": "T4", "provenance": [], "toc_visible": True},
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
    "language_info": {
        "codemirror_mode": {"name": "ipython", "version": 3},
        "file_extension": ".py",
        "mimetype": "text/x-python",
        "name": "python",
        "nbconvert_exporter": "python",
        "pygments_lexer": "ipython3",
        "version": "3.11.7",
    },
}


def colab(folder: str) -> str:
    return f"https://colab.research.google.com/github/{GITHUB}/blob/main/{folder}/{STEM}.ipynb"


SETUP = f"""\
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


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


# =======================================================================================
# The lesson
# =======================================================================================
LESSON = [
    md(f"""
# 09 · Capstone: warming up a diffusion server

[![Open In Colab]({BADGE})]({colab("notebooks")})

A text-to-image server runs a UNet tens of times per image, and at batch 1 each UNet call is
a few hundred small kernels: the GPU spends most of a step waiting for the CPU to launch the
next one. CUDA graphs remove that wait, and every lesson of this course meets here. The
server must **warm up** before traffic (lesson 01), capture on **static buffers** fed by
`copy_` (lesson 04), keep the schedule's per-step numbers out of the kernel arguments
(lesson 03), hold one graph per **signature** (lesson 05), and return results equal to
eager PyTorch. This lesson builds such a server for a small UNet and a DDIM sampler with
classifier-free guidance, trap by trap.

**Learning objectives.** After this notebook you can:

* **list** what a warm-up warms, and **measure** the first request of a server started cold,
  after a plain warm-up, and after a warm-up that also captured its graphs;
* **capture** one denoising step, or the whole denoising loop, and **prove** the result
  equal to eager sampling;
* **reproduce** the timestep trap (a Python float baked into a kernel freezes the schedule)
  and **fix** it with static step tensors and device tables;
* **feed** real requests into graphs captured on dummy inputs, with `copy_` or with
  `torch.cuda.make_graphed_callables`, and **spot** the two stale-buffer traps;
* **build** an SGLang-style graph runner: graphs keyed by (batch, resolution, guidance,
  dtype), eager fallback on a miss, a bound on the number of graphs;
* **compare** eager, one graph per step, the whole loop as one graph and `torch.compile`.

The [figures measured on a real GPU](../reports/gpu/README.md) for this lesson are in the
course's GPU report; the side-by-side benchmark of every variant on an H100
(`benchmarks/diffusion.py`) is in the [diffusion report](../reports/diffusion/README.md).

**Contents**

1. Setup
2. The model and the sampler
3. What warm-up warms
4. Capture one step, then the whole loop
5. The timestep trap
6. Dummy inputs at warm-up, real inputs at serving
7. A diffusion graph runner
8. `torch.compile`, and the fastest variant
9. Summary
10. Exercises
"""),
    md("""
---
## 1. Setup

The same first cell as in every notebook: it picks the backend and prints one line saying
what runs.
"""),
    code(SETUP),
    md("""
Everything model-related lives in `graphlab_utils.models`, so that this lesson, its lab and
the GPU benchmark run the same code. The sizes depend on the backend: a GPU gets the real
workload (64 channels, 32x32 latents, 50 steps); the simulator, which pays Python overhead
for every op on a CPU, a smaller one (32 channels, 16x16 latents, 10 steps). The code below
is the same for both.
"""),
    code("""
import collections
import copy
import inspect
import json
from concurrent.futures import ThreadPoolExecutor

import matplotlib.pyplot as plt
from graphlab_utils import graphinfo, models, profiling, timing

cfg = models.config_for(S)            # the sizes for this backend
unet = models.build_unet(cfg, DEVICE)  # fixed random weights (no download), inference only
sched = models.DDIMSchedule(cfg.steps, DEVICE)
GUIDANCE = 7.5


def close(a, b):
    \"\"\"Equal to eager, for a 50-step sampler: relative error below 1e-3.\"\"\"
    return models.relative_error(a, b) < 1e-3


def timed(fn):
    \"\"\"Device time per call. Modelled times do not vary, so the simulator times one call.\"\"\"
    return timing.measure(fn, warmup=1, repeat=1 if S.is_sim else 10)
"""),
    code("""
# NBVAL_IGNORE_OUTPUT
print(f"{cfg.channels} channels, latents {cfg.latent_channels}x{cfg.size}x{cfg.size}, "
      f"{cfg.steps} DDIM steps, prompt embeddings {cfg.context_len}x{cfg.context_dim}")
print(f"{sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M parameters")
"""),
    md("""
---
## 2. The model and the sampler

**The UNet** (`models.TinyUNet`) predicts the noise in latents `x` at timesteps `t` for a
prompt embedding `context`: `eps = unet(x, t, context)`. It has what a Stable Diffusion UNet
has, only smaller: a sinusoidal timestep embedding, residual blocks with group norm,
down- and up-sampling with skip connections, and attention blocks that attend over the
pixels and, by cross-attention, to the prompt's 8 token embeddings (random tensors standing
in for a text encoder's output). Every argument is a positional tensor, the timestep
included. Count the ops of one call:
"""),
    code("""
latents, prompt = models.make_request(seed=0, batch=1, config=cfg, device=DEVICE)
context = models.guidance_context(prompt)    # (2, L, D): the empty prompt, then the prompt
x_in, t_in = torch.cat([latents, latents]), torch.full((2,), 500.0, device=DEVICE)
ops = models.count_ops(unet, x_in, t_in, context)
n_ops = sum(ops.values())
print("aten ops per UNet call (views not counted): between 200 and 400:", 200 <= n_ops <= 400)
"""),
    code("""
# NBVAL_IGNORE_OUTPUT
print(n_ops, "aten ops; the most frequent:", ", ".join(f"{name} {ops[name]}" for name in sorted(ops, key=ops.get, reverse=True)[:6]))
"""),
    md("""
Each of those ops is at least one kernel launch, and at batch 1 most kernels take a few
microseconds on a GPU: less than the CPU needs to launch them.

**The sampler** is DDIM with classifier-free guidance. Each step runs the UNet once on a
batch of 2B: the unconditional half (an "empty prompt" embedding) and the conditional half,
then mixes them, `eps = eps_uncond + scale * (eps_cond - eps_uncond)`, and moves the latents
one step: `x = coef_x[i] * x + coef_eps[i] * eps`. The schedule's numbers (timesteps,
`alphas_cumprod` and the two coefficients derived from it) are precomputed once as **device
tables**, and the step reads them at a step index that is itself a **tensor**. Here is the
whole step; section 5 shows why every number in it is a tensor:
"""),
    code("""
print(inspect.getsource(models.denoise_step))
"""),
    md("""
The eager reference: every step of one image, from seeded initial noise and a seeded
prompt. Every graphed variant below must give this result.
"""),
    code("""
reference = models.sample(unet, sched, latents, prompt, GUIDANCE)
print("final latents: the shape of the initial noise:", reference.shape == latents.shape,
      "| finite:", bool(torch.isfinite(reference).all()))
"""),
    md("""
Where does an eager step spend its time? Profile one step (`profiling.profile`, lesson 08)
and compare the GPU's busy time with the time the step takes:
"""),
    code("""
scale = torch.full((1,), GUIDANCE, device=DEVICE)
one_step = lambda: models.denoise_step(unet, sched, latents, sched.step_tensors[0], context, scale)  # noqa: E731
eager_trace = profiling.profile(one_step, warmup=1, title="eager step")
busy = eager_trace.summary()["busy_share"]
print("an eager step keeps the GPU busy less than half of the time:", busy < 0.5)
"""),
    code("""
# NBVAL_IGNORE_OUTPUT
print(f"GPU busy {busy:.0%} of an eager step; {eager_trace.counts()}")
profiling.plot_timeline(eager_trace)
plt.show()
"""),
    md("""
The CPU lane is a solid band of launches; the GPU lane is mostly gaps. That is what
*launch-bound* looks like, and what the rest of this lesson removes.
"""),
    md("""
---
## 3. What warm-up warms

A server's first request is slow for reasons that have nothing to do with the request:

| what | warmed by |
|---|---|
| the CUDA context, the weights on the GPU | loading the model (before traffic anyway) |
| cuBLAS and cuDNN handles and workspaces, cuDNN's choice of convolution algorithm (with `torch.backends.cudnn.benchmark`, a timed search) | the first convolution and matmul of each shape |
| kernel code: with lazy module loading (`CUDA_MODULE_LOADING=LAZY`, the default) each kernel is loaded on its first launch | the first call of each kernel |
| the caching allocator's blocks | the first pass that needs that memory |
| `torch.compile`: tracing, code generation, autotuning | the first call of each shape |
| **capture and instantiate** of the CUDA graphs | only a warm-up that captures them |

An eager pass on dummy inputs warms the first five. The last must be done on purpose: a
server that captures lazily, on the first request of each shape, makes that request pay for
eager warm-up passes, the capture and the instantiation (lesson 01).

Measure it. `start_and_serve` starts a server from scratch (load the model), warms it up in
one of three ways, and times its first two requests from arrival to result. The server
serves with one CUDA graph of a denoising step (section 4 builds it; `models.StepGraph`
packages it) and captures it lazily if it has none:
"""),
    code("""
def start_and_serve(warmup):
    \"\"\"A fresh server: load the model, warm up ("none", "plain" or "graphs"), time two requests.\"\"\"
    import graphlab_utils as gl
    from graphlab_utils import models, timing

    S = gl.setup(quiet=True)
    cfg = models.config_for(S)
    unet = models.build_unet(cfg, S.device)         # model loading: before traffic in any case
    sched = models.DDIMSchedule(cfg.steps, S.device)
    graphs = {}

    def serve(latents, prompt):
        if "step" not in graphs:                    # no graph yet: capture it on the request's path
            graphs["step"] = models.StepGraph(unet, sched)
        return graphs["step"](latents, prompt)

    if warmup in ("plain", "graphs"):               # one eager image on dummy inputs
        models.sample(unet, sched, *models.make_request(0, 1, cfg, S.device))
    if warmup == "graphs":                          # and the graph, captured and instantiated
        graphs["step"] = models.StepGraph(unet, sched)
    times = []
    for seed in (1, 2):
        request = models.make_request(seed, 1, cfg, S.device)
        times.append(timing.measure_host(lambda: serve(*request)).ms)
    return times
"""),
    md("""
Each start-up must be cold, so each one runs in a fresh Python process
(`gl.isolation.run_isolated`, the tool behind `%%run_isolated`). On a GPU they run one
after the other, not to share the GPU while timing; the simulator's modelled clocks do not
mind sharing the CPU.
"""),
    code("""
def in_fresh_process(fn, *args):
    \"\"\"Run fn(*args) in a new Python process on this backend; return its result (JSON).\"\"\"
    source = inspect.getsource(fn) + f"\\nprint('@@result@@' + __import__('json').dumps({fn.__name__}(*{args!r})))"
    run = gl.isolation.run_isolated(source)
    if not run.ok:
        raise RuntimeError(run.summary())
    return json.loads(run.stdout.rsplit("@@result@@", 1)[1])


WARMUPS = ("none", "plain", "graphs")
with ThreadPoolExecutor(max_workers=1 if S.is_real else len(WARMUPS)) as workers:
    first_two = dict(zip(WARMUPS, workers.map(lambda w: in_fresh_process(start_and_serve, w), WARMUPS)))

print("no warm-up: the first request is slower than the second:", first_two["none"][0] > first_two["none"][1])
print("plain warm-up: the first request is still slower than the second:", first_two["plain"][0] > first_two["plain"][1])
print("warm-up with capture: its first request is faster than after a plain warm-up:",
      first_two["graphs"][0] < first_two["plain"][0])
"""),
    code("""
# NBVAL_IGNORE_OUTPUT
for w in WARMUPS:
    first, second = first_two[w]
    print(f"warm-up {w:>6}: first request {timing.format_ms(first):>9}, second {timing.format_ms(second):>9} "
          f"({timing.format_ratio(first / second)} the second)")
print(f"host time from request to result, {timing.label()}")
fig, ax = plt.subplots(figsize=(7, 2.8))
xs = range(len(WARMUPS))
ax.bar([x - 0.2 for x in xs], [first_two[w][0] for w in WARMUPS], width=0.4, label="first request")
ax.bar([x + 0.2 for x in xs], [first_two[w][1] for w in WARMUPS], width=0.4, label="second request")
ax.set_xticks(list(xs), ["no warm-up", "plain warm-up", "warm-up + capture"])
ax.set_ylabel("ms per image")
ax.set_title(f"one image, batch 1 ({timing.label()})", fontsize=9)
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
"""),
    md("""
How to read it. Without warm-up, the first request pays for everything in the table above;
on a GPU the library initialisation alone can cost more than the image (the simulator does
not model it, so there "no warm-up" and "plain warm-up" cost the same). A plain warm-up
removes that, but its first request still pays the eager passes, the capture and the
instantiation of the graph. Only the warm-up that captured makes the first request cost
what every other request costs. **Warm-up is where the graphs are made.**

It must make them for the shapes that traffic will bring, with inputs that are dummies: the
rest of this lesson is about capturing on dummies without serving stale results.
"""),
    md("""
---
## 4. Capture one step, then the whole loop

**One graph per denoising step.** The graph reads four static buffers, allocated once and
filled with dummies at warm-up: the latents, the prompt context (both halves of the
guidance batch), the step index, and the guidance scale. A request is copied into them; then
each step sets the step index, replays, and copies the new latents back:
"""),
    code("""
static_x = torch.zeros(1, *cfg.latent_shape, device=DEVICE)                     # dummy latents
static_ctx = torch.zeros(2, cfg.context_len, cfg.context_dim, device=DEVICE)   # dummy prompt context
static_step = torch.zeros(1, dtype=torch.int64, device=DEVICE)                 # which step: read at replay
static_scale = torch.full((1,), GUIDANCE, device=DEVICE)                       # guidance scale


def step():
    return models.denoise_step(unet, sched, static_x, static_step, static_ctx, static_scale)


models.side_stream_warm_up(step)                    # PyTorch's recipe: eager passes on a side stream
step_graph = torch.cuda.CUDAGraph(keep_graph=True)  # keep_graph: to count its nodes below
with torch.cuda.graph(step_graph):
    static_next = step()
step_graph.instantiate()


def sample_step_graph(latents, prompt, guidance=GUIDANCE):
    static_x.copy_(latents)                                   # the request goes INTO the buffers
    static_ctx.copy_(models.guidance_context(prompt))
    static_scale.fill_(guidance)
    for i in range(sched.steps):
        static_step.fill_(i)                                  # the step index, as device data
        step_graph.replay()
        static_x.copy_(static_next)
    return static_x.clone()                                   # the buffers belong to the next request


print("one graph per step equals eager:", close(sample_step_graph(latents, prompt), reference))
"""),
    md("""
**The whole loop in one graph.** Unroll every step inside one capture. Step `i` indexes the
tables with `sched.step_tensors[i]`, a device tensor holding `i` that never changes, so the
loop needs no feeding but the request. One replay makes one image.
"""),
    code("""
def loop():
    x = static_x
    for i in range(sched.steps):
        x = models.denoise_step(unet, sched, x, sched.step_tensors[i], static_ctx, static_scale)
    return x


models.side_stream_warm_up(loop, iters=1)
loop_graph = torch.cuda.CUDAGraph(keep_graph=True)
with torch.cuda.graph(loop_graph):
    static_final = loop()
loop_graph.instantiate()


def sample_loop_graph(latents, prompt, guidance=GUIDANCE):
    static_x.copy_(latents)
    static_ctx.copy_(models.guidance_context(prompt))
    static_scale.fill_(guidance)
    loop_graph.replay()
    return static_final.clone()


print("the whole loop as one graph equals eager:", close(sample_loop_graph(latents, prompt), reference))
n_step, n_loop = graphinfo.node_count(step_graph), graphinfo.node_count(loop_graph)
print("nodes of the loop graph = steps x nodes of the step graph (within 2%):",
      abs(n_loop / n_step - cfg.steps) <= 0.02 * cfg.steps)
"""),
    md("""
The two graphs share the static input buffers, so they serve one request at a time, like
everything in a graph runner. New requests, new prompts, another guidance scale: `copy_` and
`fill_` are all it takes.
"""),
    code("""
for seed, guidance in ((1, 4.0), (2, 12.0)):
    lat, pr = models.make_request(seed, 1, cfg, DEVICE)
    ref = models.sample(unet, sched, lat, pr, guidance)
    print(f"request {seed}, guidance {guidance:>4}: step graph equals eager: {close(sample_step_graph(lat, pr, guidance), ref)}, "
          f"loop graph equals eager: {close(sample_loop_graph(lat, pr, guidance), ref)}")
"""),
    md("""
**How fast?** Time one image, eager and graphed, side by side (device time per image, CUDA
events on a GPU):
"""),
    code("""
t_eager = timed(lambda: models.sample(unet, sched, latents, prompt, GUIDANCE))
t_step = timed(lambda: sample_step_graph(latents, prompt))
t_loop = timed(lambda: sample_loop_graph(latents, prompt))
print("one graph per step is faster than eager:", t_step.ms < t_eager.ms)
print("the whole loop as one graph is faster than eager:", t_loop.ms < t_eager.ms)
graph_trace = profiling.profile(step_graph.replay, warmup=1, title="one replay of the step graph")
print("a replay keeps the GPU busier than an eager step:", graph_trace.summary()["busy_share"] > busy)
"""),
    code("""
# NBVAL_IGNORE_OUTPUT
for name, t in (("eager", t_eager), ("one graph per step", t_step), ("whole loop, one graph", t_loop)):
    print(f"{name:<22} {t.ms:8.2f} ms per image   {timing.format_ratio(timing.speedup(t_eager, t)):>6} vs eager")
print(f"batch 1, {cfg.steps} steps; {timing.label()}")
print(f"nodes: step graph {n_step}, loop graph {n_loop}; "
      f"GPU busy during one step replay: {graph_trace.summary()['busy_share']:.0%}")
fig, ax = plt.subplots(figsize=(7, 2.4))
names = ["eager", "graph per step", "whole loop"]
ax.barh(names, [t_eager.ms, t_step.ms, t_loop.ms], color=["tab:gray", "tab:blue", "tab:green"])
ax.invert_yaxis()
ax.set_xlabel("ms per image")
ax.set_title(f"batch 1, {cfg.steps} steps ({timing.label()})", fontsize=9)
fig.tight_layout()
plt.show()
"""),
    md("""
On an H100 both graphed variants run this model several times faster than eager at
batch 1; the [diffusion report](../reports/diffusion/README.md) has the measured figures.
The two graphed variants are close to each other: 50 launches of a step graph cost little
next to the step itself. They differ elsewhere:

| | one graph per step | the whole loop as one graph |
|---|---|---|
| launches per image | one per step, plus a `fill_` and a `copy_` | one |
| capture and instantiate | one step's nodes | every step's nodes (steps x more: slower warm-up, more memory for the executable graph) |
| number of steps | any, chosen per request | baked in: another count needs another graph |
| schedule numbers | read through the step-index tensor | read from `sched.step_tensors[i]`, fixed per step |
| per-step work on the CPU (a callback, early exit, a progress bar) | possible between replays | impossible inside the replay |

And at a larger batch? Each kernel has more to do, so launches matter less, but a graph
still removes them:
"""),
    code("""
lat4, pr4 = models.make_request(seed=4, batch=4, config=cfg, device=DEVICE)
graph4 = models.StepGraph(unet, sched, batch=4)     # section 4's step graph, packaged, for batch 4
print("batch 4: one graph per step equals eager:", close(graph4(lat4, pr4), models.sample(unet, sched, lat4, pr4)))
t_eager4 = timed(lambda: models.sample(unet, sched, lat4, pr4))
t_step4 = timed(lambda: graph4(lat4, pr4))
print("batch 4: one graph per step is faster than eager:", t_step4.ms < t_eager4.ms)
"""),
    code("""
# NBVAL_IGNORE_OUTPUT
print(f"batch 1: {timing.format_ratio(timing.speedup(t_eager, t_step))} faster than eager, "
      f"{t_step.ms:.2f} ms per image")
print(f"batch 4: {timing.format_ratio(timing.speedup(t_eager4, t_step4))} faster than eager, "
      f"{t_step4.ms / 4:.2f} ms per image; {timing.label()}")
"""),
    md("""
---
## 5. The timestep trap

Here is the step as it is often first written: the timestep and the two coefficients of
step `i` are Python floats, read from lists on the host.
"""),
    code("""
print(inspect.getsource(models.denoise_step_baked))
"""),
    md("""
Eagerly it is exactly right (the models module's tests check that). Now capture it at
warm-up, at step 0, and serve with it as before: copy the request in, replay once per step,
copy the latents back.
"""),
    code("""
def baked_step():
    return models.denoise_step_baked(unet, sched, static_x, 0, static_ctx, GUIDANCE)


models.side_stream_warm_up(baked_step)
baked_graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(baked_graph):
    static_baked_next = baked_step()


def sample_baked_graph(latents, prompt):
    static_x.copy_(latents)
    static_ctx.copy_(models.guidance_context(prompt))
    for i in range(sched.steps):
        baked_graph.replay()          # nothing tells the graph which step this is
        static_x.copy_(static_baked_next)
    return static_x.clone()


frozen = sample_baked_graph(latents, prompt)
err = models.relative_error(frozen, reference)
print(f"relative error against eager > 1e-2: {err > 1e-2}")
"""),
    md("""
`torch.full((n,), t)` became a fill kernel whose argument is the number `t` of step 0, and
`x * coef` became a multiply kernel whose scalar argument is step 0's coefficient: kernel
arguments are **baked** into the graph at capture (lesson 04), numbers as well as addresses.
Every replay runs step 0 again. Check it: apply step 0, eagerly, as many times as there are
steps.
"""),
    code("""
with torch.no_grad():
    x = latents
    for _ in range(sched.steps):
        x = models.denoise_step_baked(unet, sched, x, 0, context, GUIDANCE)
print("the graph ran step 0 at every step:", models.relative_error(frozen, x) < 1e-3)
"""),
    code("""
# NBVAL_IGNORE_OUTPUT
def show(ax, lat, title):
    img = lat[0, :3].float().cpu()
    img = (img - img.amin()) / (img.amax() - img.amin() + 1e-8)
    ax.imshow(img.permute(1, 2, 0).numpy())
    ax.set_title(title, fontsize=9)
    ax.axis("off")


fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.7))
show(axes[0], latents, "initial noise")
show(axes[1], reference, "eager (and graphs, done right)")
show(axes[2], frozen, "graph with baked floats")
fig.suptitle("final latents, 3 of 4 channels as RGB", fontsize=9)
fig.tight_layout()
plt.show()
print(f"relative error of the baked graph: {err:.3g}")
"""),
    md("""
**The fix** is what `models.denoise_step` does, and what section 4 used: every number that
changes from one replay to the next travels as **device data** at a fixed address. The
schedule is a set of device tables (`sched.timesteps`, `sched.coef_x`, `sched.coef_eps`), and
the step reads them at a step-index tensor with `index_select`; before each replay,
`static_step.fill_(i)` writes the index. The same holds for the guidance scale
(`static_scale.fill_(...)`) and for anything else a request may change. Two quick rules to
find the trap in review: no `float(...)`, `.item()` or Python-list lookup inside a captured
function, and no Python number that changes between calls in any op's arguments.

The trap has relatives: a Python `if` on the step (lesson 03), `torch.tensor([t],
device=...)` (a copy from the host: at best a value fixed at capture, at worst a failed
capture), a scheduler object that
keeps `self.step_index` as a Python int. `torch.cuda.make_graphed_callables` refuses the
float outright (next section); a hand-written capture does not.
"""),
    md("""
---
## 6. Dummy inputs at warm-up, real inputs at serving

Warm-up captures before any real request exists, so it captures on dummies. What matters is
*where* the dummies live. Section 4 put them in static buffers, and requests went in with
`copy_`. Here is the other way, which looks just as natural in a warm-up function: capture
on a dummy request's own tensors, then pass the real request's tensors to the "served" step
by rebinding Python names.
"""),
    code("""
dummy_x, dummy_prompt = models.make_request(seed=99, batch=1, config=cfg, device=DEVICE)   # warm-up's dummies
dummy_ctx = models.guidance_context(dummy_prompt)
step0 = sched.step_tensors[0]


def warm_step(x, ctx):
    return models.denoise_step(unet, sched, x, step0, ctx, static_scale)


models.side_stream_warm_up(lambda: warm_step(dummy_x, dummy_ctx))
temp_graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(temp_graph):
    temp_out = warm_step(dummy_x, dummy_ctx)


def serve_first_step(latents, prompt):
    x, ctx = latents, models.guidance_context(prompt)   # new names, new tensors: the graph never sees them
    temp_graph.replay()
    return temp_out.clone()


a = serve_first_step(*models.make_request(1, 1, cfg, DEVICE))
b = serve_first_step(*models.make_request(2, 1, cfg, DEVICE))
lat1, pr1 = models.make_request(1, 1, cfg, DEVICE)
eager_first = models.denoise_step(unet, sched, lat1, step0, models.guidance_context(pr1), static_scale)
print("two different requests get the same result (stale):", close(a, b))
print("the result equals eager for the request:", close(a, eager_first))
print("the result equals eager for the warm-up's dummy:", close(a, warm_step(dummy_x, dummy_ctx)))
"""),
    md("""
The graph reads the dummy's memory forever. Here the dummies are still alive, so the answer
is merely stale; had the warm-up function returned and freed them, their memory would go to
the next tensors allocated, and replays would compute on whatever those hold (lesson 04). The
rule: **capture on buffers that outlive the graph, and copy every request into them.**
`StepGraph` and `LoopGraph` in `graphlab_utils.models` are section 4's code packaged that way.

### `torch.cuda.make_graphed_callables`

PyTorch's own wrapper does the static-buffer bookkeeping for you. Give it a module and
sample arguments; it warms the module up, captures it, and returns the module with a new
`forward` that copies each call's arguments into the sample tensors (the static inputs),
replays, and returns the static outputs. Wrap a **copy** of the UNet (it replaces the
module's `forward` in place) for the guidance batch of 2, and sample with it as if it were
the UNet:
"""),
    code("""
sample_args = (torch.zeros(2, *cfg.latent_shape, device=DEVICE),                 # dummies, they become
               torch.zeros(2, device=DEVICE),                                     # the static inputs
               torch.zeros(2, cfg.context_len, cfg.context_dim, device=DEVICE))
with torch.no_grad():  # inference: no backward graph is captured
    graphed_unet = torch.cuda.make_graphed_callables(copy.deepcopy(unet), sample_args)

with_graphed_unet = models.sample(graphed_unet, sched, latents, prompt, GUIDANCE)
print("sampling with the graphed UNet equals eager:", close(with_graphed_unet, reference))
t_mgc = timed(lambda: models.sample(graphed_unet, sched, latents, prompt, GUIDANCE))
print("and is faster than eager:", t_mgc.ms < t_eager.ms)
"""),
    md("""
Its constraints, each one a line of its documentation:

* **tensors only, positional only.** A Python float timestep is refused (good: no timestep
  trap), and so is a keyword argument: call it `graphed_unet(x, t, context)`.
* **`requires_grad` must match** between the sample arguments and every real call, and with
  trainable parameters and grad mode on it also captures a **backward** graph (memory for
  nothing at inference). Freeze the weights and wrap in `torch.no_grad()`, as above.
* **module state is frozen**: no hooks, and the parameters must not be replaced (updated in
  place is fine); the graph replays while the module's `training` flag is the one it saw.
* **outputs are static buffers**, overwritten by the next call (see below).
* only the module is graphed: the loop, the guidance mix and the DDIM update stay eager
  kernels, so it is slower than graphing the whole step.
"""),
    code("""
for what, call in (
    ("a float timestep", lambda: torch.cuda.make_graphed_callables(copy.deepcopy(unet), (sample_args[0], 500.0, sample_args[2]))),
    ("a keyword argument", lambda: graphed_unet(sample_args[0], sample_args[1], context=sample_args[2])),
):
    try:
        call()
        print(f"{what}: accepted")
    except (AssertionError, TypeError) as exc:
        why = "only Tensors" if "only Tensors" in str(exc) else "unexpected keyword argument" if "unexpected keyword" in str(exc) else str(exc)
        print(f"{what}: {type(exc).__name__} ({why})")
"""),
    md("""
**Branches that share a buffer.** Classifier-free guidance is often written as two UNet
calls, unconditional then conditional, on batch-B inputs. With a graphed UNet both calls
return the *same* static output tensor, so the second call overwrites the first branch's
noise before the guidance mix reads it:
"""),
    code("""
one_args = (torch.zeros(1, *cfg.latent_shape, device=DEVICE), torch.zeros(1, device=DEVICE),
            torch.zeros(1, cfg.context_len, cfg.context_dim, device=DEVICE))
with torch.no_grad():
    graphed_b1 = torch.cuda.make_graphed_callables(copy.deepcopy(unet), one_args)   # a UNet graphed for batch 1


def sample_two_calls(latents, prompt, clone_first):
    x, uncond = latents, models.null_context(prompt)
    for i in range(sched.steps):
        t = sched.timesteps[i:i + 1]
        eps_uncond = graphed_b1(x, t, uncond)
        if clone_first:
            eps_uncond = eps_uncond.clone()           # keep the first branch before the next replay
        eps_cond = graphed_b1(x, t, prompt)
        eps = eps_uncond + GUIDANCE * (eps_cond - eps_uncond)
        x = x * sched.coef_x[i] + eps * sched.coef_eps[i]
    return x


with torch.no_grad():
    e1 = graphed_b1(latents, sched.timesteps[:1], prompt)
    e2 = graphed_b1(latents, sched.timesteps[:1], models.null_context(prompt))
    print("two calls return the same buffer:", e1.data_ptr() == e2.data_ptr())
    print("two calls, no clone: equals eager:", close(sample_two_calls(latents, prompt, False), reference))
    print("two calls, clone the first branch: equals eager:", close(sample_two_calls(latents, prompt, True), reference))
"""),
    md("""
Without the clone, `eps_uncond` *is* `eps_cond` by the time it is read, the guidance term
vanishes, and the server silently serves unguided images. The batch-of-2B formulation of
`models.denoise_step` has no such hazard (one call, two halves of one output) and launches
half as many kernels.
"""),
    md("""
---
## 7. A diffusion graph runner

A server sees a handful of request shapes: a few batch sizes, one or two resolutions,
guidance on or off, one dtype. A graph is specialised to all four (lesson 05), so the runner
keys its graphs by that **signature**, `models.Signature(batch, size, guidance, dtype)`, in
the style of SGLang's `CudaGraphRunner`:

* **warm-up** captures one graph per expected signature, the largest first, all in **one
  memory pool** (graphs of one runner never run at the same time);
* a request whose signature has a graph is copied into that graph's static buffers and
  replayed; the result is **cloned** out (the buffers belong to the next request);
* a **miss** falls back to eager sampling and is **counted**: a miss counter that grows in
  production says the warm-up list is wrong;
* the number of graphs is **bounded** (each holds an executable graph, static buffers and a
  share of the pool): here the least recently used one is dropped; refusing new ones is the
  other policy.
"""),
    code("""
class DiffusionRunner:
    \"\"\"CUDA graphs keyed by signature, captured at warm-up; eager on a miss; at most max_graphs.\"\"\"

    def __init__(self, unet, sched, max_graphs=4):
        self.unet, self.sched, self.max_graphs = unet, sched, max_graphs
        self.graphs = collections.OrderedDict()     # Signature -> StepGraph, least recently used first
        self.pool = torch.cuda.graph_pool_handle()  # one memory pool for every graph
        self.replays = self.misses = self.evictions = 0

    def warm_up(self, signatures):
        by_size = sorted(signatures, key=lambda s: s.batch * s.size ** 2 * (2 if s.guidance else 1), reverse=True)
        for sig in by_size:                          # the largest first
            self.capture(sig)

    def capture(self, sig):
        if len(self.graphs) >= self.max_graphs:     # full: drop the least recently used graph
            _, old = self.graphs.popitem(last=False)
            old.graph.reset()
            self.evictions += 1
        self.graphs[sig] = models.StepGraph(self.unet, self.sched, sig.batch, sig.size, sig.guidance, pool=self.pool)

    def __call__(self, latents, prompt, guidance=GUIDANCE):
        sig = models.signature_of(latents, guidance)
        if sig not in self.graphs:                  # a miss: serve it eagerly, and count it
            self.misses += 1
            return models.sample(self.unet, self.sched, latents, prompt, guidance)
        self.graphs.move_to_end(sig)                # most recently used
        self.replays += 1
        return self.graphs[sig](latents, prompt, guidance)   # copy_ in, replay per step, clone out
"""),
    code("""
S1, S2 = cfg.size, 2 * cfg.size
runner = DiffusionRunner(unet, sched, max_graphs=4)
runner.warm_up([models.Signature(1, S1, True), models.Signature(2, S1, True), models.Signature(1, S1, False)])
print("captured at warm-up, in this order:", [f"batch {s.batch} {'guided' if s.guidance else 'unguided'}" for s in runner.graphs])

requests = [  # (seed, batch, size, guidance)
    (10, 1, S1, GUIDANCE), (11, 2, S1, 5.0), (12, 1, S1, None), (13, 3, S1, GUIDANCE), (14, 1, S2, GUIDANCE),
]
for seed, batch, size, guidance in requests:
    lat, pr = models.make_request(seed, batch, cfg, DEVICE, size=size)
    before = runner.misses
    out = runner(lat, pr, guidance)
    how = "eager (miss)" if runner.misses > before else "graph"
    print(f"batch {batch}, {'base' if size == S1 else 'double'} size, guidance {str(guidance):>4}: {how:<13}"
          f"equals eager: {close(out, models.sample(unet, sched, lat, pr, guidance))}")
print("replays:", runner.replays, "| misses:", runner.misses)
"""),
    md("""
Bound the cache at two graphs and warm up three signatures: the least recently used is
dropped, and its signature becomes a miss.
"""),
    code("""
small = DiffusionRunner(unet, sched, max_graphs=2)
small.warm_up([models.Signature(1, S1, True), models.Signature(2, S1, True), models.Signature(1, S1, False)])
print("graphs held:", len(small.graphs), "| evictions:", small.evictions)
lat, pr = models.make_request(20, 2, cfg, DEVICE)   # batch 2, guided: captured first, dropped since
out = small(lat, pr)
print("the dropped signature is served eagerly:", small.misses == 1, "| equals eager:", close(out, models.sample(unet, sched, lat, pr)))
"""),
    md("""
What the runner does not do, and production runners do: capture on a miss in the background
(never on the request's path), pad a batch up to a captured batch size (lesson 05; safe here
because the UNet never mixes the images of a batch), keep the graphs of a few hot
resolutions only, and check free memory before each capture.
"""),
    md("""
---
## 8. `torch.compile`, and the fastest variant

`torch.compile` attacks the same cost from another side. Its default mode **fuses** the
elementwise ops (group norm's epilogue, SiLU, the adds, the guidance mix, the DDIM update)
into fewer, generated kernels: fewer launches, but still launches. `mode="reduce-overhead"`
adds CUDA graphs (PyTorch's "CUDA graph trees"), captured per compiled call, here per step.
The course's fastest variant combines the two by hand: compile the step in the default mode,
warm it up (that compiles it), then capture the **whole loop of compiled steps** in one
graph (`models.LoopGraph(..., step_fn=compiled)`): fused kernels and a single launch.

On a GPU the cell below runs both; it compiles, which takes a minute or two. On the
simulator it says it skips them: `torch.compile` generates kernels for a real GPU. The
side-by-side figures on an H100 for every variant, batch 1 and 4, with each variant's
difference from eager and the GPU's busy share, are in the
[diffusion report](../reports/diffusion/README.md) (`benchmarks/diffusion.py`).
"""),
    code("""
# NBVAL_IGNORE_OUTPUT
if not models.compile_available():
    print(models.COMPILE_SKIPPED)
else:
    results = {"eager": (t_eager, reference)}
    try:
        reduce_overhead = models.CompiledSampler(unet, sched, mode="reduce-overhead")
        for _ in range(2):
            reduce_overhead(latents, prompt)   # the first calls compile and record
        results['torch.compile(mode="reduce-overhead")'] = (
            timed(lambda: reduce_overhead(latents, prompt)), reduce_overhead(latents, prompt))
    except Exception as exc:  # report and go on: the rest of the lesson does not need it
        print(f"reduce-overhead failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    try:
        compiled = models.compiled_step(unet, sched)   # default mode: fused kernels, no graphs
        fastest = models.LoopGraph(unet, sched, step_fn=compiled, warmup_iters=2)
        results["compile (default) + whole loop captured by hand"] = (
            timed(lambda: fastest(latents, prompt)), fastest(latents, prompt))
    except Exception as exc:
        print(f"compile + loop graph failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    results["one graph per step"] = (t_step, sample_step_graph(latents, prompt))
    results["whole loop, one graph"] = (t_loop, sample_loop_graph(latents, prompt))
    for name, (t, out) in results.items():
        print(f"{name:<50} {t.ms:8.2f} ms  {timing.format_ratio(timing.speedup(t_eager, t)):>6} vs eager  "
              f"relative error {models.relative_error(out, reference):.1e}")
    print(timing.label())
"""),
    md("""
Two notes for reading such a table. Compiled kernels are not bit-identical to eager ones
(fusion reorders floating-point sums, and with TF32 enabled matmuls and convolutions round
differently), so compare final latents with a relative tolerance, and compare with TF32 off
when the question is "same algorithm?". And time after warm-up, always: a compiled variant's
first call costs seconds.
"""),
    md("""
---
## 9. Summary

| question | answer |
|---|---|
| what does warm-up warm? | library handles and algorithm choices, lazily loaded kernels, allocator blocks, compiled code, **and**, only if it captures, the CUDA graphs themselves |
| first request after a plain warm-up? | still pays eager passes + capture + instantiate when graphs are captured lazily |
| one graph per step or the whole loop? | about the same speed; the loop launches once but bakes the number of steps and captures steps x more nodes |
| the timestep trap | a Python float (timestep, coefficient, guidance scale) is a kernel argument, baked at capture: every replay reuses the warm-up's value. Feed it as device data: static tensors, device tables indexed by a step tensor, `fill_`/`copy_` before each replay |
| dummy vs real inputs | capture on static buffers that outlive the graph; `copy_` each request in; never rebind names, never capture on temporaries |
| `make_graphed_callables` | copies inputs in for you; tensors only, positional only, `requires_grad` must match, outputs are shared buffers: clone a branch you keep across calls |
| a graph runner | graphs keyed by (batch, resolution, guidance, dtype), captured at warm-up, largest first, one pool; eager fallback and a miss counter; a bound on the number of graphs; outputs cloned |
| equal to eager? | yes, to rounding: check final latents with a relative error |

**The interview answer in one line:** a diffusion server's warm-up runs the model on dummy
inputs (lazy initialisation) and captures one graph per expected signature into static
buffers, feeding the timestep and schedule as device tensors; real requests are copied into
those buffers and replayed, misses run eagerly and are counted.
"""),
    md("""
---
## 10. Exercises

The lab [`labs/09_diffusion_warmup.ipynb`](../labs/09_diffusion_warmup.ipynb) asks you to
build the runner yourself, piece by piece:

1. `capture_step(unet, sched, static)`: capture one denoising step on static buffers, with
   the timestep fed safely; the check replays it at several steps and requests against eager,
   and tells the timestep trap and the stale-input trap apart;
2. `sample_with_graph(...)`: serve one request with that graph: copy in, step index, replay,
   copy back, clone out;
3. a `Runner` class: graphs per signature captured at warm-up, eager fallback with a miss
   counter, a bound on the number of graphs; checked against eager for several prompts,
   seeds and signatures, and timed against eager.

Questions to answer before you open it:

1. A colleague's server captures its graphs on the first request of each shape. Users
   complain that "the first image after a deploy is slow". What do you change?
   <details><summary>Answer</summary>Capture at warm-up, for every signature traffic will
   bring, before the server takes traffic (and keep a miss counter to learn which
   signatures were forgotten). A plain eager warm-up is not enough: the first request would
   still pay the eager passes, the capture and the instantiation.</details>
2. After moving to CUDA graphs, every image comes out as a blurry copy of the same texture,
   whatever the prompt. Name two likely causes.
   <details><summary>Answer</summary>The timestep (or a schedule coefficient) was passed as a
   Python number and is baked at the warm-up's step; or the graph was captured on temporary
   dummy tensors and real requests never reach it (rebinding instead of `copy_`). Compare
   with eager for two requests and two steps to tell them apart.</details>
3. Why does `make_graphed_callables` refuse a float argument?
   <details><summary>Answer</summary>Its graphed function copies each call's tensors into
   the static input tensors; a float has no memory to copy into, so it would be baked into
   the graph. Refusing it prevents the timestep trap.</details>
4. Guidance as two UNet calls through a graphed UNet gives unguided images. Why?
   <details><summary>Answer</summary>Both calls return the same static output tensor; the
   second call overwrites the first branch before the guidance mix reads it. Clone the first
   output, or run both branches as one batch of 2B.</details>
5. Why capture the largest signature first and share one pool?
   <details><summary>Answer</summary>The graphs of one runner never run at the same time, so
   they can share memory; the largest capture leaves free blocks that smaller ones reuse, so
   the pool stays close to the largest graph's needs (lesson 05).</details>
6. One graph per step, or the whole loop as one graph?
   <details><summary>Answer</summary>Per step when the number of steps varies per request,
   or when the CPU has work between steps (callbacks, early exit); the whole loop when the
   step count is fixed and the last launch overheads matter. They are close in speed; the
   loop costs steps x more capture, instantiation and graph memory.</details>

---
**Next:** [10 · Interview drills](10_interview_drills.ipynb): the classic questions, each
with a runnable proof, and broken snippets to fix.
"""),
]

# =======================================================================================
# The lab (solutions/ is its single source; `graphlab build-labs` writes labs/)
# =======================================================================================
SOLUTION = [
    md(f"""
# Lab 09 · Capstone: a diffusion graph runner

[![Open In Colab]({BADGE})]({colab("labs")})

Exercises for [lesson 09](../notebooks/09_diffusion_warmup.ipynb). You will build, piece by
piece, the graph runner of a diffusion server:

* **capture** one denoising step on static buffers, with the timestep fed as device data;
* **serve** a request with that graph: copy in, set the step, replay, copy back, clone out;
* **build** a runner that captures one graph per signature at warm-up, replays on a hit,
  falls back to eager sampling on a miss and counts it, and bounds its number of graphs;
* **measure** a hit against eager sampling.

The lab runs the lesson's UNet and DDIM sampler at a small size (16 channels, 8x8 latents,
4 steps), the same on a GPU and on the simulator, so that the checks stay quick. Each
exercise cell holds `# YOUR CODE HERE` and a `raise NotImplementedError(...)`: replace both
with your code, run the cell, then run the check below it. A check prints one line when your
answer is right; otherwise it says what it expected, what it saw, and the idea that explains
the difference. Hints are folded under *Hint*.
"""),
    md("""
---
## Setup
"""),
    code(SETUP.replace("import torch\n", "import collections\n\nimport torch\n") + """
from graphlab_utils import models, timing
from graphlab_utils.checks.lesson09 import (LAB_CONFIG, check_capture_step, check_runner,
                                            check_runner_speed, check_sample_with_graph, lab_model)

unet, sched = lab_model(DEVICE)   # the lesson's UNet and DDIM schedule at the lab's size
GUIDANCE = models.GUIDANCE"""),
    md("""
What you work with, all from `graphlab_utils.models` (lesson 09 shows each one):

| name | what |
|---|---|
| `models.denoise_step(unet, sched, x, step, context, scale)` | one DDIM step; `step` is a (1,) int64 tensor, `scale` a (1,) tensor (or `None`: no guidance); with guidance `context` holds 2B rows, the empty prompt first |
| `models.StaticBuffers.for_model(unet, batch, size, guidance)` | the buffers a graph reads: `.x`, `.context`, `.step`, `.scale`, filled with dummies; `.load(latents, prompt, guidance)` copies a request in |
| `models.side_stream_warm_up(fn)` | PyTorch's recipe before a capture |
| `models.sample(unet, sched, latents, prompt, guidance)` | the eager reference sampler |
| `models.make_request(seed, batch, config, device, size=None)` | seeded initial latents and prompt embedding |
| `models.Signature(batch, size, guidance, dtype)`, `models.signature_of(latents, guidance)` | what a graph is specialised for, and a request's |
| `sched.steps`, `sched.step_tensors[i]` | the number of steps; a (1,) int64 device tensor holding `i` |
"""),
    md("""
---
## Exercise 1 · Capture one step

Write `capture_step(unet, sched, static, pool=None)`: warm up, then capture **one**
denoising step that reads **only** the static buffers of `static` (the latents, the context,
the step index and the guidance scale), into a new `torch.cuda.CUDAGraph` (in memory pool
`pool` when one is given). Return `(graph, out)`, where `out` is what the step returned
inside the capture.

The check loads requests into `static`, writes step indices into `static.step`, replays, and
compares `out` with eager steps, guided (batch 1) and unguided (batch 2).

<details><summary>Hint</summary>

```python
def step():
    return models.denoise_step(unet, sched, static.x, static.step, static.context, static.scale)
```

Warm it up with `models.side_stream_warm_up(step)`, then capture it with
`with torch.cuda.graph(graph, pool=pool):`. Do not write `sched.timesteps_host[i]`,
`float(...)` or a literal guidance scale inside the step: a Python number is baked into the
graph at capture (the timestep trap).
</details>
"""),
    code("""
def capture_step(unet, sched, static, pool=None):
    \"\"\"Capture one denoising step that reads the buffers of `static`. Return (graph, out).\"\"\"
    ### BEGIN SOLUTION capture one step on the static buffers
    def step():
        return models.denoise_step(unet, sched, static.x, static.step, static.context, static.scale)

    models.side_stream_warm_up(step)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = step()
    return graph, out
    ### END SOLUTION
"""),
    code("""
check_capture_step(capture_step)
"""),
    md("""
Try it: capture on dummies, then replay step 2 for a real request.
"""),
    code("""
static = models.StaticBuffers.for_model(unet, batch=1, guidance=True)   # dummies (zeros)
graph, out = capture_step(unet, sched, static)
latents, prompt = models.make_request(seed=1, batch=1, config=LAB_CONFIG, device=DEVICE)
static.load(latents, prompt, GUIDANCE)
static.step.fill_(2)
graph.replay()
eager = models.denoise_step(unet, sched, latents, sched.step_tensors[2], models.guidance_context(prompt),
                            torch.full((1,), GUIDANCE, device=DEVICE))
print("step 2 replayed for a real request equals eager:", models.relative_error(out, eager) < 1e-3)
"""),
    md("""
---
## Exercise 2 · Serve a request with the step graph

Write `sample_with_graph(graph, out, static, sched, latents, prompt, guidance)`: the final
latents of DDIM sampling for the request, computed with `graph` (captured by a correct
`capture_step` on `static`; `out` is its output). Replay **once per step**. The caller keeps
the result while later requests are served.

<details><summary>Hint</summary>

Load the request into the static buffers (`static.load(latents, prompt, guidance)`). Then for
each step `i`: write `i` into `static.step` (`fill_`), replay, and copy `out` back into
`static.x` (the next step starts from it). Return `static.x.clone()`: the buffers belong to
the next request. The check tells you which of these is missing.
</details>
"""),
    code("""
def sample_with_graph(graph, out, static, sched, latents, prompt, guidance=GUIDANCE):
    \"\"\"Serve one request with the step graph; return its final latents.\"\"\"
    ### BEGIN SOLUTION serve one request with the step graph
    static.load(latents, prompt, guidance)
    for i in range(sched.steps):
        static.step.fill_(i)
        graph.replay()
        static.x.copy_(out)
    return static.x.clone()
    ### END SOLUTION
"""),
    code("""
check_sample_with_graph(sample_with_graph)
"""),
    code("""
for seed, guidance in ((2, GUIDANCE), (3, 4.0)):
    latents, prompt = models.make_request(seed, 1, LAB_CONFIG, DEVICE)
    got = sample_with_graph(graph, out, static, sched, latents, prompt, guidance)
    want = models.sample(unet, sched, latents, prompt, guidance)
    print(f"request {seed}, guidance {guidance}: equals eager sampling:", models.relative_error(got, want) < 1e-3)
"""),
    md("""
---
## Exercise 3 · The runner

Write a class `Runner(unet, sched, signatures, max_graphs=4)`:

* `__init__` is the **warm-up**: capture one step graph per signature of `signatures`
  (`models.Signature(batch, size, guidance, dtype)`), each with its own `StaticBuffers`, all
  in one memory pool (`torch.cuda.graph_pool_handle()`), the largest first. Hold **at most
  `max_graphs`** graphs: refuse the rest, or keep the most recently used (your choice).
  Keep them in `self.graphs`, a dict keyed by signature; set `self.misses = 0`.
* `runner(latents, prompt, guidance=GUIDANCE)` returns the final latents. A request whose
  signature (`models.signature_of(latents, guidance)`) has a graph is served by it (exercise 2)
  without running the model eagerly; any other request is a **miss**: serve it with
  `models.sample(...)` and add 1 to `self.misses`.

The check serves requests of several signatures, seeds and guidance scales (some hits, some
misses) and compares each result with eager sampling; it watches whether the model ran
eagerly; and it gives a second runner four signatures and room for two.

<details><summary>Hint</summary>

In `__init__`, sort the signatures by size (`s.batch * s.size ** 2`, doubled when guided),
largest first, and for the first `max_graphs` of them:

```python
static = models.StaticBuffers.for_model(unet, sig.batch, sig.size, sig.guidance)
graph, out = capture_step(unet, sched, static, self.pool)
self.graphs[models.Signature(*sig)] = (graph, out, static)
```

In `__call__`, look the request's signature up in `self.graphs`; on a hit, call your
`sample_with_graph` with what you stored.
</details>
"""),
    code("""
class Runner:
    \"\"\"Step graphs keyed by signature, captured at warm-up; eager (and counted) on a miss.\"\"\"

    def __init__(self, unet, sched, signatures, max_graphs=4):
        ### BEGIN SOLUTION warm up: one graph per signature, at most max_graphs
        self.unet, self.sched = unet, sched
        self.graphs = {}
        self.misses = 0
        self.pool = torch.cuda.graph_pool_handle()
        largest_first = sorted(signatures, key=lambda s: s.batch * s.size ** 2 * (2 if s.guidance else 1), reverse=True)
        for sig in largest_first[:max_graphs]:  # refuse beyond max_graphs
            static = models.StaticBuffers.for_model(unet, sig.batch, sig.size, sig.guidance)
            graph, out = capture_step(unet, sched, static, self.pool)
            self.graphs[models.Signature(*sig)] = (graph, out, static)
        ### END SOLUTION

    def __call__(self, latents, prompt, guidance=GUIDANCE):
        ### BEGIN SOLUTION replay on a hit, eager and counted on a miss
        sig = models.signature_of(latents, guidance)
        if sig not in self.graphs:
            self.misses += 1
            return models.sample(self.unet, self.sched, latents, prompt, guidance)
        graph, out, static = self.graphs[sig]
        return sample_with_graph(graph, out, static, self.sched, latents, prompt, guidance)
        ### END SOLUTION
"""),
    code("""
check_runner(Runner)
"""),
    code("""
check_runner_speed(Runner)
"""),
    md("""
Your runner on a little traffic: two signatures warmed up, then requests of three.
"""),
    code("""
size = LAB_CONFIG.size
runner = Runner(unet, sched, [models.Signature(1, size, True), models.Signature(2, size, True)])
traffic = [(40, 1, GUIDANCE), (41, 2, 5.0), (42, 1, None), (43, 1, 9.0), (44, 2, GUIDANCE)]
same = []
for seed, batch, guidance in traffic:
    latents, prompt = models.make_request(seed, batch, LAB_CONFIG, DEVICE)
    same.append(models.relative_error(runner(latents, prompt, guidance),
                                      models.sample(unet, sched, latents, prompt, guidance)) < 1e-3)
print(f"{len(traffic)} requests, each equal to eager sampling:", all(same))
print("misses (the unguided request):", runner.misses)
"""),
    code("""
# NBVAL_IGNORE_OUTPUT
latents, prompt = models.make_request(50, 1, LAB_CONFIG, DEVICE)
t_runner = timing.measure(lambda: runner(latents, prompt), warmup=1, repeat=5)
t_eager = timing.measure(lambda: models.sample(unet, sched, latents, prompt), warmup=1, repeat=5)
print(f"runner {t_runner}; eager {t_eager}; {timing.format_ratio(timing.speedup(t_eager, t_runner))} faster")
"""),
    md("""
---
## Wrap-up

* A captured step reads every per-request and per-step number from static device buffers:
  latents, context, step index, guidance scale. A Python number in the step is baked at
  capture and repeats the warm-up's value forever.
* Serving a request is `copy_` in, then per step `fill_` the index, replay, copy back; the
  result is cloned out, because the buffers belong to the next request.
* A runner captures one graph per signature at warm-up, in one pool, bounded in number;
  misses run eagerly and are counted, so that the warm-up list can be fixed.

**Next:** [lesson 10 · Interview drills](../notebooks/10_interview_drills.ipynb).
"""),
]


def notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells, metadata=METADATA)
    nb.nbformat, nb.nbformat_minor = 4, 5
    return nb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lesson", action="store_true", help="write the lesson only")
    parser.add_argument("--solution", action="store_true", help="write the solution only")
    args = parser.parse_args()
    both = not (args.lesson or args.solution)
    if both or args.lesson:
        path = REPO / "notebooks" / f"{STEM}.ipynb"
        nbformat.write(notebook(LESSON), path)
        print(f"wrote {path.relative_to(REPO)}")
    if both or args.solution:
        path = REPO / "solutions" / f"{STEM}.ipynb"
        nbformat.write(notebook(SOLUTION), path)
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
