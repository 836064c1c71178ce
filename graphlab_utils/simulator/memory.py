"""A model of PyTorch's CUDA caching allocator, over CPU storages.

Why the simulator needs one: the lessons' memory traps (a freed input whose block is handed
to the next tensor, a pool compacted behind a graph's back, graphs sharing a private pool)
are about *which bytes sit at an address*. Every tensor the simulator creates lives in a
`Block` that the allocator owns; a block is free when no tensor uses its storage any more
(the storage's use count falls back to the allocator's own reference), and a free block is
handed to the next allocation of a fitting size, bytes and all, exactly as a GPU's caching
allocator reuses freed memory. Graphs refer to blocks, not to tensors, so a replay reads
whatever the block holds now.
"""
from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field

import torch

ROUND_BYTES = 512  # PyTorch rounds every CUDA allocation up to 512 bytes
MAX_CACHED_FREE_BYTES = 512 * 2**20  # beyond this, free blocks of the default pool are dropped


def round_size(nbytes: int) -> int:
    return max(ROUND_BYTES, -(-nbytes // ROUND_BYTES) * ROUND_BYTES)


class Block:
    """One allocation of the simulated device: a CPU storage the allocator keeps a reference to."""

    __slots__ = ("storage", "nbytes", "pool", "released", "__weakref__")

    def __init__(self, storage: torch.UntypedStorage, pool: "Pool"):
        self.storage = storage
        self.nbytes = round_size(storage.nbytes())
        self.pool = pool
        self.released = False  # given back to the device (empty_cache): its bytes are gone

    @property
    def address(self) -> int:
        return self.storage.data_ptr()

    def in_use(self) -> bool:
        # The allocator's own `self.storage` is one reference; any tensor on it adds one.
        return torch._C._storage_Use_Count(self.storage._cdata) > 1

    def view(self, dtype: torch.dtype, size, stride, offset: int) -> torch.Tensor:
        """A tensor over this block's bytes (what a kernel argument pointing here reads)."""
        t = torch.empty(0, dtype=dtype)
        t.set_(self.storage, offset, size, stride)
        return t


@dataclass(eq=False)
class Pool:
    """A memory pool: the default one, or a graph's private pool (`graph_pool_handle()`)."""

    handle: tuple
    private: bool
    by_size: dict = field(default_factory=dict)  # rounded nbytes -> [Block]
    sizes: list = field(default_factory=list)  # sorted keys of by_size
    users: int = 0  # graphs that keep this private pool alive

    def blocks(self):
        return itertools.chain.from_iterable(self.by_size.values())

    def add(self, block: Block) -> None:
        if block.nbytes not in self.by_size:
            bisect.insort(self.sizes, block.nbytes)
            self.by_size[block.nbytes] = []
        self.by_size[block.nbytes].append(block)

    def find_free(self, nbytes: int) -> Block | None:
        """Best fit among free blocks of at least `nbytes` (and under twice that: no splitting)."""
        need = round_size(nbytes)
        i = bisect.bisect_left(self.sizes, need)
        while i < len(self.sizes) and self.sizes[i] < 2 * need:
            for block in self.by_size[self.sizes[i]]:
                # the storage itself must be large enough: set_() would grow (and move) it
                if block.storage.nbytes() >= nbytes and not block.in_use():
                    return block
            i += 1
        return None

    def reserved_bytes(self) -> int:
        return sum(b.nbytes for b in self.blocks())

    def allocated_bytes(self) -> int:
        return sum(b.nbytes for b in self.blocks() if b.in_use())

    def release_free(self, keep_bytes: int = 0) -> None:
        """Drop free blocks (as empty_cache does), keeping up to `keep_bytes` of them cached."""
        kept = 0
        for size in list(self.sizes):
            survivors = []
            for block in self.by_size[size]:
                if block.in_use() or kept + block.nbytes <= keep_bytes:
                    if not block.in_use():
                        kept += block.nbytes
                    survivors.append(block)
                else:
                    block.released = True
            if survivors:
                self.by_size[size] = survivors
            else:
                del self.by_size[size]
                self.sizes.remove(size)


class Allocator:
    def __init__(self) -> None:
        self.default = Pool(handle=(0, 0), private=False)
        self.private: dict[tuple, Pool] = {}
        self._next_id = itertools.count(1)
        self.peak_allocated = 0
        # StorageImpl (storage._cdata) -> block: stable even if a storage is resized and moves
        self.block_of: dict[int, Block] = {}

    # -- pools ------------------------------------------------------------------------
    def new_pool_handle(self) -> tuple:
        return (0, next(self._next_id))

    def pool(self, handle: tuple | None) -> Pool:
        if handle is None:
            return self.default
        if handle not in self.private:
            self.private[handle] = Pool(handle=handle, private=True)
        return self.private[handle]

    def drop_pool_if_unused(self, pool: Pool) -> None:
        if pool.private and pool.users <= 0:
            pool.release_free()
            if not pool.by_size:
                self.private.pop(pool.handle, None)

    # -- allocation -------------------------------------------------------------------
    def adopt(self, t: torch.Tensor, pool: Pool) -> torch.Tensor:
        """Give a fresh op output a block: reuse a free one (copying the bytes in) or keep its own."""
        if t.layout != torch.strided or t.is_quantized:
            return t
        storage = t.untyped_storage()
        if storage.nbytes() == 0 or storage._cdata in self.block_of:
            return t
        block = pool.find_free(storage.nbytes())
        if block is not None:
            out = block.view(t.dtype, t.size(), t.stride(), t.storage_offset())
            out.copy_(t)
            return out
        block = Block(storage, pool)
        pool.add(block)
        self.block_of[storage._cdata] = block
        if not pool.private:
            self._trim_default()
        return t

    def empty(self, size, stride, dtype, pool: Pool) -> torch.Tensor:
        """Uninitialised memory from `pool`: a reused block keeps its old bytes, as on a GPU."""
        extent = 0 if not all(size) else 1 + sum((n - 1) * st for n, st in zip(size, stride))
        nbytes = extent * torch.empty((), dtype=dtype).element_size()
        block = pool.find_free(nbytes) if nbytes else None
        if block is None:
            storage = torch.UntypedStorage(max(nbytes, 1))
            torch.empty(0, dtype=torch.uint8).set_(storage).zero_()  # fresh device pages read as zeros
            block = Block(storage, pool)
            pool.add(block)
            self.block_of[storage._cdata] = block
        return block.view(dtype, size, stride, 0)

    def register(self, t: torch.Tensor) -> Block | None:
        """Track a tensor made outside the simulator (before install, or by a path it cannot see)."""
        if t.layout != torch.strided or t.untyped_storage().nbytes() == 0:
            return None
        block = Block(t.untyped_storage(), self.default)
        self.default.add(block)
        self.block_of[block.storage._cdata] = block
        return block

    def block_for(self, t: torch.Tensor) -> Block | None:
        storage = t.untyped_storage()
        return self.block_of.get(storage._cdata)

    def _trim_default(self) -> None:
        free = self.default.reserved_bytes() - self.default.allocated_bytes() if len(self.block_of) % 256 == 0 else 0
        if free > MAX_CACHED_FREE_BYTES:
            self.default.release_free(MAX_CACHED_FREE_BYTES // 2)
            self._forget_dropped()

    def _forget_dropped(self) -> None:
        live = {id(b) for p in [self.default, *self.private.values()] for b in p.blocks()}
        self.block_of = {a: b for a, b in self.block_of.items() if id(b) in live}

    def empty_cache(self) -> None:
        self.default.release_free()
        for pool in list(self.private.values()):
            self.drop_pool_if_unused(pool)
        self._forget_dropped()

    # -- statistics ---------------------------------------------------------------------
    def pools(self):
        return [self.default, *self.private.values()]

    def allocated_bytes(self) -> int:
        now = sum(p.allocated_bytes() for p in self.pools())
        self.peak_allocated = max(self.peak_allocated, now)
        return now

    def reserved_bytes(self) -> int:
        return sum(p.reserved_bytes() for p in self.pools())


ALLOCATOR = Allocator()
