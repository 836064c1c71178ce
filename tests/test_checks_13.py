"""The checks of lab 13 (CUDA graphs across GPUs) on the simulator, with two ranks.

Each check gets the reference answer, another correct answer written differently, and wrong
answers; a wrong answer must fail with a hint that names it and never raise out of the
check. An answer that hangs the ranks must come back within the check's timeout.
"""
from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.usefixtures("sim")

HANG_S = 2.0
MARGIN_S = 60.0  # starting the ranks (the first launch also starts the fork server) and stopping them


@pytest.fixture(scope="module")
def L13(sim):
    from graphlab_utils.checks import lesson13

    return lesson13


@pytest.fixture
def short_hangs(L13, monkeypatch):
    monkeypatch.setattr(L13, "HANG_TIMEOUT_S", HANG_S)


def run(check, answer):
    return check(answer, quiet=True)


# ---------------------------------------------------------------------------------------
# Exercise 1: tp_forward
# ---------------------------------------------------------------------------------------
def tp_reference(x, part):
    import torch
    import torch.distributed as dist

    hidden = torch.nn.functional.gelu(x @ part["w1"].T + part["b1"])
    partial = hidden @ part["w2"].T
    dist.all_reduce(partial)
    return partial + part["b2"]


def tp_linear_calls(x, part):
    """Correct, written differently: functional linear, an out-of-place sum of an all-gather."""
    import torch
    import torch.distributed as dist

    hidden = torch.nn.functional.gelu(torch.nn.functional.linear(x, part["w1"], part["b1"]))
    partial = torch.nn.functional.linear(hidden, part["w2"])
    every = torch.empty(dist.get_world_size() * partial.numel(), device=partial.device)
    dist.all_gather_into_tensor(every, partial.reshape(-1))
    return every.view(dist.get_world_size(), *partial.shape).sum(0) + part["b2"]


def tp_no_all_reduce(x, part):
    import torch

    return torch.nn.functional.gelu(x @ part["w1"].T + part["b1"]) @ part["w2"].T + part["b2"]


def tp_bias_inside(x, part):
    import torch
    import torch.distributed as dist

    out = torch.nn.functional.gelu(x @ part["w1"].T + part["b1"]) @ part["w2"].T + part["b2"]
    dist.all_reduce(out)
    return out


def tp_no_bias(x, part):
    import torch
    import torch.distributed as dist

    out = torch.nn.functional.gelu(x @ part["w1"].T + part["b1"]) @ part["w2"].T
    dist.all_reduce(out)
    return out


def tp_relu(x, part):
    import torch
    import torch.distributed as dist

    out = torch.relu(x @ part["w1"].T + part["b1"]) @ part["w2"].T
    dist.all_reduce(out)
    return out + part["b2"]


def tp_in_place_on_weights(x, part):
    import torch
    import torch.distributed as dist

    part["w2"].mul_(0.5)  # right this once, but the shard is halved for every later call
    hidden = torch.nn.functional.gelu(x @ part["w1"].T + part["b1"])
    partial = hidden @ (2 * part["w2"]).T
    dist.all_reduce(partial)
    return partial + part["b2"]


def tp_in_place_on_input(x, part):
    import torch
    import torch.distributed as dist

    hidden = torch.nn.functional.gelu(x.mul_(1.0) @ part["w1"].T + part["b1"]).relu_()
    x.relu_()
    partial = hidden @ part["w2"].T
    dist.all_reduce(partial)
    return partial + part["b2"]


def tp_rank_0_only(x, part):
    import torch
    import torch.distributed as dist

    partial = torch.nn.functional.gelu(x @ part["w1"].T + part["b1"]) @ part["w2"].T
    if dist.get_rank() == 0:
        dist.all_reduce(partial)
    return partial + part["b2"]


def tp_stub(x, part):
    raise NotImplementedError("Exercise: the block on this rank's shard (see the hint above)")


def tp_returns_list(x, part):
    return [1.0]


def test_tp_forward_passes_correct_answers(L13):
    assert run(L13.check_tp_forward, tp_reference)
    assert run(L13.check_tp_forward, tp_linear_calls)


@pytest.mark.parametrize("answer, seen, idea", [
    (tp_no_all_reduce, "this rank's partial sum only", "dist.all_reduce(partial)"),
    (tp_bias_inside, "the output plus 1 extra b2", "add b2 after the all-reduce"),
    (tp_no_bias, "the output without b2", "add part['b2'] once"),
    (tp_relu, "other values", "gelu"),
    (tp_in_place_on_weights, "your function wrote into them", "in-place"),
    (tp_in_place_on_input, "your function wrote into x", "the caller"),
    (tp_returns_list, "list", "return the block's output"),
])
def test_tp_forward_names_each_mistake(L13, answer, seen, idea):
    result = run(L13.check_tp_forward, answer)
    assert not result
    assert seen in result.seen and idea in result.idea


def test_tp_forward_stub_says_to_replace_it(L13):
    result = run(L13.check_tp_forward, tp_stub)
    assert not result and "NotImplementedError" in result.seen


def test_a_hanging_answer_is_stopped_within_the_bound(L13, short_hangs):
    start = time.monotonic()
    result = run(L13.check_tp_forward, tp_rank_0_only)
    took = time.monotonic() - start
    assert took < HANG_S + MARGIN_S, f"the check took {took:.1f} s"
    assert not result and result.seen.startswith("hang: not every rank finished")
    assert "same collectives in the same order" in result.idea


