"""Checks of lab 04, pointer baking: a decode step over a preallocated KV cache.

The lab's model is one attention head of an LLM decode step, batch size 1. A token
embedding ``x`` of shape ``(1, D)`` gives a query, a key and a value (``x @ W["q"]``,
``x @ W["k"]``, ``x @ W["v"]``); the key and value are appended to a KV cache, the query
attends over every cached token and the result goes through ``W["o"]``. The cache is preallocated (``MAX_LEN`` rows), so
its address never changes, and the position of the new token is a device tensor ``pos``.

* :func:`check_decode_step`: ``fn(x, pos, k_cache, v_cache, W)`` writes the new key and
  value into row ``pos`` of the caches, in place, and attends over rows ``0..pos``. The
  check runs it eagerly (watching for host syncs, which would fail a capture), then
  captures it and replays it over several decode steps with new tokens copied in.
* :func:`check_moved_buffers`: ``fn(obj, action)`` names the tensor attributes of ``obj``
  whose device address changed when ``action()`` ran: the probe that finds a stale pointer.
* :func:`check_decoder`: a class ``cls(W)`` with ``prefill(prompt)`` and ``step(x)`` that
  captures its decode step once and serves two requests, one after the other, with the
  same graph. Results are compared with eager decoding; when they differ because the graph
  reads a buffer that was replaced after capture, the hint names the attribute and the
  method that replaced it.

Tensors a check hands to learner code are made on the CPU from fixed seeds and moved to
the device, so the numbers are the same on a GPU and on the simulator.
"""
from __future__ import annotations

import math

from graphlab_utils import recipes
from graphlab_utils.recipes import seeded_randn
from graphlab_utils.watch import Watch, Words, watching

from .core import check, close, describe, device, fail, ok, ok_class, ok_function

__all__ = [
    "D",
    "MAX_LEN",
    "make_weights",
    "tokens",
    "attention",
    "decode_reference",
    "check_decode_step",
    "check_moved_buffers",
    "check_decoder",
]

D = 32  # the width of a token embedding, a key, a value
MAX_LEN = 32  # rows of the preallocated KV cache: the longest sequence a decoder serves

STEP_PROMPT = 4  # check_decode_step: tokens already cached before the first decode step
STEP_COUNT = 6  # check_decode_step: decode steps replayed
# check_decoder: two requests served one after the other by the same decoder
# (prompt length, decode steps, seed)
REQUESTS = ((3, 5, 41), (6, 4, 42))


# ---------------------------------------------------------------------------------------
# The model and its eager reference
# ---------------------------------------------------------------------------------------
def make_weights(seed: int = 0) -> dict:
    """The head's projections ``{"q", "k", "v", "o"}``, each ``(D, D)``, on the device."""
    dev = device()
    return {name: seeded_randn(seed * 10 + i, D, D, device=dev) / math.sqrt(D)
            for i, name in enumerate(("q", "k", "v", "o"))}


def tokens(n: int, seed: int = 0):
    """``n`` token embeddings ``(n, D)`` on the device, the same numbers on both backends.

    Row ``t`` as a batch of one token is ``xs[t : t + 1]``, shape ``(1, D)``."""
    return seeded_randn(1000 + seed, n, D, device=device())


def attention(q, K, V):
    """Queries ``(1, D)`` over the rows of K and V: ``softmax(q @ K.T / sqrt(D)) @ V``."""
    return ((q @ K.T) / math.sqrt(D)).softmax(-1) @ V


def decode_reference(W: dict, prompt, xs) -> list:
    """Eager decoding: the prompt's keys and values, then one output ``(1, D)`` per row of ``xs``.

    It grows its cache with ``torch.cat``, which is fine eagerly and is exactly what a
    graph cannot follow.
    """
    import torch

    K, V = prompt @ W["k"], prompt @ W["v"]
    outs = []
    for t in range(xs.shape[0]):
        x = xs[t : t + 1]
        K = torch.cat([K, x @ W["k"]])
        V = torch.cat([V, x @ W["v"]])
        outs.append(attention(x @ W["q"], K, V) @ W["o"])
    return outs


def _is_row(out) -> bool:
    import torch

    return isinstance(out, torch.Tensor) and tuple(out.shape) == (1, D) and out.is_floating_point()


