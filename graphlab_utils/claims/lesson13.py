"""Lesson 13 · CUDA graphs across GPUs: collectives captured in step, the hangs, registration, teardown.

Every claim here launches ranks (``graphlab_utils.multigpu.launch``): NCCL with one GPU per
rank where there are two GPUs or more, gloo and the simulator otherwise, so the ``_ranks``
figure says which ran them. A hang is a verdict, bounded by :data:`HANG_S`.
"""
from __future__ import annotations

from graphlab_utils.claims import CUDA_ERROR, FIRST_ERROR, RAISED, claim

HANG_S = 5.0  # a demonstration still running after this long is a hang


def _launch(fn, *args, timeout: float = 120.0):
    from graphlab_utils import multigpu

    return multigpu.launch(fn, *args, timeout=timeout, echo=False)


def _block():
    import torch.distributed as dist

    from graphlab_utils import multigpu
    from graphlab_utils.multigpu import tp

    return tp.TPMLP(tp.shard(tp.weights(seed=0), dist.get_rank(), dist.get_world_size(), multigpu.device()))


# ---------------------------------------------------------------------------------------
# What the ranks run
# ---------------------------------------------------------------------------------------
def _captured_step() -> dict:
    from graphlab_utils import graphinfo, multigpu
    from graphlab_utils.multigpu import tp
    from graphlab_utils.recipes import close

    mlp = _block()
    dev = multigpu.device()
    static_x = tp.decode_input(0, 4, device=dev)
    graph, out = multigpu.capture_in_step(lambda: mlp(static_x), keep_graph=True)
    right = []
    for step in (1, 2, 3):
        static_x.copy_(tp.decode_input(step, 4, device=dev))
        graph.replay()
        right.append(close(out, tp.reference(static_x, tp.weights(seed=0))))
    return {"right": all(right), "node": "AllReduce" in graphinfo.dot_source(graph)}


def _rank_0_captures_alone():
    import torch
    import torch.distributed as dist

    from graphlab_utils import multigpu
    from graphlab_utils.multigpu import tp
    from graphlab_utils.recipes import warm_up

    mlp = _block()
    x = tp.decode_input(0, 4, device=multigpu.device())
    warm_up(lambda: mlp(x))
    torch.cuda.synchronize()
    dist.barrier()
    if dist.get_rank() == 0:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = mlp(x)
        graph.replay()
    else:
        y = mlp(x)
    return y.sum().item()


def _first_collective_in_capture(warm: bool):
    import torch
    import torch.distributed as dist

    from graphlab_utils import multigpu

    x = torch.ones(256, device=multigpu.device())

    def step():
        y = x * 2
        dist.all_reduce(y)
        return y

    if warm:
        graph, y = multigpu.capture_in_step(step)
    else:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = step()
    graph.replay()
    return bool(torch.equal(y, torch.full_like(x, 2.0 * dist.get_world_size())))


def _async_all_reduce(join: bool):
    import torch
    import torch.distributed as dist

    from graphlab_utils import multigpu

    x = torch.ones(256, device=multigpu.device())

    def step():
        y = x * 2
        work = dist.all_reduce(y, async_op=True)
        if join:
            work.wait()
        return y + 1

    graph, out = multigpu.capture_in_step(step)
    graph.replay()
    return bool(torch.equal(out, torch.full_like(x, 2.0 * dist.get_world_size() + 1)))


def _registered_buffers() -> dict:
    import torch
    import torch.distributed as dist

    from graphlab_utils import multigpu
    from graphlab_utils.recipes import capture, close, seeded_randn

    rank, world = dist.get_rank(), dist.get_world_size()
    dev = multigpu.device()
    car = multigpu.CustomAllReduce(numel=256)

    def inputs(step):
        parts = [seeded_randn(100 * step + r, 4, 8, device=dev) for r in range(world)]
        return parts[rank], sum(parts)

    x, total = inputs(0)
    seen = {"eager": close(car.all_reduce(x), total)}  # outside a capture: no registration needed
    if rank == 1:
        car.buffer(16)  # the offsets differ between ranks
    static_x = torch.zeros(4, 8, device=dev)
    state = {}

    def capture_on(buf, warmup):
        def step():
            buf.copy_(static_x)
            return car.all_reduce(buf)

        state["graph"], state["out"] = capture(step, warmup=warmup)

    def replay(step):
        x, total = inputs(step)
        static_x.copy_(x)
        state["graph"].replay()
        return close(state["out"], total)

    capture_on(car.buffer(4, 8), warmup=3)
    seen["unregistered"] = car.unregistered  # buffers captured and not yet registered
    seen["before"] = replay(1)
    seen["registered"] = car.register_graph_buffers()
    seen["after"] = replay(2)
    if rank == 0:
        capture_on(car.buffer(4, 8), warmup=0)  # rank 0's buffer moves
    seen["moved"] = replay(3)
    car.reset_graph_buffers()
    capture_on(car.buffer(4, 8), warmup=0)
    car.register_graph_buffers()
    seen["again"] = replay(4)
    return seen


