"""torch.distributed's collectives on the simulator, behaving for a CUDA graph as NCCL does.

On a GPU, NCCL itself turns a collective called during a stream capture into a node of the
graph: nothing is sent while capturing, and each replay runs the collective again, together
with the peers' replays. On the simulator the ranks are CPU processes joined by gloo, and
this module plays NCCL's part. ``install()`` (called by ``simulator.install()``) puts its
functions in place of ``torch.distributed.all_reduce``, ``all_gather_into_tensor``,
``reduce_scatter_tensor``, ``broadcast``, ``barrier`` and ``destroy_process_group``, so
learner code does not change. What it reproduces:

* **capture records, replay communicates.** A collective inside a capture becomes a kernel
  node named like NCCL's (``ncclDevKernel_AllReduce_Sum_f32``) whose arguments are bound to
  addresses, like every simulated node; a replay runs it with gloo on the bytes those
  addresses hold, in step with the peers' replays.
* **the contract of NCCL's guide "Using NCCL with CUDA Graphs".** Whether a collective is
  captured must be the same on every rank, and the ranks must run the same collectives in
  the same order (operation, data type, element count, root). Before each collective the
  ranks compare what they are about to run; where they differ, this rank waits forever, as a
  GPU kernel waiting for peers that never come does. The launcher's timeout ends the wait.
* **the communicator is created lazily.** The first collective of a process group creates
  its NCCL communicator (``ncclCommInitRank``: allocations and more), which cannot happen
  during a capture: outside a capture that first collective creates it; inside, the capture
  fails with the CUDA error NCCL reports (cudaErrorStreamCaptureUnsupported).
* **async_op=True** runs the collective on the process group's own stream, which forks from
  the current one; ``work.wait()`` joins it back. A capture that ends before the join fails
  with cudaErrorStreamCaptureUnjoined. (With ``async_op=False`` PyTorch launches the
  collective on the current stream.)
* **barrier()** waits for the device: inside a capture it is a sync, refused.
* **destroy_process_group()** while a graph that holds the group's collectives is alive:
  NCCL 2.26 and later wait in communicator destruction until every such graph is destroyed,
  so the call never returns. Reset or delete the graphs first.
* **symmetric memory** (:data:`symmetric_memory`): the twin of
  ``torch.distributed._symmetric_memory`` (``empty``, ``rendezvous``, ``get_buffer``,
  ``barrier``) that the course's custom all-reduce uses: buffers every rank can read, here
  files in shared memory mapped by each rank's process.

Timing: a collective is modelled as one kernel that moves through memory what a ring
algorithm moves per rank, at the calibrated memory bandwidth. The calibration holds no
interconnect figures, so the modelled time leaves out the latency of NVLink and of NCCL's
protocol; lessons compare eager and graphed steps, whose difference is the launches.
"""
from __future__ import annotations

import atexit
import itertools
import math
import os
import shutil
import tempfile
import time
import weakref

import torch
from torch.utils._python_dispatch import _disable_current_modes

from .clock import CLOCK, cost_model
from .graphs import _bind, refuse_sync
from .streams import Event, Stream, current_stream

__all__ = ["install", "uninstall", "is_installed", "symmetric_memory", "SimSymmetricMemory", "holders",
           "on_wait", "wait_forever", "WAIT_POLL_S", "RANK_DIR_ENV"]

RANK_DIR_ENV = "GRAPHLAB_RANK_DIR"  # where the ranks of one launch keep their shared-memory files
WAIT_POLL_S = 0.05  # how often a rank that waits forever looks again (destroy_process_group polls)

_state: dict = {"saved": {}, "comms": set(), "streams": {}, "holders": {}}
_hooks: dict = {}

# ---------------------------------------------------------------------------------------
# What the ranks compare before a collective
# ---------------------------------------------------------------------------------------
_KINDS = {"all_reduce": 1, "all_gather": 2, "reduce_scatter": 3, "broadcast": 4, "barrier": 5, "symm_barrier": 6}
_KERNEL_NAMES = {"all_reduce": "AllReduce", "all_gather": "AllGather", "reduce_scatter": "ReduceScatter",
                 "broadcast": "Broadcast", "barrier": "AllReduce"}
_DTYPES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
           torch.int64: "i64", torch.int32: "i32", torch.int8: "i8", torch.uint8: "u8"}
_FIELDS = 6  # kind, dtype, element count, captured, reduce op, root


def _dist():
    import torch.distributed as dist

    return dist


