"""Checks of lab 01, capture, instantiate, launch: the three phases by hand, timed.

The lab's functions and the checks that run them:

* :func:`check_capture` runs the learner's ``warm_up(fn)`` and ``capture(fn)`` on a probe
  function that logs every Python call (on which stream, inside a capture or not) and counts
  its real runs in a device counter. Warm-up must run ``fn`` on a side stream; capture must
  record one call of ``fn`` in a ``torch.cuda.CUDAGraph(keep_graph=True)`` and leave it
  **not instantiated** (``raw_cuda_graph_exec()`` still fails), so that instantiation is a
  phase of its own. The check then instantiates and replays the graph and compares with eager.
* :func:`check_replay` captures a graph itself and feeds the learner's
  ``replay(graph, static_x, static_out, new_x)`` new inputs: each call must run the graph
  exactly once and give eager PyTorch's result for ``new_x``.
* :func:`check_time_phases` is a timing check: the learner's ``time_phases(fn)`` returns the
  four timings (capture, instantiate, replay, eager) of a 100-kernel chain; each must come
  from the course's timing helper and lie within a factor :data:`TOLERANCE` of the check's
  own measurement taken side by side in the same run, after one untimed round (exact on the
  simulator, where the clock is modelled); two phases that the check finds at least :data:`ORDER_RATIO` apart
  must come in the same order (so swapped phases fail), and replay must beat eager.
* :func:`check_first_paying_count` feeds the learner's ``first_paying_count(sweep, calls)``
  made-up sweeps and compares with :func:`first_paying_count_reference`.

No check compares against an absolute time.
"""
from __future__ import annotations

import math
import random

from graphlab_utils.recipes import close, plural, seeded_randn, warm_up

from .core import check, fail, graph_and_output, ok, ok_near_own_measurement, ok_timings
from .core import device as _device

__all__ = [
    "TOLERANCE",
    "ORDER_RATIO",
    "PHASES",
    "CHECK_KERNELS",
    "graph_pays",
    "first_paying_count_reference",
    "check_capture",
    "check_replay",
    "check_time_phases",
    "check_first_paying_count",
]

TOLERANCE = 3.0  # a learner's timing may differ from the check's own by this factor at most
ORDER_RATIO = 1.5  # phases this far apart in the check's measurement must keep their order
PHASES = ("capture", "instantiate", "replay", "eager")
CHECK_KERNELS = 100  # the chain check_time_phases times: launch-bound on any GPU
RTOL, ATOL = 1e-4, 1e-5


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
def _runs(counter) -> int:
    import torch

    torch.cuda.synchronize()
    return int(round(float(counter.item())))


class _Probe:
    """A small function to capture: ``probe()`` reads the static input ``probe.x``.

    Each Python call is logged as ``(inside a capture, on the default stream)``; each real
    run on the device adds one to ``probe.runs`` (a device tensor), so a capture, which runs
    nothing, leaves it unchanged and each replay adds one.
    """

    def __init__(self, seed: int = 1):
        import torch

        self.x = seeded_randn(seed, 256, device=_device())
        self.runs = torch.zeros((), device=_device())
        self.log: list[tuple[bool, bool]] = []

    @staticmethod
    def reference(x):
        import torch

        y = x
        for _ in range(3):
            y = torch.sin(y) * 1.5 + 0.25
        return y

    def __call__(self):
        import torch

        self.log.append(
            (bool(torch.cuda.is_current_stream_capturing()),
             torch.cuda.current_stream() == torch.cuda.default_stream())
        )
        self.runs.add_(1)
        return self.reference(self.x)