def _teardown(reset_first: bool):
    import torch
    import torch.distributed as dist

    from graphlab_utils import multigpu
    from graphlab_utils.multigpu import tp

    mlp = _block()
    x = tp.decode_input(0, 4, device=multigpu.device())
    graph, out = multigpu.capture_in_step(lambda: mlp(x))
    graph.replay()
    torch.cuda.synchronize()
    if reset_first:
        graph.reset()
    dist.destroy_process_group()
    return "destroyed"


# ---------------------------------------------------------------------------------------
# The claims
# ---------------------------------------------------------------------------------------
@claim("a tensor-parallel step captured on every rank holds its all-reduce and replays in step", {
    "every rank's replays equal the unsplit block": True, "every rank's graph holds an all-reduce kernel": True},
    spawns=True)
def tp_step_replays_in_step(device):
    result = _launch(_captured_step)
    return {"every rank's replays equal the unsplit block": result.ok and all(v["right"] for v in result.values),
            "every rank's graph holds an all-reduce kernel": result.ok and all(v["node"] for v in result.values),
            "_ranks": result.backend}


@claim("a rank that captures a collective while its peers run it eagerly hangs them all, with no error", {
    "the ranks hung": True, "a rank raised an error": False}, spawns=True)
def one_rank_capturing_hangs(device):
    result = _launch(_rank_0_captures_alone, timeout=HANG_S)
    return {"the ranks hung": result.hung, "a rank raised an error": bool(result.errors), "_ranks": result.backend}


@claim("the process group's first collective inside a capture fails on every rank; a warm-up fixes it", {
    RAISED: "AcceleratorError", CUDA_ERROR: "cudaErrorStreamCaptureInvalidated",
    FIRST_ERROR: "cudaErrorStreamCaptureUnsupported", "failed on every rank": True,
    "after an eager warm-up, every replay sums the ranks": True}, spawns=True)
def first_collective_in_capture_fails(device):
    cold = _launch(_first_collective_in_capture, False)
    warm = _launch(_first_collective_in_capture, True)
    first = cold.errors[min(cold.errors)] if cold.errors else None
    return {RAISED: first.type if first else None, CUDA_ERROR: first.cuda_error if first else None,
            FIRST_ERROR: first.first_cuda_error if first else None,
            "failed on every rank": len(cold.errors) == cold.world_size,
            "after an eager warm-up, every replay sums the ranks": warm.ok and all(warm.values),
            "_ranks": cold.backend}


@claim("an async_op=True collective inside a capture must be joined with work.wait() before the capture ends", {
    "without work.wait()": "cudaErrorStreamCaptureUnjoined", "with work.wait(), every replay is right": True},
    spawns=True)
def async_collective_must_be_joined(device):
    unjoined = _launch(_async_all_reduce, False)
    joined = _launch(_async_all_reduce, True)
    errors = {e.cuda_error for e in unjoined.errors.values()}
    return {"without work.wait()": errors.pop() if len(errors) == 1 else sorted(errors),
            "with work.wait(), every replay is right": joined.ok and all(joined.values), "_ranks": joined.backend}


@claim("a custom all-reduce reads buffers registered after capture; a buffer that moves stales every rank", {
    "right on any rank before registration": False, "right on every rank after registration": True,
    "right on any rank after rank 0's buffer moved": False,
    "right on every rank after every rank captured and registered again": True}, spawns=True)
def custom_all_reduce_registration(device):
    result = _launch(_registered_buffers)

    def every(key):
        return result.ok and all(v[key] for v in result.values)

    def any_(key):
        return result.ok and any(v[key] for v in result.values)

    return {"right on any rank before registration": any_("before"),
            "right on every rank after registration": every("after"),
            "right on any rank after rank 0's buffer moved": any_("moved"),
            "right on every rank after every rank captured and registered again": every("again"),
            "_ranks": result.backend}


@claim("destroy_process_group() waits for the graphs that hold the communicator: reset them first", {
    "returned with a graph still alive": False, "returned after graph.reset()": True}, spawns=True)
def destroy_waits_for_graphs(device):
    held = _launch(_teardown, False, timeout=HANG_S)
    released = _launch(_teardown, True)
    return {"returned with a graph still alive": held.ok, "returned after graph.reset()": released.ok,
            "_ranks": released.backend}
