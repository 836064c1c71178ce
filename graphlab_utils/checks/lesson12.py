"""Checks of lab 12, torch.compile's CUDA graphs and piecewise graphs; and the lesson's watcher.

Lesson 12 and its lab share :func:`watch_trees`: what CUDAGraph Trees (the CUDA graphs of
``torch.compile(mode="reduce-overhead")``) did while a block ran. On a GPU it wraps the three
steps of PyTorch's ``CUDAGraphTreeManager`` (``run_eager``: a warm-up; ``record_function``: a
recording; ``execute_node``: a replay) and listens to PyTorch's ``cudagraphs`` logger, where
the "skipping cudagraphs due to ..." reasons and the dynamic-shape warning go. Under the
simulator the same names belong to the simulator's model of the tree
(:mod:`graphlab_utils.simulator.compile`), and its skip reasons go to the same logger with
PyTorch's own words. While the block runs, those messages are collected instead of printed.

The lab's answers and the checks that run them:

* :func:`check_keep_outputs` gives the learner's ``run_all(step, inputs)`` a step compiled
  with ``mode="reduce-overhead"`` and six inputs; every output it returns must still hold the
  result of its own input afterwards (a later call reuses the memory of an earlier output),
  and the step's graphs must have replayed.
* :func:`check_bucketed_compile` runs the learner's ``make_bucketed(fn, buckets)`` on a stream
  of batch sizes: every result must equal eager PyTorch on the real rows, and the tree may
  record at most one graph per bucket.
* :func:`check_piecewise_runner` builds the learner's ``PiecewiseRunner(model, cache, buckets)``
  around :class:`graphlab_utils.piecewise.TinyDecoder`: one capture per piece and bucket, then
  decode and mixed batches, each with one replay per piece, attention in between, and logits
  and KV cache equal to eager PyTorch's.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from graphlab_utils import backend, piecewise, watch
from graphlab_utils.recipes import close, describe, plural, seeded_randn

from .core import check, fail, ok
from .core import device as _device

__all__ = [
    "TreeWatch",
    "watch_trees",
    "reason",
    "OVERWRITTEN",
    "check_keep_outputs",
    "check_bucketed_compile",
    "check_piecewise_runner",
    "STEP_WIDTH",
    "step_fn",
]

OVERWRITTEN = "accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run"
_LOGGERS = ("torch._inductor.cudagraph_utils.__cudagraphs", "torch._inductor.cudagraph_trees.__cudagraphs")
_STEPS = {"run_eager": None, "record_function": "record", "execute_node": "replay"}


# ---------------------------------------------------------------------------------------
# The watcher
# ---------------------------------------------------------------------------------------
def reason(message: str) -> str:
    """A logged message without its stack trace: its first line, up to 'Found from'."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    return first.split(". Found from")[0].rstrip(" .:") if "Found from" in first else first.rstrip()


@dataclass
class TreeWatch:
    """What the tree did inside :func:`watch_trees`.

    ``events``: one entry per step of the tree, in order: ``"warm-up"`` (a function's first,
    eager run), ``"eager"`` (an eager run of a function already warm, while its path warms up),
    ``"record"``, ``"replay"``. ``labels``: one per call made through :meth:`call`, the steps
    of that call joined with ``" + "``, or ``"eager"`` when the tree never saw it (a skipped
    function). ``skips``: the skip reasons logged (:func:`reason` of each message), ``logged``:
    every message of the ``cudagraphs`` logger, whole.
    """

    events: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    skips: list = field(default_factory=list)
    logged: list = field(default_factory=list)

    def call(self, fn: Callable, *args, **kwargs):
        """Call ``fn`` and note in ``labels`` what the tree did for this call."""
        before = len(self.events)
        out = fn(*args, **kwargs)
        self.labels.append(" + ".join(self.events[before:]) or "eager")
        return out

    def count(self, step: str) -> int:
        return sum(1 for e in self.events if e == step)

    def __str__(self) -> str:
        parts = [plural(self.count("warm-up"), "warm-up"), plural(self.count("record"), "recording"),
                 plural(self.count("replay"), "replay")]
        return ", ".join(parts) + (f", {plural(len(self.skips), 'skip')}" if self.skips else "")


def _manager_class():
    """PyTorch's CUDAGraphTreeManager on a GPU; the simulator's model of it otherwise."""
    if backend.is_simulated():
        from graphlab_utils.simulator import compile as simulated

        return simulated.TreeManager
    from torch._inductor import cudagraph_trees

    return cudagraph_trees.CUDAGraphTreeManager


class _Collect(logging.Handler):
    def __init__(self, seen: TreeWatch):
        super().__init__(level=logging.DEBUG)
        self.seen = seen

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.seen.logged.append(message)
        if message.startswith(("skipping cudagraphs", "skipping cudagraph ")):
            self.seen.skips.append(reason(message))


