"""The checks of lab 05 (shape bucketing) on the simulator.

Each check gets the reference answer, at least one other correct answer written
differently, and at least two wrong answers; a wrong answer must fail with a hint and never
raise out of the check.
"""
from __future__ import annotations

import bisect
import itertools
import math
import random

import pytest

import graphlab_utils


pytestmark = pytest.mark.usefixtures("sim")


@pytest.fixture(scope="module")
def L05(sim):
    from graphlab_utils.checks import lesson05

    return lesson05


def run(check, *answers):
    return check(*answers, quiet=True)


# ---------------------------------------------------------------------------------------
# Runners: the reference and correct variants
# ---------------------------------------------------------------------------------------
def _warm_up(model, static_in, buckets):
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for bs in buckets:
            out = model(static_in[:bs])
    torch.cuda.current_stream().wait_stream(side)
    return out


class Reference:
    """The lab's solution: static input and output buffers, largest first, one pool."""

    capture_sorted = True
    largest_first = True
    shared_pool = True

    def __init__(self, model, buckets, width, device):
        import torch

        self.model = model
        self.replays = 0
        self.eager_calls = 0
        self.buckets = sorted(buckets) if self.capture_sorted else list(buckets)
        self.max_bs = max(self.buckets)
        self.static_in = torch.zeros(self.max_bs, width, device=device)
        out = _warm_up(model, self.static_in, self.buckets)
        self.static_out = torch.zeros(self.max_bs, out.shape[1], device=device)
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs = {}
        order = reversed(self.buckets) if self.largest_first else iter(self.buckets)
        for bs in order:
            graph = torch.cuda.CUDAGraph()
            pool = self.pool if self.shared_pool else None
            with torch.cuda.graph(graph, pool=pool):
                self.static_out[:bs].copy_(model(self.static_in[:bs]))
            self.graphs[bs] = graph
        self.buckets = sorted(self.buckets)

    def can_run(self, bs):
        return bs <= self.max_bs

    def bucket(self, n):
        return self.buckets[bisect.bisect_left(self.buckets, n)]

    def __call__(self, x):
        n = x.shape[0]
        if not self.can_run(n):
            self.eager_calls += 1
            return self.model(x)
        bs = self.bucket(n)
        self.static_in[:n].copy_(x)
        self.graphs[bs].replay()
        self.replays += 1
        return self.static_out[:n]


class SGLangStyle:
    """Correct, written differently: each graph keeps the output it allocated in the pool
    (SGLang's output_buffers), the first graph's pool is passed to the others, the padding
    rows are zeroed, the result is cloned, and the bucket is found with a loop."""

    def __init__(self, model, buckets, width, device):
        import torch

        self.model = model
        self.sizes = tuple(sorted(set(buckets), reverse=True))
        self.inputs = torch.empty(self.sizes[0], width, device=device).zero_()
        _warm_up(model, self.inputs, self.sizes)
        self.graphs, self.outputs = {}, {}
        self.pool = None
        for bs in self.sizes:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.outputs[bs] = model(self.inputs[:bs])
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bs] = graph
        self.replays = self.eager_calls = 0

    def can_run(self, bs):
        return 0 < bs <= max(self.graphs)

    def __call__(self, x):
        n = len(x)
        for bs in reversed(self.sizes):
            if bs >= n:
                self.inputs[:n].copy_(x)
                self.inputs[n:bs].zero_()
                self.graphs[bs].replay()
                self.replays += 1
                return self.outputs[bs][:n].clone()
        self.eager_calls += 1
        return self.model(x)


# ---------------------------------------------------------------------------------------
# Runners: wrong answers
# ---------------------------------------------------------------------------------------
class SmallestFirst(Reference):
    largest_first = False


class OnePoolEach(Reference):
    shared_pool = False


class UnsortedReverse(Reference):
    """reversed(buckets) without sorting: wrong when the buckets come unsorted."""

    capture_sorted = False


class AlwaysLargest(Reference):
    """Pads every batch to the largest bucket."""

    def bucket(self, n):
        return self.max_bs


class NextPowerOfTwo(Reference):
    """Rounds up to a power of two, whatever the buckets are."""

    def bucket(self, n):
        b = 1 << (n - 1).bit_length()
        return b if b in self.graphs else self.max_bs


class NoFallback(Reference):
    """can_run is right, but every batch is copied into the static input: fails above the
    largest bucket."""

    def __call__(self, x):
        n = x.shape[0]
        bs = self.buckets[min(bisect.bisect_left(self.buckets, n), len(self.buckets) - 1)]
        self.static_in[:n].copy_(x)
        self.graphs[bs].replay()
        self.replays += 1
        return self.static_out[:n]


