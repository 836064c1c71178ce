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
"""
from __future__ import annotations

import bisect
import collections
import itertools
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
    __slots__ = ("segment", "offset", "size", "live", "__weakref__")

    def __init__(self, segment: Segment, offset: int, size: int):
        self.segment, self.offset, self.size, self.live = segment, offset, size, False

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


class Allocator:
    def __init__(self) -> None:
        self.default = Pool(handle=(0, 0), private=False)
        self.private: dict[tuple, Pool] = {}
        self._next_id = itertools.count(1)
        self.peak_allocated = 0
        self.live_by_address: dict[int, Block] = {}  # address of a live block -> block
        self._freed = collections.deque()  # blocks whose last tensor died, merged lazily

    def reset(self) -> None:
        """Forget every pool and block: the state of a fresh process (tensors alive keep their bytes)."""
        self.__init__()

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
        while self._freed:
            block = self._freed.popleft()
            if not block.live:
                continue
            block.live = False
            self.live_by_address.pop(block.address, None)
            self._merge_and_free(block)

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

    def _take(self, size: int, pool: Pool, stream_id: int) -> Block:
        self._collect()
        block = pool.best_fit(size, stream_id)
        if block is None:
            seg = Segment(segment_size(size), pool, stream_id)
            pool.segments.append(seg)
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
        self.live_by_address[block.address] = block
        return block

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
        block = self._take(round_size(nbytes), pool, stream_id)
        self._note_peak()
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

    def _note_peak(self) -> None:
        if len(self.live_by_address) % 64 == 0:
            self.allocated_bytes()

    # -- giving memory back ---------------------------------------------------------------
    def empty_cache(self) -> None:
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
            if pool.private and not pool.segments:
                self.private.pop(pool.handle, None)

    def release_user(self, pool: Pool) -> None:
        """A graph using `pool` was reset or deleted; its memory goes back at empty_cache()."""
        pool.users -= 1

    # -- statistics ---------------------------------------------------------------------
    def allocated_bytes(self) -> int:
        self._collect()
        now = sum(p.allocated_bytes() for p in self.pools())
        self.peak_allocated = max(self.peak_allocated, now)
        return now

    def reserved_bytes(self) -> int:
        self._collect()
        return sum(p.reserved_bytes() for p in self.pools())


ALLOCATOR = Allocator()
