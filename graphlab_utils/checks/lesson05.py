"""Checks of lab 05, shape bucketing: a bucketed graph runner and the choice of its buckets.

Lesson 05 and its lab share the helpers of this module: the traffic mix both use
(:data:`TRAFFIC_MIX`), the bucket a batch pads to (:func:`bucket_for`), the padding a bucket
set costs over a traffic mix (:func:`expected_padding`, :func:`padding_fraction`), and a
stream of batch sizes drawn from a mix (:func:`sample_batches`).

The lab's answers and the checks that run them:

* :func:`check_runner` builds the learner's ``BucketRunner(model, buckets, width, device)``
  around a probe model. The probe logs every Python call of its ``forward`` (how many rows,
  inside a capture or not) and counts every real run on the device in a counter per row
  count, so a capture (which runs nothing) and each replay (which calls no Python) are seen
  apart. The check wants one capture per bucket, largest first, all in one pool (the
  runner's ``pool``), ``can_run(bs)`` true exactly up to the largest bucket, and calls that
  replay the graph of the smallest bucket that holds the batch (or run the model eagerly
  above the largest one), give eager PyTorch's result for the real rows only, and keep the
  runner's ``replays`` / ``eager_calls`` counters right.
* :func:`check_runner_speed` is a timing check: the learner's runner on a batch of 5 against
  the eager model, side by side in one run (modelled on the simulator); it must be at least
  :data:`MIN_SPEEDUP` times faster.
* :func:`check_choose_buckets` feeds the learner's ``choose_buckets(traffic, k)`` traffic
  mixes and compares the padding of its answer with the optimum: a brute force over every
  bucket set on small mixes, the dynamic programme :func:`choose_buckets_reference` on the
  lesson's 32-size mix.

No check compares against an absolute time.
"""
from __future__ import annotations

import bisect
import itertools
import math
import random

from graphlab_utils.recipes import close, error_line, plural, seeded_randn

from .core import check, fail, ok, ok_bucket_captures, ok_faster, ok_one_shared_pool
from .core import device as _device

__all__ = [
    "DEFAULT_BUCKETS",
    "MIN_SPEEDUP",
    "TRAFFIC_MIX",
    "bucket_for",
    "expected_padding",
    "padding_fraction",
    "sample_batches",
    "choose_buckets_reference",
    "brute_force_buckets",
    "check_runner",
    "check_runner_speed",
    "check_choose_buckets",
]

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32)  # the lesson's buckets: powers of two up to 32
MIN_SPEEDUP = 1.2  # the runner at batch 5 vs the eager model (the lesson's runner: about 3x)
RTOL, ATOL = 1e-4, 1e-5
_SLOTS = 128  # the probe's counters: one per row count up to 126, the last for anything above


# ---------------------------------------------------------------------------------------
# Traffic and padding (shared by lesson 05 and its lab)
# ---------------------------------------------------------------------------------------
def _traffic_mix() -> dict:
    """Live decode batch sizes 1..32 of a made-up server: quiet hours (mostly 1-4 sequences)
    and busy hours (around 22). Probabilities, summing to 1."""
    weights = {}
    for bs in range(1, 33):
        quiet = math.exp(-(bs - 1) / 2.5)
        busy = math.exp(-(((bs - 22) / 5.0) ** 2))
        weights[bs] = quiet + 0.9 * busy
    total = sum(weights.values())
    return {bs: w / total for bs, w in weights.items()}


TRAFFIC_MIX = _traffic_mix()


def bucket_for(buckets, bs: int):
    """The smallest bucket that holds a batch of ``bs`` rows, or None when none does."""
    ordered = sorted(buckets)
    i = bisect.bisect_left(ordered, bs)
    return ordered[i] if i < len(ordered) else None


