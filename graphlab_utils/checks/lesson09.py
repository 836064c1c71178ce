"""Checks of lab 09, the capstone: a diffusion graph runner, built piece by piece.

The lab runs the lesson's UNet and DDIM sampler (``graphlab_utils.capstone``) at a small size,
:data:`LAB_CONFIG` (16 channels, 8x8 latents, 4 steps), the same on both backends;
:func:`lab_model` builds it. The learner writes:

* ``capture_step(unet, sched, static, pool=None) -> (graph, out)``, checked by
  :func:`check_capture_step`: one denoising step (``capstone.denoise_step``) captured on the
  buffers of a ``capstone.StaticBuffers`` (``static.x``, ``.context``, ``.step``, ``.scale``),
  the step's number and guidance scale read from them at replay time. The check loads
  requests, sets the step index, replays, and compares ``out`` with eager steps at several
  step indices, guided and unguided.
* ``sample_with_graph(graph, out, static, sched, latents, prompt, guidance) -> latents``,
  checked by :func:`check_sample_with_graph`: serve one request with such a graph (the
  check captures it): copy the request in, then per step set the index, replay, copy the
  latents back; return a result the caller may keep.
* ``Runner(unet, sched, signatures, max_graphs)``, checked by :func:`check_runner`: graphs
  captured at construction for the given ``capstone.Signature`` s (at most ``max_graphs``),
  ``runner(latents, prompt, guidance)`` replaying on a hit and sampling eagerly on a miss,
  ``runner.misses`` counting misses, ``runner.graphs`` holding the graphs by signature.
  :func:`check_runner_speed` times a hit against eager sampling, side by side (modelled on
  the simulator), and wants it :data:`MIN_SPEEDUP` times faster.

When a result differs from eager, the checks test the usual causes and name the one they
find: the timestep trap (the graph repeats the warm-up's step), a baked guidance scale,
stale inputs (the graph reads the warm-up's dummies), latents not copied back between
steps, and results overwritten by the next request. No check compares against an absolute
time.
"""
from __future__ import annotations

import math

from graphlab_utils.recipes import plural, warm_up

from graphlab_utils.watch import CountingGraph

from .core import check, fail, graph_and_output, ok, ok_faster
from .core import device as _device

__all__ = [
    "LAB_CONFIG",
    "MIN_SPEEDUP",
    "TOLERANCE",
    "lab_model",
    "check_capture_step",
    "check_sample_with_graph",
    "check_runner",
    "check_runner_speed",
]

TOLERANCE = 1e-3  # relative error (max |a - b| / max |b|) that counts as "equal to eager"
MIN_SPEEDUP = 2.0  # a runner's hit vs eager sampling (the lesson's runner: about 10x on the lab's size)


def _lab_config():
    from graphlab_utils import capstone

    return capstone.UNetConfig(channels=16, context_dim=16, context_len=4, size=8, steps=4, heads=2, name="lab")


def __getattr__(name):  # LAB_CONFIG, built on first use: importing this module does not import torch
    if name == "LAB_CONFIG":
        return _lab_config()
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------
# The lab's model
# ---------------------------------------------------------------------------------------
def lab_model(device=None):
    """``(unet, sched)`` at :data:`LAB_CONFIG`: the lesson's UNet (fixed weights) and DDIM schedule."""
    from graphlab_utils import capstone

    device = _device() if device is None else device
    cfg = _lab_config()
    return capstone.build_unet(cfg, device), capstone.DDIMSchedule(cfg.steps, device)


