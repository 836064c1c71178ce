"""The checks of lab 06 (exec update) on the simulator.

Each check gets the reference answer, at least one other correct answer written
differently, and at least two wrong answers; a wrong answer must fail with a hint and never
raise out of the check.
"""
from __future__ import annotations

import time

import pytest

import graphlab_utils


from check_helpers import assert_hint, run

pytestmark = pytest.mark.usefixtures("sim")


@pytest.fixture(scope="module")
def lesson06(sim):
    from graphlab_utils.checks import lesson06

    return lesson06


# ---------------------------------------------------------------------------------------
# Exercise 1: capture on the new buffers
# ---------------------------------------------------------------------------------------
def capture_on(graph, fn):
    import torch

    new_graph = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(new_graph, pool=graph.pool()):
        new_out = fn()
    return new_graph, new_out


def capture_on_begin_end(graph, fn):
    """Correct, written differently: warm up, then capture_begin/capture_end on a side stream."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # an eager warm-up pass is not part of the capture
        new_graph = torch.cuda.CUDAGraph(keep_graph=True)
        new_graph.capture_begin(pool=graph.pool())
        out = fn()
        new_graph.capture_end()
    torch.cuda.current_stream().wait_stream(side)
    return new_graph, out


def capture_on_without_keep_graph(graph, fn):
    import torch

    new_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(new_graph, pool=graph.pool()):
        out = fn()
    return new_graph, out


def capture_on_and_instantiate(graph, fn):
    new_graph, out = capture_on(graph, fn)
    new_graph.instantiate()
    return new_graph, out


def capture_on_own_pool(graph, fn):
    import torch

    new_graph = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(new_graph):
        out = fn()
    return new_graph, out


def capture_on_fresh_handle(graph, fn):
    import torch

    new_graph = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(new_graph, pool=torch.cuda.graph_pool_handle()):
        out = fn()
    return new_graph, out


def capture_on_twice(graph, fn):
    import torch

    new_graph = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(new_graph, pool=graph.pool()):
        fn()
        out = fn()
    return new_graph, out


def capture_on_eager_output(graph, fn):
    new_graph, _ = capture_on(graph, fn)
    return new_graph, fn()


def capture_on_graph_only(graph, fn):
    return capture_on(graph, fn)[0]


def test_capture_on_reference_passes(lesson06):
    result = run(lesson06.check_capture_on, capture_on)
    assert result.passed, result.text()


def test_capture_on_other_correct_answer_passes(lesson06):
    result = run(lesson06.check_capture_on, capture_on_begin_end)
    assert result.passed, result.text()


@pytest.mark.parametrize("answer, words", [
    (capture_on_without_keep_graph, ("keep_graph=True",)),
    (capture_on_and_instantiate, ("not instantiated", "skip instantiate")),
    (capture_on_own_pool, ("pool=graph.pool()",)),
    (capture_on_fresh_handle, ("a memory pool of its own",)),
    (capture_on_twice, ("2 times",)),
    (capture_on_eager_output, ("new_out holds something else",)),
    (capture_on_graph_only, ("pair",)),
])
def test_capture_on_wrong_answers_fail_with_a_hint(lesson06, answer, words):
    assert_hint(run(lesson06.check_capture_on, answer), *words)


# ---------------------------------------------------------------------------------------
# Exercise 2: update or rebuild
# ---------------------------------------------------------------------------------------
def update_or_rebuild(graph, new_graph):
    from graphlab_utils import cudart

    err, _info = cudart.cudaGraphExecUpdate(graph.raw_cuda_graph_exec(), new_graph.raw_cuda_graph())
    if err == cudart.cudaError_t.cudaSuccess:
        return graph, "update"
    new_graph.instantiate()
    return new_graph, "rebuild"


def update_or_rebuild_by_result(graph, new_graph):
    """Correct, written differently: reads the result info, drops the old graph on a rebuild."""
    from graphlab_utils import cudart

    exec_handle, raw = graph.raw_cuda_graph_exec(), new_graph.raw_cuda_graph()
    err, info = cudart.cudaGraphExecUpdate(exec_handle, raw)
    updated = (err.name == "cudaSuccess" and info is not None
               and info.result == cudart.cudaGraphExecUpdateResult.cudaGraphExecUpdateSuccess)
    if updated:
        return (graph, "update")
    new_graph.instantiate()
    graph.reset()  # the old exec is not needed any more; the pool lives on in new_graph
    return (new_graph, "rebuild")


def always_rebuild(graph, new_graph):
    new_graph.instantiate()
    return new_graph, "rebuild"


def always_update(graph, new_graph):
    from graphlab_utils import cudart

    cudart.cudaGraphExecUpdate(graph.raw_cuda_graph_exec(), new_graph.raw_cuda_graph())
    return graph, "update"


def reads_info_without_checking_err(graph, new_graph):
    from graphlab_utils import cudart

    _err, info = cudart.cudaGraphExecUpdate(graph.raw_cuda_graph_exec(), new_graph.raw_cuda_graph())
    if info.result == cudart.cudaGraphExecUpdateResult.cudaGraphExecUpdateSuccess:
        return graph, "update"
    new_graph.instantiate()
    return new_graph, "rebuild"


def rebuilds_the_old_graph(graph, new_graph):
    from graphlab_utils import cudart

    err, _ = cudart.cudaGraphExecUpdate(graph.raw_cuda_graph_exec(), new_graph.raw_cuda_graph())
    if err.name == "cudaSuccess":
        return graph, "update"
    graph.instantiate()
    return graph, "rebuild"


def rebuild_without_instantiate(graph, new_graph):
    from graphlab_utils import cudart

    err, _ = cudart.cudaGraphExecUpdate(graph.raw_cuda_graph_exec(), new_graph.raw_cuda_graph())
    if err.name == "cudaSuccess":
        return graph, "update"
    return new_graph, "rebuild"


def update_returns_new_graph(graph, new_graph):
    from graphlab_utils import cudart

    err, _ = cudart.cudaGraphExecUpdate(graph.raw_cuda_graph_exec(), new_graph.raw_cuda_graph())
    if err.name == "cudaSuccess":
        return new_graph, "update"
    new_graph.instantiate()
    return new_graph, "rebuild"


def instantiates_just_in_case(graph, new_graph):
    new_graph.instantiate()
    answer = update_or_rebuild(graph, new_graph)
    return answer


def path_only(graph, new_graph):
    return update_or_rebuild(graph, new_graph)[1]


def odd_path_word(graph, new_graph):
    graph, path = update_or_rebuild(graph, new_graph)
    return graph, path + "d"


def stub(graph, new_graph):
    raise NotImplementedError("Exercise: update when you can, rebuild when you must (see the hint above)")


def test_update_or_rebuild_reference_passes(lesson06):
    result = run(lesson06.check_update_or_rebuild, update_or_rebuild)
    assert result.passed, result.text()


def test_update_or_rebuild_other_correct_answer_passes(lesson06):
    result = run(lesson06.check_update_or_rebuild, update_or_rebuild_by_result)
    assert result.passed, result.text()


@pytest.mark.parametrize("answer, words", [
    (always_rebuild, ("'update'", "for nothing")),
    (always_update, ("'rebuild'", "check err")),
    (reads_info_without_checking_err, ("NoneType", "Test err first")),
    (rebuilds_the_old_graph, ("the graph you were given", "old exec is unchanged")),
    (rebuild_without_instantiate, ("not instantiated yet",)),
    (update_returns_new_graph, ("the new graph", "in place")),
    (instantiates_just_in_case, ("un-instantiated",)),
    (path_only, ("pair",)),
    (odd_path_word, ("'updated'",)),
    (stub, ("NotImplementedError",)),
])
def test_update_or_rebuild_wrong_answers_fail_with_a_hint(lesson06, answer, words):
    assert_hint(run(lesson06.check_update_or_rebuild, answer), *words)


# ---------------------------------------------------------------------------------------
# Exercise 3: the cost of switching to new buffers
# ---------------------------------------------------------------------------------------
def time_switch(graph, capture_new):
    from graphlab_utils import cudart, timing

    made = []
    t_capture = timing.measure_host(lambda: made.append(capture_new()))
    new_graph = made[-1]
    t_instantiate = timing.measure_host(new_graph.instantiate)
    t_update = timing.measure_host(
        lambda: cudart.cudaGraphExecUpdate(graph.raw_cuda_graph_exec(), new_graph.raw_cuda_graph()),
        warmup=1, repeat=5)
    return {"capture": t_capture, "instantiate": t_instantiate, "exec_update": t_update}


def time_switch_other_order(graph, capture_new):
    """Correct, written differently: update first (from one capture), instantiate another, repeats."""
    from graphlab_utils import cudart, timing

    first, second = capture_new(), capture_new()
    costs = {"exec_update": timing.measure_host(
        lambda: cudart.cudaGraphExecUpdate(graph.raw_cuda_graph_exec(), first.raw_cuda_graph()), repeat=3)}
    costs["instantiate"] = timing.measure_host(second.instantiate, repeat=2)
    keep = []
    costs["capture"] = timing.measure_host(lambda: keep.append(capture_new()), repeat=2)
    return costs


def time_switch_wall_clock(graph, capture_new):
    from graphlab_utils import cudart

    t0 = time.perf_counter()
    new_graph = capture_new()
    t1 = time.perf_counter()
    new_graph.instantiate()
    t2 = time.perf_counter()
    cudart.cudaGraphExecUpdate(graph.raw_cuda_graph_exec(), new_graph.raw_cuda_graph())
    t3 = time.perf_counter()
    return {"capture": t1 - t0, "instantiate": t2 - t1, "exec_update": t3 - t2}


def time_switch_swapped(graph, capture_new):
    costs = time_switch(graph, capture_new)
    costs["instantiate"], costs["exec_update"] = costs["exec_update"], costs["instantiate"]
    return costs


def time_switch_replay_as_instantiate(graph, capture_new):
    from graphlab_utils import timing

    costs = time_switch(graph, capture_new)
    costs["instantiate"] = timing.measure_host(graph.replay)
    return costs


def time_switch_update_with_capture(graph, capture_new):
    from graphlab_utils import cudart, timing

    costs = time_switch(graph, capture_new)
    costs["exec_update"] = timing.measure_host(
        lambda: cudart.cudaGraphExecUpdate(graph.raw_cuda_graph_exec(), capture_new().raw_cuda_graph()))
    return costs


def time_switch_missing_key(graph, capture_new):
    costs = time_switch(graph, capture_new)
    del costs["capture"]
    return costs


def test_time_switch_reference_passes(lesson06):
    result = run(lesson06.check_time_switch, time_switch)
    assert result.passed, result.text()


def test_time_switch_other_correct_answer_passes(lesson06):
    result = run(lesson06.check_time_switch, time_switch_other_order)
    assert result.passed, result.text()


@pytest.mark.parametrize("answer, words", [
    (time_switch_wall_clock, ("a Timing from the course's timing helper",)),
    (time_switch_swapped, ("swapped",)),
    (time_switch_replay_as_instantiate, ("instantiate: close to the check's own",)),
    (time_switch_update_with_capture, ("exec_update",)),
    (time_switch_missing_key, ("missing: capture",)),
])
def test_time_switch_wrong_answers_fail_with_a_hint(lesson06, answer, words):
    assert_hint(run(lesson06.check_time_switch, answer), *words)


# ---------------------------------------------------------------------------------------
# Every check: one fixed line on success, a hint (never a traceback) on failure
# ---------------------------------------------------------------------------------------
def test_a_passing_check_prints_one_fixed_line(lesson06, capsys):
    lesson06.check_update_or_rebuild(update_or_rebuild)
    assert capsys.readouterr().out == "[PASS] update or rebuild: check passed\n"


def test_a_crashing_answer_becomes_a_hint(lesson06, capsys):
    def broken(graph, new_graph):
        return {}["missing"]

    result = lesson06.check_update_or_rebuild(broken)
    out = capsys.readouterr().out
    assert not result.passed
    assert "KeyError" in out
    assert "Traceback" not in out


def test_the_chain_is_n_kernel_nodes(lesson06):
    import torch

    from graphlab_utils import graphinfo

    x = torch.zeros(lesson06.NUMEL)
    g, out = lesson06._capture(lambda: lesson06.chain(x, 7))
    assert graphinfo.node_count(g) == 7
    g.replay()
    assert torch.allclose(out, torch.full_like(x, 7 * lesson06.STEP))