def expected_padding(buckets, traffic: dict) -> float:
    """Padded rows per batch, on average over ``traffic`` ({batch size: weight}; weights
    need not sum to 1). ``inf`` when a batch size of the mix is larger than every bucket."""
    total = sum(traffic.values())
    rows = 0.0
    for bs, weight in traffic.items():
        b = bucket_for(buckets, bs)
        if b is None:
            return math.inf
        rows += weight * (b - bs)
    return rows / total


def padding_fraction(buckets, traffic: dict) -> float:
    """The share of the rows the graphs compute that are padding, over ``traffic``."""
    computed = 0.0
    padded = 0.0
    for bs, weight in traffic.items():
        b = bucket_for(buckets, bs)
        if b is None:
            return math.inf
        computed += weight * b
        padded += weight * (b - bs)
    return padded / computed


def sample_batches(n: int, seed: int = 0, traffic: dict | None = None, overflow: float = 0.0,
                   overflow_sizes=(33, 40, 48, 64)) -> list:
    """``n`` batch sizes drawn from ``traffic`` (default :data:`TRAFFIC_MIX`) with Python's own
    seeded generator (the same on every machine); a share ``overflow`` of them is drawn from
    ``overflow_sizes`` instead: batches larger than the buckets."""
    traffic = TRAFFIC_MIX if traffic is None else traffic
    rng = random.Random(seed)
    sizes, weights = list(traffic), list(traffic.values())
    out = []
    for _ in range(n):
        if overflow and rng.random() < overflow:
            out.append(rng.choice(list(overflow_sizes)))
        else:
            out.append(rng.choices(sizes, weights)[0])
    return out


def _sorted_mix(traffic: dict):
    sizes = sorted(traffic)
    return sizes, [traffic[s] for s in sizes]


def choose_buckets_reference(traffic: dict, k: int) -> list:
    """At most ``k`` buckets that minimise :func:`expected_padding` over ``traffic``.

    A dynamic programme over the sorted sizes s_1 < ... < s_m. An optimal bucket sits at a
    size of the mix (lowering it to the largest size it serves only removes padding), the
    largest at s_m, and each bucket serves a run of consecutive sizes. ``best[c][j]``, the
    least padding that serves s_1..s_j with c buckets, the last at s_j, is
    ``min over i < j of best[c-1][i] + pad(i+1..j -> s_j)``.
    """
    sizes, weights = _sorted_mix(traffic)
    m = len(sizes)
    k = max(1, min(int(k), m))
    w_sum = [0.0]
    ws_sum = [0.0]
    for s, w in zip(sizes, weights):
        w_sum.append(w_sum[-1] + w)
        ws_sum.append(ws_sum[-1] + w * s)

    def pad(i, j):  # sizes i..j (0-based, inclusive) padded to sizes[j]
        return sizes[j] * (w_sum[j + 1] - w_sum[i]) - (ws_sum[j + 1] - ws_sum[i])

    best = [[math.inf] * m for _ in range(k + 1)]
    prev = [[None] * m for _ in range(k + 1)]
    for j in range(m):
        best[1][j] = pad(0, j)
    for c in range(2, k + 1):
        for j in range(m):
            for i in range(j):
                v = best[c - 1][i] + pad(i + 1, j)
                if v < best[c][j]:
                    best[c][j], prev[c][j] = v, i
    c = min(range(1, k + 1), key=lambda c: (best[c][m - 1], c))
    out, j = [], m - 1
    while j is not None:
        out.append(sizes[j])
        j, c = prev[c][j], c - 1
    return sorted(out)


def brute_force_buckets(traffic: dict, k: int) -> list:
    """The optimum by trying every set of at most ``k`` sizes of the mix that includes the
    largest (small mixes only)."""
    sizes, _ = _sorted_mix(traffic)
    top, rest = sizes[-1], sizes[:-1]
    best, best_cost = [top], expected_padding([top], traffic)
    for r in range(1, min(int(k), len(sizes))):
        for combo in itertools.combinations(rest, r):
            cand = [*combo, top]
            cost = expected_padding(cand, traffic)
            if cost < best_cost - 1e-12:
                best, best_cost = cand, cost
    return sorted(best)