def _probe(unet):
    """The UNet, wrapped to count the calls that run it eagerly (not those inside a capture)."""
    import torch

    class Probe(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config
            self.eager_calls = 0

        def forward(self, x, t, context):
            if not torch.cuda.is_current_stream_capturing():
                self.eager_calls += 1
            return self.inner(x, t, context)

    return Probe(unet).eval()


def _request(seed: int, batch: int = 1, size: int | None = None):
    from graphlab_utils import capstone

    return capstone.make_request(seed, batch, _lab_config(), _device(), size=size)


def _rel(a, b) -> float:
    import torch

    from graphlab_utils import capstone

    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return math.inf
    torch.cuda.synchronize()
    return capstone.relative_error(a, b)


def _close(a, b) -> bool:
    return _rel(a, b) < TOLERANCE


def _scale(guidance):
    import torch

    return None if guidance is None else torch.full((1,), float(guidance), device=_device())


def _context(prompt, guidance):
    from graphlab_utils import capstone

    return capstone.guidance_context(prompt) if guidance is not None else prompt


def _eager_step(unet, sched, latents, prompt, guidance, i):
    import torch

    from graphlab_utils import capstone

    with torch.no_grad():
        return capstone.denoise_step(unet, sched, latents, sched.step_tensors[i], _context(prompt, guidance), _scale(guidance))


def _eager_sample(unet, sched, latents, prompt, guidance, step_of=None):
    """Eager sampling; ``step_of(i)`` picks the step index used at step ``i`` (a trap's schedule)."""
    import torch

    from graphlab_utils import capstone

    ctx, g = _context(prompt, guidance), _scale(guidance)
    x = latents
    with torch.no_grad():
        for i in range(sched.steps):
            j = i if step_of is None else step_of(i)
            x = capstone.denoise_step(unet, sched, x, sched.step_tensors[j], ctx, g)
    return x


# -- hints --------------------------------------------------------------------------------
_TIMESTEP_IDEA = (
    "your graph reuses the timestep from warm-up: feed it through a static tensor. A Python "
    "number (a timestep, a coefficient, sched.timesteps_host[i], float(...)) becomes a kernel "
    "argument at capture and never changes; read the step from static.step (for example "
    "capstone.denoise_step(unet, sched, static.x, static.step, static.context, static.scale))"
)
_SCALE_IDEA = (
    "your graph reuses the guidance scale from warm-up: feed it through a static tensor. Use "
    "static.scale (a (1,) device tensor) in the captured step, not a Python number"
)
_STALE_IDEA = (
    "your graph reads the warm-up's dummy buffers, not the request: capture on the static "
    "buffers (static.x, static.context, ...) and copy_ every request into them; a tensor made "
    "for the warm-up, or a rebound Python name, is never seen by the replay"
)
_FILL_IDEA = (
    "your graph reuses the timestep from warm-up: feed it through a static tensor. Before each "
    "replay write the step's index into static.step (static.step.fill_(i)): the graph reads "
    "the step from there"
)
_LOAD_IDEA = (
    "copy the request into the static buffers before the first replay (static.load(latents, "
    "prompt, guidance), or copy_ into static.x and static.context and fill_ static.scale): "
    "the graph reads only those addresses"
)
_COPY_BACK_IDEA = (
    "after each replay, copy the graph's output into static.x (static.x.copy_(out)): the "
    "next step must start from the latents this step made, and the graph reads static.x"
)
_CLONE_IDEA = (
    "return a clone (static.x.clone()): the static buffers and the graph's output are "
    "overwritten by the next request, and a caller keeping your result would see it change"
)


# ---------------------------------------------------------------------------------------
# Exercise 1: capture one step
# ---------------------------------------------------------------------------------------
def _capture_reference(unet, sched, static):
    import torch

    from graphlab_utils import capstone

    def step():
        return capstone.denoise_step(unet, sched, static.x, static.step, static.context, static.scale)

    warm_up(step, 2)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out


def _unpack_capture(result, static):
    import torch

    graph, out = graph_and_output(
        result, "capture_step(unet, sched, static)", "(graph, out)",
        "return the torch.cuda.CUDAGraph and the tensor the step returned inside the capture",
        "create graph = torch.cuda.CUDAGraph() and capture the step inside `with torch.cuda.graph(graph):`")
    ok(isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(static.x.shape),
       f"the second item is the step's output, a tensor of shape {tuple(static.x.shape)}",
       f"{type(out).__name__}{' of shape ' + str(tuple(out.shape)) if isinstance(out, torch.Tensor) else ''}",
       "keep what the step returns inside the capture: that tensor is the graph's output buffer, "
       "rewritten by every replay")
    return graph, out


@check("capture one step on static buffers")
def check_capture_step(capture_step):
    """``capture_step(unet, sched, static)`` -> ``(graph, out)``; replayed at several steps and requests."""
    from graphlab_utils import capstone

    unet, sched = lab_model()
    steps = (0, 2, sched.steps - 1)
    cases = (  # (batch, guided, requests as (seed, guidance)): the first two differ in content only
        (1, True, ((1, 7.5), (2, 7.5), (2, 3.0))),
        (2, False, ((3, None), (4, None))),
    )
    for batch, guided, requests in cases:
        static = capstone.StaticBuffers.for_model(unet, batch=batch, guidance=guided)
        graph, out = _unpack_capture(capture_step(unet, sched, static), static)
        kind = f"batch {batch}, {'guided' if guided else 'unguided'}"
        got, want = {}, {}
        for r, (seed, guidance) in enumerate(requests):
            latents, prompt = _request(seed, batch)
            for k in steps:
                static.load(latents, prompt, guidance)
                static.step.fill_(k)
                graph.replay()
                got[r, k] = out.clone()
                want[r, k] = _eager_step(unet, sched, latents, prompt, guidance, k)
        wrong = [(r, k) for r in range(len(requests)) for k in steps if not _close(got[r, k], want[r, k])]
        if not wrong:
            continue
        r, k = wrong[0]
        seed, guidance = requests[r]
        seen = (f"{kind}, request {seed}{'' if guidance is None else ' (guidance ' + str(guidance) + ')'}, "
                f"step {k}: relative error {_rel(got[r, k], want[r, k]):.2g} against the eager step")
        if all(_close(got[rr, kk], got[rr, 0]) for rr in range(len(requests)) for kk in steps):
            fail("a different result at each step index (the eager steps differ)",
                 f"{kind}: the same result at steps {', '.join(map(str, steps))} after static.step.fill_(k)",
                 _TIMESTEP_IDEA)
        if all(_close(got[0, kk], got[1, kk]) for kk in steps):
            fail("a different result for each request (the eager steps differ)",
                 f"{kind}: requests {requests[0][0]} and {requests[1][0]} give the same result after static.load(...)",
                 _STALE_IDEA)
        if guidance is not None and guidance != capstone.GUIDANCE:
            latents, prompt = _request(seed, batch)
            if _close(got[r, k], _eager_step(unet, sched, latents, prompt, capstone.GUIDANCE, k)):
                fail("the request's guidance scale",
                     seen + f"; it equals the step with the warm-up's scale {capstone.GUIDANCE}", _SCALE_IDEA)
        fail("the eager step's result after static.load(...), static.step.fill_(k) and graph.replay()",
             seen,
             "capture capstone.denoise_step(unet, sched, static.x, static.step, static.context, static.scale) "
             "once, reading only the static buffers, and return what it returns")


# ---------------------------------------------------------------------------------------
# Exercise 2: serve one request with the step graph
# ---------------------------------------------------------------------------------------
def _diagnose_sample(unet, sched, got, latents, prompt, guidance, kind, earlier=()):
    """fail() with the most specific hint for a sampled result that differs from eager; else eager's result."""
    from graphlab_utils import capstone

    want = _eager_sample(unet, sched, latents, prompt, guidance)
    if _close(got, want):
        return want
    seen = f"{kind}: relative error {_rel(got, want):.2g} against eager sampling"
    if _close(got, _eager_sample(unet, sched, latents, prompt, guidance, step_of=lambda i: 0)):
        fail("eager sampling's final latents", seen + "; it equals step 0 repeated at every step", _FILL_IDEA)
    if any(_close(got, prev) for prev in earlier):
        fail("a result for this request", seen + "; it equals the result of an earlier request", _STALE_IDEA)
    if guidance is not None and guidance != capstone.GUIDANCE and _close(
            got, _eager_sample(unet, sched, latents, prompt, capstone.GUIDANCE)):
        fail("the request's guidance scale", seen + f"; it equals sampling with the warm-up's scale {capstone.GUIDANCE}",
             _SCALE_IDEA)
    if _close(got, _eager_step(unet, sched, latents, prompt, guidance, sched.steps - 1)):
        fail("eager sampling's final latents", seen + "; it equals the last step applied once to the initial noise",
             _COPY_BACK_IDEA)
    fail("eager sampling's final latents", seen,
         "copy the request in (static.load), then for each step i: static.step.fill_(i), graph.replay(), "
         "static.x.copy_(out); return static.x.clone()")


@check("serve a request with the step graph")
def check_sample_with_graph(sample_with_graph):
    """``sample_with_graph(graph, out, static, sched, latents, prompt, guidance)`` -> final latents."""
    import torch

    from graphlab_utils import capstone

    unet, sched = lab_model()
    for batch, guided, requests in ((1, True, ((5, 7.5), (6, 4.0))), (2, False, ((7, None),))):
        static = capstone.StaticBuffers.for_model(unet, batch=batch, guidance=guided)
        graph, out = _capture_reference(unet, sched, static)
        counting = CountingGraph(graph)
        kept = []
        for seed, guidance in requests:
            latents, prompt = _request(seed, batch)
            kind = f"batch {batch}, {'guidance ' + str(guidance) if guided else 'unguided'}, request {seed}"
            before = counting.replays
            got = sample_with_graph(counting, out, static, sched, latents, prompt, guidance)
            ok(isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(latents.shape),
               f"the final latents, a tensor of shape {tuple(latents.shape)}",
               f"{type(got).__name__}{' of shape ' + str(tuple(got.shape)) if isinstance(got, torch.Tensor) else ''}",
               "return the latents after the last step (a clone of static.x)")
            replays = counting.replays - before
            ok(_close(static.context, _context(prompt, guidance)),
               "the request's prompt context in static.context after the call",
               "static.context holds something else (the warm-up's dummies, or an earlier request)",
               _STALE_IDEA + ". " + _LOAD_IDEA)
            ok(replays == sched.steps,
               f"one replay per step: {sched.steps} replays for {sched.steps} steps",
               plural(replays, "replay"),
               "replay the step graph once per denoising step, with that step's index in static.step")
            want = _diagnose_sample(unet, sched, got, latents, prompt, guidance, kind, [c for _, c, _ in kept])
            kept.append((got, got.clone(), want))
        for got, _, want in kept:
            ok(_close(got, want),
               "a result that stays as it was when the next request is served",
               "the first request's result changed when the next request was served",
               _CLONE_IDEA)


# ---------------------------------------------------------------------------------------
# Exercise 3: the runner
# ---------------------------------------------------------------------------------------
def _sigs(*specs):
    import torch

    from graphlab_utils import capstone

    return [capstone.Signature(b, s, g, torch.float32) for b, s, g in specs]


def _graph_count(runner) -> int:
    graphs = getattr(runner, "graphs", None)
    ok(graphs is not None and hasattr(graphs, "__len__"),
       "runner.graphs: the captured graphs, one per signature (a dict keyed by capstone.Signature)",
       "no runner.graphs" if graphs is None else f"runner.graphs is a {type(graphs).__name__}",
       "keep the graphs in a dict (or an OrderedDict) attribute named graphs, keyed by signature")
    return len(graphs)


def _misses(runner) -> int:
    misses = getattr(runner, "misses", None)
    ok(isinstance(misses, int),
       "runner.misses: an int counting the requests served eagerly",
       "no runner.misses" if misses is None else f"runner.misses is a {type(misses).__name__}",
       "set self.misses = 0 in __init__ and add 1 on every miss")
    return misses


def _serve(runner, probe, unet, sched, seed, batch, size, guidance, expect, kept):
    import torch

    latents, prompt = _request(seed, batch, size)
    kind = (f"request {seed} (batch {batch}, size {latents.shape[-1]}, "
            f"{'guidance ' + str(guidance) if guidance is not None else 'unguided'})")
    misses, calls = _misses(runner), probe.eager_calls
    got = runner(latents, prompt, guidance)
    ok(isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(latents.shape),
       f"{kind}: the final latents, a tensor of shape {tuple(latents.shape)}",
       f"{type(got).__name__}{' of shape ' + str(tuple(got.shape)) if isinstance(got, torch.Tensor) else ''}",
       "return the final latents, from the graph on a hit, from eager sampling on a miss")
    new_misses, new_calls = _misses(runner) - misses, probe.eager_calls - calls
    if expect == "hit":
        ok(new_misses == 0,
           f"{kind}: a hit (its signature was captured at warm-up), runner.misses unchanged",
           f"runner.misses grew by {new_misses}",
           "look the graph up by the request's signature, capstone.signature_of(latents, guidance): "
           "batch, size, guidance on/off and dtype, exactly as at warm-up")
        ok(new_calls == 0,
           f"{kind}: served by replaying the graph, without running the UNet eagerly",
           f"the UNet ran eagerly {plural(new_calls, 'time')}",
           "on a hit, copy the request into that graph's static buffers and replay; do not call the model")
    elif expect == "miss":
        ok(new_misses == 1,
           f"{kind}: a miss (no graph for its signature): runner.misses grows by 1",
           f"runner.misses grew by {new_misses}",
           "count every request served eagerly: a miss counter that grows in production says the "
           "warm-up list is missing a signature")
    else:  # a hit or a miss, depending on the runner's policy: the counter must tell which
        ok(new_misses == (1 if new_calls else 0),
           f"{kind}: runner.misses grows by 1 when the request runs the UNet eagerly, else stays",
           f"runner.misses grew by {new_misses}; the UNet ran eagerly {plural(new_calls, 'time')}",
           "a request served by a graph is a hit; one served eagerly is a miss, and is counted")
    want = _diagnose_sample(unet, sched, got, latents, prompt, guidance, kind, [c for _, c, _ in kept])
    kept.append((got, got.clone(), want))


@check("a diffusion graph runner")
def check_runner(Runner):
    """``Runner(unet, sched, signatures, max_graphs)``: hits replay, misses run eagerly and are counted."""
    unet, sched = lab_model()
    size = _lab_config().size
    probe = _probe(unet)
    sigs = _sigs((1, size, True), (2, size, True), (1, size, False))
    runner = Runner(probe, sched, sigs, max_graphs=3)
    n = _graph_count(runner)
    ok(n == 3,
       "3 graphs after warm-up: one per signature given (max_graphs=3)",
       plural(n, "graph"),
       "capture one graph per signature in __init__, before any request arrives")
    ok(_misses(runner) == 0, "runner.misses == 0 before any request", f"runner.misses == {runner.misses}",
       "start the miss counter at 0")
    kept = []
    plan = (  # seed, batch, size, guidance, expected (after misses a runner may have evicted a graph: "either")
        (11, 1, size, 7.5, "hit"), (12, 2, size, 5.0, "hit"), (13, 1, size, None, "hit"),
        (14, 3, size, 7.5, "miss"), (15, 1, size + 4, 7.5, "miss"), (16, 1, size, 9.0, "either"),
    )
    for seed, batch, sz, guidance, expect in plan:
        _serve(runner, probe, unet, sched, seed, batch, sz, guidance, expect, kept)
    for got, _, want in kept:
        ok(_close(got, want),
           "every result stays as it was when later requests are served",
           "a result changed when a later request was served",
           _CLONE_IDEA)

    # The bound: four signatures, room for two.
    probe2 = _probe(unet)
    bounded = Runner(probe2, sched, _sigs((1, size, True), (2, size, True), (1, size, False), (2, size, False)), max_graphs=2)
    n = _graph_count(bounded)
    ok(n <= 2,
       "at most max_graphs=2 graphs held after warm-up with 4 signatures",
       plural(n, "graph"),
       "bound the cache: stop capturing at max_graphs (refuse), or drop the least recently used "
       "graph (graph.reset()) before capturing another; each graph holds memory")
    kept = []
    for seed, (batch, guidance) in enumerate(((1, 7.5), (2, 7.5), (1, None), (2, None), (1, 6.0)), start=21):
        latents, prompt = _request(seed, batch)
        got = bounded(latents, prompt, guidance)
        _diagnose_sample(unet, sched, got, latents, prompt, guidance,
                         f"bounded runner, request {seed} (batch {batch})", [c for _, c, _ in kept])
        kept.append((got, got.clone(), None))
        n = _graph_count(bounded)
        ok(n <= 2, "at most max_graphs=2 graphs held at any time", f"{plural(n, 'graph')} after request {seed}",
           "never hold more graphs than max_graphs: refuse new ones or evict the least recently used")
    ok(_misses(bounded) >= 2,
       "at least 2 misses among requests of 4 signatures served by 2 graphs",
       f"runner.misses == {bounded.misses}",
       "a request whose signature has no graph is a miss: serve it eagerly and count it")


@check("a runner hit is faster than eager sampling")
def check_runner_speed(Runner):
    """A hit of the learner's runner against eager sampling, side by side (modelled on the simulator)."""
    from graphlab_utils import capstone, simulator, timing

    unet, sched = lab_model()
    runner = Runner(unet, sched, _sigs((1, _lab_config().size, True)), max_graphs=1)
    latents, prompt = _request(31)
    got = runner(latents, prompt, 7.5)
    ok(_close(got, _eager_sample(unet, sched, latents, prompt, 7.5)),
       "the runner's result equal to eager sampling (check_runner says more)",
       f"relative error {_rel(got, _eager_sample(unet, sched, latents, prompt, 7.5)):.2g}",
       "make check_runner pass first")
    repeat = 1 if simulator.is_installed() else 5
    t_runner = timing.measure(lambda: runner(latents, prompt, 7.5), warmup=1, repeat=repeat)
    t_eager = timing.measure(lambda: capstone.sample(unet, sched, latents, prompt, 7.5), warmup=1, repeat=repeat)
    ok_faster(t_runner, t_eager, MIN_SPEEDUP, f"a hit at least {MIN_SPEEDUP:.0f}x faster than eager sampling",
              "a hit must only copy the request in and replay: no eager UNet call, no capture, no "
              "synchronize or .item() on the request's path", name="runner")