def _c10d():
    from torch.distributed import distributed_c10d

    return distributed_c10d


def _group(group):
    return group if group is not None else _c10d()._get_default_group()


def _dtype_code(t: torch.Tensor | None) -> int:
    if t is None:
        return 0
    names = list(_DTYPES)
    return names.index(t.dtype) + 1 if t.dtype in _DTYPES else 99


def _op_code(op) -> int:
    try:
        return int(op)
    except (TypeError, ValueError):
        return 0


def _op_word(op) -> str:
    return {0: "Sum", 1: "Prod", 2: "MinMax", 3: "Min", 4: "Max", 7: "Avg"}.get(_op_code(op), "Op")


def on_wait(callback) -> None:
    """Call ``callback(why)`` when this rank starts waiting forever (the launcher reports it)."""
    _hooks["on_wait"] = callback


def _waiting(why: str) -> None:
    callback = _hooks.get("on_wait")
    if callback is not None:
        try:
            callback(why)
        except Exception:  # noqa: BLE001 - a report must never change what the rank does
            pass


def wait_forever(why: str) -> None:
    """What a GPU does when a collective's peers never come: wait. The launcher's timeout ends it."""
    _waiting(why)
    while True:
        time.sleep(WAIT_POLL_S)


def _agree(kind: str, group, tensor: torch.Tensor | None, captured: bool, op=0, root: int = 0) -> None:
    """Compare with every rank of ``group`` what each is about to run; on a mismatch, hang."""
    dist = _dist()
    world = dist.get_world_size(group)
    if world == 1:
        return
    numel = tensor.numel() if tensor is not None else 0
    mine = torch.tensor([_KINDS[kind], _dtype_code(tensor), numel, int(captured), _op_code(op), root],
                        dtype=torch.int64)
    every = torch.empty(world * _FIELDS, dtype=torch.int64)
    _gather(every, mine, group)
    rows = torch._C.TensorBase.tolist(every.view(world, _FIELDS))  # the class's own tolist: no modelled sync
    if any(row != rows[0] for row in rows):
        wait_forever(
            f"the ranks run different collectives here ({_describe(rows)}): NCCL's kernels would wait for "
            "peers that never launch the same one"
        )


def _gather(output: torch.Tensor, input: torch.Tensor, group) -> None:
    c10d = _c10d()
    (getattr(c10d, "all_gather_single", None) or c10d.all_gather_into_tensor)(output, input, group=group)


def _describe(rows: list) -> str:
    names = {v: k for k, v in _KINDS.items()}
    out = []
    for rank, (kind, _dtype, numel, captured, _op, _root) in enumerate(rows):
        how = "replayed from a graph" if captured else "eager"
        out.append(f"rank {rank}: {names.get(kind, '?')} of {numel} element{'' if numel == 1 else 's'}, {how}")
    return "; ".join(out)


# ---------------------------------------------------------------------------------------
# Running a collective (eagerly, or as a node at replay)
# ---------------------------------------------------------------------------------------
def _run(kind: str, tensors: tuple, op, group, root: int) -> None:
    c10d = _c10d()
    if kind == "all_reduce":
        c10d.all_reduce(tensors[0], op=op, group=group)
    elif kind == "all_gather":
        _gather(tensors[0], tensors[1], group)
    elif kind == "reduce_scatter":
        scatter = getattr(c10d, "reduce_scatter_single", None) or c10d.reduce_scatter_tensor
        scatter(tensors[0], tensors[1], op=op, group=group)
    elif kind == "broadcast":
        c10d.broadcast(tensors[0], src=root, group=group)
    elif kind in ("barrier", "symm_barrier"):
        c10d.barrier(group=group)
    else:  # pragma: no cover - the kinds are this module's own
        raise ValueError(kind)


def _bytes_moved(kind: str, tensors: tuple, world: int) -> int:
    if not tensors:
        return 0
    nbytes = tensors[0].numel() * tensors[0].element_size()
    share = (world - 1) / max(world, 1)
    if kind == "all_reduce":
        return int(2 * share * nbytes)  # a ring: reduce-scatter, then all-gather
    if kind in ("all_gather", "reduce_scatter"):
        big = max(t.numel() * t.element_size() for t in tensors)
        return int(share * big)
    if kind == "broadcast":
        return nbytes
    return 0


def _kernel_us(kind: str, tensors: tuple, group) -> float:
    world = _dist().get_world_size(group)
    return cost_model().kernel_us(_bytes_moved(kind, tensors, world), 0.0)