# ---------------------------------------------------------------------------------------
# Helpers of the runner checks
# ---------------------------------------------------------------------------------------
def _linear(n_in: int, n_out: int, gen):
    import torch

    lin = torch.nn.Linear(n_in, n_out)
    bound = 1.0 / n_in ** 0.5
    with torch.no_grad():
        lin.weight.copy_(torch.empty(n_out, n_in).uniform_(-bound, bound, generator=gen))
        lin.bias.copy_(torch.empty(n_out).uniform_(-bound, bound, generator=gen))
    return lin


def mlp(width: int = 256, layers: int = 3, out_width: int | None = None, seed: int = 0):
    """The lesson's model: ``layers`` Linear layers with ReLU between them, for inference
    (no gradients), on the session's device."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out_width = width if out_width is None else out_width
    blocks = []
    for i in range(layers):
        blocks.append(_linear(width, out_width if i == layers - 1 else width, gen))
        if i < layers - 1:
            blocks.append(torch.nn.ReLU())
    return torch.nn.Sequential(*blocks).to(_device()).eval().requires_grad_(False)


def _make_probe(width: int, out_width: int, seed: int):
    """A small model that tells the check how the runner used it (see the module docstring)."""
    import torch

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            gen = torch.Generator().manual_seed(seed)
            self.net = torch.nn.Sequential(
                _linear(width, width, gen), torch.nn.ReLU(), _linear(width, out_width, gen),
            ).to(_device()).eval().requires_grad_(False)
            self.runs = torch.zeros(_SLOTS, device=_device())
            self.log: list = []  # (rows, inside a capture)

        def forward(self, x):
            rows = int(x.shape[0])
            self.log.append((rows, bool(torch.cuda.is_current_stream_capturing())))
            self.runs[min(rows, _SLOTS - 1)].add_(1)  # a kernel: runs at every replay
            return self.net(x)

    return Probe()


def _counts(probe) -> list:
    import torch

    torch.cuda.synchronize()
    return [int(round(v)) for v in probe.runs.tolist()]


def _counter(runner, name: str) -> int:
    value = getattr(runner, name, None)
    ok(isinstance(value, int) and not isinstance(value, bool),
       f"runner.{name}: an int counter",
       f"runner.{name} is {type(value).__name__ if value is not None else 'missing'}",
       "count in __init__ (self.replays = self.eager_calls = 0) and add one per call: a server "
       "watches these to see how often traffic falls outside its graphs")
    return value


def _check_one_runner(Runner, buckets, calls, seed: int) -> None:
    import torch

    device = _device()
    width, out_width = 128, 256  # the output is wider than the input: take its width from the model
    probe = _make_probe(width, out_width, seed)
    expected_order = sorted(set(buckets), reverse=True)
    largest = expected_order[0]
    runner = Runner(probe, list(buckets), width, device)
    where = f"buckets {list(buckets)}"

    # -- the captures ---------------------------------------------------------------------
    ok_bucket_captures(
        probe.log, buckets, "the model",
        "capture one graph per bucket: inside `with torch.cuda.graph(g, pool=...)`, run the model on a "
        "prefix view static_in[:bs] of the static input, so the graph is built for bs rows",
        "capture the largest bucket first (SGLang iterates reversed(capture_bs)): its intermediates are "
        "freed into the shared pool at the end of its capture, and every smaller graph then fits in those "
        "blocks. Smallest first, a freed small block cannot hold a bigger graph's tensors and the pool grows. "
        "Sort the buckets: they may come in any order", where=where)

    # -- graphs and pool ------------------------------------------------------------------
    graphs = getattr(runner, "graphs", None)
    ok(isinstance(graphs, dict) and set(graphs) == set(expected_order),
       f"runner.graphs: a dict {{batch size: CUDAGraph}} with the keys {sorted(expected_order)}",
       f"{type(graphs).__name__ if graphs is not None else 'no runner.graphs'}"
       + (f" with the keys {sorted(graphs)}" if isinstance(graphs, dict) else ""),
       "keep each captured graph under its bucket: self.graphs[bs] = g")
    ok(all(isinstance(g, torch.cuda.CUDAGraph) for g in graphs.values()),
       "runner.graphs holds torch.cuda.CUDAGraph objects",
       f"{sorted({type(g).__name__ for g in graphs.values()})}",
       "store the CUDAGraph you captured into, not its output")
    ok_one_shared_pool(
        runner, graphs, f"{where}: every graph in one shared memory pool",
        "create one handle with torch.cuda.graph_pool_handle() and pass it as pool= to every "
        "torch.cuda.graph(...): graphs that never run at the same time can share their intermediates' memory",
        "keep the handle in self.pool (the value of torch.cuda.graph_pool_handle(), or of the first "
        "graph's .pool() if you pass that to the others)")

    # -- can_run ------------------------------------------------------------------------
    for bs in sorted({1, max(1, largest // 2 + 1), largest, largest + 1, 2 * largest}):
        want = bs <= largest
        got = runner.can_run(bs)
        if bool(got) != want:
            fail(f"can_run({bs}) is {want}: a graph serves any batch up to the largest bucket ({largest}), padded",
                 f"can_run({bs}) returned {got!r}",
                 "can_run(bs) answers whether a graph can take the batch after padding: bs <= the largest "
                 "bucket. It is not only for exact bucket sizes: those are padded up")

    # -- the calls ----------------------------------------------------------------------
    replays0 = _counter(runner, "replays")
    eager0 = _counter(runner, "eager_calls")
    replays = eager = 0
    for i, n in enumerate(calls):
        x = seeded_randn(seed * 1000 + i, n, width, device=_device())
        reference = probe.net(x)
        log_at = len(probe.log)
        before = _counts(probe)
        try:
            out = runner(x)
        except RuntimeError as exc:
            if n > largest:
                fail(f"a batch of {n} (> the largest bucket {largest}) runs the model eagerly",
                     error_line(exc),
                     "no graph holds more rows than its bucket: when can_run(n) is False, call the model "
                     "on x directly (SGLang falls back to the eager forward)")
            raise
        after = _counts(probe)
        new_calls = probe.log[log_at:]
        ran = {slot: a - b for slot, (a, b) in enumerate(zip(after, before)) if a != b}
        what = f"call {i + 1}, a batch of {n}"
        ok(not any(capturing for _, capturing in new_calls),
           f"{what}: no capture at call time",
           "the model was captured again during the call",
           "capture every bucket once, in __init__; a call only copies the input in, replays and slices "
           "(a capture costs far more than it saves: lesson 01)")
        eager_rows = [rows for rows, _ in new_calls]
        if n <= largest:
            b = bucket_for(expected_order, n)
            ok(not eager_rows,
               f"{what}: the graph of bucket {b} replayed, the model not called from Python",
               f"the model ran eagerly on {eager_rows} rows",
               "when can_run(n), copy x into the static input and replay the graph: that is the point "
               "of the runner")
            ok(ran,
               f"{what}: the graph of bucket {b} replayed once",
               "no graph ran",
               "call graph.replay() on self.graphs[bucket]")
            if set(ran) != {b}:
                seen = ", ".join(f"bucket {s}" for s in sorted(ran))
                fail(f"{what}: the graph of bucket {b}, the smallest bucket that holds {n} rows",
                     f"the graph of {seen} ran",
                     "pad to the smallest bucket >= n: with sorted buckets, "
                     "buckets[bisect.bisect_left(buckets, n)]. A larger graph computes more padding rows "
                     "for nothing")
            ok(ran[b] == 1,
               f"{what}: the graph of bucket {b} replayed once",
               f"it ran {plural(ran[b], 'time')}",
               "replay once per call: each replay costs a launch and overwrites the output")
            replays += 1
        else:
            ok(not (set(ran) - {min(n, _SLOTS - 1)}),
               f"{what}: no graph replayed (the batch is larger than every bucket)",
               "the graph of " + ", ".join(f"bucket {s}" for s in sorted(set(ran) - {min(n, _SLOTS - 1)}))
               + " ran",
               "above the largest bucket no graph can hold the batch: run the model eagerly")
            ok(eager_rows == [n],
               f"{what}: one eager call of the model on the {n} rows",
               f"the model was called from Python on {eager_rows or 'no'} rows",
               "when can_run(n) is False, return self.model(x): the eager fallback")
            eager += 1
        ok(isinstance(out, torch.Tensor),
           f"{what}: a tensor of {n} rows",
           f"{type(out).__name__}",
           "return the real rows of the output")
        if out.shape != reference.shape:
            idea = "return the first n rows of the graph's output: static_out[:n]"
            if n <= largest and out.dim() == 2 and out.shape[0] == bucket_for(expected_order, n):
                idea = ("the padded rows came back too: slice the real rows, static_out[:n]; the padding "
                        "rows hold results for whatever sat in the static input")
            fail(f"{what}: a tensor of shape {tuple(reference.shape)}", f"shape {tuple(out.shape)}", idea)
        ok(close(out, reference),
           f"{what}: the model's result for x",
           "other values",
           "copy x into the first n rows of the static input the graph reads (static_in[:n].copy_(x)), "
           "replay, and return the first n rows of the output the graph writes. Rebinding a name, or a "
           "static input the graph does not read, leaves the graph on old data (lesson 04)")

    ok(_counter(runner, "replays") - replays0 == replays,
       f"runner.replays grew by {replays} over these calls",
       f"it grew by {_counter(runner, 'replays') - replays0}",
       "add one to self.replays for each replay")
    ok(_counter(runner, "eager_calls") - eager0 == eager,
       f"runner.eager_calls grew by {eager} over these calls",
       f"it grew by {_counter(runner, 'eager_calls') - eager0}",
       "add one to self.eager_calls for each eager fallback")


# ---------------------------------------------------------------------------------------
# Exercise 1: the runner
# ---------------------------------------------------------------------------------------
_CALLS_A = (5, 1, 32, 17, 3, 40, 8, 33, 2, 64, 16, 9, 5)
_CALLS_B = (2, 12, 7, 1, 13, 4, 6, 30, 3)


@check("bucketed graph runner")
def check_runner(Runner):
    """``Runner(model, buckets, width, device)`` with ``can_run(bs)``, ``__call__(x)``,
    ``graphs``, ``pool``, ``replays`` and ``eager_calls``."""
    _check_one_runner(Runner, DEFAULT_BUCKETS, _CALLS_A, seed=1)
    _check_one_runner(Runner, (12, 3, 1, 6), _CALLS_B, seed=2)  # any order, not powers of two


@check("runner speed")
def check_runner_speed(Runner):
    """The runner at batch 5 at least MIN_SPEEDUP times faster than the eager model."""
    from graphlab_utils import timing

    width = 256
    model = mlp(width)
    runner = Runner(model, list(DEFAULT_BUCKETS), width, _device())
    x = seeded_randn(7, 5, width, device=_device())
    out = runner(x)
    ok(close(out, model(x)),
       "the runner's result for a batch of 5 equals the model's",
       "other values",
       "make check_runner pass first")
    graphed = timing.measure(lambda: runner(x))
    eager = timing.measure(lambda: model(x))
    ok_faster(graphed, eager, MIN_SPEEDUP, f"the runner at least {MIN_SPEEDUP}x faster than the eager model at batch 5",
              "a call should cost one copy into the static input and one replay: no capture, no "
              "synchronize, no eager run of the model, no extra kernels per call", name="runner")


# ---------------------------------------------------------------------------------------
# Exercise 2: choose the buckets
# ---------------------------------------------------------------------------------------
def _random_mixes(seed: int, count: int):
    rng = random.Random(seed)
    for n in range(count):
        m = rng.randint(4, 9)
        sizes = rng.sample(range(1, 25), m)
        traffic = {s: rng.randint(1, 9) for s in sizes}
        yield f"a random mix of {m} sizes (#{n + 1})", traffic, rng.randint(1, 4)


def _as_buckets(got):
    """The learner's answer as a sorted list of distinct positive ints, or a reason it is not one."""
    if isinstance(got, (str, bytes)) or not hasattr(got, "__iter__"):
        return None, f"{type(got).__name__}"
    items = list(got)
    out = []
    for b in items:
        if isinstance(b, bool):
            return None, f"{items!r}"
        try:
            v = int(b)
        except (TypeError, ValueError):
            return None, f"{items!r}"
        if v != b or v < 1:
            return None, f"{items!r}"
        out.append(v)
    return sorted(set(out)), None


