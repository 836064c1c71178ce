"""Checks of lab 08, debugging and profiling: three mystery workloads.

Each workload misbehaves in its own way; the learner finds the cause with the lesson's
tools (the profiler summary, ``profiling.count_graph_calls()``, the DAG, comparisons with
eager, ``diagnose.capture_error_site``), names it, and repairs it.

* ``check_cause(mystery, answer)``: the multiple-choice diagnosis of mystery 1, 2 or 3
  (``CAUSES[mystery]`` holds the choices).
* ``check_runner(GraphRunner)``: mystery 1, a graph runner no faster than eager. The
  repaired ``GraphRunner(model)`` must give eager's results for new requests, capture at
  most once for one input shape, serve every request by a replay, and be faster than eager
  (a ratio measured side by side: modelled on the simulator).
* ``check_step_runner(StepRunner)``: mystery 2, a denoising step whose results go wrong after
  the first call. The repaired ``StepRunner(shape)`` called as ``runner(x, t)`` must follow
  every new ``x`` and every new ``t`` with one graph.
* ``check_decode_step(decode_step)``: mystery 3, a decode step that cannot be captured. The
  repaired ``decode_step(h, w)`` must be capturable and give eager's probabilities after new
  inputs are copied in. A failing capture damages a process on a GPU, so this check runs
  the learner's function in a fresh process (``graphlab_utils.isolation.run_function``: a
  notebook function, a lambda or a closure travels there with what it uses) and checks it
  there; only the verdict comes back.

The workloads themselves (``mystery_model``, ``denoise_step``, the decode step's inputs)
are defined here, so that the lab and its checks run the same code.
"""

from __future__ import annotations

from graphlab_utils import recipes
from graphlab_utils.recipes import close as _close, describe as _describe, warm_up

from .core import check, fail, in_fresh_process, ok, ok_class, ok_faster, ok_function
from .core import device as _device

__all__ = [
    "CAUSES",
    "check_cause",
    "check_decode_step",
    "check_runner",
    "check_step_runner",
    "decode_inputs",
    "decode_reference",
    "denoise_step",
    "mystery_model",
    "requests",
    "warm_up",
]

# ---------------------------------------------------------------------------------------
# The workloads
# ---------------------------------------------------------------------------------------
MODEL_SHAPE = (8, 512)
MODEL_LAYERS = 16


def mystery_model(layers: int = MODEL_LAYERS, width: int = MODEL_SHAPE[1], seed: int = 8):
    """A launch-bound model: ``layers`` x ``tanh(x * scale + shift)``, 3 tiny kernels a layer.

    Returns ``model(x)`` for inputs of shape ``(batch, width)``; its parameters are device
    tensors, the same on both backends (drawn with a CPU generator).
    """
    import torch

    device = _device()
    gen = torch.Generator().manual_seed(seed)
    scales = [(0.75 + 0.5 * torch.rand(width, generator=gen)).to(device) for _ in range(layers)]
    shifts = [(0.1 * torch.randn(width, generator=gen)).to(device) for _ in range(layers)]

    def model(x):
        for scale, shift in zip(scales, shifts):
            x = torch.tanh(x * scale + shift)
        return x

    model.kernels_per_call = 3 * layers
    return model


def requests(n: int, shape=MODEL_SHAPE, seed: int = 0) -> list:
    """``n`` distinct input tensors of ``shape`` on the device (CPU generator: same on both backends)."""
    import torch

    device = _device()
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen).to(device) for _ in range(n)]


def denoise_step(x, t):
    """One step of a toy denoiser at noise level ``t`` (a Python float or a device tensor)."""
    import torch

    eps = torch.tanh(x * 1.7) * 0.5          # the "predicted noise"
    return (x - t * eps) / (1.0 + t)


STEP_SHAPE = (4, 256)


def decode_inputs(seed: int = 0):
    """``(h, w)`` for the decode step: hidden states (8, 64) and a (64, 64) weight."""
    import torch

    device = _device()
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(8, 64, generator=gen)
    w = torch.randn(64, 64, generator=gen) / 8
    return h.to(device), w.to(device)


