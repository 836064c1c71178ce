"""Checks of lab 13, CUDA graphs across GPUs: each runs the learner's code on every rank.

A check launches the ranks once (``graphlab_utils.multigpu.launch``: NCCL on GPUs, gloo and
the simulator otherwise), runs the learner's function there on cases of its own, and brings
back what it observed; the verdict is made here. A learner's answer that hangs the ranks is
stopped by the launch's timeout and gets a hint about hangs, never a stalled notebook.

* :func:`check_tp_forward`: ``tp_forward(x, part)``, the tensor-parallel MLP block on one
  rank's shard (``multigpu.tp.shard``): column parallel, row parallel, one all-reduce, the
  bias once. Compared with the unsplit block at several batch sizes; the usual mistakes (no
  all-reduce, the bias inside the sum, a sum over the wrong dimension) are named.
* :func:`check_capture_step`: ``capture_step(step) -> (graph, output)``, the capture recipe
  for code with collectives, on every rank. Replays with new inputs must equal the unsplit
  block; a capture that fails names its cause (no warm-up before the first collective, a
  barrier or a sync inside the capture, the default stream).
* :func:`check_decide`: ``decide(has_graph) -> "replay" | "capture"``, the decision every rank
  must take together: replay only when every rank has the graph. Fed rank-dependent inputs;
  the ranks' answers must agree and be right.
* :func:`check_shutdown`: ``shutdown(graphs)``, the teardown: every graph reset before the
  process group is destroyed, so that ``destroy_process_group()`` returns.
"""
from __future__ import annotations

from graphlab_utils.recipes import plural

from .core import check, fail, ok

__all__ = ["BATCHES", "HANG_TIMEOUT_S", "check_tp_forward", "check_capture_step", "check_decide", "check_shutdown"]

BATCHES = (1, 3, 8)  # decode batch sizes each check feeds
HANG_TIMEOUT_S = 20.0  # a learner's answer still running after this long is a hang
_HANG_IDEA = ("every rank must run the same collectives in the same order: a rank that calls one its peers never "
              "call, or captures one its peers run eagerly, waits forever (section 4 of the lesson)")


def _launch(body, *args):
    from graphlab_utils import multigpu

    return multigpu.launch(body, *args, timeout=HANG_TIMEOUT_S, echo=False)


def _ranks_outcome(result, what: str) -> list:
    """The values of every rank, or a hint for the way the launch ended."""
    if result.errors:
        rank = min(result.errors)
        err = result.errors[rank]
        if err.type == "NotImplementedError":
            raise NotImplementedError(err.message)  # the exercise stub: the check says so in its own words
        fail(f"{what} runs to the end on every rank", f"rank {rank}: {err}",
             "read the error: it comes from your code or from PyTorch, raised on that rank")
    if result.died:
        rank = min(result.died)
        fail(f"{what} runs to the end on every rank", f"rank {rank} {result.died[rank]}",
             "a rank's process ended early: look for os._exit, sys.exit or a crash in native code")
    if result.hung:
        fail(f"{what} finishes on every rank", f"{result}", _HANG_IDEA)
    return result.values


# ---------------------------------------------------------------------------------------
# Exercise 1: the tensor-parallel block
# ---------------------------------------------------------------------------------------
def _observe_tp_forward(fn) -> list:
    import torch
    import torch.distributed as dist

    from graphlab_utils import multigpu
    from graphlab_utils.multigpu import tp
    from graphlab_utils.recipes import close

    rank, world = dist.get_rank(), dist.get_world_size()
    dev = multigpu.device()
    full = tp.weights(seed=3)
    part = tp.shard(full, rank, world, dev)
    kept = {k: v.clone() for k, v in part.items()}
    seen = []
    for step, batch in enumerate(BATCHES):
        x = tp.decode_input(step, batch, device=dev)
        x_before = x.clone()
        y = fn(x, part)
        row = {"batch": batch, "type": type(y).__name__}
        if isinstance(y, torch.Tensor):
            want = tp.reference(x_before, full)
            hidden = torch.nn.functional.gelu(x_before @ part["w1"].T + part["b1"])
            local = hidden @ part["w2"].T
            row.update(
                shape=list(y.shape), right=close(y, want),
                no_reduce=close(y, local + part["b2"]) or close(y, local),
                bias_inside=close(y, want + (world - 1) * part["b2"]),
                no_bias=close(y, want - part["b2"]),
                changed_input=not torch.equal(x, x_before),
                changed_weights=any(not torch.equal(part[k], kept[k]) for k in part),
            )
        seen.append(row)
    return seen


