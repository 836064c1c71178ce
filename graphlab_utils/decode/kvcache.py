"""The capstone's memory: a KV pool allocated once, a request-to-slots table, and a decode batch.

* :class:`KVPool`: the keys and values of every layer for ``num_slots`` tokens, two tensors
  of shape ``(layers, slots, kv_heads, head_dim)`` allocated once at start-up. A request owns
  one slot per token of its cache, anywhere in the pool (pages of one token, as SGLang's
  token-to-KV pool). Slot 0 is the **scratch slot** (SGLang reserves it the same way): no
  request ever owns it, so the padding rows of a graph write there. :meth:`KVPool.defragment`
  compacts the live slots, either into new tensors (the addresses move) or in place.
* :class:`SlotTable`: which slots hold each request's tokens, kept on the host; row 0 is the
  padding row (every entry the scratch slot).
* :class:`DecodeBatch`: the inputs of one decode step on the device: ``tokens``,
  ``positions``, ``seq_lens``, ``out_slots`` (B,) and ``table`` (B, W), built from host lists
  with one copy (:func:`make_batch`).
* :func:`plan_memory`: how many slots fit in the free memory once the graphs' own memory is
  set aside (:class:`MemoryPlan`); :func:`free_device_memory` asks the GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch

from graphlab_utils.errors import GraphlabError

__all__ = [
    "SCRATCH_SLOT",
    "KVPoolFull",
    "KVPool",
    "SlotTable",
    "DecodeBatch",
    "make_batch",
    "MemoryPlan",
    "plan_memory",
    "free_device_memory",
]

SCRATCH_SLOT = 0


class KVPoolFull(GraphlabError, RuntimeError):
    """The pool has fewer free slots than asked for."""


class KVPool:
    """Keys and values for ``num_slots`` tokens, allocated once (plus the scratch slot 0).

    ``reserve_scratch=False`` builds the pool without a scratch slot: slot 0 then goes to the
    first request, as in a pool written without graphs in mind (the lesson's padding trap).
    """

    def __init__(self, cfg, num_slots: int, device: Any, dtype: torch.dtype = torch.float32,
                 reserve_scratch: bool = True):
        if num_slots < 1:
            raise ValueError("a KV pool needs at least one slot")
        self.config, self.device, self.dtype = cfg, device, dtype
        first = 1 if reserve_scratch else 0
        total = num_slots + first
        shape = (cfg.layers, total, cfg.kv_heads, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.scratch_slot = SCRATCH_SLOT if reserve_scratch else None
        self._first = first
        self._free = list(range(total - 1, first - 1, -1))  # a stack: pop() hands out the lowest slot first

    # -- sizes ---------------------------------------------------------------------------
    @staticmethod
    def bytes_per_slot(cfg, dtype: torch.dtype = torch.float32) -> int:
        """Bytes one token's keys and values take over all layers."""
        return 2 * cfg.layers * cfg.kv_heads * cfg.head_dim * torch.empty((), dtype=dtype).element_size()

    @property
    def capacity(self) -> int:
        """Slots requests can own (the scratch slot not counted)."""
        return self.k.shape[1] - self._first

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    # -- slots ---------------------------------------------------------------------------
    def allocate(self, n: int) -> list:
        """``n`` free slots (the lowest first)."""
        if n > len(self._free):
            raise KVPoolFull(f"the KV pool has {len(self._free)} free slots and {n} were asked for: "
                             "finish or evict requests first, or size the pool larger")
        return [self._free.pop() for _ in range(n)]

    def release(self, slots: Iterable[int]) -> None:
        """Give slots back (a finished request's)."""
        self._free.extend(sorted(slots, reverse=True))
        self._free.sort(reverse=True)

    # -- defragmentation -----------------------------------------------------------------
    def defragment(self, table: "SlotTable", in_place: bool = True) -> dict:
        """Move the live slots of ``table``'s requests to the lowest slots, in their order; rewrite the
        table and the free list. Returns ``{old slot: new slot}``.

        ``in_place=True`` moves them inside the same tensors: every address stays. ``in_place=False``
        copies them into newly allocated tensors and drops the old ones, as a pool that "compacts into
        fresh memory" would: ``self.k`` and ``self.v`` then live at new addresses.
        """
        live = [s for rid in table.requests() for s in table.slots(rid)]
        mapping = {old: self._first + i for i, old in enumerate(live)}
        src = torch.tensor(live, dtype=torch.int64).to(self.device)
        dst = torch.tensor([mapping[s] for s in live], dtype=torch.int64).to(self.device)
        keys, values = self.k.index_select(1, src), self.v.index_select(1, src)  # gathered first: moves may overlap
        if in_place:
            self.k.index_copy_(1, dst, keys)
            self.v.index_copy_(1, dst, values)
        else:
            k, v = torch.zeros_like(self.k), torch.zeros_like(self.v)
            k.index_copy_(1, dst, keys)
            v.index_copy_(1, dst, values)
            self.k, self.v = k, v  # the old tensors are freed: their memory goes back to the allocator
        table.remap(mapping)
        total = self.k.shape[1]
        self._free = list(range(total - 1, self._first + len(live) - 1, -1))
        return mapping


class SlotTable:
    """Request -> slots, on the host. ``width`` is the most tokens one request may hold."""

    def __init__(self, width: int, scratch_slot: int | None = SCRATCH_SLOT):
        self.width = width
        self.pad_slot = 0 if scratch_slot is None else scratch_slot
        self._slots: dict = {}

    def add(self, rid, slots: list) -> None:
        if rid in self._slots:
            raise ValueError(f"request {rid} is already in the table")
        self._check(len(slots))
        self._slots[rid] = list(slots)

    def append(self, rid, slot: int) -> None:
        self._check(len(self._slots[rid]) + 1)
        self._slots[rid].append(slot)

    def _check(self, n: int) -> None:
        if n > self.width:
            raise KVPoolFull(f"a request of {n} tokens does not fit the table's {self.width} columns: "
                             "raise the config's max_context")

    def remove(self, rid) -> list:
        return self._slots.pop(rid)

    def slots(self, rid) -> list:
        return self._slots[rid]

    def requests(self) -> list:
        return list(self._slots)

    def row(self, rid) -> list:
        """The request's slots, padded to ``width`` with the padding slot."""
        slots = self._slots[rid]
        return slots + [self.pad_slot] * (self.width - len(slots))

    def remap(self, mapping: dict) -> None:
        for rid, slots in self._slots.items():
            self._slots[rid] = [mapping.get(s, s) for s in slots]


@dataclass
class DecodeBatch:
    """The inputs of one decode step, on the device: (B,) int64 each, and ``table`` (B, W)."""

    tokens: torch.Tensor
    positions: torch.Tensor
    seq_lens: torch.Tensor
    out_slots: torch.Tensor
    table: torch.Tensor

    FIELDS = ("tokens", "positions", "seq_lens", "out_slots", "table")

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])

    def __len__(self) -> int:
        return self.size