class CanRunAlways(Reference):
    def can_run(self, bs):
        return True


class ExactOnly(Reference):
    """can_run only for exact bucket sizes (no padding)."""

    def can_run(self, bs):
        return bs in self.graphs


class ReturnsPadded(Reference):
    def __call__(self, x):
        n = x.shape[0]
        out = super().__call__(x)
        if n <= self.max_bs:
            return self.static_out[: self.bucket(n)]
        return out


class RecapturesEachCall(Reference):
    def __call__(self, x):
        import torch

        n = x.shape[0]
        if not self.can_run(n):
            self.eager_calls += 1
            return self.model(x)
        bs = self.bucket(n)
        self.static_in[:n].copy_(x)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.static_out[:bs].copy_(self.model(self.static_in[:bs]))
        graph.replay()
        self.replays += 1
        return self.static_out[:n]


class RebindsInput(Reference):
    """Rebinds the name instead of copying: the graph reads the old buffer."""

    def __call__(self, x):
        n = x.shape[0]
        if not self.can_run(n):
            self.eager_calls += 1
            return self.model(x)
        self.static_in = x
        self.graphs[self.bucket(n)].replay()
        self.replays += 1
        return self.static_out[:n]


class EagerAlways(Reference):
    def __call__(self, x):
        self.eager_calls += 1
        return self.model(x)


class NoCounters(Reference):
    def __call__(self, x):
        out = super().__call__(x)
        self.replays = self.eager_calls = 0
        return out


class NoPoolAttribute(Reference):
    def __init__(self, *args):
        super().__init__(*args)
        del self.pool


class Stub:
    def __init__(self, model, buckets, width, device):
        raise NotImplementedError("Exercise: write the runner (see the hint above)")


# ---------------------------------------------------------------------------------------
# check_runner
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("runner", [Reference, SGLangStyle])
def test_runner_accepts_correct_answers(L05, runner):
    result = run(L05.check_runner, runner)
    assert result.passed, result.text()


@pytest.mark.parametrize("runner, words", [
    (SmallestFirst, "largest bucket first"),
    (OnePoolEach, "one shared memory pool"),
    (UnsortedReverse, "Sort the buckets"),
    (AlwaysLargest, "smallest bucket"),
    (NextPowerOfTwo, "smallest bucket"),
    (NoFallback, "eagerly"),
    (CanRunAlways, "can_run(33)"),
    (ExactOnly, "after padding"),
    (ReturnsPadded, "padded rows came back"),
    (RecapturesEachCall, "capture every bucket once"),
    (RebindsInput, "copy x into the first n rows"),
    (EagerAlways, "replay the graph"),
    (NoCounters, "self.replays"),
    (NoPoolAttribute, "self.pool"),
    (Stub, "NotImplementedError"),
])
def test_runner_rejects_wrong_answers(L05, runner, words):
    result = run(L05.check_runner, runner)
    assert not result.passed
    assert words in result.text(), result.text()
    assert "Traceback" not in result.text()


# ---------------------------------------------------------------------------------------
# check_runner_speed
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("runner", [Reference, SGLangStyle])
def test_speed_accepts_correct_answers(L05, runner):
    result = run(L05.check_runner_speed, runner)
    assert result.passed, result.text()


class SyncsAndRunsEagerToo(Reference):
    """Right results, but each call also runs the model eagerly and synchronises."""

    def __call__(self, x):
        import torch

        out = super().__call__(x)
        self.model(x)
        torch.cuda.synchronize()
        return out


class FastButWrong(Reference):
    def __call__(self, x):
        return self.static_out[: x.shape[0]]


@pytest.mark.parametrize("runner, words", [
    (RecapturesEachCall, "faster than the eager model"),
    (SyncsAndRunsEagerToo, "faster than the eager model"),
    (FastButWrong, "equals the model's"),
    (Stub, "NotImplementedError"),
])
def test_speed_rejects_wrong_answers(L05, runner, words):
    result = run(L05.check_runner_speed, runner)
    assert not result.passed
    assert words in result.text(), result.text()


def test_speed_hint_is_labelled(L05):
    result = run(L05.check_runner_speed, SyncsAndRunsEagerToo)
    assert "modelled" in result.expected


# ---------------------------------------------------------------------------------------
# choose_buckets: the reference against brute force, and the check
# ---------------------------------------------------------------------------------------
def test_reference_matches_brute_force(L05):
    rng = random.Random(11)
    for _ in range(60):
        sizes = rng.sample(range(1, 30), rng.randint(1, 9))
        traffic = {s: rng.random() + 0.01 for s in sizes}
        k = rng.randint(1, 5)
        ref = L05.choose_buckets_reference(traffic, k)
        brute = L05.brute_force_buckets(traffic, k)
        assert len(ref) <= k and max(ref) == max(traffic)
        assert math.isclose(L05.expected_padding(ref, traffic), L05.expected_padding(brute, traffic),
                            rel_tol=1e-9, abs_tol=1e-12)


