"""Checks of lab 06, exec update: new addresses without a new instantiate.

The lab's workload is a chain of tiny elementwise kernels that reads a static buffer
(:func:`chain`). A graph of it is instantiated and in use; then the buffers move (a new
tensor, a new address), or the work changes shape (one op more or fewer). The learner
writes:

* ``capture_on(graph, fn)``, checked by :func:`check_capture_on`: record ``fn()`` (the same
  work on the new buffers) into a new ``torch.cuda.CUDAGraph(keep_graph=True)`` that shares
  ``graph``'s memory pool and is **not** instantiated; return ``(new_graph, new_out)``.
  The check then updates ``graph`` from it with ``cudaGraphExecUpdate`` and replays.
* ``update_or_rebuild(graph, new_graph)``, checked by :func:`check_update_or_rebuild`:
  try ``cudaGraphExecUpdate(graph's exec, new_graph's graph)``; on success return
  ``(graph, "update")``; on failure instantiate ``new_graph`` and return
  ``(new_graph, "rebuild")``. The check feeds it a sequence of changes (new addresses,
  one op more, new addresses again, one op fewer) and replays what it returns each time.
* ``time_switch(graph, capture_new)``, checked by :func:`check_time_switch` (a timing
  check): the three costs of switching a graph to new buffers, ``{"capture",
  "instantiate", "exec_update"}``, each close to the check's own measurement taken side by
  side in the same run (exact on the simulator, where the clock is modelled), with the
  update cheaper than the instantiate.

Only changes whose outcome was seen on a real GPU are fed to the checks: the same chain on
new buffers (the update succeeds) and a chain with another number of ops (it fails with
``cudaErrorGraphExecUpdateFailure``). No check compares against an absolute time.
"""
from __future__ import annotations

import math

from graphlab_utils.recipes import close, plural, seeded_randn, warm_up

from .core import check, fail, graph_and_output, ok, ok_near_own_measurement, ok_timings
from .core import device as _device

__all__ = [
    "PATHS",
    "STEP",
    "CHECK_OPS",
    "TIMING_OPS",
    "TOLERANCE",
    "TIMING_KEYS",
    "chain",
    "check_capture_on",
    "check_update_or_rebuild",
    "check_time_switch",
]

PATHS = ("update", "rebuild")
STEP = 0.5  # each op of the chain adds this
CHECK_OPS = 12  # ops of the chains the correctness checks use
TIMING_OPS = 500  # ops of the chain check_time_switch times: instantiate is then far slower than an update
TOLERANCE = 3.0  # a learner's timing may differ from the check's own by this factor at most
TIMING_KEYS = ("capture", "instantiate", "exec_update")
NUMEL = 1024
RTOL, ATOL = 1e-5, 1e-5


# ---------------------------------------------------------------------------------------
# The workload
# ---------------------------------------------------------------------------------------
def chain(x, n_ops: int, step: float = STEP):
    """``n_ops`` tiny elementwise kernels in a row: ``y = y + step``, ``n_ops`` times."""
    y = x
    for _ in range(n_ops):
        y = y + step
    return y


def _capture(fn, pool=None):
    """``(graph, out)``: ``fn()`` recorded into a CUDAGraph(keep_graph=True), not instantiated."""
    import torch

    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g, pool=pool):
        out = fn()
    return g, out


def _instantiated(graph) -> bool:
    try:
        graph.raw_cuda_graph_exec()
        return True
    except RuntimeError:
        return False


def _keeps_graph(graph) -> bool:
    try:
        graph.raw_cuda_graph()
        return True
    except RuntimeError:
        return False


def _update(graph, new_graph) -> str:
    from graphlab_utils import cudart

    err, _info = cudart.cudaGraphExecUpdate(graph.raw_cuda_graph_exec(), new_graph.raw_cuda_graph())
    return err.name


class _Work:
    """``work()`` runs the chain on the static buffer ``work.x`` and logs each Python call
    (True when it ran inside a capture)."""

    def __init__(self, x, n_ops: int):
        self.x, self.n_ops = x, n_ops
        self.log: list[bool] = []

    def reference(self):
        return chain(self.x, self.n_ops)

    def __call__(self):
        import torch

        self.log.append(bool(torch.cuda.is_current_stream_capturing()))
        return chain(self.x, self.n_ops)