class _Collective:
    """What a collective node runs at each replay: compare with the peers, then communicate."""

    _cache: dict = {}

    def __init__(self, kind: str, op, group, root: int, dtype):
        self.kind, self.op, self.group, self.root = kind, op, group, root
        if kind == "symm_barrier":
            self.label = "symm_mem_barrier_kernel"
        else:
            word = f"_{_op_word(op)}" if kind in ("all_reduce", "reduce_scatter") else ""
            self.label = f"ncclDevKernel_{_KERNEL_NAMES[kind]}{word}_{_DTYPES.get(dtype, 'x')}"

    @classmethod
    def get(cls, kind: str, op, group, root: int, dtype) -> "_Collective":
        key = (kind, _op_code(op), group.group_name, root, dtype)
        if key not in cls._cache:
            cls._cache[key] = cls(kind, op, group, root, dtype)
        return cls._cache[key]

    def __str__(self) -> str:
        return self.label

    __repr__ = __str__

    def __call__(self, *tensors) -> None:
        with _disable_current_modes():
            _agree(self.kind, self.group, tensors[0] if tensors else None,
                   captured=self.kind != "symm_barrier", op=self.op, root=self.root)
            _run(self.kind, tensors, self.op, self.group, self.root)


class _Work:
    """The handle of an ``async_op=True`` collective: ``wait()`` joins its stream back."""

    def __init__(self, stream: Stream | None):
        self._stream = stream

    def wait(self, timeout=None) -> bool:
        if self._stream is not None:
            current_stream().wait_stream(self._stream)
        return True

    def is_completed(self) -> bool:
        return True

    def is_success(self) -> bool:
        return True


def _comm_stream(group) -> Stream:
    """The process group's own stream, where NCCL runs ``async_op=True`` collectives."""
    key = group.group_name
    if key not in _state["streams"]:
        _state["streams"][key] = Stream()
    return _state["streams"][key]


def _communicator_in_capture(capture, what: str):
    capture.invalidate(f"{what} creating the process group's NCCL communicator")
    dist = _dist()
    return dist.DistBackendError(
        "NCCL error: unhandled cuda error (run with NCCL_DEBUG=INFO for details)\n"
        "ncclUnhandledCudaError: Call to CUDA function failed.\n"
        "Last error:\nCuda failure 'operation not permitted when stream is capturing'\n"
        f"[graphlab simulator] {what} is the first collective of this process group, so it creates the "
        "group's NCCL communicator (ncclCommInitRank allocates device memory), which cannot happen during a "
        "capture. Run one collective eagerly on every rank before capturing (the warm-up does it), or pass "
        "device_id= to init_process_group (lesson 13)."
    )


def _collective(kind: str, tensors: tuple, *, op=0, group=None, async_op: bool = False, root: int = 0,
                what: str = ""):
    pg = _group(group)
    stream = current_stream()
    capture = stream.capture
    dtype = tensors[0].dtype if tensors else None
    if capture is None:
        _state["comms"].add(pg.group_name)
        with _disable_current_modes():
            _agree(kind, pg, tensors[0] if tensors else None, captured=False, op=op, root=root)
            _run(kind, tensors, op, pg, root)
        CLOCK.launch_kernel(stream.stream_id, _kernel_us(kind, tensors, pg), cost_model().eager_launch_us,
                            _Collective.get(kind, op, pg, root, dtype).label)
        return _Work(None) if async_op else None
    if pg.group_name not in _state["comms"]:
        raise _communicator_in_capture(capture, what)
    target = stream
    if async_op:  # NCCL's own stream: forked from the capturing stream, joined back by work.wait()
        target = _comm_stream(pg)
        fork = Event()
        fork.record(stream)
        target.wait_event(fork)
    capture.add_node(target, func=_Collective.get(kind, op, pg, root, dtype), args=_bind(tuple(tensors)),
                     kwargs={}, outputs=[], mutating=True, kernel_us=_kernel_us(kind, tensors, pg), kind="kernel")
    _hold(capture.graph, pg)
    return _Work(target) if async_op else None


def _hold(graph, group) -> None:
    _state["holders"].setdefault(group.group_name, weakref.WeakSet()).add(graph)


def holders(group=None) -> list:
    """The captured graphs that still hold collectives of ``group`` (every group when None)."""
    names = [group.group_name] if group is not None else list(_state["holders"])
    out = []
    for name in names:
        for g in list(_state["holders"].get(name, ())):
            if g._exec is not None or g._template is not None:
                out.append(g)
    return out


