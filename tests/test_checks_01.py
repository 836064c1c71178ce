"""The checks of lab 01 (capture, instantiate, launch) on the simulator.

Each check gets the reference answer, at least one other correct answer written
differently, and at least two wrong answers; a wrong answer must fail with a hint and never
raise out of the check.
"""
from __future__ import annotations

import math
import time

import pytest

import graphlab_utils


pytestmark = pytest.mark.usefixtures("sim")


@pytest.fixture(scope="module")
def lesson01(sim):
    from graphlab_utils.checks import lesson01

    return lesson01


def run(check, *answers):
    return check(*answers, quiet=True)


# ---------------------------------------------------------------------------------------
# Answers of exercise 1
# ---------------------------------------------------------------------------------------
def warm_up(fn, iters=3):
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(iters):
            fn()
    torch.cuda.current_stream().wait_stream(side)


def capture(fn):
    import torch

    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g):
        out = fn()
    return g, out


def warm_up_with_events(fn):
    """Correct, written differently: one pass, fork and join through events."""
    import torch

    side = torch.cuda.Stream()
    fork = torch.cuda.Event()
    fork.record()
    side.wait_event(fork)
    with torch.cuda.stream(side):
        fn()
    join = torch.cuda.Event()
    join.record(side)
    torch.cuda.current_stream().wait_event(join)


def capture_with_begin_end(fn):
    """Correct, written differently: capture_begin/capture_end on a stream of its own."""
    import torch

    g = torch.cuda.CUDAGraph(keep_graph=True)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        g.capture_begin()
        out = fn()
        g.capture_end()
    torch.cuda.current_stream().wait_stream(s)
    return g, out


def capture_that_warms_up_too(fn):
    """Correct: an extra warm-up inside capture() is eager work, not part of the graph."""
    warm_up(fn, iters=1)
    return capture(fn)


def warm_up_on_default_stream(fn):
    for _ in range(3):
        fn()


def warm_up_never_calls(fn):
    return None


def warm_up_stays_on_side_stream(fn):
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    torch.cuda.set_stream(side)
    fn()


def capture_without_keep_graph(fn):
    import torch

    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out


def capture_and_instantiate(fn):
    g, out = capture(fn)
    g.instantiate()
    return g, out


def capture_and_replay(fn):
    g, out = capture(fn)
    g.replay()
    return g, out


def capture_returns_eager_output(fn):
    g, _ = capture(fn)
    return g, fn()


def capture_twice(fn):
    import torch

    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g):
        fn()
        out = fn()
    return g, out


def capture_returns_graph_only(fn):
    return capture(fn)[0]


def test_capture_reference_passes(lesson01):
    assert run(lesson01.check_capture, warm_up, capture).passed


@pytest.mark.parametrize("w, c", [
    (warm_up_with_events, capture_with_begin_end),
    (warm_up, capture_that_warms_up_too),
    (lambda fn: warm_up(fn, iters=1), capture_with_begin_end),
])
def test_capture_other_correct_answers_pass(lesson01, w, c):
    result = run(lesson01.check_capture, w, c)
    assert result.passed, result.text()


@pytest.mark.parametrize("w, c, words", [
    (warm_up_on_default_stream, capture, "side stream"),
    (warm_up_never_calls, capture, "never called"),
    (warm_up, capture_without_keep_graph, "keep_graph=True"),
    (warm_up, capture_and_instantiate, "already instantiated"),
    (warm_up, capture_and_replay, "already instantiated"),
    (warm_up, capture_returns_eager_output, "static_out holds"),
    (warm_up, capture_twice, "2 times"),
    (warm_up, capture_returns_graph_only, "pair"),
])
def test_capture_wrong_answers_fail_with_a_hint(lesson01, w, c, words):
    result = run(lesson01.check_capture, w, c)
    assert not result.passed
    assert words in result.text()
    assert "idea:" in result.text()


def test_capture_leaving_a_side_stream_current_fails(lesson01):
    import torch

    before = torch.cuda.current_stream()
    try:
        result = run(lesson01.check_capture, warm_up_stays_on_side_stream, capture)
    finally:
        torch.cuda.set_stream(before)
    assert not result.passed
    assert "stream" in result.seen


# ---------------------------------------------------------------------------------------
# Exercise 2
# ---------------------------------------------------------------------------------------
def replay(graph, static_x, static_out, new_x):
    static_x.copy_(new_x)
    graph.replay()
    return static_out