# ---------------------------------------------------------------------------------------
# Exercise 1: capture the same work on the new buffers, ready for an update
# ---------------------------------------------------------------------------------------
@check("capture on the new buffers")
def check_capture_on(capture_on):
    """``capture_on(graph, fn)`` returns ``(new_graph, new_out)``: ``fn()`` recorded into a
    ``CUDAGraph(keep_graph=True)`` in ``graph``'s pool, not instantiated."""
    import torch

    old = _Work(seeded_randn(1, NUMEL, device=_device()), CHECK_OPS)
    warm_up(old, 2)
    graph, _old_out = _capture(old)
    graph.instantiate()
    graph.replay()
    new = _Work(seeded_randn(2, NUMEL, device=_device()), CHECK_OPS)  # the same work on a new buffer: a new address

    new_graph, new_out = graph_and_output(
        capture_on(graph, new), "capture_on(graph, fn)", "(new_graph, new_out)",
        "return the new CUDAGraph and the tensor fn returned inside its capture",
        "create it with torch.cuda.CUDAGraph(keep_graph=True) and capture fn into it", new=True)
    ok(new_graph is not graph,
       "a new graph; the one in use stays as it is",
       "the graph you were given",
       "a CUDAGraph captures once: record the new buffers into a new torch.cuda.CUDAGraph(keep_graph=True)")
    ok(isinstance(new_out, torch.Tensor),
       "the second item is the tensor fn returned inside the capture",
       f"{type(new_out).__name__}",
       "keep what fn returns inside `with torch.cuda.graph(new_graph, ...)`: after the update the "
       "old exec writes its results there")
    captured = sum(1 for capturing in new.log if capturing)
    ok(captured == 1,
       "fn called exactly once inside the capture",
       f"fn called {plural(captured, 'time')} inside a capture",
       "one call records one pass; the update needs the same topology as the graph in use, "
       "and two calls would record twice the nodes")
    ok(_keeps_graph(new_graph),
       "a graph that keeps its cudaGraph_t: torch.cuda.CUDAGraph(keep_graph=True)",
       "new_graph.raw_cuda_graph() raised: the graph was created without keep_graph=True",
       "cudaGraphExecUpdate reads the new cudaGraph_t (new_graph.raw_cuda_graph()); PyTorch "
       "keeps it only when the graph is created with keep_graph=True")
    ok(not _instantiated(new_graph),
       "a new graph captured but not instantiated (its raw_cuda_graph_exec() still fails)",
       "new_graph.raw_cuda_graph_exec() works: it was instantiated (or replayed) inside capture_on",
       "the whole point of the update is to skip instantiate: the old exec takes the new "
       "graph's parameters, the new graph itself never needs an exec")
    same_pool = new_graph.pool() == graph.pool()
    ok(same_pool,
       "the new graph captured in the pool of the graph in use: pool=graph.pool()",
       "a memory pool of its own",
       "after the update the old exec writes into the new capture's memory (its intermediates "
       "and outputs); in graph.pool() that memory lives as long as the graph in use, and no "
       "second pool is reserved: torch.cuda.graph(new_graph, pool=graph.pool())")

    err = _update(graph, new_graph)
    ok(err == "cudaSuccess",
       "cudaGraphExecUpdate(graph's exec, new_graph's graph) succeeds: the same topology",
       f"{err}",
       "capture exactly what fn does, once, and nothing else: any other node changes the topology")
    new.x.copy_(seeded_randn(3, NUMEL, device=_device()))  # new content at the new address: the graph must read it
    graph.replay()
    ok(close(new_out, new.reference(), rtol=RTOL, atol=ATOL),
       "after the update, a replay of the graph in use writes fn's result for the new buffer's "
       "current content into new_out",
       "new_out holds something else",
       "return the very tensor fn returned inside the capture, not a clone and not an eager result: "
       "after the update the graph in use writes there at every replay")


