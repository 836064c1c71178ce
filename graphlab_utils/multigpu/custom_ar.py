"""A toy custom all-reduce that reads the peers' buffers directly, as vLLM's and SGLang's do.

NCCL moves data through its own buffers. For the small all-reduces of a decode step, vLLM and
SGLang use a *custom* all-reduce instead: each GPU reads the other GPUs' input buffers over
NVLink and sums them itself, one kernel, no copies through NCCL. That needs the address of
every peer's buffer in every process (CUDA IPC), and it changes how graphs are captured:

* **eager**, the input is first copied into a *staging* buffer that every rank registered at
  start-up, so the peers know where to read;
* **inside a capture** the copy is skipped: the kernel reads the graph's own buffer. Its
  address on each peer is only known once every rank has captured, so the kernel reads the
  peers' addresses from a *table* in device memory at replay, and after the capture the ranks
  exchange their addresses and fill the table (vLLM: ``register_graph_buffers()`` at the end
  of ``custom_all_reduce.capture()``). This is pointer baking across processes: a replay reads
  whatever the table says; when a buffer moves, every rank's table must be filled again,
  together, in the same order.

This toy keeps that structure in PyTorch operations. Each rank's registered memory is one
*arena* of symmetric memory (``torch.distributed._symmetric_memory`` on GPUs, its twin in
shared memory files on the simulator), mapped by every rank; a buffer is a slice of it at an
offset that differs between ranks. The "kernel" is a barrier, one ``index_select`` per peer at
the offsets the table holds (read at replay, like vLLM's ``RankData``), a sum, and a barrier
that keeps a rank from overwriting its buffer before the peers have read it.

    car = CustomAllReduce(numel=4096)          # collective: every rank maps every arena
    out = car.all_reduce(x)                     # eager: through the staging buffer
    buf = car.buffer(8, 64)                     # registered memory for a graph to write into
    with car.capture():                         # registers the captured buffers on exit
        with torch.cuda.graph(g):
            buf.copy_(partial(x)); out = car.all_reduce(buf)
"""
from __future__ import annotations

import contextlib

import torch

from graphlab_utils import backend
from graphlab_utils.errors import GraphlabError

__all__ = ["CustomAllReduce", "symmetric_memory"]