# ---------------------------------------------------------------------------------------
# Exercise 1: warm up and capture, without instantiating
# ---------------------------------------------------------------------------------------
@check("capture by hand")
def check_capture(warm_up, capture):
    """``warm_up(fn)`` runs fn on a side stream; ``capture(fn)`` returns ``(graph, static_out)``
    from a ``CUDAGraph(keep_graph=True)`` that is captured but not yet instantiated."""
    import torch

    probe = _Probe(seed=1)
    before = torch.cuda.current_stream()
    warm_up(probe)
    calls = list(probe.log)
    ok(len(calls) >= 1,
       "warm_up(fn) calls fn at least once",
       "fn was never called",
       "warm-up runs the work eagerly before capture, so that lazy initialisation (library "
       "handles, allocator growth) happens outside the graph")
    ok(not any(capturing for capturing, _ in calls),
       "warm-up runs fn eagerly, outside any capture",
       "fn ran inside a capture during warm_up",
       "warm-up is plain eager execution on a side stream; the capture comes afterwards, in capture(fn)")
    on_default = sum(1 for _, default in calls if default)
    ok(on_default == 0,
       "fn runs on a side stream: a torch.cuda.Stream() that waits for the current stream",
       f"{on_default} of {plural(len(calls), 'call')} ran on the default stream",
       "PyTorch's recipe: side = torch.cuda.Stream(); side.wait_stream(torch.cuda.current_stream()); "
       "run fn under `with torch.cuda.stream(side):`; then torch.cuda.current_stream().wait_stream(side)")
    ok(torch.cuda.current_stream() == before,
       "after warm_up the current stream is the one that was current before",
       "warm_up left another stream current",
       "leave the `with torch.cuda.stream(side):` block before warm_up returns")
    runs_after_warm_up = _runs(probe.runs)

    graph, static_out = graph_and_output(
        capture(probe), "capture(fn)", "(graph, static_out)",
        "return the CUDAGraph and the tensor fn returned inside the capture: the graph's static output",
        "create the graph with torch.cuda.CUDAGraph(keep_graph=True) and capture into it")
    ok(isinstance(static_out, torch.Tensor),
       "the second item is the tensor fn returned inside the capture",
       f"{type(static_out).__name__}",
       "keep what fn returns inside `with torch.cuda.graph(g):`: every replay writes into it")
    during = probe.log[len(calls):]
    captured = sum(1 for capturing, _ in during if capturing)
    ok(captured == 1,
       "fn called exactly once inside `with torch.cuda.graph(g):`",
       f"fn called {plural(captured, 'time')} inside a capture",
       "one call of fn in the capture records one pass; two calls would record the work twice, "
       "and none records an empty graph")
    eager_in_capture_fn = len(during) - captured
    try:
        graph.raw_cuda_graph()
    except RuntimeError:
        fail("a graph that keeps its cudaGraph_t: torch.cuda.CUDAGraph(keep_graph=True)",
             "graph.raw_cuda_graph() raised: the graph was created without keep_graph=True",
             "with keep_graph=False (the default) the end of the capture also instantiates the graph, "
             "so the two phases cannot be timed apart; keep_graph=True leaves instantiate() to you")
    try:
        graph.raw_cuda_graph_exec()
        instantiated = True
    except RuntimeError:
        instantiated = False
    ok(not instantiated,
       "a graph captured but not yet instantiated (raw_cuda_graph_exec() still fails)",
       "graph.raw_cuda_graph_exec() works: the graph was already instantiated (or replayed) inside capture(fn)",
       "instantiation is the next phase, on its own: call graph.instantiate() after capture(fn) "
       "returns, not inside it (a replay() also instantiates a graph that is not yet instantiated)")
    ok(_runs(probe.runs) == runs_after_warm_up + eager_in_capture_fn,
       "the capture runs nothing: the device counter unchanged by the capture",
       "the counter moved during the capture",
       "a capture records kernels without launching them")

    graph.instantiate()
    new = seeded_randn(2, 256, device=_device())
    probe.x.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    ok(close(static_out, _Probe.reference(new)),
       "after instantiate() and replay(), static_out holds fn's result for the input now in the static buffer",
       "it holds something else",
       "return the very tensor fn returned inside the capture, not a clone and not an eager result: "
       "the graph writes into that tensor's memory at every replay")


