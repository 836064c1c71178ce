"""The decode runner's traps, each a small change to :class:`~.runner.DecodeGraphRunner` that looks
harmless and breaks it. Lesson 11 reproduces each one on the engine, then fixes it; the tests check
that each breaks as the lesson says.

* :class:`RebindingRunner`: fills the static inputs by rebinding names instead of ``copy_``: the
  graphs keep reading the buffers they were captured on.
* :class:`GrowingRunner`: adds a larger bucket at run time by allocating new, larger static inputs,
  pointing every bucket's views at them and capturing only the new bucket: the earlier graphs still
  read the old buffers, which were freed.
* :class:`UnreservedPaddingRunner`: pads with slot 0 in a pool whose slot 0 belongs to a request
  (no scratch slot): the padding rows overwrite that request's cache.
* :class:`NoCloneRunner`: returns a view of the graph's output: the next replay overwrites it.

The other two traps need no code of their own: a pool defragmented into new memory
(``KVPool.defragment(table, in_place=False)``) and a runner captured on a pool that is later
replaced by the real one.
"""
from __future__ import annotations

from graphlab_utils import recipes

from .runner import DecodeGraphRunner, StaticInputs, frozen_gc

__all__ = ["RebindingRunner", "GrowingRunner", "UnreservedPaddingRunner", "NoCloneRunner"]


class RebindingRunner(DecodeGraphRunner):
    """Broken: the batch's tensors replace the static inputs' names; the graphs never see them."""

    def fill(self, batch) -> None:
        for name in StaticInputs.FIELDS:
            setattr(self.static, name, getattr(batch, name))  # a new name binding, the same old addresses in the graph

    def pad(self, n: int, bucket: int) -> None:
        pass  # the rebound tensors have n rows: nothing to pad


class GrowingRunner(DecodeGraphRunner):
    """Broken: ``add_bucket`` reallocates the static inputs for a larger batch and captures that bucket alone."""

    def add_bucket(self, n: int) -> None:
        self.static = StaticInputs(n, self.static.width, self.kv.device, self.pad_slot())
        self.inputs = {b: self.static.rows(b) for b in (*self.buckets, n)}  # new views; the old buffers are freed
        with frozen_gc(self.freeze_gc):
            self.graphs[n], self.outputs[n] = recipes.capture(lambda: self.step(n), pool=self.pool,
                                                              warmup=self.warmup_iters)
        self.buckets = tuple(sorted({*self.buckets, n}))
        self.max_batch = self.buckets[-1]
        self.graphs[n].replay()


class UnreservedPaddingRunner(DecodeGraphRunner):
    """Broken: pads with slot 0 (SGLang's padding value) in a pool built with ``reserve_scratch=False``."""

    def pad_slot(self) -> int:
        return 0 if self.kv.scratch_slot is None else self.kv.scratch_slot


class NoCloneRunner(DecodeGraphRunner):
    """Broken: returns the graph's output itself (a view), which the next replay overwrites."""

    def output(self, bucket: int, n: int):
        return self.outputs[bucket][:n]
