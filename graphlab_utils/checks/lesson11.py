"""Checks of lab 11, the decode engine's graph runner, built piece by piece.

The lab runs the lesson's engine (``graphlab_utils.decode``) at :data:`LAB_CONFIG` (the
simulator's size, on both backends, so that the checks stay quick); :func:`lab_model` builds
the model, :func:`lab_requests` the mixed batch of requests, :func:`lab_runner` a runner whose
graphs are captured (or not yet, ``capture=False``) but whose call path is left to the learner.
The learner writes:

* ``pad_rows(static, start, stop)``, checked by :func:`check_padding`: rows ``start..stop`` of
  a ``decode.StaticInputs`` made safe padding. The check fills the buffers with a real batch,
  pads, and reads every field back: the real rows untouched, each padding row's output slot
  the scratch slot, its token, position, sequence length and table entries valid. Then a
  runner padding with it serves the mixed batch, and its tokens must equal the eager engine's.
* ``replay(runner, batch)``, checked by :func:`check_replay`: the runner's call path. Above the
  largest bucket, the eager model; else the smallest bucket that holds the batch, the batch
  ``copy_``-ed into the static inputs, the padding rows padded, the bucket's graph replayed,
  and a clone of the real rows of its output returned. The check serves the mixed batch
  through it and watches which graph replayed, whether the static inputs kept their
  addresses, whether the padding rows were padded, and whether a result survives the next
  call. :func:`check_replay_speed` times it against the eager step at batch 1, side by side
  (modelled on the simulator), and wants it :data:`MIN_SPEEDUP` times faster.
* ``warm_up(runner)``, checked by :func:`check_warm_up`: the start-up. Every bucket captured,
  largest first, into one pool (``runner.graphs``, ``runner.outputs``, ``runner.pool``), then
  each graph replayed once. The check runs it on a probe model that logs every capture and
  counts every run on the device, then serves the mixed batch with the graphs.

No check compares against an absolute time.
"""
from __future__ import annotations

from graphlab_utils.recipes import error_line, plural

from graphlab_utils.watch import CountingGraph

from .core import check, fail, ok, ok_bucket_captures, ok_faster, ok_one_shared_pool
from .core import device as _device

__all__ = [
    "LAB_BUCKETS",
    "MIN_SPEEDUP",
    "lab_model",
    "lab_requests",
    "lab_runner",
    "eager_tokens",
    "check_padding",
    "check_replay",
    "check_replay_speed",
    "check_warm_up",
]

LAB_BUCKETS = (1, 2, 4, 8)
MIN_SPEEDUP = 2.0  # the learner's graphed step at batch 1 vs the eager step (the lesson's runner: about 7x)
_SLOTS = 64  # the probe's device counters: one per row count, the last for anything above


def __getattr__(name):  # LAB_CONFIG, built on first use: importing this module does not import torch
    if name == "LAB_CONFIG":
        from graphlab_utils import decode

        return decode.SIM_CONFIG
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------
# The lab's engine
# ---------------------------------------------------------------------------------------
_CACHE: dict = {}


def lab_model(device=None):
    """The lesson's model at the simulator's size (fixed weights), on the session's device."""
    from graphlab_utils import decode

    device = _device() if device is None else device
    key = ("model", str(device))
    if key not in _CACHE:
        _CACHE[key] = decode.build_model(decode.SIM_CONFIG, device)
    return _CACHE[key]


def lab_requests():
    """The lesson's mixed batch: 8 requests of different prompt lengths, arriving and finishing at different steps."""
    from graphlab_utils import decode

    return decode.make_requests(8, decode.SIM_CONFIG, seed=6)


def _pool(model, slots: int = 512):
    from graphlab_utils import decode

    return decode.KVPool(model.config, slots, model.embed.device)


def _pool_copy(kv):
    """A new pool holding the same keys and values (the eager reference of one step reads it)."""
    from graphlab_utils import decode

    copy = decode.KVPool(kv.config, kv.capacity, kv.device, kv.dtype)
    copy.k.copy_(kv.k)
    copy.v.copy_(kv.v)
    return copy