# ---------------------------------------------------------------------------------------
# Watching learner code: host syncs, captures, replays
# ---------------------------------------------------------------------------------------
# How this lab's hints name a host sync.
_WORDS = Words(
    sync_op="{name} (a device value read on the CPU: int(pos), .item(), `if tensor:`, slicing with a tensor bound)",
    bool_index="x[mask] (a boolean index needs the count of True values on the CPU)",
    to_cpu="tensor.{name}() (a copy to the CPU)",
)

_SYNC_IDEA = (
    "the step runs inside a graph, where nothing has a value while it is recorded: reading pos on the CPU "
    "(int(pos), pos.item(), k_cache[:pos + 1], `if ...`) is a host sync that fails the capture. Keep the "
    "position on the device: write with index_copy_(0, pos, ...) or k_cache[pos] = ..., and hide the rows "
    "after pos with a mask (torch.arange(MAX_LEN) <= pos) over the whole cache. (This check ran your code "
    "eagerly and did not capture it, so your notebook is fine.)"
)


def _capture(fn, args):
    """Warm fn up on a side stream (PyTorch's recipe), then capture one call; hint on a failed capture."""
    recipes.warm_up(lambda: fn(*args), iters=2)
    try:
        return recipes.capture(lambda: fn(*args), warmup=0)
    except Exception as exc:  # noqa: BLE001 - the failure becomes the hint
        fail("a step that captures", f"the capture failed: {recipes.error_line(exc)}",
             "something in the step is forbidden during capture (a sync, a copy to the CPU). On a GPU a failed "
             "capture damages the process: restart the kernel before the next try.")


# ---------------------------------------------------------------------------------------
# 1. The decode step
# ---------------------------------------------------------------------------------------
def _step_statics(W, prompt):
    """Static buffers as a runner would hold them: a cache with the prompt in rows 0..P-1."""
    import torch

    dev = device()
    n = prompt.shape[0]
    k_cache = torch.zeros(MAX_LEN, D, device=dev)
    v_cache = torch.zeros(MAX_LEN, D, device=dev)
    k_cache[:n].copy_(prompt @ W["k"])
    v_cache[:n].copy_(prompt @ W["v"])
    x = torch.zeros(1, D, device=dev)
    pos = torch.full((1,), n, dtype=torch.long, device=dev)
    return x, pos, k_cache, v_cache


def _diagnose_eager_step(out, x, W, k_cache, v_cache, n) -> None:
    """Name the mistake behind a wrong eager result of the step at position n."""
    q = x @ W["q"]
    K = k_cache.clone()
    V = v_cache.clone()
    K[n], V[n] = (x @ W["k"])[0], (x @ W["v"])[0]
    if close(out, attention(q, K, V) @ W["o"]):
        fail("attention over the cached tokens 0..pos only",
             f"your step attends over all {MAX_LEN} rows of the cache, the empty ones too",
             "the cache is preallocated: rows after pos hold zeros (or an older request's tokens). Mask them: "
             "scores.masked_fill(torch.arange(MAX_LEN, device=...) > pos, float('-inf')) before the softmax")
    if close(out, attention(q, K[:n], V[:n]) @ W["o"]):
        fail("attention over rows 0..pos, the new token included",
             "your step attends over rows 0..pos-1: the new token is left out",
             "write the new key and value into row pos first, then attend with the mask arange <= pos")
    fail("the eager decode step's result", "a different output",
         "q, k, v = x @ W['q'], x @ W['k'], x @ W['v']; write k and v into row pos of the caches; "
         "scores = q @ k_cache.T / sqrt(D), masked after pos; out = softmax(scores, -1) @ v_cache @ W['o']")