# ---------------------------------------------------------------------------------------
# Exercise 2: capture_step
# ---------------------------------------------------------------------------------------
def capture_reference(step):
    import torch
    import torch.distributed as dist

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    dist.barrier()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        out = step()
    return graph, out


def capture_with_helpers(step):
    """Correct, written differently: the course's recipes, capture_begin/capture_end by hand."""
    import torch
    import torch.distributed as dist

    from graphlab_utils.recipes import warm_up

    warm_up(step, iters=2)
    torch.cuda.synchronize()
    dist.barrier()
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        graph.capture_begin()
        out = step()
        graph.capture_end()
    torch.cuda.current_stream().wait_stream(side)
    return graph, out


def capture_without_warm_up(step):
    import torch

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out


def capture_barrier_inside(step):
    import torch
    import torch.distributed as dist

    from graphlab_utils.recipes import warm_up

    warm_up(step)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
        dist.barrier()
    return graph, out


def capture_default_stream(step):
    import torch

    from graphlab_utils.recipes import warm_up

    warm_up(step)
    graph = torch.cuda.CUDAGraph()
    graph.capture_begin()
    out = step()
    graph.capture_end()
    return graph, out


def capture_returns_eager_output(step):
    import torch
    import torch.distributed as dist

    from graphlab_utils.recipes import warm_up

    warm_up(step)
    torch.cuda.synchronize()
    dist.barrier()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph, step()  # an eager result: replays never write it


def capture_returns_graph_only(step):
    graph, _ = capture_reference(step)
    return graph


def test_capture_step_passes_correct_answers(L13):
    assert run(L13.check_capture_step, capture_reference)
    assert run(L13.check_capture_step, capture_with_helpers)


@pytest.mark.parametrize("answer, seen, idea", [
    (capture_without_warm_up, "AcceleratorError", "nothing was warmed up"),
    (capture_barrier_inside, "cudaErrorStreamCaptureUnsupported", "waits for the device"),
    (capture_default_stream, "non-default stream", "capture on a side stream"),
    (capture_returns_eager_output, "replays [1, 2, 3] gave other values", "return the output the capture produced"),
    (capture_returns_graph_only, "CUDAGraph", "return the graph you captured into"),
])
def test_capture_step_names_each_mistake(L13, answer, seen, idea):
    result = run(L13.check_capture_step, answer)
    assert not result
    assert seen in result.seen and idea in result.idea


# ---------------------------------------------------------------------------------------
# Exercise 3: decide
# ---------------------------------------------------------------------------------------
def decide_reference(has_graph):
    import torch
    import torch.distributed as dist

    from graphlab_utils import multigpu

    flag = torch.tensor([1 if has_graph else 0], device=multigpu.device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return "replay" if flag.item() == 1 else "capture"


def decide_by_counting(has_graph):
    """Correct, written differently: sum the ranks that lack the graph."""
    import torch
    import torch.distributed as dist

    lacking = torch.tensor([0.0 if has_graph else 1.0])
    dist.all_reduce(lacking)
    return "capture" if lacking.item() > 0 else "replay"


def decide_alone(has_graph):
    return "replay" if has_graph else "capture"


def decide_with_max(has_graph):
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if has_graph else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return "replay" if flag.item() == 1 else "capture"


def decide_bool(has_graph):
    return has_graph


def test_decide_passes_correct_answers(L13):
    assert run(L13.check_decide, decide_reference)
    assert run(L13.check_decide, decide_by_counting)


@pytest.mark.parametrize("answer, seen, idea", [
    (decide_alone, "rank 0: 'replay', rank 1: 'capture'", "ReduceOp.MIN"),
    (decide_with_max, "'replay' on every rank", "replay only when every rank has the graph"),
    (decide_bool, "rank 0 returned '<bool>'", "one of the two words"),
])
def test_decide_names_each_mistake(L13, answer, seen, idea):
    result = run(L13.check_decide, answer)
    assert not result
    assert seen in result.seen and idea in result.idea


# ---------------------------------------------------------------------------------------
# Exercise 4: shutdown
# ---------------------------------------------------------------------------------------
def shutdown_reference(graphs):
    import torch.distributed as dist

    for graph in graphs.values():
        graph.reset()
    dist.destroy_process_group()


def shutdown_by_deleting(graphs):
    """Correct, written differently: drop every reference, then destroy."""
    import gc

    import torch.distributed as dist

    graphs.clear()
    gc.collect()
    dist.destroy_process_group()


def shutdown_group_first(graphs):
    import torch.distributed as dist

    dist.destroy_process_group()
    for graph in graphs.values():
        graph.reset()


def shutdown_graphs_only(graphs):
    for graph in graphs.values():
        graph.reset()


def test_shutdown_passes_correct_answers(L13):
    assert run(L13.check_shutdown, shutdown_reference)
    assert run(L13.check_shutdown, shutdown_by_deleting)


def test_shutdown_names_a_forgotten_destroy(L13):
    result = run(L13.check_shutdown, shutdown_graphs_only)
    assert not result and "dist.is_initialized() is still True" in result.seen


def test_shutdown_that_hangs_is_stopped_within_the_bound(L13, short_hangs):
    start = time.monotonic()
    result = run(L13.check_shutdown, shutdown_group_first)
    took = time.monotonic() - start
    assert took < HANG_S + MARGIN_S, f"the check took {took:.1f} s"
    assert not result and result.seen.startswith("hang:") and "g.reset()" in result.idea