# ---------------------------------------------------------------------------------------
# Exercise 2: replay with new inputs
# ---------------------------------------------------------------------------------------
@check("replay with new inputs")
def check_replay(replay):
    """``replay(graph, static_x, static_out, new_x)`` returns fn's result for ``new_x``."""
    import torch

    probe = _Probe(seed=3)
    warm_up(probe)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = probe()
    static_x = probe.x
    first = static_x.clone()
    previous = first
    for i, seed in enumerate((4, 5, 6), start=1):
        new_x = seeded_randn(seed, 256, device=_device())
        runs_before = _runs(probe.runs)
        result = replay(graph, static_x, static_out, new_x)
        runs = _runs(probe.runs) - runs_before
        ok(runs >= 1,
           "one replay of the graph per call",
           f"call {i}: the graph did not run",
           "graph.replay() launches the whole graph; without it static_out keeps its old values")
        ok(runs == 1,
           "one replay of the graph per call",
           f"call {i}: the graph ran {runs} times",
           "replay once per request: each replay costs a launch and overwrites static_out")
        ok(isinstance(result, torch.Tensor),
           "a tensor: the graph's output for new_x",
           f"{type(result).__name__}",
           "return static_out (or a clone of it) after the replay")
        expected = _Probe.reference(new_x)
        if close(result, expected):
            previous = new_x
            continue
        if close(result, _Probe.reference(first)) or close(result, _Probe.reference(previous)):
            fail(f"call {i}: fn's result for new_x",
                 "the result for an earlier input",
                 "the graph reads the memory of static_x, not the Python name: copy the new values in "
                 "with static_x.copy_(new_x) before graph.replay(); rebinding (static_x = new_x) "
                 "leaves the graph reading the old buffer")
        fail(f"call {i}: fn's result for new_x",
             "a different tensor",
             "copy new_x into static_x, replay the graph, and return static_out: the graph writes "
             "its result there")


# ---------------------------------------------------------------------------------------
# Exercise 3: time the three phases (a timing check)
# ---------------------------------------------------------------------------------------
_PHASE_IDEAS = {
    "capture": "time only the `with torch.cuda.graph(g):` block (after the warm-up) with "
               "timing.measure_host: capture is host work, nothing runs on the device",
    "instantiate": "time graph.instantiate() alone with timing.measure_host, on a graph created with "
                   "keep_graph=True (otherwise the capture already instantiated it)",
    "replay": "time graph.replay() with timing.measure (device time per call), after instantiate()",
    "eager": "time fn itself with timing.measure (device time per call)",
}


def _reference_phases(fn) -> dict:
    import torch

    from graphlab_utils import timing

    warm_up(fn)
    graph = torch.cuda.CUDAGraph(keep_graph=True)
    box = {}

    def capture():
        with torch.cuda.graph(graph):
            box["out"] = fn()

    out = {"capture": timing.measure_host(capture)}
    out["instantiate"] = timing.measure_host(graph.instantiate)
    out["replay"] = timing.measure(graph.replay)
    out["eager"] = timing.measure(fn)
    return out


@check("time the three phases")
def check_time_phases(time_phases):
    """``time_phases(fn)`` returns ``{"capture", "instantiate", "replay", "eager": Timing}``."""
    from graphlab_utils import workloads

    fn, _inputs = workloads.chain(CHECK_KERNELS, _device())
    # One untimed round first: on a GPU the first capture and instantiation of a process's
    # kernels pay one-off costs that would otherwise fall on whichever is measured first.
    _reference_phases(fn)
    try:
        phases = time_phases(fn)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        if "instantiate" in first:
            fail("graph.instantiate() on a graph that is captured but not yet instantiated",
                 f"RuntimeError: {first}",
                 "a graph created with keep_graph=False is instantiated at the end of its capture and "
                 "cannot be instantiated again: capture with torch.cuda.CUDAGraph(keep_graph=True) (exercise 1)")
        raise
    ok_timings(phases, PHASES, "{'capture': ..., 'instantiate': ..., 'replay': ..., 'eager': ...}",
               "use timing.measure_host (capture, instantiate) and timing.measure (replay, eager): they "
               "read CUDA events on a GPU and the modelled clock on the simulator, and label the figure",
               unit="phase")
    mine = _reference_phases(fn)
    wrong_order = [(a, b) for a in PHASES for b in PHASES
                   if mine[a].median_ms >= ORDER_RATIO * mine[b].median_ms
                   and not phases[a].median_ms > phases[b].median_ms]
    if wrong_order:
        a, b = wrong_order[0]
        involved = {k for pair in wrong_order for k in pair}
        worst = max(sorted(involved, key=PHASES.index),
                    key=lambda k: abs(math.log(phases[k].median_ms / mine[k].median_ms)))
        fail(f"{a} slower than {b}, as in the check's own measurement ({mine[a]} vs {mine[b]})",
             f"{a} {phases[a]}, {b} {phases[b]}",
             f"are two phases swapped? Your {worst} is the furthest from the check's ({mine[worst]}): "
             + _PHASE_IDEAS[worst])
    ok_near_own_measurement(phases, mine, PHASES, _PHASE_IDEAS, TOLERANCE)
    ok(phases["replay"].median_ms < phases["eager"].median_ms,
       f"replay faster than eager on {CHECK_KERNELS} tiny kernels",
       f"replay {phases['replay']}, eager {phases['eager']}",
       "a replay launches the whole graph at once; eager launches every kernel from the CPU. "
       "Are replay and eager swapped?")