def eager_tokens(model=None, requests=None) -> dict:
    """The eager engine's tokens for ``requests`` (default: the lab's mix): the reference."""
    from graphlab_utils import decode

    model = lab_model() if model is None else model
    requests = lab_requests() if requests is None else requests
    key = ("eager", id(model), tuple((r.rid, tuple(r.prompt), r.max_new_tokens, r.arrival) for r in requests))
    if key not in _CACHE:
        _CACHE[key] = decode.Engine(model, _pool(model)).run(requests)
    return _CACHE[key]


class _Forbidden(Exception):
    """The learner's code called the runner's own call path, which the exercise asks them to write."""


def _lab_runner_class():
    from graphlab_utils import decode

    class LabRunner(decode.DecodeGraphRunner):
        """The runner of the lab: graphs, static inputs and counters; its call path is the learner's."""

        def __call__(self, batch):
            raise _Forbidden("runner(batch)")

        def fill(self, batch):
            raise _Forbidden("runner.fill(batch)")

        def pad(self, n, bucket):
            raise _Forbidden("runner.pad(n, bucket)")

        def output(self, bucket, n):
            raise _Forbidden("runner.output(bucket, n)")

    return LabRunner


def lab_runner(model=None, kv=None, buckets=LAB_BUCKETS, capture: bool = True):
    """A runner for the lab: ``runner.graphs``, ``.outputs``, ``.static``, ``.buckets``, ``.pool``, ``.model``,
    ``.kv``, ``.step(n)``, ``.can_run(n)`` and the counters, captured at construction (``capture=False``: empty).
    Its own call path is left out: the lab writes it."""
    model = lab_model() if model is None else model
    kv = _pool(model) if kv is None else kv
    return _lab_runner_class()(model, kv, buckets, capture=capture)


def _reference_pad(static, start, stop):
    from graphlab_utils.decode import runner

    runner.pad_rows(static, start, stop)


def _reference_replay(runner, batch, pad=_reference_pad):
    from graphlab_utils.decode import runner as runner_mod

    n = batch.size
    if not runner.can_run(n):
        runner.eager_calls += 1
        return runner.model.decode(runner.kv, batch)
    bucket = runner.bucket_for(n)
    runner_mod.fill_rows(runner.static, batch)
    pad(runner.static, n, bucket)
    runner.graphs[bucket].replay()
    runner.replays += 1
    return runner.outputs[bucket][:n].clone()


def _differing(want: dict, got: dict) -> list:
    """(request, step) pairs where the tokens differ (missing tokens count)."""
    out = []
    for rid, tokens in want.items():
        mine = got.get(rid, []) if isinstance(got, dict) else []
        for i, t in enumerate(tokens):
            if i >= len(mine) or mine[i] != t:
                out.append((rid, i))
    return out


def _tokens_seen(want: dict, got: dict, where: str) -> str:
    wrong = _differing(want, got)
    rid, i = wrong[0]
    return (f"{where}: {plural(len(wrong), 'token')} of {sum(len(t) for t in want.values())} differ from the eager "
            f"engine's, the first at request {rid}, token {i}")


def _live_batch(static_width: int, n: int, device, seed: int = 0):
    """A batch of ``n`` rows that looks like live traffic: real slots, positions and lengths."""
    import random

    from graphlab_utils import decode

    rng = random.Random(seed)
    rows, tokens, positions, seq_lens, out_slots = [], [], [], [], []
    for r in range(n):
        length = rng.randint(2, 9)
        slots = [10 + 10 * r + k for k in range(length)]
        rows.append(slots + [0] * (static_width - length))
        tokens.append(rng.randrange(decode.SIM_CONFIG.vocab))
        positions.append(length - 1)
        seq_lens.append(length)
        out_slots.append(slots[-1])
    return decode.make_batch(tokens, positions, seq_lens, out_slots, rows, device)


# ---------------------------------------------------------------------------------------
# Exercise 1: safe padding
# ---------------------------------------------------------------------------------------
_PAD_IDEA = (
    "a padding row must be harmless: its output slot the pool's scratch slot (static.scratch_slot), "
    "which no request owns; a valid token (0) at a valid position (0); sequence length 1; a table row "
    "of valid slots (the scratch slot). SGLang pads the same way: out_cache_loc zeroed, slot 0 reserved, "
    "seq_lens filled with 1"
)