def replay_and_clone(graph, static_x, static_out, new_x):
    """Correct, written differently: slice-assign the input, keep a copy of the output."""
    import torch

    static_x[:] = new_x
    graph.replay()
    torch.cuda.synchronize()
    return static_out.clone()


def replay_rebinding(graph, static_x, static_out, new_x):
    static_x = new_x  # noqa: F841 - the classic mistake: the graph still reads the old buffer
    graph.replay()
    return static_out


def replay_forgotten(graph, static_x, static_out, new_x):
    static_x.copy_(new_x)
    return static_out


def replay_twice(graph, static_x, static_out, new_x):
    static_x.copy_(new_x)
    graph.replay()
    graph.replay()
    return static_out


def replay_before_copy(graph, static_x, static_out, new_x):
    graph.replay()
    static_x.copy_(new_x)
    return static_out


def test_replay_reference_passes(lesson01):
    assert run(lesson01.check_replay, replay).passed


def test_replay_other_correct_answer_passes(lesson01):
    result = run(lesson01.check_replay, replay_and_clone)
    assert result.passed, result.text()


@pytest.mark.parametrize("answer, words", [
    (replay_rebinding, "copy_"),
    (replay_forgotten, "did not run"),
    (replay_twice, "ran 2 times"),
    (replay_before_copy, "earlier input"),
])
def test_replay_wrong_answers_fail_with_a_hint(lesson01, answer, words):
    result = run(lesson01.check_replay, answer)
    assert not result.passed
    assert words in result.text()


# ---------------------------------------------------------------------------------------
# Exercise 3
# ---------------------------------------------------------------------------------------
def time_phases(fn):
    from graphlab_utils import timing

    warm_up(fn)
    box = {}

    def do_capture():
        box["graph"], box["out"] = capture(fn)

    t_capture = timing.measure_host(do_capture)
    graph = box["graph"]
    t_instantiate = timing.measure_host(graph.instantiate)
    return {
        "capture": t_capture,
        "instantiate": t_instantiate,
        "replay": timing.measure(graph.replay),
        "eager": timing.measure(fn),
    }


def time_phases_host_clock(fn):
    """Correct, written differently: host time for everything, fewer repeats, another order."""
    import torch

    from graphlab_utils import timing

    warm_up_with_events(fn)
    eager = timing.measure_host(fn, warmup=2, repeat=5)
    g = torch.cuda.CUDAGraph(keep_graph=True)
    holder = []

    def rec():
        with torch.cuda.graph(g):
            holder.append(fn())

    phases = {"eager": eager, "capture": timing.measure_host(rec)}
    phases["instantiate"] = timing.measure_host(lambda: g.instantiate())
    phases["replay"] = timing.measure_host(g.replay, warmup=1, repeat=5)
    return phases


def time_phases_swapped(fn):
    p = time_phases(fn)
    p["capture"], p["instantiate"] = p["instantiate"], p["capture"]
    return p


def time_phases_replay_eager_swapped(fn):
    p = time_phases(fn)
    p["replay"], p["eager"] = p["eager"], p["replay"]
    return p


def time_phases_wall_clock(fn):
    warm_up(fn)
    t0 = time.perf_counter()
    g, _ = capture(fn)
    t1 = time.perf_counter()
    g.instantiate()
    t2 = time.perf_counter()
    g.replay()
    t3 = time.perf_counter()
    fn()
    t4 = time.perf_counter()
    return {"capture": (t1 - t0) * 1e3, "instantiate": (t2 - t1) * 1e3,
            "replay": (t3 - t2) * 1e3, "eager": (t4 - t3) * 1e3}


def time_phases_default_graph(fn):
    """Wrong: without keep_graph=True the capture instantiates, and instantiate() fails."""
    from graphlab_utils import timing

    warm_up(fn)
    box = {}
    t_capture = timing.measure_host(lambda: box.update(zip(("graph", "out"), capture_without_keep_graph(fn))))
    t_instantiate = timing.measure_host(box["graph"].instantiate)
    return {"capture": t_capture, "instantiate": t_instantiate,
            "replay": timing.measure(box["graph"].replay), "eager": timing.measure(fn)}


def time_phases_missing_key(fn):
    p = time_phases(fn)
    del p["instantiate"]
    return p


def time_phases_stub(fn):
    raise NotImplementedError("Exercise: time the phases (see the hint above)")


def test_time_phases_reference_passes(lesson01):
    result = run(lesson01.check_time_phases, time_phases)
    assert result.passed, result.text()