def _top_k(traffic, k):
    return sorted(sorted(traffic, key=lambda s: -traffic[s])[:k])


@check("choose buckets")
def check_choose_buckets(choose_buckets):
    """``choose_buckets(traffic, k)``: at most k buckets, the largest holding the largest batch,
    with the least expected padding."""
    cases = [
        ("the lesson's traffic mix, k=6", TRAFFIC_MIX, 6),
        ("the lesson's traffic mix, k=3", TRAFFIC_MIX, 3),
        ("one bucket", {1: 0.5, 4: 0.25, 9: 0.25}, 1),
        ("more buckets allowed than sizes", {2: 1.0, 5: 1.0, 7: 3.0}, 5),
        ("counts instead of probabilities, keys out of order", {12: 4, 3: 10, 5: 1, 8: 6, 1: 2}, 2),
        ("gaps between the sizes", {1: 0.3, 7: 0.2, 30: 0.4, 31: 0.1}, 2),
        *_random_mixes(5, 6),
    ]
    for name, traffic, k in cases:
        got = choose_buckets(dict(traffic), k)
        buckets, bad = _as_buckets(got)
        ok(bad is None,
           f"{name}: a list of batch sizes (positive ints)",
           bad or "",
           "return the buckets as a list of ints, for example [4, 16, 32]")
        ok(len(buckets) <= k,
           f"{name}: at most k={k} buckets",
           f"{plural(len(buckets), 'bucket')}: {buckets}",
           "each bucket is a graph to capture and keep in memory: k is the budget")
        top = max(traffic)
        ok(max(buckets) >= top,
           f"{name}: a largest bucket that holds the largest batch of the mix ({top})",
           f"{buckets}",
           "a batch larger than every bucket falls back to eager; here every size of the mix must get "
           "a graph, so the largest bucket is the largest size")
        best = brute_force_buckets(traffic, k) if len(traffic) <= 10 else choose_buckets_reference(traffic, k)
        cost, best_cost = expected_padding(buckets, traffic), expected_padding(best, traffic)
        if cost <= best_cost + 1e-9 * max(1.0, best_cost):
            continue
        base = ("minimise the expected padding, sum over sizes of weight x (bucket - size) / total weight. "
                "An optimal bucket sits at a size of the mix and serves a run of consecutive sizes; a "
                "dynamic programme over the sorted sizes finds it: best[c][j] = min over i < j of "
                "best[c-1][i] + padding of sizes i+1..j padded to size j")
        idea = base
        if buckets == _top_k(traffic, k) or buckets == sorted(set(_top_k(traffic, k - 1)) | {top}):
            idea = ("the most frequent sizes are not the best buckets: a bucket serves every size between "
                    "the bucket below it and itself, so where the buckets sit decides how far each size is "
                    "padded. " + base[0].upper() + base[1:])
        elif len(buckets) < min(k, len(traffic)):
            idea = "use all k buckets you may: one more bucket never adds padding. " + base[0].upper() + base[1:]
        fail(f"{name}: expected padding {best_cost:.4g} rows per batch (for example {best})",
             f"{buckets}: {cost:.4g} rows per batch",
             idea)