@check("safe padding rows")
def check_padding(pad_rows):
    """``pad_rows(static, start, stop)``: rows start..stop of the static inputs become safe padding."""
    import torch

    from graphlab_utils import decode

    model = lab_model()
    cfg = model.config
    static = decode.StaticInputs(8, cfg.max_context, _device(), scratch_slot=0)
    for start, stop in ((3, 8), (1, 2), (5, 8)):
        live = _live_batch(cfg.max_context, 8, _device(), seed=start)
        decode.runner.fill_rows(static, live)
        before = {f: getattr(static, f).clone() for f in static.FIELDS}
        ptrs = {f: getattr(static, f).data_ptr() for f in static.FIELDS}
        pad_rows(static, start, stop)
        torch.cuda.synchronize()
        where = f"pad_rows(static, {start}, {stop})"
        for f in static.FIELDS:
            t = getattr(static, f)
            ok(isinstance(t, torch.Tensor) and t.data_ptr() == ptrs[f],
               f"{where}: static.{f} still the tensor the graphs read",
               f"static.{f} is another tensor now",
               "write into the buffers in place (fill_, zero_, copy_, slice assignment): the graphs read the "
               "addresses they were captured on, and a new tensor bound to the name is never seen (lesson 04)")
            changed = [i for i, c in enumerate((t[:start] != before[f][:start]).reshape(start, -1).any(dim=1).tolist())
                       if c]
            ok(not changed,
               f"{where}: rows 0..{start} (the real requests) unchanged",
               f"static.{f} changed in row {changed[0] if changed else ''}",
               "pad only the rows from start to stop: the rows before start hold the batch's real requests")
        slots = static.out_slots[start:stop].tolist()
        bad = [(start + i, s) for i, s in enumerate(slots) if s != static.scratch_slot]
        if bad:
            row, slot = bad[0]
            owner = "a live request's slot" if slot == before["out_slots"][row].item() else f"slot {slot}"
            fail(f"{where}: every padding row writes into the scratch slot {static.scratch_slot}",
                 f"row {row} writes into slot {slot} ({owner})",
                 "the decode step writes each row's key and value at its output slot: a padding row that "
                 "writes anywhere but the scratch slot overwrites a request's cache. " + _PAD_IDEA)
        checks = (
            ("tokens", 0, cfg.vocab - 1, "token ids", "the embedding lookup reads row token: on a GPU an id out "
             "of range is a device-side assert (index out of bounds) that kills the process"),
            ("positions", 0, cfg.max_context - 1, "positions", "RoPE reads its tables at the position: out of range "
             "is a device-side assert on a GPU"),
            ("seq_lens", 1, cfg.max_context, "sequence lengths", "a row of length 0 attends to no key: its softmax is "
             "NaN, the padding row writes NaN into the scratch slot, and every real row reads that slot through its "
             "table's unused entries (masked, but 0 x NaN is NaN): every token goes wrong"),
        )
        for f, lo, hi, what, why in checks:
            vals = getattr(static, f)[start:stop].tolist()
            out = [(start + i, v) for i, v in enumerate(vals) if not lo <= v <= hi]
            if out:
                row, v = out[0]
                fail(f"{where}: {what} of the padding rows between {lo} and {hi}",
                     f"row {row}: {f} = {v}", why + ". " + _PAD_IDEA)
        table = static.table[start:stop]
        ok(bool(((table >= 0) & (table <= 512)).all()),
           f"{where}: table entries of the padding rows that are slots of the pool",
           f"entries between {int(table.min())} and {int(table.max())}",
           "the attention gathers the keys at every table entry (even masked ones): point them at the scratch "
           "slot. " + _PAD_IDEA)

    # the padding in use: a runner that pads with it serves the lab's mix
    model = lab_model()
    kv = _pool(model)
    runner = lab_runner(model, kv)
    from graphlab_utils import decode as dec

    engine = dec.Engine(model, kv, decode=lambda b: _reference_replay(runner, b, pad=pad_rows))
    got = engine.run(lab_requests())
    want = eager_tokens(model)
    ok(not _differing(want, got),
       "a runner that pads with pad_rows gives the eager engine's tokens",
       _tokens_seen(want, got, "the mixed batch") if _differing(want, got) else "",
       _PAD_IDEA)