def test_time_phases_other_correct_answer_passes(lesson01):
    result = run(lesson01.check_time_phases, time_phases_host_clock)
    assert result.passed, result.text()


@pytest.mark.parametrize("answer, words", [
    (time_phases_swapped, "are two phases swapped"),
    (time_phases_replay_eager_swapped, "are two phases swapped"),
    (time_phases_wall_clock, "a Timing from the course's timing helper"),
    (time_phases_default_graph, "keep_graph=True"),
    (time_phases_missing_key, "missing: instantiate"),
    (time_phases_stub, "NotImplementedError"),
])
def test_time_phases_wrong_answers_fail_with_a_hint(lesson01, answer, words):
    result = run(lesson01.check_time_phases, answer)
    assert not result.passed
    assert words in result.text()


# ---------------------------------------------------------------------------------------
# Exercise 4
# ---------------------------------------------------------------------------------------
def first_paying_count(sweep, calls):
    answer = None
    for n in sorted(sweep, reverse=True):
        p = sweep[n]
        one_off = p["capture"].ms + p["instantiate"].ms
        if one_off + calls * p["replay"].ms >= calls * p["eager"].ms:
            break
        answer = n
    return answer


def first_paying_count_break_even(sweep, calls):
    """Correct, written differently: break-even calls per count, scanned upwards."""
    candidate = None
    for n in sorted(sweep):
        p = sweep[n]
        saving_us = p["eager"].us - p["replay"].us
        pays = saving_us > 0 and calls > (p["capture"].us + p["instantiate"].us) / saving_us
        if pays and candidate is None:
            candidate = n
        elif not pays:
            candidate = None
    return candidate


def first_paying_naive(sweep, calls):
    for n in sorted(sweep):
        p = sweep[n]
        if p["capture"].ms + p["instantiate"].ms + calls * p["replay"].ms < calls * p["eager"].ms:
            return n
    return None


def first_paying_per_call(sweep, calls):
    for n in sorted(sweep):
        if sweep[n]["replay"].ms < sweep[n]["eager"].ms:
            return n
    return None


def first_paying_never_none(sweep, calls):
    answer = first_paying_count(sweep, calls)
    return max(sweep) if answer is None else answer


def first_paying_unsorted(sweep, calls):
    answer = None
    for n in reversed(list(sweep)):
        p = sweep[n]
        if p["capture"].ms + p["instantiate"].ms + calls * p["replay"].ms >= calls * p["eager"].ms:
            break
        answer = n
    return answer


def first_paying_crashes(sweep, calls):
    return sweep["200"]


def test_first_paying_count_reference_passes(lesson01):
    assert run(lesson01.check_first_paying_count, first_paying_count).passed


def test_first_paying_count_other_correct_answer_passes(lesson01):
    result = run(lesson01.check_first_paying_count, first_paying_count_break_even)
    assert result.passed, result.text()


@pytest.mark.parametrize("answer, words", [
    (first_paying_naive, "keep paying"),
    (first_paying_per_call, "one-off costs"),
    (first_paying_never_none, "None"),
    (first_paying_unsorted, "not in order"),
    (first_paying_crashes, "KeyError"),
])
def test_first_paying_count_wrong_answers_fail_with_a_hint(lesson01, answer, words):
    result = run(lesson01.check_first_paying_count, answer)
    assert not result.passed
    assert words in result.text()


def test_reference_on_the_made_up_sweeps(lesson01):
    sweep = lesson01._made_up_sweep((1, 2, 5, 10, 20, 50, 100, 200, 500))
    assert lesson01.first_paying_count_reference(sweep, 20) == 20
    assert lesson01.first_paying_count_reference(sweep, 1) is None
    assert lesson01.graph_pays(sweep[500], 20)
    assert not lesson01.graph_pays(sweep[1], 20)


# ---------------------------------------------------------------------------------------
# Every check: one fixed line on success, a hint (never a traceback) on failure
# ---------------------------------------------------------------------------------------
def test_a_passing_check_prints_one_fixed_line(lesson01, capsys):
    lesson01.check_replay(replay)
    assert capsys.readouterr().out == "[PASS] replay with new inputs: check passed\n"


def test_a_crashing_answer_becomes_a_hint(lesson01, capsys):
    def broken(graph, static_x, static_out, new_x):
        return math.sqrt(-1)

    result = lesson01.check_replay(broken)
    out = capsys.readouterr().out
    assert not result.passed
    assert "ValueError: math domain error" in out
    assert "Traceback" not in out
