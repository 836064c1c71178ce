"""Lab 02's checks: each passes for the reference and for another correct answer, and fails
with a hint for wrong ones; viz.draw_dag draws a small structure.

Every check runs the answer in a fresh process (graphlab_utils.isolation.run_function).
Module-level answers travel there by reference (the fresh process imports this module);
lambdas and closures travel by value with what they use, as a notebook's functions do.
"""

from __future__ import annotations

import os
import threading

import pytest
import torch
import torch.nn.functional as F

import graphlab_utils
from graphlab_utils.checks import lesson02 as L


pytestmark = pytest.mark.usefixtures("sim")


def passes(result) -> bool:
    return result.passed and result.text() == f"[PASS] {result.name}: check passed"


def fails_with(result, *words) -> bool:
    text = result.text()
    return (not result.passed) and text.startswith(f"[HINT] {result.name}: not yet.") and all(
        w in text for w in words) and "Traceback" not in text


# ---------------------------------------------------------------------------------------
# Exercise 1: the parallel block
# ---------------------------------------------------------------------------------------
def block_reference_answer(x, w1, w2, side):
    main = torch.cuda.current_stream()
    side.wait_stream(main)
    a = torch.relu(x @ w1)
    with torch.cuda.stream(side):
        b = torch.sigmoid(x @ w2)
    main.wait_stream(side)
    return x + a * b


GATE_SCALE = 1.0


def branch_b(x, w):
    return torch.sigmoid(x @ w) * GATE_SCALE


def block_with_events(x, w1, w2, side):
    """Branch A on the side stream, B on the capturing one; events instead of wait_stream."""
    forked = torch.cuda.Event()
    forked.record()
    side.wait_event(forked)
    with torch.cuda.stream(side):
        a = F.relu(x @ w1)
        done = torch.cuda.Event()
        done.record(side)
    b = branch_b(x, w2)
    torch.cuda.current_stream().wait_event(done)
    return b * a + x


def block_one_stream(x, w1, w2, side):
    a = torch.relu(x @ w1)
    b = torch.sigmoid(x @ w2)
    return x + a * b


def block_fork_late(x, w1, w2, side):
    main = torch.cuda.current_stream()
    a = torch.relu(x @ w1)
    side.wait_stream(main)  # forked after branch A: B waits for A
    with torch.cuda.stream(side):
        b = torch.sigmoid(x @ w2)
    main.wait_stream(side)
    return x + a * b


def block_unjoined(x, w1, w2, side):
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        b = torch.sigmoid(x @ w2)
        a = torch.relu(x @ w1)
        out = x + a * b
    return out


def block_wrong_math(x, w1, w2, side):
    main = torch.cuda.current_stream()
    side.wait_stream(main)
    a = torch.relu(x @ w1)
    with torch.cuda.stream(side):
        b = torch.sigmoid(x @ w2)
    main.wait_stream(side)
    return a * b


def test_parallel_block_passes_for_reference_and_alternative():
    assert passes(L.check_parallel_block(block_reference_answer, quiet=True))
    assert passes(L.check_parallel_block(block_with_events, quiet=True))


def test_parallel_block_hints():
    assert fails_with(L.check_parallel_block(block_one_stream, quiet=True), "width 1", "Fork first")
    assert fails_with(L.check_parallel_block(block_fork_late, quiet=True), "1 root(s)")
    assert fails_with(L.check_parallel_block(block_unjoined, quiet=True), "cudaErrorStreamCaptureUnjoined",
                      "wait_stream(side)")
    assert fails_with(L.check_parallel_block(block_wrong_math, quiet=True), "sequential math")


def test_parallel_block_stub_and_non_function():
    def stub(x, w1, w2, side):
        raise NotImplementedError("Exercise")

    assert fails_with(L.check_parallel_block(stub, quiet=True), "NotImplementedError")
    assert fails_with(L.check_parallel_block(None, quiet=True), "pass the function itself")


# ---------------------------------------------------------------------------------------
# Repair 1: the capture helper
# ---------------------------------------------------------------------------------------
def capture_reference(graph, fn):
    with torch.cuda.graph(graph):
        out = fn()
    return out