# ---------------------------------------------------------------------------------------
# Exercise 2: the replay path
# ---------------------------------------------------------------------------------------
def _call(fn, *args, what: str):
    try:
        return fn(*args)
    except _Forbidden as exc:
        fail(f"{what} written with the runner's parts: runner.graphs, runner.outputs, runner.static, runner.buckets",
             f"your code called {exc}",
             "the lab's runner leaves its call path to you: fill the static inputs with copy_, pad, replay "
             "runner.graphs[bucket] and slice runner.outputs[bucket]")


def _replay_case(replay, runner, batch, what, n):
    """One call of the learner's replay, watched."""
    import torch

    bucket = runner.bucket_for(n) if runner.can_run(n) else None
    counters = {b: CountingGraph(g) for b, g in runner.graphs.items()}
    graphs = runner.graphs
    ptrs = {f: getattr(runner.static, f).data_ptr() for f in runner.static.FIELDS}
    runner.graphs = counters
    try:
        try:
            out = _call(replay, runner, batch, what=what)
        except (KeyError, IndexError, RuntimeError) as exc:
            if bucket is None:
                fail(f"{what}: a batch of {n} (more than the largest bucket, {runner.buckets[-1]}) runs the model "
                     "eagerly", error_line(exc),
                     "above the largest bucket no graph holds the batch: return runner.model.decode(runner.kv, batch) "
                     "(SGLang and vLLM fall back to the eager forward)")
            raise
    finally:
        runner.graphs = graphs
    torch.cuda.synchronize()
    ran = {b: c.replays for b, c in counters.items() if c.replays}
    for f, p in ptrs.items():
        ok(getattr(runner.static, f).data_ptr() == p,
           f"{what}: runner.static.{f} still the tensor the graphs were captured on",
           f"runner.static.{f} is another tensor now",
           "copy the batch into the static inputs: runner.static.tokens[:n].copy_(batch.tokens), and so on for "
           "every field. Rebinding the name leaves the graphs reading the old buffer (lesson 04)")
    if bucket is None:
        ok(not ran, f"{what}: no graph replayed (the batch is larger than every bucket)",
           "the graph of " + ", ".join(f"bucket {b}" for b in ran) + " replayed",
           "above the largest bucket, run the model eagerly: runner.model.decode(runner.kv, batch)")
    else:
        ok(ran, f"{what}: the graph of bucket {bucket} replayed once", "no graph replayed",
           "replay runner.graphs[bucket], the smallest bucket that holds the batch")
        if set(ran) != {bucket}:
            fail(f"{what}: the graph of bucket {bucket}, the smallest that holds {n} rows",
                 "the graph of " + ", ".join(f"bucket {b}" for b in sorted(ran)) + " replayed",
                 "pick the smallest bucket >= n: runner.buckets[bisect.bisect_left(runner.buckets, n)]; a larger "
                 "bucket computes more padding rows for nothing")
        ok(ran[bucket] == 1, f"{what}: one replay", f"{plural(ran[bucket], 'replay')}",
           "replay once per call: each replay runs the whole step and writes every real row's cache again")
        slots = runner.static.out_slots[n:bucket].tolist()
        ok(all(s == runner.static.scratch_slot for s in slots),
           f"{what}: rows {n}..{bucket} padded (output slot: the scratch slot) before the replay",
           f"their output slots: {slots}",
           "pad the rows between n and the bucket with pad_rows(runner.static, n, bucket): they still hold an "
           "earlier batch, and a replay would write their stale keys into slots requests may own now")
    ok(isinstance(out, torch.Tensor) and tuple(out.shape) == (n,),
       f"{what}: the next tokens, a tensor of shape ({n},)",
       f"{type(out).__name__}{' of shape ' + str(tuple(out.shape)) if isinstance(out, torch.Tensor) else ''}",
       "return the first n rows of the bucket's output: runner.outputs[bucket][:n] (cloned)")
    return out