@check("tensor-parallel block")
def check_tp_forward(tp_forward):
    """``tp_forward(x, part)`` on every rank equals the unsplit MLP block."""
    from graphlab_utils.multigpu import tp

    per_rank = _ranks_outcome(_launch(_observe_tp_forward, tp_forward), "tp_forward")
    expected_shape = None
    for rank, rows in enumerate(per_rank):
        for row in rows:
            where = f"rank {rank}, a batch of {row['batch']}"
            expected_shape = [row["batch"], tp.D_MODEL]
            ok(row["type"] == "Tensor", f"{where}: a tensor of shape {tuple(expected_shape)}", row["type"],
               "return the block's output")
            ok(row["shape"] == expected_shape, f"{where}: a tensor of shape {tuple(expected_shape)}",
               f"shape {tuple(row['shape'])}",
               "every rank returns the whole output (batch x d_model): the all-reduce sums the partial outputs "
               "into the full one on every rank")
            ok(not row["changed_weights"], f"{where}: the shard's weights unchanged", "your function wrote into them",
               "compute into new tensors; an in-place op on a weight changes the model for every later step")
            ok(not row["changed_input"], f"{where}: x unchanged", "your function wrote into x",
               "compute into new tensors: the caller (and, in a graph, the next replay) still reads x")
            if row["right"]:
                continue
            if row["no_reduce"]:
                fail(f"{where}: the unsplit block's output", "this rank's partial sum only",
                     "after the row-parallel matmul each rank holds a partial sum over its slice of the hidden "
                     "features: dist.all_reduce(partial) adds them, on every rank")
            if row["bias_inside"]:
                fail(f"{where}: the unsplit block's output", f"the output plus {plural(len(per_rank) - 1, 'extra b2')}",
                     "add b2 after the all-reduce: added before it, every rank's copy of b2 is summed")
            if row["no_bias"]:
                fail(f"{where}: the unsplit block's output", "the output without b2",
                     "add part['b2'] once, after the all-reduce")
            fail(f"{where}: the unsplit block's output", "other values",
                 "column parallel: hidden = gelu(x @ w1.T + b1) with this rank's rows of w1 and b1; row parallel: "
                 "partial = hidden @ w2.T with its columns of w2; then dist.all_reduce(partial) and + b2")


# ---------------------------------------------------------------------------------------
# Exercise 2: the capture recipe
# ---------------------------------------------------------------------------------------
def _observe_capture_step(fn) -> dict:
    import torch
    import torch.distributed as dist

    from graphlab_utils import multigpu
    from graphlab_utils.multigpu import tp
    from graphlab_utils.recipes import close, error_line

    rank, world = dist.get_rank(), dist.get_world_size()
    dev = multigpu.device()
    full = tp.weights(seed=4)
    mlp = tp.TPMLP(tp.shard(full, rank, world, dev))
    static_x = tp.decode_input(0, 4, device=dev)
    try:
        got = fn(lambda: mlp(static_x))
    except Exception as exc:  # noqa: BLE001 - the capture's failure is what the check explains
        from graphlab_utils.errors import error_name_in

        context = exc.__context__
        return {"raised": error_line(exc), "cuda_error": error_name_in(str(exc)),
                "first": error_name_in(str(context)) if context is not None else None,
                "first_type": type(context).__name__ if context is not None else None,
                "first_message": str(context).splitlines()[0] if context is not None and str(context) else "",
                "default_stream": "non-default stream" in str(exc)}
    if not (isinstance(got, tuple) and len(got) == 2):
        return {"returned": type(got).__name__}
    graph, out = got
    if not isinstance(graph, torch.cuda.CUDAGraph) or not isinstance(out, torch.Tensor):
        return {"returned": f"({type(graph).__name__}, {type(out).__name__})"}
    right = []
    for step in (1, 2, 3):
        static_x.copy_(tp.decode_input(step, 4, device=dev))
        graph.replay()
        right.append(close(out, tp.reference(static_x, full)))
    return {"right": right}


@check("capture with collectives")
def check_capture_step(capture_step):
    """``capture_step(step) -> (graph, output)`` captures a step with an all-reduce on every rank."""
    per_rank = _ranks_outcome(_launch(_observe_capture_step, capture_step), "capture_step")
    for rank, seen in enumerate(per_rank):
        where = f"rank {rank}"
        if "raised" in seen:
            expected = f"{where}: a capture that succeeds"
            got = seen["raised"] + (f" (first error: {seen['first']})" if seen.get("first") else "")
            if seen.get("default_stream"):
                fail(expected, got, "capture on a side stream: torch.cuda.graph(g, stream=s) with s = "
                     "torch.cuda.Stream(), or the graph's own stream when you pass none")
            if seen.get("first_type") == "DistBackendError" or "CUBLAS" in seen.get("first_message", ""):
                fail(expected, got, "nothing was warmed up: the first collective of a process group creates NCCL's "
                     "communicator and the first matmul cuBLAS's handle, and neither can happen during a capture. "
                     "Run the step eagerly a few times on every rank (on the capture's stream) before capturing")
            if seen.get("first") == "cudaErrorStreamCaptureUnsupported":
                fail(expected, got, "something inside the capture waits for the device (dist.barrier(), "
                     "torch.cuda.synchronize(), .item()): keep the barrier and the synchronize between the warm-up "
                     "and the capture, outside the `with torch.cuda.graph(...)` block")
            fail(expected, got, "warm up on every rank, torch.cuda.synchronize(), dist.barrier(), then capture "
                 "inside `with torch.cuda.graph(g, stream=s):`")
        ok("returned" not in seen, f"{where}: (graph, output), a torch.cuda.CUDAGraph and the tensor the step returned "
           "during capture", seen.get("returned", ""),
           "return the graph you captured into and the step's output from inside the capture")
        bad = [i + 1 for i, r in enumerate(seen["right"]) if not r]
        ok(not bad, f"{where}: each replay, after copy_ of new inputs, equals the unsplit block",
           f"replays {bad} gave other values",
           "return the output the capture produced (replays write into it), and capture the step itself, "
           "all-reduce included")


