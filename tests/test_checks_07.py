"""The checks of lab 07 (graph memory) on the simulator.

Each check gets the reference answer, at least one other correct answer written
differently, and at least two wrong answers; a wrong answer must fail with a hint and never
raise out of the check.
"""
from __future__ import annotations

import pytest

import graphlab_utils


pytestmark = pytest.mark.usefixtures("sim")


@pytest.fixture(scope="module")
def L07(sim):
    from graphlab_utils.checks import lesson07

    return lesson07


def run(check, *answers):
    return check(*answers, quiet=True)


def _device():
    import torch

    return torch.device("cpu")


def _warm_up(fn, iters=2):
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(iters):
            fn()
    torch.cuda.current_stream().wait_stream(side)


# ---------------------------------------------------------------------------------------
# Exercise 1: measure_capture
# ---------------------------------------------------------------------------------------
def measure_reference(fn):
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    torch.cuda.synchronize()
    return g, out, torch.cuda.memory_reserved() - before


def measure_with_warm_up_and_pool_handle(fn):
    """Correct too: warms up first, captures into an explicit new pool, measures afterwards."""
    import torch

    _warm_up(fn)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    start = torch.cuda.memory_reserved()
    graph = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(graph, pool=torch.cuda.graph_pool_handle()):
        result = fn()
    graph.instantiate()
    end = torch.cuda.memory_reserved()
    return graph, result, int(end - start)


def measure_allocated(fn):
    """Wrong: memory_allocated() misses the intermediates the pool keeps."""
    import torch

    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out, torch.cuda.memory_allocated() - before


def measure_without_empty_cache(fn):
    """Wrong: the baseline still holds cached blocks that the capture's entry releases."""
    import torch

    before = torch.cuda.memory_reserved()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out, torch.cuda.memory_reserved() - before


def measure_in_mib(fn):
    """Wrong: the figure in MiB instead of bytes."""
    g, out, nbytes = measure_reference(fn)
    return g, out, nbytes / 2**20


def measure_two_graphs(fn):
    """Wrong: a first graph captured inside the measurement counts too."""
    import torch

    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    trial = torch.cuda.CUDAGraph()
    with torch.cuda.graph(trial):
        fn()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out, torch.cuda.memory_reserved() - before


def measure_stub(fn):
    raise NotImplementedError("Exercise: measure what a capture reserves (see the hint above)")


def test_measure_accepts_reference(L07):
    assert run(L07.check_measure_capture, measure_reference).passed


def test_measure_accepts_other_correct_answer(L07):
    assert run(L07.check_measure_capture, measure_with_warm_up_and_pool_handle).passed


def test_measure_rejects_memory_allocated(L07):
    r = run(L07.check_measure_capture, measure_allocated)
    assert not r.passed
    assert "memory_allocated" in r.idea


def test_measure_rejects_missing_empty_cache(L07):
    r = run(L07.check_measure_capture, measure_without_empty_cache)
    assert not r.passed
    assert "empty_cache" in r.idea


def test_measure_rejects_mib(L07):
    r = run(L07.check_measure_capture, measure_in_mib)
    assert not r.passed
    assert "bytes" in r.idea


def test_measure_rejects_extra_tensor(L07):
    r = run(L07.check_measure_capture, measure_two_graphs)
    assert not r.passed
    assert "measure only the capture" in r.idea


def test_measure_stub_gives_a_hint(L07):
    r = run(L07.check_measure_capture, measure_stub)
    assert not r.passed
    assert "NotImplementedError" in r.seen


# ---------------------------------------------------------------------------------------
# Exercise 2: capture_buckets
# ---------------------------------------------------------------------------------------
def buckets_reference(step, buckets, hidden, budget_bytes):
    import torch

    order = sorted(set(buckets), reverse=True)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    static_in = torch.zeros(order[0], hidden, device=_device())
    static_out = torch.zeros(order[0], hidden, device=_device())
    _warm_up(lambda: static_out.copy_(step(static_in)))
    pool = torch.cuda.graph_pool_handle()
    graphs = {}
    for b in order:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            static_out[:b].copy_(step(static_in[:b]))
        graphs[b] = g
    torch.cuda.synchronize()
    used = torch.cuda.memory_reserved() - base
    if used > budget_bytes:
        raise MemoryError(f"graphs need {used} bytes, budget {budget_bytes}")
    return graphs, static_in, static_out, used


def buckets_first_graph_pool(step, buckets, hidden, budget_bytes):
    """Correct too: the first graph's pool() is shared; slice assignment writes the output."""
    import torch

    torch.cuda.empty_cache()
    start = torch.cuda.memory_reserved()
    biggest = max(buckets)
    static_in = torch.empty(biggest, hidden, device=_device()).normal_()
    static_out = torch.empty_like(static_in)
    pool = None
    graphs = {}
    for b in sorted(buckets, reverse=True):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            static_out[:b] = step(static_in[:b])
        pool = g.pool() if pool is None else pool
        graphs[b] = g
    used = torch.cuda.memory_reserved() - start
    if used > budget_bytes:
        del graphs
        raise MemoryError("over budget")
    return graphs, static_in, static_out, used