@contextlib.contextmanager
def watch_trees() -> Iterator[TreeWatch]:
    """Watch CUDAGraph Trees while the block runs (see the module's docstring); yields a :class:`TreeWatch`.

    The ``cudagraphs`` logger's messages are collected, not printed, while the block runs;
    everything is put back on the way out, also after an exception.
    """
    seen = TreeWatch()
    cls = _manager_class()
    saved = {name: cls.__dict__[name] for name in _STEPS}

    def wrap(name, original):
        def step(self, *args, **kwargs):
            label = _STEPS[name]
            if label is None:  # run_eager(new_inputs, function_id)
                function_id = args[1] if len(args) > 1 else kwargs.get("function_id")
                label = "eager" if function_id in self.warmed_up_functions else "warm-up"
            seen.events.append(label)
            return original(self, *args, **kwargs)

        step.__doc__ = original.__doc__
        return step

    handler = _Collect(seen)
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    kept = [(lg, lg.propagate, list(lg.handlers)) for lg in loggers]
    try:
        for name, original in saved.items():
            setattr(cls, name, wrap(name, original))
        for lg in loggers:
            lg.handlers = [handler]
            lg.propagate = False
        yield seen
    finally:
        for name, original in saved.items():
            setattr(cls, name, original)
        for lg, propagate, handlers in kept:
            lg.handlers = handlers
            lg.propagate = propagate


# ---------------------------------------------------------------------------------------
# The probe step the checks compile
# ---------------------------------------------------------------------------------------
STEP_WIDTH = 32
_WEIGHTS: dict = {}


def _weight(device) -> torch.Tensor:
    key = str(device)
    if key not in _WEIGHTS:
        _WEIGHTS[key] = seeded_randn(1212, STEP_WIDTH, STEP_WIDTH, device=device) / STEP_WIDTH ** 0.5
    return _WEIGHTS[key]


def step_fn(x: torch.Tensor) -> torch.Tensor:
    """A row-wise step (each output row depends on its input row alone): ``tanh(x @ W) + 1``."""
    return torch.tanh(x @ _weight(x.device)) + 1


def _inputs(n: int, rows: int, seed: int, device) -> list:
    return [seeded_randn(seed + i, rows, STEP_WIDTH, device=device) for i in range(n)]


# ---------------------------------------------------------------------------------------
# Exercise 1: keep every output
# ---------------------------------------------------------------------------------------
@check("keep every output")
def check_keep_outputs(run_all: Callable) -> None:
    """``run_all(step, inputs)`` returns one output per input, each still right after all calls."""
    dev = _device()
    inputs = _inputs(6, 8, seed=120, device=dev)
    expected = [step_fn(x) for x in inputs]
    torch.compiler.reset()  # a fresh tree: what earlier cells compiled or marked does not count
    step = torch.compile(step_fn, mode="reduce-overhead")
    with watch_trees() as seen:
        result = run_all(step, inputs)
    ok(isinstance(result, (list, tuple)) and len(result) == len(inputs),
       f"a list of {len(inputs)} outputs, one per input",
       describe(result) if not isinstance(result, (list, tuple)) else f"a list of {len(result)}",
       "call the compiled step once per input and return what each call gave, in order")
    ok(seen.count("replay") >= 1, "the compiled step you were given, called for every input (its graphs replay)",
       f"the tree saw {seen}", "call `step(x)`, the compiled function, not an eager copy of it")
    for i, (got, want) in enumerate(zip(result, expected)):
        try:
            right = close(got, want)
        except RuntimeError as exc:
            if OVERWRITTEN not in str(exc):
                raise
            fail(f"output {i + 1} readable after all {len(inputs)} calls",
                 f"reading output {i + 1} raised RuntimeError: Error: {OVERWRITTEN}",
                 "every call of a compiled function starts a new generation, and the tree frees the memory "
                 "of the previous warm-up or recording for it: clone() each output before the next call")
        if not right:
            same_as = [j + 1 for j, other in enumerate(expected) if j != i and close(got, other)]
            seen_text = (f"output {i + 1} holds the result of call {same_as[-1]}" if same_as
                         else f"output {i + 1} differs from the step applied to input {i + 1}")
            fail(f"output {i + 1} equal to the step applied to input {i + 1}", seen_text,
                 "a replay writes into the same output tensors every time, so a kept output shows the last "
                 "call's result: clone() each output before the next call")


# ---------------------------------------------------------------------------------------
# Exercise 2: a bucketed compiled step
# ---------------------------------------------------------------------------------------
BUCKETS = (4, 8, 16)
STREAM = (3, 5, 8, 2, 16, 11, 7, 4, 13, 1, 9, 6, 15, 12)