# ---------------------------------------------------------------------------------------
# Exercise 3: deciding together
# ---------------------------------------------------------------------------------------
_PATTERNS = ((True, True), (True, False), (False, True), (False, False))


def _observe_decide(fn) -> list:
    import torch.distributed as dist

    rank = dist.get_rank()
    answers = []
    for pattern in _PATTERNS:
        mine = pattern[0] if rank == 0 else pattern[1]  # rank 0 gets the first value, every other rank the second
        answers.append(fn(mine))
    return [a if isinstance(a, str) else f"<{type(a).__name__}>" for a in answers]


@check("decide together")
def check_decide(decide):
    """``decide(has_graph)``: "replay" on every rank when every rank has the graph, else "capture" everywhere."""
    per_rank = _ranks_outcome(_launch(_observe_decide, decide), "decide")
    for i, pattern in enumerate(_PATTERNS):
        case = f"rank 0 has_graph={pattern[0]}, the others {pattern[1]}"
        answers = [rank_answers[i] for rank_answers in per_rank]
        want = "replay" if all(pattern) else "capture"
        for rank, a in enumerate(answers):
            ok(a in ("replay", "capture"), f"{case}: 'replay' or 'capture'", f"rank {rank} returned {a!r}",
               "return one of the two words")
        if len(set(answers)) > 1:
            said = ", ".join(f"rank {r}: {a!r}" for r, a in enumerate(answers))
            fail(f"{case}: the same answer on every rank", said,
                 "each rank decided from its own has_graph: one rank would capture (recording its all-reduce) while "
                 "another replays or runs eagerly, and both hang. Agree first: all_reduce a flag with "
                 "op=dist.ReduceOp.MIN, so every rank learns whether every rank has the graph")
        ok(answers[0] == want, f"{case}: {want!r} on every rank", f"{answers[0]!r} on every rank",
           "replay only when every rank has the graph (MIN of the flags); when any rank lacks it, every rank "
           "captures, the same graph in the same order")


# ---------------------------------------------------------------------------------------
# Exercise 4: the teardown
# ---------------------------------------------------------------------------------------
def _observe_shutdown(fn) -> dict:
    import weakref

    import torch.distributed as dist

    from graphlab_utils import multigpu
    from graphlab_utils.multigpu import tp

    rank, world = dist.get_rank(), dist.get_world_size()
    dev = multigpu.device()
    mlp = tp.TPMLP(tp.shard(tp.weights(seed=5), rank, world, dev))
    graphs = {}
    for batch in (4, 2):
        x = tp.decode_input(batch, batch, device=dev)
        graphs[batch], _out = multigpu.capture_in_step(lambda x=x: mlp(x))
        graphs[batch].replay()
    refs = [weakref.ref(g) for g in graphs.values()]  # a graph the answer deleted may go away
    fn(graphs)
    still = 0
    for ref in refs:
        g = ref()
        if g is None:
            continue
        try:
            g.replay()
            still += 1
        except RuntimeError:
            pass
        del g
    return {"initialized": dist.is_initialized(), "graphs_left": still}


@check("teardown")
def check_shutdown(shutdown):
    """``shutdown(graphs)``: reset every graph, then destroy the process group, and return."""
    result = _launch(_observe_shutdown, shutdown)
    if result.hung:
        fail("shutdown(graphs) returns on every rank", f"{result}",
             "NCCL (2.26 and later) waits in destroy_process_group() until every graph that holds the "
             "communicator is destroyed, and yours were still alive: call g.reset() on each graph of the dict "
             "first, then dist.destroy_process_group()")
    for rank, seen in enumerate(_ranks_outcome(result, "shutdown(graphs)")):
        ok(seen["graphs_left"] == 0, f"rank {rank}: every graph of the dict reset",
           f"{plural(seen['graphs_left'], 'graph')} could still replay",
           "call g.reset() on every graph of the dict (or drop every reference to it): that releases the graph "
           "and its hold on the communicator")
        ok(not seen["initialized"], f"rank {rank}: the process group destroyed",
           "dist.is_initialized() is still True", "end with dist.destroy_process_group()")
