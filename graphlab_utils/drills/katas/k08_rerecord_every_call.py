"""Kata 8: a graph re-recorded for every new shape."""
from __future__ import annotations

import random

from graphlab_utils.checks import core
from graphlab_utils.checks.core import close, device, ok
from graphlab_utils.recipes import seeded_randn
from graphlab_utils.watch import watching

from . import register

SNIPPET = '''\
class GraphCache:
    """Replays one captured graph per input shape; captures a new one on a miss."""

    def __init__(self, fn):
        self.fn, self.graphs = fn, {}

    def __call__(self, x):
        key = tuple(x.shape)
        if key not in self.graphs:
            static_x = x.clone()
            graph, out = capture(lambda: self.fn(static_x))
            self.graphs[key] = (graph, static_x, out)
        graph, static_x, out = self.graphs[key]
        static_x.copy_(x)
        graph.replay()
        return out.clone()
'''
# The fix, as lab 10's solution shows it; the lab replaces what the markers enclose with a stub.
FIX = '''\
class GraphCacheFixed:
    def __init__(self, fn):
        self.fn, self.graphs = fn, {}

    def __call__(self, x):
        ### BEGIN SOLUTION pad to a power-of-two bucket, replay its graph, slice
        n = x.shape[0]
        bucket = 1 << (n - 1).bit_length()  # 1, 2, 4, ..., 64
        if bucket not in self.graphs:
            static_x = torch.zeros(bucket, x.shape[1], device=x.device, dtype=x.dtype)
            graph, out = capture(lambda: self.fn(static_x))
            self.graphs[bucket] = (graph, static_x, out)
        graph, static_x, out = self.graphs[bucket]
        static_x[:n].copy_(x)
        static_x[n:].zero_()
        graph.replay()
        return out[:n].clone()
        ### END SOLUTION
'''
HIDDEN, LAYERS, REQUESTS, MAX_LEN = 32, 8, 40, 64
MAX_GRAPHS = 8
MIN_SPEEDUP = 2.0


def _model():
    """A row-wise stack of small layers: each token's row is computed on its own."""
    import torch

    dev = device()
    weights = [seeded_randn(900 + i, HIDDEN, HIDDEN, device=dev) / 6 for i in range(LAYERS)]

    def mlp(x):
        for w in weights:
            x = torch.tanh(x @ w)
        return x

    return mlp


def _requests():
    rng = random.Random(8)
    lengths = [rng.randint(1, MAX_LEN) for _ in range(REQUESTS)]
    dev = device()
    return [seeded_randn(950 + i, n, HIDDEN, device=dev) for i, n in enumerate(lengths)]


def _serve(cache_cls, fn, requests) -> dict:
    """A fresh cache serves every request, timed (host time, device synchronised at both ends);
    captures and replays are counted on the side."""
    from graphlab_utils import timing

    holder = {}

    def serve_all():
        cache = cache_cls(fn)
        holder["outs"] = [cache(x) for x in requests]

    with watching(ops=False) as watch:
        elapsed = timing.measure_host(serve_all)
    return {"time": elapsed, "outs": holder["outs"], "captures": watch.captures, "replays": watch.replays}


def _setup():
    fn = _model()
    requests = _requests()
    fn(requests[0])  # lazy initialisation (libraries, allocator) before anything is timed
    return fn, requests


def _demo(cache_cls) -> None:
    from graphlab_utils import timing

    fn, requests = _setup()
    served = _serve(cache_cls, fn, requests)

    def eager():
        for x in requests:
            fn(x)

    t_eager = timing.measure_host(eager)
    t_graph = served["time"]
    print(f"{len(requests)} requests of {len({x.shape[0] for x in requests})} different lengths: "
          f"{served['captures']} graphs captured, {served['replays']} replays")
    print(f"serving them through the graph cache: {timing.format_ms(t_graph.ms)}; eagerly: "
          f"{timing.format_ms(t_eager.ms)} ({t_graph.label})")
    print("the graph cache is slower than eager:", t_graph.ms > t_eager.ms)


