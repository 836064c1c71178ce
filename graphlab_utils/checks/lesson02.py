"""Checks of lab 02, streams and capture.

* ``check_parallel_block(fn)``: ``fn(x, w1, w2, side)`` computes ``x + relu(x @ w1) *
  sigmoid(x @ w2)`` with the two branches on two streams, forked and joined, so that its
  capture holds two parallel branches and a join.
* ``check_capture_helper(capture)``: ``capture(graph, fn)`` records ``fn()`` into ``graph``
  and returns its output (repair 1: the capture on the default stream).
* ``check_sampling_probs(fn)``: ``fn(logits, temperature)`` returns
  ``softmax(logits / temperature)`` without reading the temperature on the host
  (repair 2: the sync in the capture).
* ``check_monitored_step(fn)``: ``fn(x, w, side)`` returns ``(relu(x @ w), mean of x**2
  per row)`` with the statistic on a side stream that is joined back (repair 3: the
  unjoined side stream).

A capture that fails damages a process on a GPU (lesson 02), so each check runs the
learner's function in a fresh process (``graphlab_utils.isolation.run_function``: a notebook
function, a lambda or a closure travels there with what it uses): the eager run, the
capture, the graph's branches (``graphlab_utils.graphinfo.structure``) and its results after
new inputs are copied in are all checked there, and only the verdict comes back. The
notebook's own process never captures the learner's code.
"""

from __future__ import annotations

from graphlab_utils import recipes
from graphlab_utils.recipes import close as _close, describe as _describe

from .core import check, fail, in_fresh_process, ok, ok_function
from .core import device as _device

__all__ = [
    "check_parallel_block",
    "check_capture_helper",
    "check_sampling_probs",
    "check_monitored_step",
    "block_inputs",
    "block_reference",
    "capture_with_warmup",
]


# ---------------------------------------------------------------------------------------
# The lab's workloads
# ---------------------------------------------------------------------------------------
def block_inputs(device=None, seed: int = 0, batch: int = 64, width: int = 256):
    """``(x, w1, w2)`` for the two-branch block, the same on both backends (CPU generator)."""
    import torch

    device = _device() if device is None else device
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, width, generator=gen)
    w1 = torch.randn(width, width, generator=gen) / width**0.5
    w2 = torch.randn(width, width, generator=gen) / width**0.5
    return x.to(device), w1.to(device), w2.to(device)


def block_reference(x, w1, w2):
    """The two-branch block computed in one stream: ``x + relu(x @ w1) * sigmoid(x @ w2)``."""
    import torch

    return x + torch.relu(x @ w1) * torch.sigmoid(x @ w2)


def capture_with_warmup(fn, warmup: int = 2, keep_graph: bool = True):
    """PyTorch's recipe: warm ``fn`` up on a side stream, then capture it; returns ``(graph, output)``.

    The graph is captured with ``keep_graph=True`` (so ``graphinfo`` can read it) and
    instantiated by one replay.
    """
    import torch

    g, out = recipes.capture(fn, warmup=warmup, keep_graph=keep_graph)
    g.replay()
    torch.cuda.synchronize()
    return g, out


# ---------------------------------------------------------------------------------------
# Trials: the learner's capture, in the check's fresh process
# ---------------------------------------------------------------------------------------
def _trial_parallel_block(fn):
    import torch

    x, w1, w2 = block_inputs()
    side = torch.cuda.Stream()
    g, out = capture_with_warmup(lambda: fn(x, w1, w2, side))
    return g, out, x, w1, w2


def _trial_capture_helper(capture):
    import torch

    static_x = torch.linspace(-2.0, 2.0, 1024, device=_device())
    work = lambda: torch.tanh(static_x * 3.0) + 1.0  # noqa: E731
    recipes.warm_up(work, iters=1)
    g = torch.cuda.CUDAGraph()
    before = torch.cuda.current_stream()
    out = capture(g, work)
    after = torch.cuda.current_stream()
    return g, out, static_x, work, before == after


def _sampling_inputs():
    import torch

    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 32, generator=gen).to(_device())
    temperature = torch.tensor([0.7]).to(_device())
    return logits, temperature