# ---------------------------------------------------------------------------------------
# The names that stand in for torch.distributed's
# ---------------------------------------------------------------------------------------
def _sum():
    return _dist().ReduceOp.SUM


def all_reduce(tensor, op=None, group=None, async_op=False):
    op = _sum() if op is None else op
    return _collective("all_reduce", (tensor,), op=op, group=group, async_op=async_op, what="all_reduce")


def all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op=False):
    return _collective("all_gather", (output_tensor, input_tensor), group=group, async_op=async_op,
                       what="all_gather_into_tensor")


def reduce_scatter_tensor(output, input, op=None, group=None, async_op=False):
    op = _sum() if op is None else op
    return _collective("reduce_scatter", (output, input), op=op, group=group, async_op=async_op,
                       what="reduce_scatter_tensor")


def broadcast(tensor, src=None, group=None, async_op=False, group_src=None):
    pg = _group(group)
    root = _c10d().get_group_rank(pg, src) if src is not None else (group_src or 0)
    return _collective("broadcast", (tensor,), group=pg, async_op=async_op, root=root, what="broadcast")


def barrier(group=None, async_op=False, device_ids=None, timeout=None):
    pg = _group(group)
    stream = current_stream()
    if stream.capture is not None:
        refuse_sync(stream, "torch.distributed.barrier() (it waits for the device)")
    _state["comms"].add(pg.group_name)  # NCCL's barrier is an all-reduce: it creates the communicator
    with _disable_current_modes():
        _agree("barrier", pg, None, captured=False)
        _run("barrier", (), 0, pg, 0)
    CLOCK.sync_stream(stream.stream_id)
    return _Work(None) if async_op else None


def destroy_process_group(group=None):
    graphs = holders(group)
    if graphs:
        # NCCL 2.26+: communicator destruction polls until every graph that holds it is destroyed.
        _waiting(f"destroy_process_group() waits until the {len(graphs)} captured graph(s) holding the "
                 "communicator are destroyed")
        while holders(group):
            time.sleep(WAIT_POLL_S)
    names = [group.group_name] if group is not None else None
    _state["saved"]["destroy_process_group"](group)
    if names is None:
        _state["comms"].clear()
        _state["streams"].clear()
        _state["holders"].clear()
    else:
        for n in names:
            _state["comms"].discard(n)
            _state["streams"].pop(n, None)
            _state["holders"].pop(n, None)


all_gather_single = all_gather_into_tensor
reduce_scatter_single = reduce_scatter_tensor

_SIMULATED = {
    "all_reduce": all_reduce,
    "all_gather_into_tensor": all_gather_into_tensor,
    "all_gather_single": all_gather_single,
    "reduce_scatter_tensor": reduce_scatter_tensor,
    "reduce_scatter_single": reduce_scatter_single,
    "broadcast": broadcast,
    "barrier": barrier,
    "destroy_process_group": destroy_process_group,
}
# Collectives with no simulated node: eager only (inside a capture they say so).
_EAGER_ONLY = ("all_gather", "gather", "scatter", "reduce", "all_to_all", "all_to_all_single", "send", "recv",
               "isend", "irecv", "batch_isend_irecv", "all_gather_object", "broadcast_object_list")


def _eager_only(name: str, original):
    def call(*args, **kwargs):
        if current_stream().capture is not None:
            raise RuntimeError(
                f"[graphlab simulator] torch.distributed.{name} inside a capture is not simulated: use all_reduce, "
                "all_gather_into_tensor, reduce_scatter_tensor or broadcast in graphs (lesson 13)."
            )
        return original(*args, **kwargs)

    call.__name__ = name
    call.__doc__ = original.__doc__
    return call


def is_installed() -> bool:
    return bool(_state["saved"])


def install() -> None:
    """Stand in for torch.distributed's collectives (idempotent; nothing where it is unavailable)."""
    if is_installed() or not torch.distributed.is_available():
        return
    dist = _dist()
    saved = {}
    for name, fn in _SIMULATED.items():
        if hasattr(dist, name):
            saved[name] = getattr(dist, name)
            setattr(dist, name, fn)
    for name in _EAGER_ONLY:
        if hasattr(dist, name):
            saved[name] = getattr(dist, name)
            setattr(dist, name, _eager_only(name, saved[name]))
    _state.update(saved=saved, comms=set(), streams={}, holders={})