@core.check("kata 8 (rerecord-every-call)")
def check_graph_cache(cache_cls):
    """`cache_cls(fn)` serves requests of any length 1..64 through a few captured graphs; timed side
    by side with the snippet's cache on the same stream of requests."""
    from graphlab_utils import timing

    ok(isinstance(cache_cls, type), "the fixed GraphCache class", type(cache_cls).__name__,
       "pass the class itself, not an instance")
    fn, requests = _setup()
    broken = _serve(KATA.broken(), fn, requests)
    answer = _serve(cache_cls, fn, requests)
    wrong = [i for i, (o, x) in enumerate(zip(answer["outs"], requests)) if not close(o, fn(x))]
    ok(not wrong, "every request's result equal to eager (same rows, same length)",
       f"{len(wrong)} of {len(requests)} results differ from eager (the first: a request of length "
       f"{requests[wrong[0]].shape[0] if wrong else 0})",
       "pad the input up to its bucket with zeros, copy it into the bucket's static input, replay, and "
       "return the first n rows of the output (a clone)")
    ok(answer["replays"] >= len(requests), "one replay per request",
       f"{answer['replays']} replays for {len(requests)} requests", "every request must go through a captured graph")
    distinct = len({x.shape[0] for x in requests})
    ok(answer["captures"] <= MAX_GRAPHS, f"at most {MAX_GRAPHS} graphs for lengths 1..{MAX_LEN}",
       f"{answer['captures']} graphs captured for {distinct} different lengths",
       "a graph is specialised to its shapes, so keying graphs by the exact length captures anew for almost "
       "every request. Round each length up to a bucket (1, 2, 4, ..., 64), capture one graph per bucket, "
       "pad the input with zeros and slice the output.")
    speedup = timing.speedup(broken["time"], answer["time"])
    ok(speedup >= MIN_SPEEDUP,
       f"serving at least {MIN_SPEEDUP:g}x faster than the cache keyed by exact shape",
       f"{timing.format_ratio(speedup)} ({answer['time'].label})",
       "captures are expensive (warm-up, capture, instantiate); once each bucket has its graph, a request "
       "costs one copy, one replay and one slice")


KATA = register(
    "rerecord-every-call",
    snippet=SNIPPET,
    fix=FIX,
    entry="GraphCache",
    fixed_name="GraphCacheFixed",
    task=f"Write `GraphCacheFixed`, a cache with the same interface (`GraphCacheFixed(fn)`, then "
         f"`cache(x)` for `x` of shape `(n, {HIDDEN})`, any `n` from 1 to {MAX_LEN}) that captures at most "
         f"{MAX_GRAPHS} graphs and serves the requests at least {MIN_SPEEDUP:g}x faster than `GraphCache`. "
         "`fn` works row by row, so zero rows added at the end do not change the real rows.",
    hint="Round `n` up to the next power of two, keep one static input per bucket, copy `x` into its first "
         "`n` rows and zero the rest, replay, and return `out[:n].clone()`.",
    explanation=(
        "A CUDA graph is specialised to the shapes it captured, so a cache keyed by the exact shape captures "
        "a new graph for almost every new request length. Each capture pays a warm-up, the capture and the "
        "instantiation, which together cost far more than the launches a replay saves; with lengths spread "
        "over 1..64 the cache keeps capturing and serving is slower than eager, with a private pool per "
        "graph on top. Bucketing fixes it: round the length up (1, 2, 4, ..., 64), capture one graph per "
        "bucket, pad with zeros, slice the result. After at most 7 captures every request is a replay. The "
        "price is padding work, and a model must be row-wise (or masked) for padding to be harmless. "
        "torch.compile's `mode=\"reduce-overhead\"` can fall into the same trap with dynamic shapes; "
        "PyTorch warns when it keeps re-recording and has settings to skip or bound it. Lesson 05 builds the "
        "bucketed runner."),
    checker=check_graph_cache,
    demo=_demo,
)
