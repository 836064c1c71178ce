"""Checks of lab 07, graph memory: what a capture reserves, and bucket graphs in one pool.

The lab's functions and the checks that run them:

* :func:`check_measure_capture` runs the learner's ``measure_capture(fn)``: capture ``fn``
  into a new graph and return ``(graph, output, nbytes)``, where ``nbytes`` is how much
  ``torch.cuda.memory_reserved()`` grew because of the capture. The check first measures
  the same capture itself (and keeps that graph alive), then leaves a freed block in the
  allocator's cache, as every real program has, and calls the learner's function. Its figure
  must match the check's own within :func:`tolerance`, and replaying the graph must give
  eager PyTorch's result.
* :func:`check_capture_buckets` runs the learner's
  ``capture_buckets(step, buckets, hidden, budget_bytes)``: allocate ``static_in`` and
  ``static_out`` once, for the largest bucket; capture one graph per bucket, largest first,
  all into one memory pool, the graph of bucket ``b`` reading ``static_in[:b]`` and writing
  ``static_out[:b]``; measure the memory all this reserved and raise ``MemoryError`` when it
  exceeds the budget; return ``(graphs, static_in, static_out, used_bytes)``. The check
  watches the order of the captures through its step function, compares the graphs' pools,
  replays every graph against eager, measures the memory itself, and calls the function
  again with a budget too small for any correct answer.

Memory is measured with ``torch.cuda.memory_reserved()`` on both backends: PyTorch's caching
allocator on a GPU, the simulator's model of it on the CPU. The figures differ (a GPU rounds
allocations up into 2 MiB and 20 MiB segments, the simulator counts blocks), so the checks
compare a learner's figure with the check's own measurement taken in the same run, and the
budget leaves room for both backends.
"""
from __future__ import annotations

from graphlab_utils.recipes import close, seeded_randn, warm_up

from .core import check, fail, ok
from .core import device as _device

__all__ = [
    "MiB",
    "HIDDEN",
    "LAYERS",
    "MEASURE_TOKENS",
    "BUCKETS",
    "BUDGET",
    "TINY_BUDGET",
    "make_step",
    "tolerance",
    "check_measure_capture",
    "check_capture_buckets",
]

MiB = 2**20
HIDDEN = 16384  # one token's activations: 16384 float32 = 64 KiB
LAYERS = 2  # the check's step: 2 layers of 3 elementwise kernels
MEASURE_TOKENS = 32  # the static input of check_measure_capture: 32 tokens (2 MiB)
BUCKETS = (2, 16, 1, 8, 4)  # given out of order on purpose: capture largest first
BUDGET = 16 * MiB  # fits a correct answer on a GPU and on the simulator
TINY_BUDGET = MiB // 16  # less than one segment: no correct answer fits, expect MemoryError
DIRTY_BYTES = 32 * MiB  # a freed block left in the allocator's cache before the learner's code runs
RTOL, ATOL = 1e-4, 1e-5


def tolerance(nbytes: float) -> float:
    """How far a learner's memory figure may be from the check's own: 256 KiB or 5 %."""
    return max(0.25 * MiB, 0.05 * abs(nbytes))


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
def _mib(nbytes) -> str:
    return f"{float(nbytes) / MiB:.1f} MiB"


def _reserved() -> int:
    import torch

    torch.cuda.synchronize()
    return int(torch.cuda.memory_reserved())


def _is_number(x) -> bool:
    try:
        import numbers

        return isinstance(x, numbers.Real) and not isinstance(x, bool)
    except Exception:
        return False


def make_step(hidden: int = HIDDEN, seed: int = 7, log: list | None = None):
    """A toy decoder step on ``x`` of shape ``(tokens, hidden)``: ``LAYERS`` layers of
    ``sigmoid(h * w) * 2 - b``, every kernel with a fresh output tensor. Rows are independent,
    so padding a batch with extra rows leaves the real rows' results unchanged.

    With a ``log`` list, each call made while the current stream is capturing appends the
    number of rows it got (the check uses it to see the order of the captures).
    """
    import torch

    w = seeded_randn(seed, hidden, device=_device()) * 0.5
    b = seeded_randn(seed + 1, hidden, device=_device()) * 0.1

    def step(x):
        if log is not None and torch.cuda.is_current_stream_capturing():
            log.append(int(x.shape[0]))
        h = x
        for _ in range(LAYERS):
            h = torch.sigmoid(h * w) * 2.0 - b
        return h

    return step


def _anchor():
    """A tiny graph a check keeps alive while it measures: whatever PyTorch sets up once for
    the first live graph of a process is then in place before any measurement, the check's
    and the learner's alike."""
    import torch

    x = torch.zeros(1, device=_device())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = x + 1
    return g, x, y