@check("the runner's replay path")
def check_replay(replay):
    """``replay(runner, batch) -> tokens``: eager above the largest bucket, else copy_, pad, replay, slice."""
    import torch

    from graphlab_utils import decode

    model = lab_model()
    kv = _pool(model)
    runner = lab_runner(model, kv, buckets=(2, 3, 8))  # not powers of two
    w = model.config.max_context
    # single calls, each watched
    for n in (8, 5, 1, 3, 2, 9):  # a smaller batch after a larger one: its padding rows hold stale rows
        batch = _live_batch(w, n, _device(), seed=n)
        want = model.decode(_pool_copy(runner.kv), batch)
        out = _replay_case(replay, runner, batch, f"a batch of {n}", n)
        ok(torch.equal(out, want) if isinstance(out, torch.Tensor) else False,
           f"a batch of {n}: the eager step's tokens",
           f"{out.tolist()} instead of {want.tolist()}",
           "copy the batch into the first n rows of the static inputs (every field: tokens, positions, seq_lens, "
           "out_slots, table: the attention metadata too), pad, replay, return the first n rows")
    # a result must survive the next call
    a_batch, b_batch = _live_batch(w, 3, _device(), seed=11), _live_batch(w, 3, _device(), seed=12)
    a = _call(replay, runner, a_batch, what="a batch of 3")
    kept = a.tolist()
    _call(replay, runner, b_batch, what="the next batch of 3")
    ok(a.tolist() == kept,
       "a result that stays as it was when the next batch replays",
       f"the first call's tokens changed from {kept} to {a.tolist()}",
       "return a clone: runner.outputs[bucket][:n].clone(); the output is the graph's buffer, and every replay "
       "overwrites it (a caller that reads it one step later, as an overlapping scheduler does, reads the next step)")
    # the engine, end to end
    kv = _pool(model)
    runner = lab_runner(model, kv, buckets=(1, 2, 4))
    got = decode.Engine(model, kv, decode=lambda b: _call(replay, runner, b, what="the engine's step")).run(lab_requests())
    want = eager_tokens(model)
    ok(not _differing(want, got), "the graphed engine gives the eager engine's tokens",
       _tokens_seen(want, got, "the mixed batch, buckets (1, 2, 4)") if _differing(want, got) else "",
       "each step: fill every field of the static inputs with copy_, pad the rest of the bucket, replay, clone")


@check("the graphed step is faster than the eager step")
def check_replay_speed(replay):
    """The learner's replay at batch 1 against the eager step, side by side (modelled on the simulator)."""
    import torch

    from graphlab_utils import timing

    model = lab_model()
    kv = _pool(model)
    runner = lab_runner(model, kv)
    batch = _live_batch(model.config.max_context, 1, _device(), seed=3)
    want = model.decode(_pool_copy(kv), batch)
    out = _call(replay, runner, batch, what="a batch of 1")
    ok(isinstance(out, torch.Tensor) and torch.equal(out, want), "the eager step's token at batch 1",
       "another result", "make check_replay pass first")
    repeat = 1 if timing.is_modelled() else 20
    graphed = timing.measure(lambda: replay(runner, batch), warmup=1, repeat=repeat)
    eager = timing.measure(lambda: model.decode(kv, batch), warmup=1, repeat=repeat)
    ok_faster(graphed, eager, MIN_SPEEDUP,
              f"the graphed step at least {MIN_SPEEDUP:.0f}x faster than the eager step at batch 1",
              "a call should cost a few copies into the static inputs and one replay: no capture, no synchronize, "
              "no .item() or .tolist() on the way, no eager run of the model")


# ---------------------------------------------------------------------------------------
# Exercise 3: the warm-up
# ---------------------------------------------------------------------------------------
def _probe(inner):
    """The model, wrapped to log each Python call of ``decode`` (rows, inside a capture) and count each run
    on the device (a kernel in the step: it runs at every replay too)."""
    import torch

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner
            self.config = inner.config
            self.embed = inner.embed
            self.runs = torch.zeros(_SLOTS, device=inner.embed.device)
            self.log: list = []

        def prefill(self, kv, tokens, slots):
            return self.inner.prefill(kv, tokens, slots)

        def decode(self, kv, batch):
            rows = int(batch.tokens.shape[0])
            self.log.append((rows, bool(torch.cuda.is_current_stream_capturing())))
            self.runs[min(rows, _SLOTS - 1)].add_(1)
            return self.inner.decode(kv, batch)

    return Probe()


