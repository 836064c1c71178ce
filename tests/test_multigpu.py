"""Lesson 13's machinery on the simulator: the launcher, simulated collectives, the TP block, the custom all-reduce.

Every function a launch runs is defined at module level here, so the ranks can rebuild it.
Every hang the lesson shows is launched here with a short timeout, and the test proves that
the launch comes back within that timeout plus a margin for starting and stopping the ranks.
"""
from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.usefixtures("sim")

HANG_S = 2.0
STOP_S = 3.0  # from the deadline to every rank stopped and reaped
MARGIN_S = 60.0  # the whole call: starting the ranks (the first launch also starts the fork server) and more


def launch(fn, *args, **kwargs):
    from graphlab_utils import multigpu

    kwargs.setdefault("timeout", 60)
    kwargs.setdefault("echo", False)
    return multigpu.launch(fn, *args, **kwargs)


def bounded(fn, *args, timeout=HANG_S, **kwargs):
    """Launch ``fn`` as a hang demonstration: (result, seconds the launch took)."""
    start = time.monotonic()
    result = launch(fn, *args, timeout=timeout, **kwargs)
    return result, time.monotonic() - start


# ---------------------------------------------------------------------------------------
# What the ranks run
# ---------------------------------------------------------------------------------------
def rank_and_world():
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def prints_and_returns_tensor():
    import torch
    import torch.distributed as dist

    print(f"hello from {dist.get_rank()}")
    return torch.full((2,), float(dist.get_rank()))


def raises_on_rank_1():
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise ValueError("rank 1 gives up")
    dist.all_reduce(__import__("torch").ones(1))  # waits for rank 1, which never comes
    return "done"


def sleeps_forever():
    while True:
        time.sleep(0.1)


def _block(seed=0):
    import torch.distributed as dist

    from graphlab_utils import multigpu
    from graphlab_utils.multigpu import tp

    rank, world = dist.get_rank(), dist.get_world_size()
    return tp.TPMLP(tp.shard(tp.weights(seed=seed), rank, world, multigpu.device()))


def tp_eager_equals_reference(batch):
    from graphlab_utils import multigpu
    from graphlab_utils.multigpu import tp
    from graphlab_utils.recipes import close

    x = tp.decode_input(0, batch, device=multigpu.device())
    return close(_block()(x), tp.reference(x, tp.weights(seed=0)))


def tp_captured():
    import torch

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
    names = [n.name for n in graph.sim_nodes()]
    return {"right": right, "names": names, "dot": "AllReduce" in graphinfo.dot_source(graph),
            "captured": isinstance(graph, torch.cuda.CUDAGraph)}


def other_collectives_in_capture():
    import torch
    import torch.distributed as dist

    from graphlab_utils import multigpu

    rank, world = dist.get_rank(), dist.get_world_size()
    dev = multigpu.device()
    src = torch.zeros(4, device=dev)
    gathered = torch.zeros(4 * world, device=dev)
    scattered = torch.zeros(4, device=dev)
    bcast = torch.zeros(3, device=dev)

    def step():
        dist.all_gather_into_tensor(gathered, src)
        dist.reduce_scatter_tensor(scattered, gathered)
        bcast.copy_(src[:3])
        dist.broadcast(bcast, src=1)
        return gathered

    dist.barrier()  # creates the communicator
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    src.copy_(torch.arange(4, dtype=torch.float32, device=dev) + 10 * rank)
    graph.replay()
    return gathered.tolist(), scattered.tolist(), bcast.tolist()


def unsimulated_in_capture():
    import torch
    import torch.distributed as dist

    dist.barrier()
    x = torch.ones(2)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            dist.all_gather([torch.zeros(2), torch.zeros(2)], x)
    except RuntimeError as exc:
        return str(exc).splitlines()[0]
    return "no error"


# The claims' rank functions (the async all-reduce, the registered buffers), run here with more asserts.
from graphlab_utils.claims import lesson13  # noqa: E402

# The lesson's hang demonstrations, as its cells write them.
# Rank 0 captures while rank 1 runs eagerly: the claim of lesson 13 that proves the hang.
from graphlab_utils.claims.lesson13 import _rank_0_captures_alone as rank_0_captures_alone  # noqa: E402


