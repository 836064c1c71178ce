"""The capstone's decode graph runner, in the manner of SGLang's and vLLM's.

At start-up (:meth:`DecodeGraphRunner.warm_up`), one CUDA graph of the decode step per batch
**bucket**, captured **largest first** into **one shared memory pool**, with the garbage
collector frozen during the captures; then one replay of each graph (the first launch
uploads it). Every graph reads the same **static inputs** (:class:`StaticInputs`): token
ids, positions, sequence lengths, output slots and slot-table rows, sized for the largest
bucket; the graph of bucket ``b`` reads their first ``b`` rows.

A call (:meth:`DecodeGraphRunner.__call__`) takes the engine's batch of ``n`` rows:

1. above the largest bucket, it runs the model eagerly (and counts it);
2. otherwise it picks the smallest bucket that holds ``n`` rows;
3. ``copy_`` s the batch into the first ``n`` rows of the static inputs: token ids,
   positions, and the attention metadata (sequence lengths, slot-table rows), refreshed
   before every replay;
4. fills the padding rows ``n..bucket`` with safe values (:func:`pad_rows`): token 0 at
   position 0, sequence length 1, the table's padding row, and the pool's **scratch slot**
   as output slot, so a padding row never writes into a live request's cache;
5. replays the bucket's graph and returns a clone of the first ``n`` rows of its output
   (the next replay overwrites the output).

The KV pool is read and written at the addresses the graphs baked in: the pool must never
move while they live (:meth:`KVPool.defragment` with ``in_place=True``), or the graphs must
be captured again (:meth:`DecodeGraphRunner.recapture`).
"""
from __future__ import annotations

import bisect
import contextlib
import gc

import torch

from graphlab_utils import recipes

from .kvcache import DecodeBatch

__all__ = ["DEFAULT_BUCKETS", "StaticInputs", "fill_rows", "pad_rows", "frozen_gc", "DecodeGraphRunner"]

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32)


class StaticInputs:
    """The buffers every decode graph reads, sized for the largest bucket; allocated once.

    They start (and :meth:`reset` puts them back) as padding rows: a graph replayed on them
    writes only the scratch slot.
    """

    FIELDS = DecodeBatch.FIELDS

    def __init__(self, max_batch: int, width: int, device, scratch_slot: int = 0):
        self.max_batch, self.width, self.scratch_slot = max_batch, width, scratch_slot
        self.tokens = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(max_batch, dtype=torch.int64, device=device)
        self.out_slots = torch.full((max_batch,), scratch_slot, dtype=torch.int64, device=device)
        self.table = torch.full((max_batch, width), scratch_slot, dtype=torch.int64, device=device)

    def rows(self, n: int) -> DecodeBatch:
        """The first ``n`` rows, as views: what the graph of bucket ``n`` is captured on."""
        return DecodeBatch(*(getattr(self, f)[:n] for f in self.FIELDS))

    def reset(self) -> None:
        """Every row a padding row (before a capture: warm-up runs write through these buffers)."""
        pad_rows(self, 0, self.max_batch)


def fill_rows(static: StaticInputs, batch: DecodeBatch) -> None:
    """Copy the batch into the first ``len(batch)`` rows of the static inputs (``copy_``: same addresses)."""
    n = batch.size
    for name in StaticInputs.FIELDS:
        getattr(static, name)[:n].copy_(getattr(batch, name))


def pad_rows(static: StaticInputs, start: int, stop: int) -> None:
    """Make rows ``start..stop`` safe padding: token 0 at position 0, sequence length 1, the padding row of
    the table, and the scratch slot as output slot."""
    if stop <= start:
        return
    static.tokens[start:stop].zero_()
    static.positions[start:stop].zero_()
    static.seq_lens[start:stop].fill_(1)
    static.out_slots[start:stop].fill_(static.scratch_slot)
    static.table[start:stop].fill_(static.scratch_slot)