# ---------------------------------------------------------------------------------------
# Exercise 2: update when you can, rebuild when you must
# ---------------------------------------------------------------------------------------
_CASES = (
    # (what changed, ops of the new chain, the path it must take)
    ("the buffers moved (same ops, new addresses)", CHECK_OPS, "update"),
    ("one op more (a new topology)", CHECK_OPS + 1, "rebuild"),
    ("the buffers moved again, on the rebuilt graph", CHECK_OPS + 1, "update"),
    ("one op fewer (a new topology)", CHECK_OPS, "rebuild"),
)


def _call_update_or_rebuild(update_or_rebuild, graph, new_graph, what):
    try:
        return update_or_rebuild(graph, new_graph)
    except AttributeError as exc:
        if "NoneType" in str(exc):
            fail(f"{what}: a graph to replay and the path taken",
                 f"AttributeError: {str(exc).splitlines()[0]}",
                 "when the update fails, cuda-python returns (cudaErrorGraphExecUpdateFailure, None): "
                 "there is no result info to read. Test err first: "
                 "`if err == cudart.cudaError_t.cudaSuccess:` (or err.name == 'cudaSuccess')")
        raise


@check("update or rebuild")
def check_update_or_rebuild(update_or_rebuild):
    """``update_or_rebuild(graph, new_graph)`` returns ``(graph to replay, "update" | "rebuild")``."""
    import torch

    keep = []  # every graph and output stays alive until the check ends
    work = _Work(seeded_randn(10, NUMEL, device=_device()), CHECK_OPS)
    warm_up(work, 2)
    warm_up(_Work(work.x, CHECK_OPS + 1), 2)
    current, out = _capture(work)
    current.instantiate()
    current.replay()
    keep.append((current, out, work))
    for i, (what, n_ops, expected) in enumerate(_CASES, start=1):
        new_work = _Work(seeded_randn(10 + i, NUMEL, device=_device()), n_ops)
        new_graph, new_out = _capture(new_work, pool=current.pool())
        keep.append((new_graph, new_out, new_work))
        answer = _call_update_or_rebuild(update_or_rebuild, current, new_graph, what)
        ok(isinstance(answer, tuple) and len(answer) == 2,
           f"{what}: a pair (graph to replay, path)",
           f"{type(answer).__name__}",
           "return the graph to replay from now on and the path taken: (graph, 'update') or "
           "(new_graph, 'rebuild')")
        graph, path = answer
        ok(path in PATHS,
           f"{what}: the path, 'update' or 'rebuild'",
           f"{path!r}",
           "say which path was taken with one of the two words, exactly")
        ok(isinstance(graph, torch.cuda.CUDAGraph),
           f"{what}: a torch.cuda.CUDAGraph to replay",
           f"{type(graph).__name__}",
           "return the graph itself: after an update the one you were given, after a rebuild the new one")
        if expected == "update":
            ok(path == "update",
               f"{what}: 'update' (cudaGraphExecUpdate succeeds: same kernels, same edges)",
               f"{path!r}",
               "try the update first and keep its result: when the topology is the same it succeeds, "
               "and a rebuild would pay a full instantiate for nothing")
            ok(graph is current,
               f"{what}: the graph you were given, whose exec now holds the new addresses",
               "the new graph" if graph is new_graph else "another graph",
               "cudaGraphExecUpdate changes the old exec in place; the new graph only lent it its "
               "parameters and is never replayed")
            ok(not _instantiated(new_graph),
               f"{what}: the new graph left un-instantiated",
               "new_graph was instantiated (or replayed) as well",
               "when the update succeeds there is nothing to instantiate: instantiating anyway pays "
               "the cost the update was meant to save")
        else:
            ok(path == "rebuild",
               f"{what}: 'rebuild' (cudaGraphExecUpdate fails with cudaErrorGraphExecUpdateFailure)",
               f"{path!r}",
               "check err before you claim an update: with another number of nodes the update "
               "fails, the old exec keeps its old addresses and topology, and you must instantiate "
               "the new graph")
            ok(graph is new_graph,
               f"{what}: the new graph, instantiated",
               "the graph you were given" if graph is current else "another graph",
               "after a failed update the old exec is unchanged (old buffers, old ops): the new "
               "graph is the one that holds the new work; instantiate it and return it")
            ok(_instantiated(graph),
               f"{what}: the new graph instantiated before it is returned",
               "it is not instantiated yet (its raw_cuda_graph_exec() fails)",
               "rebuild means new_graph.instantiate(): do it now, off the request's critical "
               "path, rather than inside the first replay")
        graph.replay()
        ok(close(new_out, new_work.reference(), rtol=RTOL, atol=ATOL),
           f"{what}: after a replay of the returned graph, the new capture's output holds the new result",
           "it holds something else",
           "after either path the results land in the new capture's output tensor: replaying the "
           "returned graph must compute on the new buffers")
        current = graph