def test_padding_helpers(L05):
    assert L05.bucket_for([8, 1, 4], 3) == 4
    assert L05.bucket_for([8, 1, 4], 9) is None
    assert L05.expected_padding([4, 8], {3: 1, 8: 1}) == 0.5
    assert L05.padding_fraction([4, 8], {3: 1, 8: 1}) == 1 / 12
    assert L05.expected_padding([4], {5: 1}) == math.inf
    assert math.isclose(sum(L05.TRAFFIC_MIX.values()), 1.0)
    stream = L05.sample_batches(50, seed=3, overflow=0.2)
    assert stream == L05.sample_batches(50, seed=3, overflow=0.2)
    assert any(n > 32 for n in stream) and all(n >= 1 for n in stream)


def memoised_choice(traffic, k):
    """Correct, written differently: recursion with a cache, from the top bucket down."""
    from functools import lru_cache

    sizes = tuple(sorted(traffic))
    w = tuple(float(traffic[s]) for s in sizes)

    @lru_cache(maxsize=None)
    def solve(j, c):  # serve sizes[0..j] with c buckets, the top one at sizes[j]
        here = sum(w[t] * (sizes[j] - sizes[t]) for t in range(j + 1))
        best = (here, (sizes[j],))
        if c > 1:
            for i in range(j):
                served = sum(w[t] * (sizes[j] - sizes[t]) for t in range(i + 1, j + 1))
                cost, chosen = solve(i, c - 1)
                if cost + served < best[0]:
                    best = (cost + served, chosen + (sizes[j],))
        return best

    return list(solve(len(sizes) - 1, k)[1])


def brute_choice(traffic, k):
    """Correct: try every set of at most k sizes that includes the largest."""
    sizes = sorted(traffic)
    best, best_cost = None, math.inf
    for r in range(1, min(k, len(sizes)) + 1):
        for combo in itertools.combinations(sizes[:-1], r - 1):
            cand = (*combo, sizes[-1])
            cost = sum(traffic[s] * (min(b for b in cand if b >= s) - s) for s in sizes)
            if cost < best_cost:
                best, best_cost = cand, cost
    return tuple(best)  # a tuple, in ascending order


@pytest.mark.parametrize("answer", ["reference", "memoised", "brute"])
def test_choose_accepts_correct_answers(L05, answer):
    fn = {"reference": L05.choose_buckets_reference, "memoised": memoised_choice, "brute": brute_choice}[answer]
    result = run(L05.check_choose_buckets, fn)
    assert result.passed, result.text()


def powers_of_two(traffic, k):
    top = max(traffic)
    out = [1 << i for i in range(k) if (1 << i) < top] + [top]
    return out[-k:]


def most_frequent(traffic, k):
    return sorted(sorted(traffic, key=lambda s: -traffic[s])[:k])


def most_frequent_and_largest(traffic, k):
    top = sorted(traffic, key=lambda s: -traffic[s])[: k - 1]
    return sorted(set(top) | {max(traffic)})


def too_many(traffic, k):
    return sorted(traffic)


def without_the_largest(traffic, k):
    return L05_reference(traffic, k)[:-1] or [min(traffic)]


def evenly_spaced(traffic, k):
    top = max(traffic)
    return sorted({max(1, round(top * (i + 1) / k)) for i in range(k)})


def L05_reference(traffic, k):
    from graphlab_utils.checks.lesson05 import choose_buckets_reference

    return choose_buckets_reference(traffic, k)


def floats_with_fractions(traffic, k):
    return [b + 0.5 for b in L05_reference(traffic, k)]


@pytest.mark.parametrize("answer, words", [
    (powers_of_two, "dynamic programme"),
    (most_frequent, "largest bucket that holds the largest batch"),
    (most_frequent_and_largest, "most frequent sizes are not the best buckets"),
    (too_many, "at most k="),
    (without_the_largest, "largest bucket that holds the largest batch"),
    (evenly_spaced, "expected padding"),
    (floats_with_fractions, "a list of batch sizes"),
    (lambda traffic, k: None, "a list of batch sizes"),
])
def test_choose_rejects_wrong_answers(L05, answer, words):
    result = run(L05.check_choose_buckets, answer)
    assert not result.passed
    assert words in result.text(), result.text()
    assert "Traceback" not in result.text()