def _all_gather(output: torch.Tensor, input: torch.Tensor, group) -> None:
    import torch.distributed as dist

    (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(output, input, group=group)


def symmetric_memory():
    """``torch.distributed._symmetric_memory`` on GPUs, the simulator's twin otherwise."""
    if backend.is_simulated():
        from graphlab_utils.simulator.distributed import symmetric_memory as twin

        return twin
    import torch.distributed._symmetric_memory as symm

    return symm


class CustomAllReduce:
    """Sum a tensor over the ranks by reading the peers' registered buffers (see the module docstring)."""

    def __init__(self, numel: int = 4096, buffers: int = 8, slots: int = 64, dtype=torch.float32, group=None):
        import torch.distributed as dist

        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        self.numel, self.dtype = int(numel), dtype
        device = backend.device()
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        total = self.numel * (1 + int(buffers))  # the staging area, then room for the graphs' buffers
        symm = symmetric_memory()
        enable = getattr(symm, "enable_symm_mem_for_group", None)  # PyTorch versions that need it first
        if enable is not None:
            enable(self.group.group_name)
        self.arena = symm.empty(total, dtype=dtype, device=device)
        self._handle = symm.rendezvous(self.arena, self.group)  # collective: every rank maps every arena
        self._peers = [self._handle.get_buffer(r, (total,), dtype) for r in range(self.world_size)]
        # Row k: where the buffer of slot k starts in each rank's arena. Slot 0 is the staging
        # area, at offset 0 everywhere; the rows of captured buffers are filled by registration.
        self._table = torch.zeros(int(slots), self.world_size, dtype=torch.int64, device=device)
        self._arange = torch.arange(self.numel, dtype=torch.int64, device=device)
        self._next = self.numel  # the next free element of this rank's arena
        self._used_slots = 1
        self._pending: list = []  # (slot, offset) of buffers captured and not yet registered
        self.registered = 0  # buffers registered so far

    # -- registered memory -------------------------------------------------------------
    def buffer(self, *shape: int) -> torch.Tensor:
        """A buffer in this rank's registered arena, for a graph to write the all-reduce's input into."""
        count = 1
        for n in shape:
            count *= int(n)
        if count > self.numel:
            raise GraphlabError(f"a buffer of {count} elements is larger than this custom all-reduce's limit of "
                                f"{self.numel}: create it with numel={count} or more")
        if self._next + count > self.arena.numel():
            raise GraphlabError("the custom all-reduce's registered memory is full: create it with a larger "
                                "buffers= count")
        view = self.arena[self._next : self._next + count].view(*shape)
        self._next += count
        return view

    @property
    def unregistered(self) -> int:
        """Buffers captured since the last registration: their table rows are still empty."""
        return len(self._pending)

    def _offset(self, x: torch.Tensor) -> int:
        elem = self.arena.element_size()
        start = (x.data_ptr() - self.arena.data_ptr()) // elem if x.is_contiguous() else -1
        if x.dtype != self.dtype or start < self.numel or start + x.numel() > self.arena.numel():
            raise GraphlabError(
                "inside a capture the custom all-reduce reads the peers' copies of its input directly, so the input "
                "must sit in registered memory: write it into a buffer from car.buffer(...) and pass that buffer"
            )
        return int(start)

    # -- the all-reduce ----------------------------------------------------------------
    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over the ranks, as a new tensor of ``x``'s shape."""
        n = x.numel()
        if n > self.numel:
            raise GraphlabError(f"{n} elements is more than this custom all-reduce's limit of {self.numel}: "
                                f"create it with numel={n} or more")
        if torch.cuda.is_current_stream_capturing():
            slot = self._used_slots
            if slot >= self._table.shape[0]:
                raise GraphlabError("no free slot in the custom all-reduce's table: create it with more slots=")
            self._used_slots += 1
            self._pending.append((slot, self._offset(x)))  # the peers learn this offset at registration
            return self._reduce(slot, n).view(x.shape)
        self.arena[:n].copy_(x.reshape(-1))  # eager: through the staging area every rank knows
        return self._reduce(0, n).view(x.shape)

    def _reduce(self, slot: int, n: int) -> torch.Tensor:
        self._handle.barrier(channel=0)  # every rank has written its input
        where = self._table[slot].unsqueeze(1) + self._arange[:n]  # read from the table at replay
        out = torch.index_select(self._peers[0], 0, where[0])
        for r in range(1, self.world_size):
            out = out + torch.index_select(self._peers[r], 0, where[r])
        self._handle.barrier(channel=0)  # every rank has read: inputs may be overwritten
        return out

    # -- registration ------------------------------------------------------------------
    def register_graph_buffers(self) -> int:
        """Collective: tell every rank where this rank's captured buffers sit, and fill the tables.

        Every rank must have captured the same buffers in the same order. Returns how many
        buffers were registered.
        """
        device = self._table.device
        count = torch.tensor([len(self._pending)], dtype=torch.int64, device=device)
        counts = torch.empty(self.world_size, dtype=torch.int64, device=device)
        _all_gather(counts, count, self.group)
        counts = [int(c) for c in counts.tolist()]
        if len(set(counts)) > 1:
            self._pending.clear()
            seen = ", ".join(f"rank {r}: {c}" for r, c in enumerate(counts))
            raise GraphlabError(f"the ranks captured different numbers of all-reduce buffers ({seen}): capture the "
                                "same graphs in the same order on every rank, then register")
        k = counts[0]
        if k:
            mine = torch.tensor([offset for _, offset in self._pending], dtype=torch.int64, device=device)
            every = torch.empty(self.world_size * k, dtype=torch.int64, device=device)
            _all_gather(every, mine, self.group)
            every = every.view(self.world_size, k)
            for j, (slot, _) in enumerate(self._pending):
                self._table[slot].copy_(every[:, j])
        self._pending.clear()
        self.registered += k
        return k

    def reset_graph_buffers(self) -> None:
        """Forget every captured buffer on this rank (table rows and pending ones).

        Graphs captured before read empty rows afterwards: drop them. Call it on every rank,
        then capture the graphs again in the same order and register them together.
        """
        self._table[1:].zero_()
        self._used_slots = 1
        self._pending.clear()
        self.registered = 0

    @contextlib.contextmanager
    def capture(self):
        """Capture graphs inside; on the way out every rank registers what it captured (vLLM's pattern)."""
        yield self
        self.register_graph_buffers()