def buckets_chosen(together):
    import torch
    import torch.distributed as dist

    from graphlab_utils import multigpu
    from graphlab_utils.multigpu import tp

    mlp = _block()
    dev = multigpu.device()
    live = torch.tensor([3 if dist.get_rank() == 0 else 6], device=dev)
    if together:
        dist.all_reduce(live, op=dist.ReduceOp.MAX)
    bucket = 4 if live.item() <= 4 else 8
    static_x = torch.zeros(bucket, tp.D_MODEL, device=dev)
    graph, out = multigpu.capture_in_step(lambda: mlp(static_x))
    graph.replay()
    return bucket


def teardown(reset_first):
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
    return dist.is_initialized()


def capture_without_warm_up():
    import torch
    import torch.distributed as dist

    x = torch.ones(256)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = x * 2
        dist.all_reduce(y)
    return "captured"


def barrier_inside():
    import torch
    import torch.distributed as dist

    from graphlab_utils.recipes import warm_up

    x = torch.ones(256)

    def step():
        y = x * 2
        dist.all_reduce(y)
        dist.barrier()
        return y

    warm_up(step)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return "captured"


def registration_mismatch():
    import torch.distributed as dist

    from graphlab_utils import multigpu
    from graphlab_utils.errors import GraphlabError
    from graphlab_utils.recipes import capture

    car = multigpu.CustomAllReduce(numel=64)
    if dist.get_rank() == 0:
        buf = car.buffer(8)
        capture(lambda: car.all_reduce(buf), warmup=0)
    try:
        car.register_graph_buffers()
    except GraphlabError as exc:
        return str(exc)
    return "registered"


def custom_ar_refuses_pool_tensor():
    import torch

    from graphlab_utils import multigpu
    from graphlab_utils.errors import GraphlabError

    car = multigpu.CustomAllReduce(numel=64)
    x = torch.ones(8)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            car.all_reduce(x * 2)
    except GraphlabError as exc:
        return str(exc)
    return "no error"


def custom_ar_limits():
    from graphlab_utils import multigpu
    from graphlab_utils.errors import GraphlabError

    car = multigpu.CustomAllReduce(numel=16, buffers=1)
    said = []
    for attempt in (lambda: car.buffer(17), lambda: (car.buffer(16), car.buffer(1))):
        try:
            attempt()
        except GraphlabError as exc:
            said.append(str(exc))
    return said


# ---------------------------------------------------------------------------------------
# The launcher
# ---------------------------------------------------------------------------------------
def test_every_rank_runs_and_values_come_back_in_rank_order():
    result = launch(rank_and_world)
    assert result.ok and str(result) == "every rank finished"
    assert result.values == [(0, 2), (1, 2)]
    assert result.backend == "gloo (simulator)"


def test_world_size_is_a_parameter():
    assert launch(rank_and_world, world_size=1).values == [(0, 1)]
    assert launch(rank_and_world, world_size=3).values == [(0, 3), (1, 3), (2, 3)]


def test_output_is_printed_after_the_run_in_rank_order(capsys):
    import torch

    result = launch(prints_and_returns_tensor, echo=True)
    out = capsys.readouterr().out
    assert out.splitlines() == ["[rank 0] hello from 0", "[rank 1] hello from 1"]
    assert result.outputs == ["hello from 0\n", "hello from 1\n"]
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in result.values)


def test_a_rank_that_raises_is_reported_and_its_peers_are_stopped_soon_after():
    start = time.monotonic()
    result = launch(raises_on_rank_1, timeout=600, after_error=1.0)
    took = time.monotonic() - start
    assert took < 1.0 + MARGIN_S, f"the launch took {took:.1f} s"
    assert result.seconds < 1.0 + STOP_S, f"the ranks ran {result.seconds:.1f} s after they joined"
    assert result.errors[1].type == "ValueError" and result.errors[1].message == "rank 1 gives up"
    assert result.running == [0] and result.hung
    assert str(result).startswith("rank 1 raised ValueError: rank 1 gives up; hang:")