@check("decode step over a static cache")
def check_decode_step(fn):
    """`fn(x, pos, k_cache, v_cache, W)` -> the step's output (1, D); the caches written in place at row pos."""
    import torch

    ok_function(fn, "a function fn(x, pos, k_cache, v_cache, W)")
    W = make_weights(1)
    prompt, xs = tokens(STEP_PROMPT, 11), tokens(STEP_COUNT, 12)
    refs = decode_reference(W, prompt, xs)
    n = STEP_PROMPT

    # 1. eagerly, watched for host syncs
    x, pos, k_cache, v_cache = _step_statics(W, prompt)
    x.copy_(xs[0:1])
    with watching(words=_WORDS) as watch:
        out = fn(x, pos, k_cache, v_cache, W)
    ok(not watch.syncs, "a step with no host sync (nothing that reads a device value on the CPU)",
       "a host sync: " + "; ".join(watch.syncs), _SYNC_IDEA)
    ok(_is_row(out), f"a tensor of shape (1, {D})", describe(out, dtype=True), "return the step's output, one row of width D")
    written = close(k_cache[n : n + 1], xs[0:1] @ W["k"]) and close(v_cache[n : n + 1], xs[0:1] @ W["v"])
    if not written and close(out, refs[0]):
        fail("the new key and value written into the k_cache and v_cache passed in, at row pos",
             "the output is right but the caches passed in are unchanged",
             "your step writes into a new tensor (torch.cat, index_copy without the _, k_cache = ...) and "
             "attends over that. A graph replays with the caches it was captured on, and the next step "
             "must see this token there: write in place with k_cache.index_copy_(0, pos, k) or "
             "k_cache[pos] = k")
    if not close(out, refs[0]):
        _diagnose_eager_step(out, xs[0:1], W, k_cache, v_cache, n)
    ok(written, "the new key and value in row pos of the caches", "row pos does not hold x @ W['k'], x @ W['v']",
       "write k = x @ W['k'] and v = x @ W['v'] into row pos (the position of the new token), in place")
    untouched = (close(k_cache[:n], prompt @ W["k"]) and bool((k_cache[n + 1:] == 0).all())
                 and close(v_cache[:n], prompt @ W["v"]) and bool((v_cache[n + 1:] == 0).all()))
    ok(untouched, "only row pos of the caches written", "other rows of the caches changed too",
       "a decode step appends one token: write row pos and leave the other rows as they are")

    # 2. captured once, replayed over several decode steps
    x, pos, k_cache, v_cache = _step_statics(W, prompt)
    graph, out = _capture(fn, (x, pos, k_cache, v_cache, W))
    for t in range(STEP_COUNT):
        x.copy_(xs[t : t + 1])
        pos.fill_(n + t)
        graph.replay()
        torch.cuda.synchronize()
        row_ok = (close(k_cache[n + t : n + t + 1], xs[t : t + 1] @ W["k"])
                  and close(v_cache[n + t : n + t + 1], xs[t : t + 1] @ W["v"]))
        ok(row_ok, f"replay {t + 1} writes the new token into row {n + t} of the static caches",
           f"after replay {t + 1}, row {n + t} of the caches does not hold the new token",
           "the graph writes to the addresses it recorded: the caches passed to the step during capture. "
           "Write into them in place (index_copy_ / k_cache[pos] = ...), at the row that pos holds at replay")
        ok(close(out, refs[t]), f"replay {t + 1} (position {n + t}) equal to eager decoding",
           f"replay {t + 1} differs from eager" + (" (replay 1 was right)" if t else ""),
           "every replay must follow the values copied into x and pos: use pos only through device ops "
           "(index_copy_, a mask from torch.arange(MAX_LEN) <= pos), never as a Python number fixed at capture")


# ---------------------------------------------------------------------------------------
# 2. The probe: which buffers moved
# ---------------------------------------------------------------------------------------
class _Buffers:
    """A runner-like object for check_moved_buffers."""


def _probe_case():
    """An object and an action that moves two buffers, keeps three in place and touches non-tensors."""
    import torch

    dev = device()
    obj = _Buffers()
    obj.cache = torch.zeros(8, 4, device=dev)
    obj.rows = torch.zeros(8, 4, device=dev)
    obj.pos = torch.zeros(1, dtype=torch.long, device=dev)
    obj.table = torch.arange(8, device=dev)
    obj.scratch = torch.zeros(16, device=dev)
    obj.length = 3
    obj.name = "request 1"

    def action():
        obj.cache = torch.cat([obj.cache[:2], torch.ones(6, 4, device=dev)])  # a new tensor: moved
        obj.rows.copy_(torch.ones(8, 4, device=dev))  # new values, same address
        obj.pos += 1  # in place: same address
        obj.table = obj.table.view(2, 4)  # a new Python object over the same memory
        obj.scratch.data = torch.zeros(32, device=dev)  # the same Python object over new memory: moved
        obj.length = 4
        obj.name = "request 2"

    return obj, action, {"cache", "scratch"}