def make_batch(tokens: list, positions: list, seq_lens: list, out_slots: list, table_rows: list,
               device: Any) -> DecodeBatch:
    """A :class:`DecodeBatch` from host lists: packed into one host tensor, moved with one copy, then split."""
    b = len(tokens)
    width = len(table_rows[0]) if table_rows else 0
    flat = [*tokens, *positions, *seq_lens, *out_slots]
    for row in table_rows:
        flat.extend(row)
    packed = torch.tensor(flat, dtype=torch.int64).to(device)
    return DecodeBatch(packed[0:b], packed[b:2 * b], packed[2 * b:3 * b], packed[3 * b:4 * b],
                       packed[4 * b:].view(b, width))


# -- sizing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryPlan:
    """How the KV pool was sized."""

    free_bytes: int  # free device memory before the pool (after the weights)
    graph_bytes: int  # memory the decode graphs take, set aside first
    fraction: float  # the share of the rest the pool may take
    bytes_per_slot: int
    slots: int
    limited_by: str  # "free memory" or "max_slots"

    @property
    def pool_bytes(self) -> int:
        return self.slots * self.bytes_per_slot

    def describe(self) -> str:
        return (f"free {_size(self.free_bytes)} - graphs {_size(self.graph_bytes)}, x {self.fraction:g} "
                f"-> {self.slots} slots of {self.bytes_per_slot} B = {_size(self.pool_bytes)} "
                f"(limited by {self.limited_by})")


def _size(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


def free_device_memory() -> int:
    """Free device memory in bytes, from ``torch.cuda.mem_get_info()`` (the simulator models it: the
    calibration GPU's memory less what its allocator holds)."""
    return int(torch.cuda.mem_get_info()[0])


def plan_memory(cfg, graph_bytes: int, free_bytes: int | None = None, fraction: float = 0.9,
                max_slots: int | None = None, dtype: torch.dtype = torch.float32) -> MemoryPlan:
    """Slots for the KV pool: ``fraction`` of what is free once ``graph_bytes`` are set aside, at most
    ``max_slots``. ``free_bytes`` defaults to :func:`free_device_memory`."""
    free = free_device_memory() if free_bytes is None else int(free_bytes)
    per_slot = KVPool.bytes_per_slot(cfg, dtype)
    fits = max(0, int((free - graph_bytes) * fraction) // per_slot)
    if max_slots is not None and max_slots < fits:
        return MemoryPlan(free, int(graph_bytes), fraction, per_slot, int(max_slots), "max_slots")
    if fits < 1:
        raise KVPoolFull(f"no KV slot fits: {free} bytes free, {graph_bytes} for the graphs: "
                         "free device memory, or capture fewer or smaller buckets")
    return MemoryPlan(free, int(graph_bytes), fraction, per_slot, fits, "free memory")