def decode_reference(h, w):
    """What the decode step computes: ``softmax(relu(h @ w), dim=-1)``."""
    import torch

    return torch.softmax(torch.relu(h @ w), dim=-1)


# ---------------------------------------------------------------------------------------
# The diagnoses
# ---------------------------------------------------------------------------------------
CAUSES = {
    1: {
        "a": "its kernels are large: launch overhead is a small part of the time",
        "b": "it captures a new graph for every request: the cache key holds each input's address",
        "c": "its graph holds more nodes than eager launches kernels",
        "d": "a hidden synchronize after each replay makes the CPU wait",
    },
    2: {
        "a": "the runner rebinds its input, so the graph reads an old buffer",
        "b": "the output buffer is overwritten by the next replay",
        "c": "the memory of a freed input was handed to another tensor",
        "d": "t is a Python float: the value it had at capture is baked into the kernels",
    },
    3: {
        "a": "the NaN guard reads a value on the host: `if tensor:` is a sync",
        "b": "the matrix product allocates a cuBLAS workspace during the capture",
        "c": "softmax cannot be captured",
        "d": "the capture runs on the default stream",
    },
}
_ANSWERS = {1: "b", 2: "d", 3: "a"}
_WHY_NOT = {
    1: {
        "a": "the profiler summary of an eager pass shows a GPU idle most of the time and "
             "kernels of a microsecond or two: this work is launch-bound, exactly where a graph should win",
        "c": "count the nodes of a graph of the model: there are as many as the kernels one eager "
             "pass launches",
        "d": "a synchronize costs microseconds; count the captures and replays over the requests "
             "(profiling.count_graph_calls()) and compare with the number of requests",
    },
    2: {
        "a": "the runner copies each x into static_x with copy_, and the evidence shows a new x "
             "with the same t matching eager: the input is followed",
        "b": "the runner returns static_out.clone(), a copy the next replay cannot touch",
        "c": "static_x and the graph live as long as the runner: no buffer the graph reads is freed",
    },
    3: {
        "b": "a workspace is created at the first matmul, during the warm-up; and the first error's "
             "line (diagnose.capture_error_site) is not the matmul",
        "c": "softmax is one kernel like any other; read the line the first error points at",
        "d": "torch.cuda.graph captures on a side stream of its own; read the line the first error points at",
    },
}


def _normalise(answer) -> str:
    text = str(answer).strip().lower().strip("()[]. ")
    return text[:1] if text else ""


def _cause_check(mystery: int):
    def body(answer):
        choices = CAUSES[mystery]
        letter = _normalise(answer)
        ok(letter in choices, f"one of {', '.join(repr(k) for k in choices)}", repr(answer),
           "answer with the letter of the cause you chose")
        if letter != _ANSWERS[mystery]:
            fail("the cause the evidence points to", f"({letter}) {choices[letter]}", _WHY_NOT[mystery][letter])

    return check(f"mystery {mystery}: diagnosis")(body)


_CAUSE_CHECKS = {mystery: _cause_check(mystery) for mystery in CAUSES}


@check("diagnosis")
def _unknown_mystery(mystery, answer):
    fail("mystery 1, 2 or 3", repr(mystery), "pass the number of the mystery first, then your answer")


def check_cause(mystery: int, answer, quiet: bool = False):
    """``answer`` is the letter of the cause of ``mystery`` (1, 2 or 3) among ``CAUSES[mystery]``."""
    run = _CAUSE_CHECKS.get(mystery) if isinstance(mystery, int) else None
    if run is None:
        return _unknown_mystery(mystery, answer, quiet=quiet)
    return run(answer, quiet=quiet)


def _no_shared_outputs(outs) -> None:
    """Fail when two calls returned views of the same memory (the graph's output buffer)."""
    ptrs = [o.untyped_storage().data_ptr() for o in outs]
    ok(len(set(ptrs)) == len(ptrs), "a result of its own for each call",
       "results that share one buffer: each call's result is overwritten by the next replay",
       "the graph writes every replay into the same output buffer: return static_out.clone()")


# ---------------------------------------------------------------------------------------
# Mystery 1: a graph runner that is no faster than eager
# ---------------------------------------------------------------------------------------
_SPEEDUP_NEEDED = 2.0