# ---------------------------------------------------------------------------------------
# Exercise 4: the kernel count at which graphs start to pay
# ---------------------------------------------------------------------------------------
def _ms(t) -> float:
    return float(t.median_ms if hasattr(t, "median_ms") else t)


def graph_pays(phases: dict, calls: int) -> bool:
    """Whether a graph served ``calls`` calls costs less in total than eager:
    capture + instantiate + calls x replay < calls x eager."""
    one_off = _ms(phases["capture"]) + _ms(phases["instantiate"])
    return one_off + calls * _ms(phases["replay"]) < calls * _ms(phases["eager"])


def first_paying_count_reference(sweep: dict, calls: int):
    """The smallest kernel count of ``sweep`` from which graphs pay at every larger count too;
    None if they do not pay at the largest."""
    answer = None
    for n in sorted(sweep, reverse=True):
        if not graph_pays(sweep[n], calls):
            break
        answer = n
    return answer


def _made_up_sweep(counts, capture_base_ms=3.0, seed=None) -> dict:
    """Phases of an n-kernel chain from round figures like an H100's (a made-up sweep)."""
    from graphlab_utils.timing import Timing

    def t(ms):
        return Timing(ms, [ms], modelled=True, device_name="a made-up GPU")

    order = list(counts)
    if seed is not None:
        random.Random(seed).shuffle(order)
    return {
        n: {
            "capture": t(capture_base_ms + 0.06 * n),
            "instantiate": t(0.02 + 0.0075 * n),
            "replay": t(0.008 + 0.0012 * n),
            "eager": t(0.001 + 0.0128 * n),
        }
        for n in order
    }


def _naive_first(sweep, calls):
    for n in sorted(sweep):
        if graph_pays(sweep[n], calls):
            return n
    return None


def _per_call_first(sweep):
    for n in sorted(sweep):
        if _ms(sweep[n]["replay"]) < _ms(sweep[n]["eager"]):
            return n
    return None


@check("the kernel count at which graphs start to pay")
def check_first_paying_count(first_paying_count):
    """``first_paying_count(sweep, calls)``: the smallest count from which graphs keep paying."""
    from graphlab_utils.timing import Timing

    counts = (1, 2, 5, 10, 20, 50, 100, 200, 500)
    noisy = _made_up_sweep(counts)
    # measured noise: at 5 kernels one lucky eager run makes the graph look worth it, at 10 not
    noisy[5]["eager"] = Timing(40.0, [40.0], modelled=True, device_name="a made-up GPU")
    cases = [
        ("a sweep in order, 20 calls", _made_up_sweep(counts), 20),
        ("the same sweep, its counts in another order, 50 calls", _made_up_sweep(counts, seed=7), 50),
        ("a costlier capture, 2000 calls", _made_up_sweep(counts, capture_base_ms=25.0), 2000),
        ("a noisy sweep, 20 calls", noisy, 20),
        ("a sweep where graphs never pay back, 1 call", _made_up_sweep(counts), 1),
    ]
    for name, sweep, calls in cases:
        expected = first_paying_count_reference(sweep, calls)
        got = first_paying_count(sweep, calls)
        if got is not None and not isinstance(got, bool):
            try:
                if float(got) == int(got):
                    got = int(got)
            except (TypeError, ValueError):
                pass
        if got == expected and (got is None) == (expected is None):
            continue
        idea = ("a graph pays over `calls` calls when capture + instantiate + calls x replay "
                "< calls x eager; return the smallest count from which that holds at every larger count, "
                "or None when it fails at the largest")
        if got == _per_call_first(sweep) and got != expected:
            idea = ("you compared one replay with one eager call; the graph must also win back its "
                    "one-off costs, capture + instantiate, over `calls` calls")
        elif got == _naive_first(sweep, calls) and got != expected:
            idea = ("measured sweeps are noisy: one count may pay by luck while a larger one does not. "
                    "Graphs start to pay at the count from which they keep paying: walk down from the "
                    "largest count")
        elif expected is None:
            idea = "when the graph does not pay back even at the largest count, return None"
        elif sorted(sweep) != list(sweep):
            idea += " (the sweep's keys are not in order: sort them)"
        fail(f"{name}: {expected!r}", f"{got!r}", idea)