def uninstall() -> None:
    """Give torch.distributed its own functions back."""
    if not is_installed():
        return
    dist = _dist()
    for name, fn in _state["saved"].items():
        setattr(dist, name, fn)
    _state.update(saved={}, comms=set(), streams={}, holders={})


# ---------------------------------------------------------------------------------------
# Symmetric memory: buffers every rank can read
# ---------------------------------------------------------------------------------------
_files: dict = {}  # storage address of a buffer made by empty() -> (path, numel, dtype)
_mapped: dict = {}  # (path, dtype) -> the whole file mapped as a flat tensor
_own_dir: list = []
_counter = itertools.count(1)


def _rank_dir() -> str:
    where = os.environ.get(RANK_DIR_ENV)
    if where:
        return where
    if not _own_dir:
        _own_dir.append(tempfile.mkdtemp(prefix="graphlab-symm-"))
        atexit.register(shutil.rmtree, _own_dir[0], True)
    return _own_dir[0]


def _map(path: str, dtype) -> torch.Tensor:
    key = (path, dtype)
    if key not in _mapped:
        elem = torch.empty((), dtype=dtype).element_size()
        with _disable_current_modes():
            _mapped[key] = torch.from_file(path, shared=True, size=os.path.getsize(path) // elem, dtype=dtype)
    return _mapped[key]


class SimSymmetricMemory:
    """What ``rendezvous`` returns: every rank's buffer, readable from this rank."""

    def __init__(self, rank: int, world_size: int, paths: list, group, numel: int, dtype):
        self.rank, self.world_size = rank, world_size
        self._paths, self._group, self._numel, self._dtype = paths, group, numel, dtype

    def get_buffer(self, rank: int, sizes, dtype, storage_offset: int = 0) -> torch.Tensor:
        """Rank ``rank``'s buffer seen from here: reads see what that rank writes, when it writes it."""
        sizes = tuple(sizes) if isinstance(sizes, (list, tuple, torch.Size)) else (int(sizes),)
        flat = _map(self._paths[rank], dtype)
        count = math.prod(sizes)
        return flat[storage_offset : storage_offset + count].view(sizes)

    def barrier(self, channel: int = 0, timeout_ms: int = 0) -> None:
        """Every rank reaches this point before any goes on: a kernel, so it can be captured."""
        stream = current_stream()
        capture = stream.capture
        collective = _Collective.get("symm_barrier", 0, self._group, 0, None)
        if capture is None:
            collective()
            CLOCK.launch_kernel(stream.stream_id, cost_model().kernel_us(0, 0.0), cost_model().eager_launch_us,
                                collective.label)
            return
        capture.add_node(stream, func=collective, args=(), kwargs={}, outputs=[], mutating=True,
                         kernel_us=cost_model().kernel_us(0, 0.0), kind="kernel")


class _SymmetricMemoryTwin:
    """Stands in for ``torch.distributed._symmetric_memory`` on the simulator (``empty``, ``rendezvous``)."""

    def empty(self, *size, dtype=None, device=None) -> torch.Tensor:
        if len(size) == 1 and isinstance(size[0], (list, tuple, torch.Size)):
            size = tuple(size[0])
        dtype = dtype or torch.get_default_dtype()
        numel = math.prod(size)
        elem = torch.empty((), dtype=dtype).element_size()
        path = os.path.join(_rank_dir(), f"symm-{os.getpid()}-{next(_counter)}")
        with open(path, "wb") as fh:
            fh.truncate(max(numel * elem, 1))
        flat = _map(path, dtype)
        _files[flat.untyped_storage().data_ptr()] = (path, numel, dtype)
        return flat[:numel].view(size)

    def rendezvous(self, tensor: torch.Tensor, group) -> SimSymmetricMemory:
        key = tensor.untyped_storage().data_ptr()
        if key not in _files:
            raise RuntimeError("rendezvous: the tensor must be allocated with symmetric_memory.empty()")
        path, numel, dtype = _files[key]
        dist = _dist()
        pg = _group(group) if not isinstance(group, str) else _c10d()._resolve_process_group(group)
        paths = [None] * dist.get_world_size(pg)
        with _disable_current_modes():
            _c10d().all_gather_object(paths, path, group=pg)
        return SimSymmetricMemory(dist.get_rank(pg), len(paths), paths, pg, numel, dtype)


symmetric_memory = _SymmetricMemoryTwin()