# What a hint says of _probe_case's object, which the learner never sees.
_MOVED_ONLY = ("on the check's own test object (tensor attributes cache, rows, pos, table, scratch; its action() "
               "rebinds cache to a new tensor, writes rows and pos in place, rebinds table to a view of itself, "
               "sets scratch.data to new memory): only the buffers whose address changed, cache and scratch")


def _names(result):
    if isinstance(result, str) or not hasattr(result, "__iter__"):
        return None
    names = list(result)
    return set(names) if all(isinstance(n, str) for n in names) else None


@check("moved buffers")
def check_moved_buffers(fn):
    """`fn(obj, action)` runs action() and returns the names of obj's tensor attributes whose data_ptr changed."""
    ok_function(fn, "a function fn(obj, action)")
    obj, action, expected = _probe_case()
    ran = []

    def counted():
        ran.append(True)
        action()

    result = fn(obj, counted)
    ok(len(ran) == 1, "action() called exactly once, between the two looks at the addresses",
       f"action() called {len(ran)} times", "record every data_ptr(), call action() once, record them again")
    names = _names(result)
    ok(names is not None, "a list (or set) of attribute names", describe(result, dtype=True),
       "return the names, as strings, of the tensor attributes whose address changed")
    seen = ", ".join(sorted(names)) or "no names"
    if {"rows", "pos"} & names:
        fail(_MOVED_ONLY,
             f"{seen}: buffers written in place are listed",
             "compare addresses, not values: copy_, fill_ and += change what a buffer holds and keep its "
             "data_ptr(), and a graph sees those changes. Only a new address makes a graph read stale memory")
    if "table" in names or ("cache" in names and "scratch" not in names):
        fail(_MOVED_ONLY, seen,
             "compare addresses (t.data_ptr()), not Python objects (`is`, id()): a view such as "
             "t.view(2, 4) is a new object over the same memory, and `t.data = new` keeps the object but "
             "moves it to new memory. The graph only knows addresses")
    if {"length", "name"} & names:
        fail("only tensor attributes", seen,
             "a graph bakes device addresses; plain Python values are not buffers it reads "
             "(check isinstance(value, torch.Tensor))")
    ok(names == expected, _MOVED_ONLY, seen,
       "look at every tensor attribute of the object (vars(obj)), before and after action(), and keep the "
       "names whose data_ptr() differs")


# ---------------------------------------------------------------------------------------
# 3. A decoder that serves several requests with one graph
# ---------------------------------------------------------------------------------------
def _tensor_attrs(obj) -> dict:
    """label -> tensor, for obj's tensor attributes and the tensors one level inside dicts, lists, tuples."""
    import torch

    found = {}
    try:
        items = list(vars(obj).items())
    except TypeError:
        return found
    for name, value in items:
        if isinstance(value, torch.Tensor):
            found[name] = value
        elif isinstance(value, dict):
            for k, v in list(value.items()):
                if isinstance(v, torch.Tensor):
                    found[f"{name}[{k!r}]"] = v
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if isinstance(v, torch.Tensor):
                    found[f"{name}[{i}]"] = v
    return found


def _addresses(attrs: dict) -> dict:
    out = {}
    for label, t in attrs.items():
        try:
            out[label] = t.data_ptr()
        except Exception:  # noqa: BLE001 - tensors without storage
            pass
    return out


def _reference_zero_prompt(W, n, xs) -> list:
    """Eager decoding as a graph sees it when the prompt never reached its cache (rows of zeros)."""
    import torch

    return decode_reference(W, torch.zeros(n, D, device=device()), xs)


_STALE_IDEA = (
    "a graph stores device addresses, not Python names: giving an attribute a new tensor (torch.cat, .clone(), "
    "torch.zeros, self.pos = self.pos + 1) after capture leaves the graph reading the old memory. Write into "
    "the buffers the graph was captured on, in place: self.k_cache[:n].copy_(...), self.pos.fill_(n), "
    "self.pos += 1, index_copy_"
)