def _trial_sampling_probs(fn):
    logits, temperature = _sampling_inputs()
    g, probs = capture_with_warmup(lambda: fn(logits, temperature))
    return g, probs, logits, temperature


def _monitored_inputs():
    import torch

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(32, 128, generator=gen).to(_device())
    w = (torch.randn(128, 128, generator=gen) / 128**0.5).to(_device())
    return x, w


def _monitored_reference(x, w):
    import torch

    return torch.relu(x @ w), x.pow(2).mean(dim=-1)


def _trial_monitored_step(fn):
    import torch

    x, w = _monitored_inputs()
    side = torch.cuda.Stream()
    g, out = capture_with_warmup(lambda: fn(x, w, side))
    return g, out, x, w


# ---------------------------------------------------------------------------------------
# Hints for capture errors
# ---------------------------------------------------------------------------------------
def _error_text(error_type, cuda_error, first_line, cause=None) -> str:
    where = f" ({cuda_error})" if cuda_error else ""
    text = f"the capture raised {error_type}{where}: {first_line}"
    if cause and cause.get("cuda_error"):
        text += f" (first error: {cause['cuda_error']})"
    return text


def _idea_key(cuda_error, first: str, cause: dict) -> str:
    if "non-default stream" in first:
        return "default-stream"
    if "Cannot copy between CPU and CUDA" in first:
        return "host-copy"
    if "same stream it began on" in first:
        return "end-stream"
    if cuda_error == "cudaErrorStreamCaptureInvalidated" and cause.get("cuda_error"):
        return cause["cuda_error"]
    return cuda_error or ""


def _capture(trial, fn, ideas: dict, fallback: str):
    """Run the learner's capture (in the check's fresh process); a capture error becomes a hint."""
    from graphlab_utils.errors import error_name_in

    try:
        return trial(fn)
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 - the learner's capture may fail in any way
        name = error_name_in(str(exc))
        first = recipes.first_line(exc)
        context = exc.__context__
        cause = {"cuda_error": error_name_in(str(context))} if context is not None else {}
        key = _idea_key(name, first, cause)
        idea = ideas.get(key) or (_HOST_COPY_IDEA if key == "host-copy" else None)
        if idea is None:
            if key == "":
                fail(
                    "code that runs to the end when it is captured",
                    f"{type(exc).__name__}: {first}",
                    "read the error: it comes from your code (it ran in a fresh process, "
                    "where only torch, DEVICE, gl and what your function uses are defined)",
                )
            idea = fallback
        fail("a capture that succeeds", _error_text(type(exc).__name__, name, first, cause), idea)


_SYNC_IDEA = (
    "during capture nothing runs, so nothing can be read back on the host: syncs such as "
    ".item(), float(t), print(t), `if t:` and torch.cuda.synchronize() are refused and "
    "invalidate the capture"
)
_HOST_COPY_IDEA = (
    "during capture nothing runs, so nothing can be copied back to the host: PyTorch refuses "
    ".cpu(), .tolist() and .numpy() of a tensor on the capturing stream. Keep the value on the "
    "device inside the graph and read it after the replay"
)
_UNFORKED_IDEA = (
    "work on a stream that did not wait on the capturing stream is not part of the capture; "
    "it needs memory of its own (cudaMalloc), which a 'global' capture refuses. Fork first: "
    "side.wait_stream(torch.cuda.current_stream())"
)
_UNJOINED_IDEA = (
    "every stream forked into a capture must be joined back before the capture ends: after "
    "the side work, run torch.cuda.current_stream().wait_stream(side) on the capturing "
    "stream, outside the `with torch.cuda.stream(side):` block (inside it, "
    "current_stream() is the side stream itself)"
)


# ---------------------------------------------------------------------------------------
# Exercise 1: fork and join a two-branch block
# ---------------------------------------------------------------------------------------
@check("parallel block")
def check_parallel_block(fn):
    """``fn(x, w1, w2, side)``: the block with its branches forked onto ``side`` and joined."""
    ok_function(fn, "a function fn(x, w1, w2, side)")
    in_fresh_process(_verify_parallel_block, fn)