def buckets_separate_pools(step, buckets, hidden, budget_bytes):
    """Wrong: no pool=, so every graph gets a private pool of its own."""
    import torch

    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    order = sorted(buckets, reverse=True)
    static_in = torch.zeros(order[0], hidden, device=_device())
    static_out = torch.zeros_like(static_in)
    graphs = {}
    for b in order:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_out[:b].copy_(step(static_in[:b]))
        graphs[b] = g
    return graphs, static_in, static_out, torch.cuda.memory_reserved() - base


def buckets_smallest_first(step, buckets, hidden, budget_bytes):
    """Wrong: ascending order; the small graphs' freed blocks are too small for the big ones."""
    import torch

    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    top = max(buckets)
    static_in = torch.zeros(top, hidden, device=_device())
    static_out = torch.zeros_like(static_in)
    pool = torch.cuda.graph_pool_handle()
    graphs = {}
    for b in sorted(buckets):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            static_out[:b].copy_(step(static_in[:b]))
        graphs[b] = g
    return graphs, static_in, static_out, torch.cuda.memory_reserved() - base


def buckets_baseline_after_buffers(step, buckets, hidden, budget_bytes):
    """Wrong: the baseline is taken after the static buffers, which the budget must cover."""
    import torch

    order = sorted(buckets, reverse=True)
    static_in = torch.zeros(order[0], hidden, device=_device())
    static_out = torch.zeros_like(static_in)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    pool = torch.cuda.graph_pool_handle()
    graphs = {}
    for b in order:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            static_out[:b].copy_(step(static_in[:b]))
        graphs[b] = g
    used = torch.cuda.memory_reserved() - base
    if used > budget_bytes:
        raise MemoryError("over budget")
    return graphs, static_in, static_out, used


def buckets_no_budget_check(step, buckets, hidden, budget_bytes):
    """Wrong: never compares with the budget."""
    import torch

    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    order = sorted(buckets, reverse=True)
    static_in = torch.zeros(order[0], hidden, device=_device())
    static_out = torch.zeros_like(static_in)
    pool = torch.cuda.graph_pool_handle()
    graphs = {}
    for b in order:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            static_out[:b].copy_(step(static_in[:b]))
        graphs[b] = g
    return graphs, static_in, static_out, torch.cuda.memory_reserved() - base


def buckets_own_buffers(step, buckets, hidden, budget_bytes):
    """Wrong: each graph reads a buffer of its own, not a view of the shared static_in."""
    import torch

    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    order = sorted(buckets, reverse=True)
    static_in = torch.zeros(order[0], hidden, device=_device())
    static_out = torch.zeros_like(static_in)
    pool = torch.cuda.graph_pool_handle()
    graphs, keep = {}, []
    for b in order:
        own_in = torch.zeros(b, hidden, device=_device())
        keep.append(own_in)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            static_out[:b].copy_(step(own_in))
        graphs[b] = g
    used = torch.cuda.memory_reserved() - base
    if used > budget_bytes:
        raise MemoryError("over budget")
    return graphs, static_in, static_out, used


def buckets_returns_output(step, buckets, hidden, budget_bytes):
    """Wrong: the graph's result stays in a pool tensor; static_out is never written."""
    import torch

    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    order = sorted(buckets, reverse=True)
    static_in = torch.zeros(order[0], hidden, device=_device())
    static_out = torch.zeros_like(static_in)
    pool = torch.cuda.graph_pool_handle()
    graphs, outs = {}, {}
    for b in order:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            outs[b] = step(static_in[:b])
        graphs[b] = g
    used = torch.cuda.memory_reserved() - base
    if used > budget_bytes:
        raise MemoryError("over budget")
    return graphs, static_in, static_out, used


def test_buckets_accepts_reference(L07):
    assert run(L07.check_capture_buckets, buckets_reference).passed


def test_buckets_accepts_other_correct_answer(L07):
    assert run(L07.check_capture_buckets, buckets_first_graph_pool).passed


def test_buckets_rejects_separate_pools(L07):
    r = run(L07.check_capture_buckets, buckets_separate_pools)
    assert not r.passed
    assert "pool" in r.expected


def test_buckets_rejects_smallest_first(L07):
    r = run(L07.check_capture_buckets, buckets_smallest_first)
    assert not r.passed
    assert "largest first" in r.expected


def test_buckets_rejects_baseline_after_buffers(L07):
    r = run(L07.check_capture_buckets, buckets_baseline_after_buffers)
    assert not r.passed
    assert "used_bytes" in r.expected


def test_buckets_rejects_missing_budget_check(L07):
    r = run(L07.check_capture_buckets, buckets_no_budget_check)
    assert not r.passed
    assert "MemoryError" in r.expected


@pytest.mark.filterwarnings("ignore::graphlab_utils.simulator.SimulatorWarning")
def test_buckets_rejects_own_buffers(L07):
    r = run(L07.check_capture_buckets, buckets_own_buffers)
    assert not r.passed
    assert "static_in" in r.expected


def test_buckets_rejects_unwritten_output(L07):
    assert not run(L07.check_capture_buckets, buckets_returns_output).passed


def test_hints_print_without_traceback(L07, capsys):
    L07.check_capture_buckets(buckets_separate_pools)
    text = capsys.readouterr().out
    assert text.startswith("[HINT] capture buckets within a budget: not yet.")
    assert "Traceback" not in text
    L07.check_capture_buckets(buckets_reference)
    assert capsys.readouterr().out.strip() == "[PASS] capture buckets within a budget: check passed"
