"""Kata 1: the KV cache reset that moved the cache."""
from __future__ import annotations

from graphlab_utils.checks import core
from graphlab_utils.checks.core import close, describe, device, fail, ok
from graphlab_utils.recipes import capture, seeded_randn
from graphlab_utils.watch import watching

from . import register

SNIPPET = '''\
class KVCache:
    """A toy KV cache: one key vector per slot, read by a captured decode step."""

    def __init__(self, slots, dim, device):
        self.keys = torch.zeros(slots, dim, device=device)

    def write(self, keys):
        """Store a request's keys in the first slots."""
        self.keys[: keys.shape[0]].copy_(keys)

    def reset(self):
        """Empty the cache before the next request."""
        self.keys = torch.zeros_like(self.keys)
'''
# The fix, as lab 10's solution shows it; the lab replaces what the markers enclose with a stub.
FIX = '''\
class KVCacheFixed(KVCache):
    def reset(self):
        ### BEGIN SOLUTION empty the cache where the graph reads it
        self.keys.zero_()  # the same memory, now zero: the graph sees it
        ### END SOLUTION
'''
SLOTS, DIM = 8, 32


def _attend(keys, query):
    """One attention read over the cache: softmax(keys @ query) @ keys."""
    import torch

    return torch.softmax(keys @ query, dim=0) @ keys


def _run(cls) -> dict:
    """Request 1 through a captured decode step, reset, request 2 through the same graph."""
    import torch

    dev = device()
    keys_a = seeded_randn(101, SLOTS, DIM, device=dev)
    keys_b = seeded_randn(102, 5, DIM, device=dev)  # request 2 fills 5 of the 8 slots
    query = seeded_randn(103, DIM, device=dev)
    padded_b = torch.cat([keys_b, torch.zeros(SLOTS - 5, DIM, device=dev)])
    expect_a, expect_b = _attend(keys_a, query), _attend(padded_b, query)
    cache = cls(SLOTS, DIM, dev)
    ok(isinstance(getattr(cache, "keys", None), torch.Tensor), "a cache with a `keys` tensor (slots x dim)",
       f"`keys` is {describe(getattr(cache, 'keys', None), dtype=True)}",
       "keep the KVCache interface: keys, write, reset")
    cache.write(keys_a)
    with watching():  # guards the capture: nothing in it may sync or copy host data
        graph, out = capture(lambda: _attend(cache.keys, query))
    graph.replay()
    first = close(out, expect_a)
    cache.reset()
    cache.write(keys_b)
    graph.replay()  # nothing allocated since reset(): a moved buffer's old bytes are still there
    correct, stale = close(out, expect_b), close(out, expect_a)
    # reset() must have emptied the slots request 2 does not fill (checked after the replay, so
    # that the check's own tensors cannot land in memory the graph reads)
    emptied = isinstance(cache.keys, torch.Tensor) and tuple(cache.keys.shape) == (SLOTS, DIM) \
        and bool((cache.keys[5:] == 0).all())
    return {"request_1_correct": first, "reset_empties": emptied, "request_2_correct": correct,
            "request_2_reads_request_1": stale}


def _demo(cls) -> None:
    r = _run(cls)
    print("request 1 through the graph matches eager:", r["request_1_correct"])
    print("after reset(), request 2 through the graph matches eager:", r["request_2_correct"])
    print("the graph still reads request 1's keys:", r["request_2_reads_request_1"])


@core.check("kata 1 (kv-cache-reset)")
def check_kv_cache_reset(cls):
    """`cls` is a KVCache class; its reset() must empty the cache where the graph reads it."""
    ok(isinstance(cls, type), "the fixed KVCache class", type(cls).__name__, "pass the class itself, not an instance")
    r = _run(cls)
    ok(r["request_1_correct"], "request 1 replayed equal to eager", "request 1 differs from eager",
       "write() must copy the keys into the cache's first slots in place (keys[:n].copy_(new))")
    ok(r["reset_empties"], "reset() leaves a cache of the same shape with every slot zero",
       "after reset() the cache still holds values (or changed shape)",
       "reset() must empty the cache: request 2 fills only 5 of 8 slots and must not see request 1's keys")
    if r["request_2_reads_request_1"]:
        fail("request 2's result from the graph", "the graph still computes with request 1's keys",
             "reset() gave `self.keys` a new tensor; the graph baked the address of the old one and keeps "
             "reading it. Empty the same memory in place (self.keys.zero_()), or re-capture after every "
             "move; serving systems preallocate their cache once and never move it.")
    ok(r["request_2_correct"], "request 2 replayed equal to eager", "request 2 differs from eager",
       "the graph reads the cache's memory as it was captured: write and reset in place")


KATA = register(
    "kv-cache-reset",
    snippet=SNIPPET,
    fix=FIX,
    entry="KVCache",
    fixed_name="KVCacheFixed",
    task="Write `KVCacheFixed`, a `KVCache` whose `reset()` empties the cache so that a graph captured before "
         "the reset reads the emptied cache.",
    hint="A graph reads the addresses it captured. Which statement in `reset()` gives `self.keys` new memory? "
         "Empty the memory the graph already reads instead.",
    explanation=(
        "`torch.zeros_like` allocates a new tensor and the assignment rebinds `self.keys` to it. The captured "
        "graph never sees Python names: its kernels hold the address of the old buffer, which the caching "
        "allocator has taken back but not overwritten, so the replay computes with the previous request's "
        "keys (on a GPU it may later read whatever tensor is given that block). `self.keys.zero_()` empties "
        "the same memory, so the graph reads the new state. The other fixes are re-capturing, or "
        "`cudaGraphExecUpdate` (lesson 06), after every move; serving systems such as SGLang avoid the "
        "question by allocating the KV-cache pool once, before capture, and never moving it (lessons 04, 07)."),
    checker=check_kv_cache_reset,
    demo=_demo,
)