@check("decoder over a preallocated cache")
def check_decoder(cls):
    """`cls(W)` with `prefill(prompt)` and `step(x) -> out`: two requests, one graph, equal to eager decoding."""
    ok_class(cls, "a class Decoder(W) with methods prefill(prompt) and step(x)")
    W = make_weights(2)
    watch = Watch(_WORDS)
    with watching(watch):  # the guard stops a sync inside the capture before it breaks the kernel
        dec = cls(W)
    for method in ("prefill", "step"):
        ok(callable(getattr(dec, method, None)), f"a method {method}()", f"no method {method}()",
           "the decoder needs prefill(prompt) to load a request and step(x) to decode one token")
    keep_alive = [_tensor_attrs(dec)]  # a replaced buffer stays allocated: the graph reads old data, not freed memory
    moved: list = []  # (method, label) replaced after the graph was captured
    kept = []  # (out, ref, request, step)

    def call(method, *args):
        before = _tensor_attrs(dec)
        ptrs = _addresses(before)
        captured = watch.captures > 0
        with watching(watch):
            result = getattr(dec, method)(*args)
        after = _tensor_attrs(dec)
        keep_alive.append(after)
        if captured:
            now = _addresses(after)
            for label, p in ptrs.items():
                if label in now and now[label] != p and (f"{method}()", label) not in moved:
                    moved.append((f"{method}()", label))
        return result

    def stale_hint(where: str) -> None:
        method, label = moved[0]
        also = "; also " + ", ".join(f"{m} replaced self.{lb}" for m, lb in moved[1:4]) if len(moved) > 1 else ""
        fail("buffers the graph reads keep their address for the decoder's whole life",
             f"{method} replaced self.{label} with a new tensor after the graph was captured (its data_ptr() "
             f"changed){also}; the graph still reads the old memory, so {where} differs from eager decoding",
             _STALE_IDEA)

    for r, (n, steps, seed) in enumerate(REQUESTS):
        prompt, xs = tokens(n, seed), tokens(steps, seed + 100)
        refs = decode_reference(W, prompt, xs)
        call("prefill", prompt.clone())
        for t in range(steps):
            where = f"request {r + 1}, step {t + 1}"
            captures, replays = watch.captures, watch.replays
            out = call("step", xs[t : t + 1].clone())
            ok(watch.replays > replays, "every step() replays the captured graph", f"{where}: step() replayed no graph",
               "capture the decode step once (in __init__), then in step(): copy_ the token into the static "
               "input, replay, advance the position in place, return a clone of the output")
            ok(watch.captures > 0, "a captured graph", "no capture happened", "capture the step in __init__")
            if r or t:
                ok(watch.captures == captures, "one capture serving every step of every request",
                   f"{where}: step() captured a new graph",
                   "the graph stays valid while the cache's contents change: copy_ the new data into the static "
                   "buffers and replay; a capture per step pays capture + instantiate every time")
            ok(_is_row(out), f"a tensor of shape (1, {D})", f"{where}: {describe(out, dtype=True)}",
               "step() returns the output of the decode step (a clone of the graph's output)")
            if not close(out, refs[t]):
                if moved:
                    stale_hint(where)
                if r == 0 and close(out, _reference_zero_prompt(W, n, xs)[t]):
                    fail("attention over the prompt loaded by prefill()",
                         f"{where} equals decoding with an empty (all-zero) prompt",
                         "the graph never saw the prompt: prefill() wrote it somewhere the graph does not read. "
                         "Copy the prompt's keys and values into rows 0..n-1 of the static caches, in place")
                if r == 1 and all(close(o, ref) for o, ref, rr, _ in kept if rr == 0):
                    fail("the second request decoded as correctly as the first",
                         f"request 1 is right, {where} differs",
                         "prefill() starts a new request: overwrite rows 0..n-1 with its prompt and set the "
                         "position to n (self.pos.fill_(n)); older rows after the position are hidden by the mask")
                fail("every step equal to eager decoding", f"{where} differs from eager",
                     "prefill(): copy the prompt's keys/values into rows 0..n-1 and set pos to n; step(): copy_ "
                     "x into the static input, replay, then pos += 1 (in place); all buffers allocated once")
            kept.append((out, refs[t], r, t))
    for out, ref, r, t in kept:
        ok(close(out, ref), "results you can keep: each step's output unchanged by later steps",
           f"the output of request {r + 1}, step {t + 1} changed when step() was called again",
           "you return the graph's static output tensor, which every replay overwrites: return out.clone()")
    del keep_alive