def capture_raw_on_side_stream(graph, fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        graph.capture_begin()
        try:
            out = fn()
        finally:
            graph.capture_end()
    torch.cuda.current_stream().wait_stream(s)
    return out


def capture_broken_default(graph, fn):
    graph.capture_begin()
    out = fn()
    graph.capture_end()
    return out


def capture_end_elsewhere(graph, fn):
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        graph.capture_begin()
        out = fn()
    graph.capture_end()
    return out


def capture_nothing(graph, fn):
    return fn()


def test_capture_helper_passes():
    assert passes(L.check_capture_helper(capture_reference, quiet=True))
    assert passes(L.check_capture_helper(capture_raw_on_side_stream, quiet=True))


def test_capture_helper_hints():
    assert fails_with(L.check_capture_helper(capture_broken_default, quiet=True), "non-default stream",
                      "side stream")
    assert fails_with(L.check_capture_helper(capture_end_elsewhere, quiet=True), "same stream")
    assert fails_with(L.check_capture_helper(capture_nothing, quiet=True), "holds no capture")


# ---------------------------------------------------------------------------------------
# Repair 2: sampling probabilities
# ---------------------------------------------------------------------------------------
def probs_reference(logits, temperature):
    return torch.softmax(logits / temperature, dim=-1)


def probs_alternative(logits, temperature):
    return (logits * temperature.reciprocal()).log_softmax(dim=1).exp()


def probs_item(logits, temperature):
    t = temperature.item()
    return torch.softmax(logits / t, dim=-1)


def probs_frozen(logits, temperature):
    return torch.softmax(logits / 0.7, dim=-1)


def probs_float(logits, temperature):
    return torch.softmax(logits / float(temperature), dim=-1)


def probs_tolist(logits, temperature):
    return torch.softmax(logits / temperature.tolist()[0], dim=-1)


def test_sampling_probs_passes():
    assert passes(L.check_sampling_probs(probs_reference, quiet=True))
    assert passes(L.check_sampling_probs(probs_alternative, quiet=True))


def test_sampling_probs_hints():
    assert fails_with(L.check_sampling_probs(probs_item, quiet=True), "cudaErrorStreamCaptureUnsupported", ".item()")
    assert fails_with(L.check_sampling_probs(probs_frozen, quiet=True), "frozen at capture")
    assert fails_with(L.check_sampling_probs(probs_float, quiet=True), "cudaErrorStreamCaptureInvalidated")
    assert fails_with(L.check_sampling_probs(probs_tolist, quiet=True), "Cannot copy between CPU and CUDA",
                      "copied back to the host")


# ---------------------------------------------------------------------------------------
# Repair 3: the monitored step
# ---------------------------------------------------------------------------------------
def step_reference(x, w, side):
    side.wait_stream(torch.cuda.current_stream())
    h = (x @ w).relu()
    with torch.cuda.stream(side):
        stats = x.pow(2).mean(dim=-1)
    torch.cuda.current_stream().wait_stream(side)
    return h, stats


def step_swapped(x, w, side):
    main = torch.cuda.current_stream()
    side.wait_stream(main)
    with torch.cuda.stream(side):
        h = torch.relu(torch.matmul(x, w))
    stats = (x * x).mean(dim=1)
    main.wait_stream(side)
    return h, stats


def step_broken(x, w, side):
    side.wait_stream(torch.cuda.current_stream())
    h = (x @ w).relu()
    with torch.cuda.stream(side):
        stats = x.pow(2).mean(dim=-1)
        torch.cuda.current_stream().wait_stream(side)
    return h, stats


def step_one_stream(x, w, side):
    return (x @ w).relu(), x.pow(2).mean(dim=-1)


def step_unforked(x, w, side):
    h = (x @ w).relu()
    with torch.cuda.stream(side):
        stats = x.pow(2).mean(dim=-1)
    torch.cuda.current_stream().wait_stream(side)
    return h, stats


def test_monitored_step_passes():
    assert passes(L.check_monitored_step(step_reference, quiet=True))
    assert passes(L.check_monitored_step(step_swapped, quiet=True))


def test_monitored_step_hints():
    assert fails_with(L.check_monitored_step(step_broken, quiet=True), "cudaErrorStreamCaptureUnjoined",
                      "outside the `with torch.cuda.stream(side):` block")
    assert fails_with(L.check_monitored_step(step_one_stream, quiet=True), "width 1", "side stream")
    assert fails_with(L.check_monitored_step(step_unforked, quiet=True), "cudaErrorStreamCaptureUnsupported",
                      "Fork first")


# ---------------------------------------------------------------------------------------
# The fresh process
# ---------------------------------------------------------------------------------------
def test_a_lambda_and_a_closure_are_checked_in_a_fresh_process(capsys):
    calls_here = []

    def closure_probs(logits, temperature):
        calls_here.append(os.getpid())  # appends to the copy of the list that travelled with it
        print("closure ran in", os.getpid())
        return torch.softmax(logits / temperature, dim=-1)

    lambda_probs = lambda logits, temperature: (  # noqa: E731
        print("lambda ran in", os.getpid()) or torch.softmax(logits / temperature, dim=-1))

    assert passes(L.check_sampling_probs(closure_probs, quiet=True))
    assert passes(L.check_sampling_probs(lambda_probs, quiet=True))
    assert calls_here == []  # never called in this process
    printed = [line.split(" ran in ") for line in capsys.readouterr().out.splitlines()]
    assert {who for who, _ in printed} == {"closure", "lambda"}
    pids = {who: {int(pid) for w, pid in printed if w == who} for who in ("closure", "lambda")}
    assert all(len(p) == 1 and os.getpid() not in p for p in pids.values())  # one other process each
    assert pids["closure"] != pids["lambda"]  # and a new one per check


_SIDE_SCALE = None


def test_a_failing_capture_of_a_closure_stays_in_its_fresh_process():
    from graphlab_utils.simulator import graphs as sim_graphs

    global _SIDE_SCALE
    _SIDE_SCALE = torch.ones(1)  # a notebook global: it travels with the function that reads it

    def unjoined(x, w1, w2, side):
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            b = torch.sigmoid(x @ w2) * _SIDE_SCALE
        return x + torch.relu(x @ w1) * b

    result = L.check_parallel_block(unjoined, quiet=True)
    assert fails_with(result, "cudaErrorStreamCaptureUnjoined", "wait_stream(side)")
    assert "restart the kernel" not in result.text()
    assert not sim_graphs._rng["poisoned"]  # this process never captured it


def test_a_function_that_cannot_travel_gets_a_hint():
    lock = threading.Lock()

    def locked_probs(logits, temperature):
        with lock:
            return torch.softmax(logits / temperature, dim=-1)

    assert fails_with(L.check_sampling_probs(locked_probs, quiet=True), "a function the check can send to a "
                      "fresh process", "cannot pickle '_thread.lock' object", "create streams, generators, locks")


# ---------------------------------------------------------------------------------------
# viz.draw_dag
# ---------------------------------------------------------------------------------------
def test_draw_dag_on_a_small_structure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from graphlab_utils import viz
    from graphlab_utils.graphinfo import Structure

    st = Structure(nodes=["a", "b", "c", "d", "e"], edges=[("a", "b"), ("c", "d"), ("b", "e"), ("d", "e")])
    pos = viz.dag_layout(st)
    assert pos["a"][1] == pos["c"][1] == 0.0 and pos["e"][1] == -2.0
    assert pos["a"][0] < pos["c"][0]  # the graph's node order, left to right
    assert viz.branch_of(st) == {"a": 0, "b": 0, "c": 1, "d": 1, "e": -1}
    assert viz.dag_layout(st) == pos  # deterministic
    fig, ax = plt.subplots()
    out = viz.draw_dag(st, ax=ax, title="fork and join", labels=["A1", "A2", "B1", "B2", "join"])
    assert out is ax
    texts = sorted(t.get_text() for t in ax.texts if t.get_text())
    assert texts == ["A1", "A2", "B1", "B2", "join"]
    assert len(ax.patches) == 5 and ax.get_title() == "fork and join"
    plt.close(fig)
    # default labels are node numbers; a chain is one branch
    chain = Structure(nodes=["n0", "n1", "n2"], edges=[("n0", "n1"), ("n1", "n2")])
    ax = viz.draw_dag(chain, legend=False)
    assert sorted(t.get_text() for t in ax.texts if t.get_text()) == ["0", "1", "2"]
    assert set(viz.branch_of(chain).values()) == {0}
    plt.close("all")