@check("warm-up: every bucket captured and uploaded")
def check_warm_up(warm_up):
    """``warm_up(runner)``: buckets captured largest first into one pool, each graph replayed once."""
    import torch

    from graphlab_utils import decode

    model = lab_model()
    probe = _probe(model)
    kv = _pool(model, 64)
    kv.k.normal_()
    kv.v.normal_()
    before_k = kv.k.clone()
    buckets = (1, 3, 2, 6)  # any order: the warm-up sorts them
    runner = _lab_runner_class()(probe, kv, buckets, capture=False)
    _call(warm_up, runner, what="warm_up(runner)")
    torch.cuda.synchronize()
    ok_bucket_captures(
        probe.log, buckets, "the step",
        "for each bucket n, capture runner.step(n) (the step on the first n rows of the static inputs) into a "
        "torch.cuda.CUDAGraph, after a warm-up (recipes.capture does both)",
        "capture the largest bucket first (SGLang and vLLM iterate over the sizes reversed): its intermediates go "
        "back to the shared pool when its capture ends, and each smaller graph fits in those blocks")
    order = sorted(set(buckets), reverse=True)
    graphs, outputs = getattr(runner, "graphs", None), getattr(runner, "outputs", None)
    ok(isinstance(graphs, dict) and set(graphs) == set(order) and isinstance(outputs, dict) and set(outputs) == set(order),
       f"runner.graphs and runner.outputs: dicts keyed by bucket, {sorted(order)}",
       f"runner.graphs has the keys {sorted(graphs) if isinstance(graphs, dict) else graphs!r}, runner.outputs "
       f"{sorted(outputs) if isinstance(outputs, dict) else outputs!r}",
       "keep each bucket's graph and the tensor its step returned: runner.graphs[n], runner.outputs[n] = graph, out")
    ok_one_shared_pool(
        runner, graphs, "every graph in one shared memory pool",
        "make one handle, runner.pool = torch.cuda.graph_pool_handle(), and pass pool=runner.pool to every capture: "
        "the graphs never run at the same time, so they can share their intermediates' memory",
        "keep the handle in runner.pool", name_pool=False)
    runs = [int(round(v)) for v in probe.runs.tolist()]
    eager = {}
    for rows, capturing in probe.log:
        if not capturing:
            eager[rows] = eager.get(rows, 0) + 1
    replays = {n: runs[n] - eager.get(n, 0) for n in order}
    missing = [n for n in order if replays[n] < 1]
    ok(not missing,
       "each graph replayed once at warm-up, before any request",
       "no replay of the graph of " + ", ".join(f"bucket {n}" for n in missing),
       "after the captures, replay every graph once: the first launch of a graph uploads it to the GPU, and a "
       "warm-up that skips it leaves that cost to the first request of each bucket")
    changed = sorted({int(s) for s in (kv.k != before_k).any(dim=(0, 2, 3)).nonzero().flatten().tolist()})
    ok(changed in ([], [kv.scratch_slot]),
       "a warm-up that writes only the scratch slot of the KV pool",
       f"slots {changed} changed",
       "warm up and capture on the runner's static inputs as they start (every row a padding row): they "
       "point every write at the scratch slot. Do not fill them with made-up requests")
    # the graphs in use
    kv2 = _pool(model)
    runner2 = _lab_runner_class()(model, kv2, (1, 2, 4), capture=False)
    _call(warm_up, runner2, what="warm_up(runner)")
    got = decode.Engine(model, kv2, decode=lambda b: _reference_replay(runner2, b)).run(lab_requests())
    want = eager_tokens(model)
    ok(not _differing(want, got), "the engine served by your graphs gives the eager engine's tokens",
       _tokens_seen(want, got, "the mixed batch, buckets (1, 2, 4)") if _differing(want, got) else "",
       "capture runner.step(n) for each bucket n: it reads runner.static, which every call fills")