@check("mystery 1: graph runner")
def check_runner(runner_cls):
    """``runner_cls(model)`` serves ``runner(x)`` from one graph per input shape."""
    import torch

    from graphlab_utils import profiling, timing

    ok_class(runner_cls, "the class GraphRunner")
    model = mystery_model()
    runner = runner_cls(model)
    xs = requests(6, seed=1)
    with profiling.count_graph_calls() as calls:
        outs = [runner(x) for x in xs]
    torch.cuda.synchronize()
    ok(all(isinstance(o, torch.Tensor) for o in outs), "a tensor for each request",
       _describe(next((o for o in outs if not isinstance(o, torch.Tensor)), None)), "return the model's output")
    _no_shared_outputs(outs)
    wrong = [i + 1 for i, (o, x) in enumerate(zip(outs, xs)) if not _close(o, model(x))]
    ok(not wrong, "each request's result equal to eager model(x)", f"wrong results for request(s) {wrong}",
       "copy each request into the graph's static input (static_in.copy_(x)) before the replay: "
       "the graph reads the input it was captured on")
    ok(calls.replays >= len(xs), f"{len(xs)} replays for {len(xs)} requests", str(calls),
       "serve every request by replaying a graph: that is where the speed comes from")
    ok(calls.captures <= 1, "at most 1 capture for 6 requests of one shape", str(calls),
       "capture once per input shape and keep the graph: key the cache by the shape, not by anything "
       "that changes with each request (such as x.data_ptr())")
    more = requests(4, seed=2)
    with profiling.count_graph_calls() as later:
        for x in more:
            runner(x)
    ok(later.captures == 0, "no capture for later requests of the same shape", str(later),
       "keep the graph from the first request and replay it")

    pool = requests(20, seed=3)
    it_e, it_r = iter(pool), iter(pool)
    t_eager = timing.measure(lambda: model(next(it_e)), warmup=2, repeat=8)
    t_runner = timing.measure(lambda: runner(next(it_r)), warmup=2, repeat=8)
    ok_faster(t_runner, t_eager, _SPEEDUP_NEEDED,
              f"the runner at least {_SPEEDUP_NEEDED:.0f}x faster than eager on new requests",
              "a replay should replace the model's many launches with one: look for work done at every call "
              "(a capture, a warm-up, a synchronize) with the profiler and count_graph_calls()", name="runner")
    trace = profiling.profile(lambda: runner(pool[0]), warmup=1)
    ok(trace.graph_launches == 1, "one cudaGraphLaunch per request", trace.counts(),
       "one request, one replay")
    ok(trace.kernel_launches <= model.kernels_per_call // 4,
       f"far fewer cudaLaunchKernel calls than eager's {model.kernels_per_call}", trace.counts(),
       "the model's kernels belong in the graph: copy the input in, replay, copy the output out")


# ---------------------------------------------------------------------------------------
# Mystery 2: a denoising step whose results go wrong after the first call
# ---------------------------------------------------------------------------------------
_SCHEDULE = (0.9, 0.6, 0.35, 0.15, 0.05)
_T_IDEA = ("a Python number used inside a capture is baked into the kernels: keep t in a device tensor "
           "(static_t = torch.zeros((), device=DEVICE)), write each call's value into it "
           "(static_t.fill_(t)) and capture the step on that tensor")
_X_IDEA = "copy each x into the static input (static_x.copy_(x)) before the replay; never rebind it"


