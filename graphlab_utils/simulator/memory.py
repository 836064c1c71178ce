"""A model of PyTorch's CUDA caching allocator, over CPU memory.

Why the simulator needs one: the lessons' memory traps (a freed input whose block is handed
to the next tensor, a pool compacted behind a graph's back, graphs sharing a private pool,
the memory a set of captured graphs holds) are about *which bytes sit at an address* and
*how much a pool reserves*. So the model follows PyTorch's rules:

- memory is reserved in segments: 2 MiB for requests up to 1 MiB, 20 MiB for requests up
  to 10 MiB, larger requests rounded up to 2 MiB; every request is rounded up to 512 bytes;
- a request takes the smallest free block that fits among the blocks of its pool and of
  the stream it runs on (small or large list), split when the rest is worth keeping; a
  freed block merges with free neighbours;
- each graph capture allocates from a private pool; pools are separate unless shared with
  `pool=`; `empty_cache()` gives back segments that are wholly free (a private pool's only
  once no graph uses it).

A tensor handed out by the allocator owns a storage of its own that aliases its block's
bytes (a NumPy view of the segment); when the last tensor on that storage dies, the block
is free, and the next allocation can take it, bytes and all.

It keeps PyTorch's statistics (``torch.cuda.memory_stats()``: allocations, segments, active
blocks and their bytes, per small and large pool, current, peak, allocated and freed), its
snapshot (``torch.cuda.memory_snapshot()``), and the GPU's capacity (from the calibration
file): a request that would reserve more raises PyTorch's out-of-memory error. ``PINNED`` is
the same model for page-locked host memory (``pin_memory()``), without a capacity.
"""
from __future__ import annotations

import bisect
import collections
import itertools
import threading
import weakref

import numpy as np
import torch

MIN_BLOCK = 512  # every request is rounded up to this
SMALL_SIZE = 1 << 20  # requests up to this come from small (2 MiB) segments
SMALL_BUFFER = 2 << 20
MIN_LARGE_ALLOC = 10 << 20
LARGE_BUFFER = 20 << 20
ROUND_LARGE = 2 << 20