# ---------------------------------------------------------------------------------------
# Exercise 3: what switching to new buffers costs (a timing check)
# ---------------------------------------------------------------------------------------
_TIMING_IDEAS = {
    "capture": "time one call of capture_new() with timing.measure_host: the capture is host "
               "work, and the update path pays it too",
    "instantiate": "time new_graph.instantiate() alone with timing.measure_host, on a graph that "
                   "capture_new() returned",
    "exec_update": "time the call cudart.cudaGraphExecUpdate(graph.raw_cuda_graph_exec(), "
                   "new_graph.raw_cuda_graph()) alone with timing.measure_host",
}


def _switch_setup(seed: int):
    """A graph in use on a TIMING_OPS chain, and a function that captures it on new buffers."""
    work = _Work(seeded_randn(seed, NUMEL, device=_device()), TIMING_OPS)
    warm_up(work, 1)
    graph, out = _capture(work)
    graph.instantiate()
    graph.replay()  # in use: its first launch, which uploads it, is behind it
    new_x = seeded_randn(seed + 1, NUMEL, device=_device())
    made = []

    def capture_new():
        g, o = _capture(lambda: chain(new_x, TIMING_OPS), pool=graph.pool())
        made.append((g, o))
        return g

    return graph, capture_new, (out, work, made)


def _reference_switch() -> dict:
    from graphlab_utils import cudart, timing

    graph, capture_new, _keep = _switch_setup(seed=40)
    box = []
    t_capture = timing.measure_host(lambda: box.append(capture_new()))
    new_graph = box[-1]
    # instantiate and the update are host-only calls: no need to wait for the device around them
    t_instantiate = timing.measure_host(new_graph.instantiate, repeat=3, sync=False)
    t_update = timing.measure_host(
        lambda: cudart.cudaGraphExecUpdate(graph.raw_cuda_graph_exec(), new_graph.raw_cuda_graph()),
        warmup=1, repeat=5, sync=False)
    return {"capture": t_capture, "instantiate": t_instantiate, "exec_update": t_update}


@check("the cost of switching to new buffers")
def check_time_switch(time_switch):
    """``time_switch(graph, capture_new)`` returns ``{"capture", "instantiate", "exec_update": Timing}``."""
    graph, capture_new, _keep = _switch_setup(seed=30)
    costs = time_switch(graph, capture_new)
    ok_timings(costs, TIMING_KEYS, "{'capture': ..., 'instantiate': ..., 'exec_update': ...}",
               "use timing.measure_host for all three: they are host-side calls; it reads the host "
               "clock on a GPU and the modelled clock on the simulator, and labels the figure")
    mine = _reference_switch()
    if not costs["exec_update"].median_ms < costs["instantiate"].median_ms:
        far = max(("instantiate", "exec_update"),
                  key=lambda k: abs(math.log(costs[k].median_ms / mine[k].median_ms)))
        fail(f"exec_update cheaper than instantiate on {TIMING_OPS} nodes, as in the check's own "
             f"measurement ({mine['exec_update']} vs {mine['instantiate']})",
             f"exec_update {costs['exec_update']}, instantiate {costs['instantiate']}",
             f"are the two swapped? Your {far} is the furthest from the check's ({mine[far]}): "
             + _TIMING_IDEAS[far])
    ok_near_own_measurement(costs, mine, TIMING_KEYS, _TIMING_IDEAS, TOLERANCE)