@check("mystery 2: step runner")
def check_step_runner(runner_cls):
    """``runner_cls(shape)``; ``runner(x, t)`` returns ``denoise_step(x, t)`` from one graph."""
    import torch

    from graphlab_utils import profiling

    ok_class(runner_cls, "the class StepRunner")
    runner = runner_cls(STEP_SHAPE)
    xs = requests(len(_SCHEDULE) + 2, shape=STEP_SHAPE, seed=4)
    calls_made = [(xs[0], _SCHEDULE[0]), (xs[1], _SCHEDULE[0])]       # new x, same t
    calls_made += [(xs[1], t) for t in _SCHEDULE[1:3]]               # same x, new t
    calls_made += [(x, t) for x, t in zip(xs[2:], _SCHEDULE[3:])]    # both change
    with profiling.count_graph_calls() as calls:
        outs = [runner(x, t) for x, t in calls_made]
    torch.cuda.synchronize()
    ok(all(isinstance(o, torch.Tensor) for o in outs), "a tensor for each call",
       _describe(next((o for o in outs if not isinstance(o, torch.Tensor)), None)), "return the step's output")
    _no_shared_outputs(outs)
    for i, ((x, t), out) in enumerate(zip(calls_made, outs)):
        if _close(out, denoise_step(x, t)):
            continue
        prev_x, prev_t = calls_made[i - 1] if i else (x, t)
        new_x, new_t = prev_x is not x, prev_t != t
        if new_t and not new_x:
            idea, seen = _T_IDEA, f"a wrong result at call {i + 1}, where only t changed (to {t})"
        elif new_x and not new_t:
            idea, seen = _X_IDEA, f"a wrong result at call {i + 1}, where only x changed"
        else:
            idea, seen = f"{_X_IDEA}; and {_T_IDEA}", f"a wrong result at call {i + 1} (t={t})"
        fail("denoise_step(x, t) for every call", seen, idea)
    ok(calls.replays >= len(calls_made), f"{len(calls_made)} replays for {len(calls_made)} calls", str(calls),
       "serve every call by a replay of the graph")
    ok(calls.captures <= 1, f"1 capture for {len(calls_made)} calls", str(calls),
       "one graph serves every t when t is read from a device tensor: do not capture one graph per value")


# ---------------------------------------------------------------------------------------
# Mystery 3: a decode step that cannot be captured
# ---------------------------------------------------------------------------------------
def _probs_of(out):
    return out[0] if isinstance(out, (tuple, list)) and out else out


def _capture(fn):
    """Warm up and capture ``fn(h, w)`` on the decode inputs; return (graph, output, h, w)."""
    h, w = decode_inputs()
    g, out = recipes.capture(lambda: fn(h, w))
    return g, out, h, w


_SYNC_IDEA = (
    "during capture nothing has run, so no value can be read on the host: `if tensor:`, "
    ".item(), float(t), print(t) and .cpu() are syncs. Keep the guard on the device (return "
    "torch.isfinite(h).all() as a second output and read it after the replay), or check the "
    "result after the replay, outside the graph"
)


@check("mystery 3: decode step")
def check_decode_step(fn):
    """``fn(h, w)``: ``softmax(relu(h @ w))`` (or ``(probs, flag)``) that a graph can capture."""
    ok_function(fn, "a function decode_step(h, w)")
    in_fresh_process(_verify_decode_step, fn)


def _verify_decode_step(fn):
    """In the check's fresh process: the eager result, the capture, replays on new inputs."""
    import torch

    from graphlab_utils.errors import error_name_in

    h, w = decode_inputs()
    probs = _probs_of(fn(h, w))
    ok(_close(probs, decode_reference(h, w)), "softmax(relu(h @ w), dim=-1), run eagerly",
       _describe(probs) if not isinstance(probs, torch.Tensor) or probs.shape != (8, 64) else "different values",
       "keep the step's math; only the guard has to change")

    try:
        g, out, h, w = _capture(fn)
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 - the learner's capture may fail in any way
        name, first = error_name_in(str(exc)), recipes.first_line(exc)
        if name is None and not first.startswith("Cannot copy between CPU and CUDA"):
            fail("code that runs to the end when it is captured", f"{type(exc).__name__}: {first}",
                 "read the error: it comes from your code (it ran in a fresh process, where only torch, "
                 "DEVICE, gl and what your function uses are defined)")
        context = exc.__context__
        first_error = (error_name_in(str(context)) if context is not None else None) or name or type(exc).__name__
        fail("a capture that succeeds", f"the capture failed ({first_error})", _SYNC_IDEA)
    probs = _probs_of(out)
    for seed in (5, 6):
        new_h, _ = decode_inputs(seed)
        h.copy_(new_h)
        g.replay()
        torch.cuda.synchronize()
        ok(_close(probs, decode_reference(h, w)), "after h.copy_(new_h) and a replay, the probabilities of new_h",
           "different values", "compute everything from the h and w the graph was captured on, inside the graph")