def _verify_parallel_block(fn):
    """In the check's fresh process: the eager result, the capture, its branches, a replay."""
    import torch

    from graphlab_utils import graphinfo

    x, w1, w2 = block_inputs()
    side = torch.cuda.Stream()
    eager = fn(x, w1, w2, side)
    torch.cuda.synchronize()
    ok(_close(eager, block_reference(x, w1, w2)),
       "x + relu(x @ w1) * sigmoid(x @ w2), run eagerly", _describe(eager) if not isinstance(eager, torch.Tensor)
       else "different values", "fork/join changes where the work runs, not what it computes: keep the sequential math")

    g, out, x, w1, w2 = _capture(_trial_parallel_block, fn, {
        "cudaErrorStreamCaptureUnjoined": _UNJOINED_IDEA,
        "cudaErrorStreamCaptureUnsupported": _UNFORKED_IDEA + "; and keep syncs out: " + _SYNC_IDEA,
    }, _UNFORKED_IDEA)
    st = graphinfo.structure(g)
    roots, width, join = len(st.roots), st.width, st.max_in_degree
    seen = f"{roots} root(s), width {width}, largest in-degree {join}"
    ok(width >= 2, "two branches side by side (width 2)", seen + ": one chain of nodes",
       "the branches ran one after the other: both were recorded on one stream, or the side stream "
       "was forked after the main branch had started. Fork first: side.wait_stream(torch.cuda.current_stream()), "
       "run one branch inside `with torch.cuda.stream(side):`, then join: "
       "torch.cuda.current_stream().wait_stream(side)")
    ok(roots >= 2, "both branches starting from the inputs (2 roots)", seen,
       "the side stream started after some of the main branch's work: fork (wait_stream) before "
       "the first op of either branch, so neither waits for the other")
    ok(join >= 2, "a node that waits for both branches (in-degree 2)", seen,
       "the two branches must meet in the op that combines them, after the join")
    ok(isinstance(out, torch.Tensor), "the block's output tensor", _describe(out), "return x + a * b")
    new_x, _, _ = block_inputs(seed=5)
    x.copy_(new_x)
    g.replay()
    torch.cuda.synchronize()
    ok(_close(out, block_reference(x, w1, w2)),
       "after x.copy_(new_x) and a replay, the block of new_x", "different values",
       "the graph must compute from the static inputs it was captured on")


# ---------------------------------------------------------------------------------------
# Repair 1: a capture helper that does not capture on the default stream
# ---------------------------------------------------------------------------------------
@check("capture helper")
def check_capture_helper(capture):
    """``capture(graph, fn)``: records ``fn()`` into ``graph`` and returns its output."""
    ok_function(capture, "a function capture(graph, fn)")
    in_fresh_process(_verify_capture_helper, capture)


def _verify_capture_helper(capture):
    """In the check's fresh process: the capture, the stream left current, a replay."""
    import torch

    g, out, static_x, work, same_stream = _capture(_trial_capture_helper, capture, {
        "default-stream": "capture_begin() ran on the default stream, which cannot be captured: "
                          "switch to a side stream first (`with torch.cuda.stream(s):`), "
                          "or let `with torch.cuda.graph(graph):` do it for you",
        "end-stream": "capture_end() must run on the stream capture_begin() ran on: keep both "
                      "inside the same `with torch.cuda.stream(s):` block",
        "cudaErrorStreamCaptureUnsupported": _SYNC_IDEA,
    }, "keep the capture on one side stream, from capture_begin() to capture_end()")
    ok(same_stream, "the caller's stream current again when the helper returns",
       "another stream left current", "leave the `with torch.cuda.stream(s):` block before returning")
    ok(isinstance(out, torch.Tensor), "the output of fn() recorded in the graph", _describe(out),
       "return what fn() returned inside the capture")
    try:
        static_x.copy_(torch.linspace(-1.0, 3.0, 1024, device=static_x.device))
        g.replay()
        torch.cuda.synchronize()
    except RuntimeError:
        fail("a graph that replays", "the graph holds no capture",
             "call graph.capture_begin() / graph.capture_end() around fn() (or `with torch.cuda.graph(graph):`)")
    ok(_close(out, work()), "after a new input is copied in and the graph replayed, fn() of the new input",
       "the output did not follow the new input",
       "fn() must run inside the capture, so that its output is the graph's output buffer")