def _leave_a_cached_block() -> None:
    """Allocate and free a tensor: its block stays in the caching allocator's cache."""
    import torch

    junk = torch.empty(DIRTY_BYTES // 4, device=_device())
    del junk


# ---------------------------------------------------------------------------------------
# Exercise 1: what one capture reserves
# ---------------------------------------------------------------------------------------
def _reference_measure(fn):
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = _reserved()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out, _reserved() - base


@check("measure what a capture reserves")
def check_measure_capture(measure_capture):
    """``measure_capture(fn)`` returns ``(graph, output, nbytes)``: a new graph of ``fn`` and
    the growth of ``torch.cuda.memory_reserved()`` that its capture caused, in bytes."""
    import torch

    step = make_step()
    x = seeded_randn(11, MEASURE_TOKENS, HIDDEN, device=_device())
    fn = lambda: step(x)  # noqa: E731
    warm_up(fn, 2)
    anchor = _anchor()  # noqa: F841 (kept alive on purpose)
    ref_graph, ref_out, ref_bytes = _reference_measure(fn)  # kept alive while the learner measures
    out_bytes = ref_out.numel() * ref_out.element_size()
    _leave_a_cached_block()

    result = measure_capture(fn)
    ok(isinstance(result, tuple) and len(result) == 3,
       "measure_capture(fn) returns a triple (graph, output, nbytes)",
       f"{type(result).__name__}" + (f" of length {len(result)}" if isinstance(result, tuple) else ""),
       "return the CUDAGraph, the tensor fn returned inside the capture, and the bytes the capture reserved")
    graph, out, nbytes = result
    ok(isinstance(graph, torch.cuda.CUDAGraph),
       "the first item is the torch.cuda.CUDAGraph you captured fn into",
       f"{type(graph).__name__}",
       "create a new graph with torch.cuda.CUDAGraph() and capture one call of fn under "
       "`with torch.cuda.graph(g):`")
    ok(isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(ref_out.shape),
       f"the second item is fn's output inside the capture, a tensor of shape {tuple(ref_out.shape)}",
       f"{type(out).__name__}" + (f" of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else ""),
       "keep what fn returns inside the capture: the graph writes its result there on every replay")
    ok(_is_number(nbytes),
       "the third item is a number of bytes",
       f"{type(nbytes).__name__}",
       "return torch.cuda.memory_reserved() after the capture minus the same figure before it")

    new_x = seeded_randn(12, MEASURE_TOKENS, HIDDEN, device=_device())
    x.copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    ok(close(out, step(new_x)),
       "after x.copy_(new) and graph.replay(), the output holds fn's result for the new input",
       "the output does not match eager PyTorch",
       "capture fn itself (one call, no warm-up inside the capture) and return the tensor it returned")

    nbytes = float(nbytes)
    tol = tolerance(ref_bytes)
    if abs(nbytes - ref_bytes) <= tol:
        return
    if abs(nbytes * MiB - ref_bytes) <= tol:
        fail(f"about {int(ref_bytes)} bytes ({_mib(ref_bytes)})",
             f"{nbytes:g}: the figure in MiB",
             "return bytes, as torch.cuda.memory_reserved() gives them; divide by 2**20 only to print")
    if abs(nbytes - out_bytes) <= tolerance(out_bytes):
        fail(f"about {_mib(ref_bytes)} (the check's own measurement of the same capture)",
             f"{_mib(nbytes)}: the size of the output alone",
             "memory_allocated() counts live tensors only: the intermediates freed inside the "
             "capture are not counted, yet the graph writes them on every replay and its private "
             "pool keeps them. Measure torch.cuda.memory_reserved()")
    if nbytes < ref_bytes:
        fail(f"about {_mib(ref_bytes)} (the check's own measurement of the same capture)",
             f"{_mib(nbytes)}",
             "take the baseline after torch.cuda.synchronize() and torch.cuda.empty_cache(): "
             "`with torch.cuda.graph(g):` empties the cache when it starts, so blocks cached "
             "before your baseline vanish from the figure after the capture and hide the graph's pool")
    fail(f"about {_mib(ref_bytes)} (the check's own measurement of the same capture)",
         f"{_mib(nbytes)}",
         "measure only the capture: empty the cache, read memory_reserved(), capture fn once, "
         "read memory_reserved() again; leave out warm-up runs, extra tensors and other graphs")


# ---------------------------------------------------------------------------------------
# Exercise 2: bucket graphs in one pool, within a budget
# ---------------------------------------------------------------------------------------
def _rows(b: int) -> str:
    return f"{b} row" + ("" if b == 1 else "s")


@check("capture buckets within a budget")
def check_capture_buckets(capture_buckets):
    """``capture_buckets(step, buckets, hidden, budget_bytes)`` returns
    ``(graphs, static_in, static_out, used_bytes)`` and raises MemoryError over budget."""
    import torch

    buckets = list(BUCKETS)
    largest = max(buckets)
    log: list = []
    step = make_step(log=log)
    warm_up(lambda: step(seeded_randn(3, largest, HIDDEN, device=_device())), 2)
    anchor = _anchor()  # noqa: F841 (kept alive on purpose)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = _reserved()
    _leave_a_cached_block()

    try:
        result = capture_buckets(step, list(buckets), HIDDEN, BUDGET)
    except MemoryError as exc:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        over = _reserved() - base
        first = str(exc).splitlines()[0] if str(exc) else ""
        fail(f"the buffers and graphs fit the budget of {_mib(BUDGET)}",
             f"MemoryError: {first} (memory still reserved after it: {_mib(over)})",
             "allocate static_in/static_out once for the largest bucket, capture every bucket into one "
             "shared pool, largest first: the pool then holds about one graph's workspace, not the sum")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    used = _reserved() - base

    ok(isinstance(result, tuple) and len(result) == 4,
       "capture_buckets(...) returns (graphs, static_in, static_out, used_bytes)",
       f"{type(result).__name__}" + (f" of length {len(result)}" if isinstance(result, tuple) else ""),
       "return the dict of graphs, the two static buffers and the bytes you measured")
    graphs, static_in, static_out, used_bytes = result
    ok(isinstance(graphs, dict) and set(graphs) == set(buckets),
       f"graphs: a dict with one graph per bucket, keys {sorted(buckets)}",
       f"{type(graphs).__name__}" + (f" with keys {sorted(graphs)}" if isinstance(graphs, dict) else ""),
       "capture one graph for every bucket and key it by the bucket's number of rows")
    ok(all(isinstance(g, torch.cuda.CUDAGraph) for g in graphs.values()),
       "every value of graphs is a torch.cuda.CUDAGraph",
       ", ".join(sorted({type(g).__name__ for g in graphs.values()})),
       "store the torch.cuda.CUDAGraph objects you captured")
    for name, buf in (("static_in", static_in), ("static_out", static_out)):
        ok(isinstance(buf, torch.Tensor) and tuple(buf.shape) == (largest, HIDDEN),
           f"{name}: one tensor of shape ({largest}, {HIDDEN}), sized for the largest bucket",
           f"{type(buf).__name__}" + (f" of shape {tuple(buf.shape)}" if isinstance(buf, torch.Tensor) else ""),
           "allocate the static buffers once, before any capture, for the largest bucket; the graph "
           "of bucket b uses the views static_in[:b] and static_out[:b]")
    ok(_is_number(used_bytes),
       "used_bytes: a number of bytes",
       f"{type(used_bytes).__name__}",
       "return torch.cuda.memory_reserved() after the last capture minus the figure before the static buffers")

    expected_order = sorted(buckets, reverse=True)
    ok(log == expected_order,
       f"one capture per bucket, largest first: step called inside captures on {expected_order} rows",
       f"step called inside captures on {log} rows",
       "sort the buckets from the largest down and capture once per bucket: the largest graph sets "
       "the pool's high-water mark and every smaller graph reuses the blocks it freed "
       "(SGLang captures largest -> smallest to maximize buffer reuse)")
    pools = {tuple(g.pool()) for g in graphs.values()}
    ok(len(pools) == 1,
       "every graph captured into one memory pool",
       f"{len(pools)} different pools",
       "pass the same handle to every capture: pool = torch.cuda.graph_pool_handle() (or the first "
       "graph's g.pool()), then `with torch.cuda.graph(g, pool=pool):`. Without pool=, each graph "
       "gets a private pool of its own and memory adds up graph by graph")

    for seed, b in enumerate((1, 16, 4, 2, 8), start=100):  # replayed in another order than captured
        x = seeded_randn(seed, b, HIDDEN, device=_device())
        static_in.zero_()
        static_in[:b].copy_(x)
        graphs[b].replay()
        torch.cuda.synchronize()
        ok(close(static_out[:b], step(x)),
           f"the graph of bucket {b} reads static_in[:{b}] and writes step's result to static_out[:{b}]",
           f"after static_in[:{b}].copy_(x) and a replay, static_out[:{b}] does not hold step(x)",
           "inside the capture write into the static output: static_out[:b].copy_(step(static_in[:b])). "
           "A graph replays the addresses it captured: a buffer of its own, or a tensor returned "
           "instead of written, is not where the caller looks")

    used_bytes = float(used_bytes)
    ok(abs(used_bytes - used) <= tolerance(used),
       f"used_bytes about {_mib(used)}: the check's own measurement around your call",
       f"{_mib(used_bytes)}",
       "take the baseline after torch.cuda.synchronize() and torch.cuda.empty_cache(), before "
       "allocating the static buffers, and read memory_reserved() again after the last capture: the "
       "budget covers the buffers and the pool (`with torch.cuda.graph` empties the cache on entry, "
       "so a baseline taken with cached blocks in it comes out too high)")
    ok(used <= BUDGET,
       f"the buffers and graphs fit the budget of {_mib(BUDGET)}",
       f"{_mib(used)}",
       "size the static buffers once for the largest bucket and share one pool, largest bucket first")

    del result, graphs, static_in, static_out
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    raised = None
    try:
        capture_buckets(make_step(), list(buckets), HIDDEN, TINY_BUDGET)
    except MemoryError as exc:
        raised = exc
    finally:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    ok(raised is not None,
       f"MemoryError when the graphs need more than budget_bytes ({_mib(TINY_BUDGET)} here)",
       "the function returned normally",
       "after the last capture compare used_bytes with budget_bytes and raise MemoryError(...) when it "
       "is over: a serving system checks its graph budget at start-up, not when the GPU runs out")