@contextlib.contextmanager
def frozen_gc(enabled: bool = True):
    """Collect once, then keep Python's garbage collector out of the block (SGLang and vLLM capture so:
    a collection during capture costs time and can free tensors a graph still reads)."""
    if not enabled:
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class DecodeGraphRunner:
    """Decode graphs per bucket, static inputs, safe padding and eager fallback.

    ``DecodeGraphRunner(model, kv, buckets)`` captures at construction (``capture=False`` leaves it
    to :meth:`warm_up`). ``runner(batch)`` returns the next tokens of the batch's rows.
    Counters: ``replays``, ``eager_calls``; ``capture_order``: the buckets in the order captured.
    """

    def __init__(self, model, kv, buckets=DEFAULT_BUCKETS, *, freeze_gc: bool = True, capture: bool = True,
                 warmup_iters: int = 2):
        self.model, self.kv = model, kv
        self.buckets = tuple(sorted({int(b) for b in buckets}))
        if not self.buckets or self.buckets[0] < 1:
            raise ValueError("buckets must be positive batch sizes, for example (1, 2, 4, 8)")
        self.max_batch = self.buckets[-1]
        self.freeze_gc, self.warmup_iters = freeze_gc, warmup_iters
        self.static = StaticInputs(self.max_batch, model.config.max_context, kv.device, self.pad_slot())
        self.graphs: dict = {}
        self.outputs: dict = {}
        self.inputs: dict = {}  # bucket -> the views of the static inputs its graph was captured on
        self.pool = None
        self.capture_order: list = []
        self.replays = self.eager_calls = 0
        if capture:
            self.warm_up()

    def pad_slot(self) -> int:
        """Where padding rows write: the pool's scratch slot."""
        if self.kv.scratch_slot is None:
            raise ValueError("the runner pads batches into the pool's scratch slot: build the KVPool with "
                             "reserve_scratch=True")
        return self.kv.scratch_slot

    def step(self, n: int):
        """The decode step on the first ``n`` static rows (``self.inputs[n]``): what the graph of bucket ``n`` records."""
        if n not in self.inputs:
            self.inputs[n] = self.static.rows(n)
        return self.model.decode(self.kv, self.inputs[n])

    # -- start-up -------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Capture every bucket, largest first, into one pool; then replay each graph once (the upload)."""
        self.static.reset()
        self.pool = torch.cuda.graph_pool_handle()
        with frozen_gc(self.freeze_gc):
            for n in reversed(self.buckets):
                self.graphs[n], self.outputs[n] = recipes.capture(lambda: self.step(n), pool=self.pool,
                                                                  warmup=self.warmup_iters)
                self.capture_order.append(n)
        for n in self.buckets:
            self.graphs[n].replay()
        torch.cuda.synchronize()

    def recapture(self) -> None:
        """Drop every graph and capture again (after the pool moved, for example)."""
        for g in self.graphs.values():
            g.reset()
        self.graphs.clear()
        self.outputs.clear()
        self.inputs.clear()
        self.capture_order.clear()
        self.warm_up()

    # -- serving --------------------------------------------------------------------------
    def can_run(self, n: int) -> bool:
        return 1 <= n <= self.max_batch

    def bucket_for(self, n: int) -> int:
        """The smallest bucket that holds ``n`` rows."""
        return self.buckets[bisect.bisect_left(self.buckets, n)]

    def __call__(self, batch: DecodeBatch):
        n = batch.size
        if not self.can_run(n):
            self.eager_calls += 1
            return self.model.decode(self.kv, batch)
        bucket = self.bucket_for(n)
        self.fill(batch)
        self.pad(n, bucket)
        self.graphs[bucket].replay()
        self.replays += 1
        return self.output(bucket, n)

    def fill(self, batch: DecodeBatch) -> None:
        """The batch into the static inputs, by ``copy_``; the attention metadata (``seq_lens``, ``table``)
        with it, refreshed before every replay."""
        fill_rows(self.static, batch)

    def pad(self, n: int, bucket: int) -> None:
        """Rows ``n..bucket`` become safe padding."""
        pad_rows(self.static, n, bucket)

    def output(self, bucket: int, n: int):
        """The real rows of the bucket's output, cloned: the next replay overwrites the output."""
        return self.outputs[bucket][:n].clone()


def memory_reserved() -> int:
    """Bytes the caching allocator holds from the device (the simulator models it)."""
    torch.cuda.synchronize()
    return int(torch.cuda.memory_reserved())


def measure_graph_bytes(model, buckets=DEFAULT_BUCKETS, *, freeze_gc: bool = True) -> int:
    """The memory a runner of ``buckets`` holds (its graphs' pool and static inputs), measured by capturing
    it once on a one-slot probe pool, then dropping it. The graphs' memory does not depend on the pool's
    size, so it can be known before the pool is sized."""
    from .kvcache import KVPool

    probe = KVPool(model.config, 1, model.embed.device, model.embed.dtype)
    torch.cuda.empty_cache()
    before = memory_reserved()
    runner = DecodeGraphRunner(model, probe, buckets, freeze_gc=freeze_gc)
    used = memory_reserved() - before
    for g in runner.graphs.values():
        g.reset()
    del runner, probe
    gc.collect()
    torch.cuda.empty_cache()
    return used


COMPILE_SKIPPED = "torch.compile(mode=\"reduce-overhead\"): skipped on the simulator (it compiles kernels for a real GPU)"


def compiled_decode(model, kv, *, static_pool: bool):
    """The decode step through ``torch.compile(mode="reduce-overhead")`` (PyTorch's CUDA graph trees).

    The compiled function takes the KV pool's tensors as inputs, with the batch, and writes them in
    place. CUDA graph trees refuse to graph a function that writes an input in place ("skipping
    cudagraphs due to mutated inputs"): every call then runs the compiled kernels without a graph.
    ``static_pool=True`` marks the pool's tensors as static addresses
    (``torch._dynamo.mark_static_address``), as parameters are: their addresses become part of the
    recorded graph, and writing them in place is allowed. On the simulator, its model of CUDA
    graph trees (``simulator/compile.py``) follows the same rules.
    """
    if static_pool:
        torch._dynamo.mark_static_address(kv.k)
        torch._dynamo.mark_static_address(kv.v)

    def step(k, v, tokens, positions, seq_lens, out_slots, table):
        pool = _PoolView(k, v)
        return model.decode(pool, DecodeBatch(tokens, positions, seq_lens, out_slots, table))

    compiled = torch.compile(step, mode="reduce-overhead")

    def call(batch: DecodeBatch):
        return compiled(kv.k, kv.v, *(getattr(batch, f) for f in DecodeBatch.FIELDS)).clone()

    return call


class _PoolView:
    """The two tensors of a KV pool, as the model reads them."""

    def __init__(self, k, v):
        self.k, self.v = k, v


def cudagraph_skips() -> int:
    """How many times CUDA graph trees declined to graph a compiled function in this process."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])