# ---------------------------------------------------------------------------------------
# Repair 2: sampling probabilities without reading the temperature on the host
# ---------------------------------------------------------------------------------------
@check("sampling probabilities")
def check_sampling_probs(fn):
    """``fn(logits, temperature)``: ``softmax(logits / temperature, dim=-1)`` with a tensor temperature."""
    ok_function(fn, "a function fn(logits, temperature)")
    in_fresh_process(_verify_sampling_probs, fn)


def _verify_sampling_probs(fn):
    """In the check's fresh process: the eager result, the capture, replays at new temperatures."""
    import torch

    logits, temperature = _sampling_inputs()
    eager = fn(logits, temperature)
    ok(_close(eager, torch.softmax(logits / temperature, dim=-1)),
       "softmax(logits / temperature, dim=-1), run eagerly",
       _describe(eager) if not isinstance(eager, torch.Tensor) or eager.shape != logits.shape else "different values",
       "divide the logits by the temperature, then softmax over the last dimension")

    g, probs, logits, temperature = _capture(_trial_sampling_probs, fn, {
        "cudaErrorStreamCaptureUnsupported": _SYNC_IDEA + (
            ". Divide by the temperature tensor itself: logits / temperature broadcasts on the device"),
    }, _SYNC_IDEA)
    for t, seed in ((1.6, 11), (0.35, 12)):
        gen = torch.Generator().manual_seed(seed)
        logits.copy_(torch.randn(logits.shape, generator=gen).to(logits.device))
        temperature.fill_(t)
        g.replay()
        torch.cuda.synchronize()
        ref = torch.softmax(logits / temperature, dim=-1)
        ok(_close(probs, ref), f"after temperature.fill_({t}) and a replay, softmax(logits / {t})",
           "probabilities for another temperature",
           "the temperature was frozen at capture: a Python number (or a value read once) is baked "
           "into the kernel. Use the tensor, so each replay reads its current value")


# ---------------------------------------------------------------------------------------
# Repair 3: a side stream that is joined back
# ---------------------------------------------------------------------------------------
@check("monitored step")
def check_monitored_step(fn):
    """``fn(x, w, side)``: ``(relu(x @ w), x.pow(2).mean(-1))``, the statistic on ``side``, joined."""
    ok_function(fn, "a function fn(x, w, side)")
    in_fresh_process(_verify_monitored_step, fn)


def _verify_monitored_step(fn):
    """In the check's fresh process: the eager results, the capture, its branches, a replay."""
    import torch

    from graphlab_utils import graphinfo

    x, w = _monitored_inputs()
    side = torch.cuda.Stream()
    eager = fn(x, w, side)
    torch.cuda.synchronize()
    ok(isinstance(eager, (tuple, list)) and len(eager) == 2, "a pair (h, stats)", _describe(eager),
       "return both results: return h, stats")
    h_ref, s_ref = _monitored_reference(x, w)
    ok(_close(eager[0], h_ref) and _close(eager[1], s_ref), "(relu(x @ w), x.pow(2).mean(dim=-1)), run eagerly",
       "different values", "keep the step's math as it was; only the streams change")

    g, out, x, w = _capture(_trial_monitored_step, fn, {
        "cudaErrorStreamCaptureUnjoined": _UNJOINED_IDEA,
        "cudaErrorStreamCaptureUnsupported": _UNFORKED_IDEA,
    }, _UNJOINED_IDEA)
    st = graphinfo.structure(g)
    seen = f"{len(st.roots)} root(s), width {st.width}"
    ok(st.width >= 2 and len(st.roots) >= 2, "the statistic as a branch parallel to the main work (2 roots, width 2)",
       seen, "keep the statistic on the side stream, forked before the main work starts: the point of "
             "the side stream is that it runs beside the matmul")
    gen = torch.Generator().manual_seed(13)
    x.copy_(torch.randn(x.shape, generator=gen).to(x.device))
    g.replay()
    torch.cuda.synchronize()
    h_ref, s_ref = _monitored_reference(x, w)
    ok(_close(out[0], h_ref) and _close(out[1], s_ref),
       "after x.copy_(new_x) and a replay, both results for new_x", "stale or different values",
       "both outputs must be computed inside the graph from the static input x")