@check("bucketed compile")
def check_bucketed_compile(make_bucketed: Callable) -> None:
    """``make_bucketed(fn, buckets)`` serves any batch up to the largest bucket with one recording per bucket."""
    dev = _device()
    torch.compiler.reset()  # a fresh tree: what earlier cells compiled or marked does not count
    with watch_trees() as seen:
        serve = make_bucketed(step_fn, list(BUCKETS))
        ok(callable(serve), "a function that takes a batch", describe(serve),
           "return the function that pads, calls the compiled step and slices")
        for i, n in enumerate(STREAM):
            x = seeded_randn(300 + i, n, STEP_WIDTH, device=dev)
            y = serve(x)
            ok(isinstance(y, torch.Tensor) and tuple(y.shape) == (n, STEP_WIDTH),
               f"a result of shape ({n}, {STEP_WIDTH}) for a batch of {n}", describe(y),
               "slice the padded result back to the batch's own rows")
            ok(close(y, step_fn(x)), f"the batch of {n} rows equal to eager PyTorch",
               "different rows", "copy the batch into the first rows of the padded input and keep the first "
               "rows of the output")
    sizes = ", ".join(str(n) for n in STREAM)
    for event, most, counted in (("warm-up", "input shapes reaching the compiled step", "shape"),
                                 ("record", "recordings", "recording")):
        n = seen.count(event)
        ok(n <= len(BUCKETS), f"at most {len(BUCKETS)} {most} (one per bucket) for batches of {sizes}",
           f"{plural(n, counted)}{' warmed up' if event == 'warm-up' else ''} ({seen})",
           "reduce-overhead warms up and records a graph for every new input shape: pad each batch up to its "
           "bucket, so that only the bucket sizes ever reach the compiled function (and compile it with "
           "dynamic=False)")
    ok(seen.count("replay") >= len(STREAM) - 2 * len(BUCKETS),
       "the compiled step's graphs replaying for most batches", f"the tree saw {seen}",
       "compile the step once with torch.compile(fn, mode=\"reduce-overhead\", dynamic=False) and call it "
       "for every batch")


# ---------------------------------------------------------------------------------------
# Exercise 3: a piecewise runner
# ---------------------------------------------------------------------------------------
RUNNER_BUCKETS = (8, 32)


def _batches(dev) -> list:
    return [
        ("a decode batch of 3 requests", piecewise.decode_batch([5, 17, 40], dev, seed=1)),
        ("a mixed batch (2 decode tokens and a prompt of 12)", piecewise.mixed_batch([9, 3], [12], dev, seed=2)),
        ("a decode batch of 8 requests", piecewise.decode_batch([30, 2, 64, 11, 7, 90, 50, 1], dev, seed=3)),
        ("a prompt of 30 tokens", piecewise.prefill_batch([30], dev, seed=4, first_slot=5)),
        ("a decode batch of 3 requests, longer", piecewise.decode_batch([6, 18, 100], dev, seed=5)),
    ]


@check("piecewise runner")
def check_piecewise_runner(runner_cls: Callable) -> None:
    """A runner that replays the pieces between attention calls and runs attention eagerly in between."""
    dev = _device()
    model = piecewise.TinyDecoder(dev)
    cfg = model.cfg
    pieces = cfg.layers + 1
    cache = piecewise.KVCache(cfg, dev)
    cache.fill()
    reference = cache.clone()
    with watch.count_graph_calls() as built:
        runner = runner_cls(model, cache, list(RUNNER_BUCKETS))
    want = pieces * len(RUNNER_BUCKETS)
    ok(built.captures == want, f"{want} captures: {pieces} pieces for each of {len(RUNNER_BUCKETS)} buckets",
       f"{plural(built.captures, 'capture')}",
       "capture every piece of model.pieces() once per bucket in __init__ (attention stays outside the graphs)")
    for what, batch in _batches(dev):
        expected = model.forward(batch, reference)
        with watch.count_graph_calls() as calls:
            got = runner(batch)
        ok(calls.captures == 0 and calls.replays == pieces,
           f"{pieces} replays (one per piece) and no capture for {what}", str(calls),
           "replay the captured pieces of the batch's bucket, and run only attention eagerly between them")
        ok(isinstance(got, torch.Tensor) and tuple(got.shape) == (batch.num_tokens, cfg.vocab),
           f"logits of shape ({batch.num_tokens}, {cfg.vocab}) for {what}", describe(got),
           "return the last piece's output for the batch's own tokens: slice off the padding")
        real = slice(0, cfg.slots)

        def same_cache(layers) -> bool:
            return close(cache.k[layers, real], reference.k[layers, real]) and \
                close(cache.v[layers, real], reference.v[layers, real])

        # Layer 0's keys and values depend on the tokens alone: a difference there is padding's doing.
        ok(same_cache(0), f"layer 0's KV cache of the requests' slots equal to eager PyTorch's after {what}",
           "different keys or values in the requests' slots",
           "run attention on the batch's real tokens only (or send padding tokens to the scratch slot, "
           "cache.scratch_slot), so that padding never writes into a request's cache")
        ok(close(got, expected), f"logits equal to eager PyTorch for {what}", "different logits",
           "the piece after an attention call reads the attention output at the address it was captured "
           "with: attention must write into that static buffer (attention(..., out=...)), with this batch's "
           "slots, positions and kv_len")
        ok(same_cache(slice(None)), f"the KV cache of every layer equal to eager PyTorch's after {what}",
           "different keys or values in a later layer",
           "run every layer's attention with this batch's slots, positions and kv_len")