def test_a_hang_is_bounded_by_the_timeout_and_said_in_one_sentence():
    result, took = bounded(sleeps_forever)
    assert took < HANG_S + MARGIN_S, f"the launch took {took:.1f} s"
    assert result.seconds < HANG_S + STOP_S, f"the ranks ran {result.seconds:.1f} s after they joined"
    assert result.hung and not result.ok and result.running == [0, 1]
    assert str(result) == (f"hang: not every rank finished within {HANG_S:g} s, so the launcher stopped them all")
    assert result.status().splitlines() == ["rank 0: still running when the launcher stopped it",
                                            "rank 1: still running when the launcher stopped it"]


def test_a_function_that_cannot_travel_gets_one_sentence():
    import threading

    from graphlab_utils import multigpu

    lock = threading.Lock()
    with pytest.raises(multigpu.LaunchError, match="cannot be sent to the ranks"):
        multigpu.launch(lambda: lock, echo=False)
    with pytest.raises(multigpu.LaunchError, match="launch at least one rank"):
        multigpu.launch(rank_and_world, world_size=0)


def test_ranks_run_on_the_simulator_without_gpus():
    from graphlab_utils import multigpu

    assert multigpu.ranks_backend() == "sim"
    assert multigpu.default_world_size() == 2


# ---------------------------------------------------------------------------------------
# The tensor-parallel block
# ---------------------------------------------------------------------------------------
def test_shards_rebuild_the_unsplit_block():
    import torch

    from graphlab_utils.multigpu import tp

    full = tp.weights()
    x = tp.decode_input(0, 3)
    total = torch.zeros(3, tp.D_MODEL)
    for r in range(4):
        part = tp.shard(full, r, 4)
        assert part["w1"].shape == (tp.D_FF // 4, tp.D_MODEL) and part["w2"].shape == (tp.D_MODEL, tp.D_FF // 4)
        total += torch.nn.functional.gelu(x @ part["w1"].T + part["b1"]) @ part["w2"].T
    assert torch.allclose(total + full["b2"], tp.reference(x, full), atol=1e-5)
    with pytest.raises(ValueError, match="does not split over 3 ranks"):
        tp.shard(full, 0, 3)


@pytest.mark.parametrize("world", [2, 4])
def test_the_eager_block_equals_the_unsplit_one_on_any_number_of_ranks(world):
    result = launch(tp_eager_equals_reference, 5, world_size=world)
    assert result.ok and result.values == [True] * world


def test_the_captured_step_replays_in_step_and_holds_an_all_reduce_node():
    result = launch(tp_captured)
    assert result.ok
    for seen in result.values:
        assert seen["right"] == [True, True, True] and seen["dot"] and seen["captured"]
        assert "ncclDevKernel_AllReduce_Sum_f32" in seen["names"]


def test_all_gather_reduce_scatter_and_broadcast_replay_from_a_graph():
    result = launch(other_collectives_in_capture)
    assert result.ok
    gathered = [0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0]
    assert result.values[0] == (gathered, [0.0, 2.0, 4.0, 6.0], [10.0, 11.0, 12.0])
    assert result.values[1] == (gathered, [20.0, 22.0, 24.0, 26.0], [10.0, 11.0, 12.0])


def test_a_collective_the_simulator_cannot_capture_says_so():
    result = launch(unsimulated_in_capture)
    assert result.values == ["[graphlab simulator] torch.distributed.all_gather inside a capture is not simulated: "
                             "use all_reduce, all_gather_into_tensor, reduce_scatter_tensor or broadcast in graphs "
                             "(lesson 13)."] * 2


# ---------------------------------------------------------------------------------------
# The traps: each hang bounded, each error named
# ---------------------------------------------------------------------------------------
def test_one_rank_capturing_while_the_other_runs_eagerly_hangs_within_the_bound():
    result, took = bounded(rank_0_captures_alone)
    assert result.hung and result.running == [0, 1] and not result.errors
    assert took < HANG_S + MARGIN_S, f"the launch took {took:.1f} s"
    assert result.seconds < HANG_S + STOP_S, f"the ranks ran {result.seconds:.1f} s after they joined"
    assert "replayed from a graph" in result.waiting[0] and "eager" in result.waiting[1]


def test_ranks_capturing_different_sizes_hang_within_the_bound_and_deciding_together_fixes_it():
    result, took = bounded(buckets_chosen, False)
    assert result.hung and result.running == [0, 1]
    assert took < HANG_S + MARGIN_S, f"the launch took {took:.1f} s"
    assert result.seconds < HANG_S + STOP_S, f"the ranks ran {result.seconds:.1f} s after they joined"
    assert "256 elements" in result.waiting[0] and "512 elements" in result.waiting[0]
    assert launch(buckets_chosen, True).values == [8, 8]


def test_destroying_the_group_under_a_live_graph_hangs_within_the_bound_and_reset_fixes_it():
    result, took = bounded(teardown, False)
    assert result.hung and result.running == [0, 1]
    assert took < HANG_S + MARGIN_S, f"the launch took {took:.1f} s"
    assert result.seconds < HANG_S + STOP_S, f"the ranks ran {result.seconds:.1f} s after they joined"
    assert "destroy_process_group() waits" in result.waiting[0]
    assert launch(teardown, True).values == [False, False]


def test_the_first_collective_inside_a_capture_fails_on_every_rank():
    result = launch(capture_without_warm_up)
    assert set(result.errors) == {0, 1} and not result.hung
    for err in result.errors.values():
        assert (err.type, err.cuda_error) == ("AcceleratorError", "cudaErrorStreamCaptureInvalidated")
        assert (err.first_type, err.first_cuda_error) == ("DistBackendError", "cudaErrorStreamCaptureUnsupported")


def test_a_barrier_inside_a_capture_is_a_sync():
    result = launch(barrier_inside)
    for err in result.errors.values():
        assert (err.cuda_error, err.first_cuda_error) == ("cudaErrorStreamCaptureInvalidated",
                                                          "cudaErrorStreamCaptureUnsupported")
    assert set(result.errors) == {0, 1}


def test_an_async_collective_must_be_joined_before_the_capture_ends():
    unjoined = launch(lesson13._async_all_reduce, False)
    assert {e.cuda_error for e in unjoined.errors.values()} == {"cudaErrorStreamCaptureUnjoined"}
    assert launch(lesson13._async_all_reduce, True).values == [True, True]


# ---------------------------------------------------------------------------------------
# The custom all-reduce
# ---------------------------------------------------------------------------------------
def test_registered_buffers_are_read_through_the_table_filled_after_capture():
    result = launch(lesson13._registered_buffers)
    assert result.ok
    for seen in result.values:
        assert seen == {"eager": True, "unregistered": 1, "before": False, "registered": 1, "after": True,
                        "moved": False, "again": True}


def test_ranks_that_captured_different_buffers_cannot_register():
    result = launch(registration_mismatch)
    assert result.values == ["the ranks captured different numbers of all-reduce buffers (rank 0: 1, rank 1: 0): "
                             "capture the same graphs in the same order on every rank, then register"] * 2


def test_a_captured_input_outside_registered_memory_is_refused_with_one_sentence():
    said = launch(custom_ar_refuses_pool_tensor).values[0]
    assert said.startswith("inside a capture the custom all-reduce reads the peers' copies of its input directly")


def test_the_custom_all_reduce_names_its_limits():
    said = launch(custom_ar_limits).values[0]
    assert said[0].startswith("a buffer of 17 elements is larger than this custom all-reduce's limit of 16")
    assert said[1].startswith("the custom all-reduce's registered memory is full")


# ---------------------------------------------------------------------------------------
# The simulator's hook
# ---------------------------------------------------------------------------------------
def test_the_simulator_stands_in_for_torch_distributed_and_gives_it_back():
    import torch.distributed as dist
    from torch.distributed import distributed_c10d

    from graphlab_utils import simulator
    from graphlab_utils.simulator import distributed as sim_dist

    assert dist.all_reduce is sim_dist.all_reduce
    simulator.uninstall()
    try:
        assert dist.all_reduce is distributed_c10d.all_reduce
        assert dist.destroy_process_group is distributed_c10d.destroy_process_group
    finally:
        simulator.install()
    assert dist.all_reduce is sim_dist.all_reduce