def round_size(nbytes: int) -> int:
    return max(MIN_BLOCK, -(-nbytes // MIN_BLOCK) * MIN_BLOCK)


def segment_size(size: int) -> int:
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


class Segment:
    """One reservation (cudaMalloc) of device memory."""

    _ids = itertools.count(1)

    def __init__(self, size: int, pool: "Pool", stream_id: int):
        self.id = next(Segment._ids)
        self.stream_id = stream_id  # PyTorch reuses a block only on the stream it was made for
        self.memory = np.zeros(size, dtype=np.uint8)  # fresh device pages read as zeros
        self.size = size
        self.pool = pool
        self.released = False  # given back with empty_cache: its bytes are gone
        self.blocks: list[Block] = []  # ordered by offset

    @property
    def address(self) -> int:
        return self.memory.ctypes.data


class Block:
    __slots__ = ("segment", "offset", "size", "live", "requested", "stream_uses", "__weakref__")

    def __init__(self, segment: Segment, offset: int, size: int):
        self.segment, self.offset, self.size, self.live = segment, offset, size, False
        self.requested = 0  # the bytes asked for (size is rounded up)
        self.stream_uses: set = set()  # other streams that used it (Tensor.record_stream)

    @property
    def address(self) -> int:
        return self.segment.address + self.offset

    @property
    def small(self) -> bool:
        return self.segment.size == SMALL_BUFFER

    def sort_key(self):
        return (self.segment.stream_id, self.size, self.segment.id, self.offset)


class Pool:
    """A memory pool: the default one, or a graph's private pool (`graph_pool_handle()`)."""

    def __init__(self, handle: tuple, private: bool):
        self.handle, self.private = handle, private
        self.segments: list[Segment] = []
        self.free_small: list = []  # sorted (stream id, size, segment id, offset, block)
        self.free_large: list = []
        self.users = 0  # graphs that keep this private pool alive

    def _free_list(self, small: bool) -> list:
        return self.free_small if small else self.free_large

    def add_free(self, block: Block) -> None:
        bisect.insort(self._free_list(block.small), (*block.sort_key(), block))

    def remove_free(self, block: Block) -> None:
        lst = self._free_list(block.small)
        i = bisect.bisect_left(lst, block.sort_key())
        while i < len(lst) and lst[i][4] is not block:
            i += 1
        if i < len(lst):
            del lst[i]

    def best_fit(self, size: int, stream_id: int) -> Block | None:
        lst = self._free_list(size <= SMALL_SIZE)
        i = bisect.bisect_left(lst, (stream_id, size, -1, -1))
        return lst[i][4] if i < len(lst) and lst[i][0] == stream_id else None

    def reserved_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def allocated_bytes(self) -> int:
        return sum(b.size for s in self.segments for b in s.blocks if b.live)


# The statistics torch.cuda.memory_stats() reports, each per pool kind and as current / peak /
# allocated (cumulative increments) / freed (cumulative decrements).
STATS = ("allocation", "segment", "active", "allocated_bytes", "reserved_bytes", "active_bytes", "requested_bytes")
POOL_KINDS = ("all", "small_pool", "large_pool")


def format_size(nbytes: int) -> str:
    """Sizes as PyTorch's allocator prints them in its errors."""
    if nbytes <= 1024:
        return f"{nbytes} bytes"
    if nbytes <= 1 << 20:
        return f"{nbytes / 1024:.2f} KiB"
    if nbytes <= 1 << 30:
        return f"{nbytes / (1 << 20):.2f} MiB"
    return f"{nbytes / (1 << 30):.2f} GiB"


class Stats(dict):
    """``torch.cuda.memory_stats()``: a missing key names what the simulator models."""

    def __missing__(self, key):
        raise KeyError(
            f"[graphlab simulator] memory_stats() has no {key!r}: the simulator models "
            f"{', '.join(STATS)} (each .all/.small_pool/.large_pool and .current/.peak/.allocated/.freed), "
            "num_ooms and num_device_alloc/num_device_free")


class Allocator:
    def __init__(self, capacity=None) -> None:
        self.capacity = capacity  # bytes the device holds (a callable giving them), None: no limit
        self.default = Pool(handle=(0, 0), private=False)
        self.private: dict[tuple, Pool] = {}
        self._next_id = itertools.count(1)
        self.live_by_address: dict[int, Block] = {}  # address of a live block -> block
        self._freed = collections.deque()  # blocks whose last tensor died, merged lazily
        self._counts = collections.Counter()  # "stat.kind.current|allocated|freed" -> number
        self._peaks = collections.Counter()  # "stat.kind" -> peak of current
        self.raw: dict[int, torch.Tensor] = {}  # caching_allocator_alloc: address -> the tensor holding it
        self.lock = threading.RLock()
        self.busy = None  # busy(stream_ids) -> bool: may a freed block used by those streams not be reused yet?
        self._deferred: list = []  # freed blocks that wait for the streams that used them

    def reset(self) -> None:
        """Forget every pool and block: the state of a fresh process (tensors alive keep their bytes)."""
        busy = self.busy
        self.__init__(self.capacity)
        self.busy = busy

    # -- statistics ---------------------------------------------------------------------
    def _count(self, stat: str, small: bool, delta: int) -> None:
        for kind in ("all", "small_pool" if small else "large_pool"):
            key = f"{stat}.{kind}"
            self._counts[key + ".current"] += delta
            self._counts[key + (".allocated" if delta > 0 else ".freed")] += abs(delta)
            if self._counts[key + ".current"] > self._peaks[key]:
                self._peaks[key] = self._counts[key + ".current"]

    def _count_block(self, block: "Block", sign: int, stats=("allocation", "active")) -> None:
        small = block.small
        for stat in stats:
            self._count(stat, small, sign)
            self._count(f"{stat}_bytes" if stat == "active" else "allocated_bytes", small, sign * block.size)
        if "allocation" in stats:
            self._count("requested_bytes", small, sign * block.requested)

    def _count_segment(self, seg: "Segment", sign: int) -> None:
        small = seg.size == SMALL_BUFFER
        self._count("segment", small, sign)
        self._count("reserved_bytes", small, sign * seg.size)
        self._counts["num_device_alloc" if sign > 0 else "num_device_free"] += 1

    def memory_stats(self) -> dict:
        """``torch.cuda.memory_stats()``: current, peak, allocated and freed of each statistic."""
        self._collect()
        out = Stats()
        for stat in STATS:
            for kind in POOL_KINDS:
                key = f"{stat}.{kind}"
                for what in ("current", "peak", "allocated", "freed"):
                    value = self._peaks[key] if what == "peak" else self._counts[f"{key}.{what}"]
                    out[f"{key}.{what}"] = int(value)
        for key in ("num_ooms", "num_device_alloc", "num_device_free", "num_alloc_retries"):
            out[key] = int(self._counts[key])
        return Stats(sorted(out.items()))

    def reset_peaks(self) -> None:
        self._collect()
        for key in list(self._peaks):
            self._peaks[key] = self._counts[key + ".current"]

    def reset_accumulated(self) -> None:
        for key in list(self._counts):
            if key.endswith((".allocated", ".freed")) or key.startswith("num_"):
                self._counts[key] = 0

    def snapshot(self) -> list:
        """``torch.cuda.memory_snapshot()``: one dict per segment, with its blocks."""
        self._collect()
        out = []
        for pool in self.pools():
            for seg in pool.segments:
                blocks = [{"address": b.address, "size": b.size, "requested_size": b.requested if b.live else 0,
                           "state": "active_allocated" if b.live else "inactive", "frames": []} for b in seg.blocks]
                live = [b for b in seg.blocks if b.live]
                out.append({
                    "device": 0, "address": seg.address, "total_size": seg.size, "stream": seg.stream_id,
                    "segment_type": "small" if seg.size == SMALL_BUFFER else "large",
                    "segment_pool_id": pool.handle, "is_expandable": False, "frames": [],
                    "allocated_size": sum(b.size for b in live), "active_size": sum(b.size for b in live),
                    "requested_size": sum(b.requested for b in live), "blocks": blocks,
                })
        return out

    # -- pools ------------------------------------------------------------------------
    def new_pool_handle(self) -> tuple:
        return (0, next(self._next_id))

    def pool(self, handle: tuple | None) -> Pool:
        if handle is None:
            return self.default
        if handle not in self.private:
            self.private[handle] = Pool(handle=handle, private=True)
        return self.private[handle]

    def pools(self) -> list[Pool]:
        return [self.default, *self.private.values()]

    # -- allocation -------------------------------------------------------------------
    def _on_free(self, block: Block) -> None:
        self._freed.append(block)  # called from a finalizer: defer the bookkeeping

    def _collect(self) -> None:
        with self.lock:
            while self._freed:
                block = self._freed.popleft()
                if not block.live:
                    continue
                block.live = False
                self.live_by_address.pop(block.address, None)
                if block.stream_uses and self.busy is not None:
                    # Freed, but another stream used it: it stays active until that stream's work is done.
                    self._count_block(block, -1, stats=("allocation",))
                    self._deferred.append(block)
                    continue
                self._count_block(block, -1)
                self._merge_and_free(block)
            if self._deferred and not self.busy(set().union(*(b.stream_uses for b in self._deferred))):
                for block in self._deferred:
                    self._count_block(block, -1, stats=("active",))
                    block.stream_uses = set()
                    self._merge_and_free(block)
                self._deferred = []

    def record_use(self, t: torch.Tensor, stream_id: int) -> None:
        """``t`` is used on stream ``stream_id``: its block waits for that stream when it is freed."""
        block = self.block_at(t)
        if block is not None and block.segment.stream_id != stream_id:
            block.stream_uses.add(stream_id)

    def _merge_and_free(self, block: Block) -> None:
        seg = block.segment
        pool = seg.pool
        i = seg.blocks.index(block)
        for j in (i + 1, i - 1):  # merge the right neighbour first, then the left
            if 0 <= j < len(seg.blocks):
                other = seg.blocks[j]
                if not other.live and other is not block:
                    pool.remove_free(other)
                    block.offset = min(block.offset, other.offset)
                    block.size += other.size
                    seg.blocks.remove(other)
        pool.add_free(block)

    def _take(self, size: int, pool: Pool, stream_id: int, requested: int | None = None) -> Block:
        self._collect()
        block = pool.best_fit(size, stream_id)
        if block is None:
            seg_size = segment_size(size)
            self._check_capacity(size, seg_size)
            seg = Segment(seg_size, pool, stream_id)
            pool.segments.append(seg)
            self._count_segment(seg, +1)
            block = Block(seg, 0, seg.size)
            seg.blocks.append(block)
        else:
            pool.remove_free(block)
        rest = block.size - size
        if rest >= (MIN_BLOCK if block.small else SMALL_SIZE + 1):
            seg = block.segment
            tail = Block(seg, block.offset + size, rest)
            seg.blocks.insert(seg.blocks.index(block) + 1, tail)
            block.size = size
            pool.add_free(tail)
        block.live = True
        block.requested = size if requested is None else requested
        self._count_block(block, +1)
        self.live_by_address[block.address] = block
        return block

    def limit(self) -> int | None:
        """The bytes the device holds (None: no limit)."""
        return self.capacity() if callable(self.capacity) else self.capacity

    def _check_capacity(self, size: int, seg_size: int) -> None:
        """A new segment beyond the device's memory: free the cached segments, then PyTorch's OOM error."""
        limit = self.limit()
        if not limit or self.reserved_bytes() + seg_size <= limit:
            return
        self._release_cached()
        reserved = self.reserved_bytes()
        if reserved + seg_size <= limit:
            return
        self._counts["num_ooms"] += 1
        allocated = self.allocated_bytes()
        raise torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate {format_size(size)}. GPU 0 has a total capacity of "
            f"{format_size(limit)} of which {format_size(max(limit - reserved, 0))} is free. Of the allocated memory "
            f"{format_size(allocated)} is allocated by PyTorch, and {format_size(reserved - allocated)} is reserved "
            "by PyTorch but unallocated.\n[graphlab simulator] the device's memory is the calibration GPU's; "
            "free tensors (and graphs) you no longer need, or make the request smaller.")

    def check_request(self, nbytes: int) -> None:
        """Raise the out-of-memory error now for a request no segment could hold (before the host allocates it)."""
        size = round_size(nbytes)
        with self.lock:
            self._collect()
            if self.default.best_fit(size, 0) is None:
                self._check_capacity(size, segment_size(size))

    # -- raw allocations (torch.cuda.caching_allocator_alloc) ----------------------------------
    def raw_alloc(self, nbytes: int, stream_id: int = 0) -> int:
        t = self.empty((max(int(nbytes), 1),), (1,), torch.uint8, self.default, stream_id)
        address = t.untyped_storage().data_ptr()
        self.raw[address] = t
        return address

    def raw_delete(self, address: int) -> None:
        if self.raw.pop(int(address), None) is None:
            raise RuntimeError(f"invalid device pointer: {int(address):#x}")
        self._collect()

    def would_grow(self, nbytes: int, pool: Pool, stream_id: int = 0) -> bool:
        """Would this request need a new segment (a cudaMalloc)?"""
        self._collect()
        return pool.best_fit(round_size(nbytes), stream_id) is None

    def _tensor_on(self, block: Block, nbytes: int, dtype, size, stride) -> torch.Tensor:
        view = block.segment.memory[block.offset : block.offset + max(nbytes, 1)]
        weakref.finalize(view, self._on_free, block)  # fires when the last tensor on it dies
        storage = torch.from_numpy(view).untyped_storage()
        return torch.empty(0, dtype=dtype).set_(storage, 0, size, stride)

    def empty(self, size, stride, dtype, pool: Pool, stream_id: int = 0) -> torch.Tensor:
        """Uninitialised memory from `pool`: a reused block keeps its old bytes, as on a GPU."""
        elem = torch.empty((), dtype=dtype).element_size()
        extent = 0 if not all(size) else 1 + sum((n - 1) * st for n, st in zip(size, stride))
        nbytes = extent * elem
        with self.lock:
            block = self._take(round_size(nbytes), pool, stream_id, nbytes)
        return self._tensor_on(block, nbytes, dtype, tuple(size), tuple(stride))

    def adopt(self, t: torch.Tensor, pool: Pool, stream_id: int = 0) -> torch.Tensor:
        """Move a fresh op output into allocator memory (what a GPU kernel's output would be)."""
        if t.layout != torch.strided or t.is_quantized:
            return t
        out = self.empty(tuple(t.size()), tuple(t.stride()), t.dtype, pool, stream_id)
        out.copy_(t)
        return out

    def block_at(self, t: torch.Tensor) -> Block | None:
        """The live block a tensor's storage sits in (None for memory the allocator never gave)."""
        self._collect()
        return self.live_by_address.get(t.untyped_storage().data_ptr())

    # -- giving memory back ---------------------------------------------------------------
    def empty_cache(self) -> None:
        with self.lock:
            self._release_cached()

    def _release_cached(self) -> None:
        self._collect()
        for pool in self.pools():
            if pool.private and pool.users > 0:
                continue
            for seg in list(pool.segments):
                if all(not b.live for b in seg.blocks):
                    for b in seg.blocks:
                        pool.remove_free(b)
                    seg.released = True
                    pool.segments.remove(seg)
                    self._count_segment(seg, -1)
            if pool.private and not pool.segments:
                self.private.pop(pool.handle, None)

    def release_user(self, pool: Pool) -> None:
        """A graph using `pool` was reset or deleted; its memory goes back at empty_cache()."""
        pool.users -= 1

    # -- totals -------------------------------------------------------------------------
    def allocated_bytes(self) -> int:
        self._collect()
        return self._counts["allocated_bytes.all.current"]

    def reserved_bytes(self) -> int:
        self._collect()
        return self._counts["reserved_bytes.all.current"]

    @property
    def peak_allocated(self) -> int:
        self._collect()
        return self._peaks["allocated_bytes.all"]


def _device_capacity() -> int | None:
    """The calibration GPU's memory in bytes (None when the calibration file does not record it)."""
    from .clock import cost_model

    gib = getattr(cost_model(), "gpu_memory_gib", 0.0)
    return int(gib * (1 << 30)) if gib else None


ALLOCATOR = Allocator(capacity=_device_capacity)
PINNED = Allocator()  # page-locked host memory: pin_memory() and pin_memory=True
