"""Simulated `torch.cuda.CUDAGraph`, `torch.cuda.graph` and the capture they run.

A capture records nodes; each node is one aten op with its tensor arguments bound to
*blocks* of the simulated allocator (addresses, in CUDA's terms), not to Python tensors.
Instantiating copies the nodes into an executable graph; replay runs that copy's ops again
on whatever bytes the blocks hold now. Everything the lessons show follows from that:
`copy_` into a static input is seen, rebinding a name is not, a freed block's new occupant
is read, Python control flow ran once, and outputs are overwritten by each replay.

Random ops draw at replay from the generator states registered with the graph (`rng.py`);
graph-safe reads and writes of a generator's state during capture, and events recorded with
`external=True`, become steps of the replay that are not kernel nodes (`Capture.hooks`).
"""
from __future__ import annotations

import itertools
import threading
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten

from . import rng as _rngs
from .clock import CLOCK, cost_model
from .errors import RNG_POISONED, SimulatorWarning, cudaError_t, cuda_error, not_simulated
from .memory import ALLOCATOR, Pool
from .streams import DEFAULT_STREAM, Stream, current_stream

STATE = threading.local()
_graph_ids = itertools.count(1)
HANDLES = weakref.WeakValueDictionary()  # raw handle (int) -> SimGraphTemplate / SimGraphExec, for cudart
_rng = {"poisoned": False}


def rng_poisoned() -> bool:
    return _rng["poisoned"]


def active_captures() -> list["Capture"]:
    return [c for c in list(Capture.live) if c.active]


# ---------------------------------------------------------------------------------------
# Tensor arguments bound to memory
# ---------------------------------------------------------------------------------------
class TensorRef:
    """A kernel argument: an address (segment + byte offset) with the shape the kernel was built for."""

    __slots__ = ("segment", "byte_offset", "pinned", "dtype", "size", "stride", "nbytes")

    def __init__(self, t: torch.Tensor):
        self.dtype, self.size, self.stride = t.dtype, tuple(t.size()), tuple(t.stride())
        elem = t.element_size()
        extent = 0 if not all(self.size) else 1 + sum((n - 1) * st for n, st in zip(self.size, self.stride))
        self.nbytes = extent * elem
        block = ALLOCATOR.block_at(t)
        if block is None:  # memory the allocator never gave out: keep the tensor itself alive
            self.segment, self.byte_offset, self.pinned = None, 0, t
        else:
            self.segment, self.pinned = block.segment, None
            self.byte_offset = block.offset + t.storage_offset() * elem

    def tensor(self) -> torch.Tensor:
        if self.segment is None:
            return self.pinned
        seg = self.segment
        if seg.released:
            # The bytes went back to the device; a GPU would read whatever is there now.
            warn_invented_bytes(self)
            seg.released = False
            seg.memory = np.full(seg.size, 255, dtype=np.uint8)  # NaN in every float type
        view = seg.memory[self.byte_offset : self.byte_offset + max(self.nbytes, 1)]
        return torch.empty(0, dtype=self.dtype).set_(torch.from_numpy(view).untyped_storage(), 0, self.size, self.stride)

    @property
    def address(self) -> int:
        if self.segment is None:
            return self.pinned.data_ptr()
        return self.segment.address + self.byte_offset


def _bind(value):
    if isinstance(value, torch.Tensor):
        return TensorRef(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_bind(v) for v in value)
    return value


def _unbind(value):
    if isinstance(value, TensorRef):
        return value.tensor()
    if isinstance(value, (list, tuple)):
        return type(value)(_unbind(v) for v in value)
    return value


@dataclass
class Node:
    index: int
    func: object  # torch._ops.OpOverload
    args: tuple
    kwargs: dict
    outputs: list  # [TensorRef | None] per returned tensor, written after the op runs
    mutating: bool  # in-place / out= op: it writes through its arguments
    deps: list
    kernel_us: float
    kind: str = "kernel"  # kernel | memcpy | memset
    rng: object = None  # the generator state a random op draws from (rng.GeneratorState)

    @property
    def name(self) -> str:
        return str(self.func).replace("aten.", "").replace(".default", "")

    def run(self) -> None:
        result = self.func(*_unbind(self.args), **{k: _unbind(v) for k, v in self.kwargs.items()})
        if self.rng is not None:
            self.rng.offset += 1
        if not any(ref is not None for ref in self.outputs):
            return  # an in-place op: it wrote through its arguments
        results, _ = tree_flatten(result)
        for ref, value in zip(self.outputs, results):
            if ref is not None and isinstance(value, torch.Tensor):
                ref.tensor().copy_(value)


@dataclass
class Hook:
    """A step of a replay that is not a node: it runs before node ``position`` (after the last if none)."""

    position: int
    run: object  # run(exec_start_us, finish_us_by_node) -> None


def schedule(nodes: list[Node]) -> tuple[float, list]:
    """Each node starts when its dependencies finish: (critical path, [(name, start, end)])."""
    m = cost_model()
    finish: dict[int, float] = {}
    spans = []
    for n in nodes:
        start = max((finish[d] for d in n.deps if d in finish), default=0.0)
        finish[n.index] = start + m.replay_node_us(n.kernel_us)
        spans.append((n.name, start, finish[n.index]))
    return max(finish.values(), default=0.0), spans


# ---------------------------------------------------------------------------------------
# Capture
# ---------------------------------------------------------------------------------------
class Capture:
    live: "set[Capture]" = set()

    def __init__(self, graph: "CUDAGraph", origin: Stream, mode: str, pool: Pool):
        self.graph, self.origin, self.mode, self.pool = graph, origin, mode, pool
        self.nodes: list[Node] = []
        self.hooks: list[Hook] = []
        self.streams: list[Stream] = []
        self.invalid: str | None = None
        self.active = True
        self.thread = threading.get_ident()
        self.join(origin)
        Capture.live.add(self)

    def join(self, s: Stream) -> None:
        s.capture = self
        s.frontier = []
        if s not in self.streams:
            self.streams.append(s)

    def add_node(self, stream: Stream, **fields) -> Node:
        node = Node(index=len(self.nodes), deps=list(stream.frontier), **fields)
        self.nodes.append(node)
        stream.frontier = [node.index]
        CLOCK.host_work(cost_model().capture_op_us(node.func))
        return node

    def add_hook(self, run, stream: Stream | None = None) -> None:
        """A replay step at this point of the capture; ``run(start_us, finish)`` sees the replay's timing."""
        self.hooks.append(Hook(len(self.nodes), run))

    def invalidate(self, why: str) -> None:
        if self.invalid is None:
            self.invalid = why

    def forbids_other_streams(self) -> bool:
        """global mode refuses unsafe calls from anywhere; thread_local from this thread only."""
        return self.mode == "global" or (self.mode == "thread_local" and self.thread == threading.get_ident())

    def end(self) -> None:
        self.active = False
        for s in self.streams:
            s.capture, s.frontier = None, []
        Capture.live.discard(self)
        self.graph = None  # events recorded in the capture keep it; they must not keep the graph

    def unjoined_streams(self) -> list[Stream]:
        reach = set()
        todo = list(self.origin.frontier)
        while todo:
            i = todo.pop()
            if i not in reach:
                reach.add(i)
                todo.extend(self.nodes[i].deps)
        return [s for s in self.streams if s is not self.origin and any(i not in reach for i in s.frontier)]


def refuse_sync(stream: Stream | None, what: str) -> None:
    """Raise the GPU's error if a host sync happens while a capture forbids it."""
    stream = current_stream() if stream is None else stream
    hit = [stream.capture] if stream.capture is not None else [c for c in active_captures() if c.forbids_other_streams()]
    _invalidate_and_refuse(
        hit, what,
        f"{what} waits for the GPU, but during capture nothing runs: there is no value to wait for. "
        "The capture is now invalidated. Keep syncs (.item(), .cpu(), print, synchronize) outside capture (lesson 02).",
    )


def _invalidate_and_refuse(hit: list, what: str, why: str) -> None:
    """The GPU's cudaErrorStreamCaptureUnsupported for ``what``, after invalidating the captures it hit."""
    if not hit:
        return
    for c in hit:
        c.invalidate(what)
    raise cuda_error(cudaError_t.cudaErrorStreamCaptureUnsupported, why)


def refuse_host_copy() -> None:
    """PyTorch's own check: a device-to-host copy into pageable memory on a capturing stream.

    It is raised before anything reaches CUDA, so the capture stays valid (seen on an H100).
    """
    if current_stream().capture is not None:
        raise RuntimeError(
            "Cannot copy between CPU and CUDA tensors during CUDA graph capture unless the CPU tensor is pinned. "
            "Please use tensor.pin_memory() or allocate the tensor with pin_memory=True."
            "\n[graphlab simulator] a copy to the host is a sync: nothing has run yet during capture, "
            "so copy results out after replay (lesson 02)."
        )


def refuse_malloc(what: str) -> None:
    """A new allocation outside the capture's pool needs cudaMalloc, which global capture forbids."""
    _invalidate_and_refuse(
        [c for c in active_captures() if c.forbids_other_streams()], what,
        f"{what} ran on a stream that is not part of the capture and needed new memory (cudaMalloc), "
        "which a capture in 'global' mode forbids. Fork the stream from the capturing one with "
        "s.wait_stream(torch.cuda.current_stream()) and join it back afterwards (lesson 02).",
    )


# ---------------------------------------------------------------------------------------
# Graph objects
# ---------------------------------------------------------------------------------------
class SimGraphTemplate:
    """What cudaStreamEndCapture returns (cudaGraph_t): the recorded nodes."""

    def __init__(self, nodes: list[Node], hooks: list | None = None):
        self.nodes = nodes
        self.hooks = list(hooks or [])
        self.handle = 0x7F0000000000 + next(_graph_ids) * 0x100
        HANDLES[self.handle] = self


class SimGraphExec:
    """What cudaGraphInstantiate returns (cudaGraphExec_t): its own copy of the nodes' arguments."""

    # PyTorch's CUDAGraph::instantiate: cudaGraphInstantiateFlagAutoFreeOnLaunch | cudaGraphInstantiateFlagUseNodePriority
    flags = 1 | 8

    def __init__(self, template: SimGraphTemplate):
        self.nodes = [Node(**{**n.__dict__}) for n in template.nodes]
        self.hooks = list(template.hooks)
        self.path_us, self.spans = schedule(self.nodes)
        self.handle = 0x7E0000000000 + next(_graph_ids) * 0x100
        HANDLES[self.handle] = self
        self.uploaded = False  # the GPU gets an executable graph at its first launch (or cudaGraphUpload)

    def upload(self) -> None:
        """cudaGraphUpload, or the first cudaGraphLaunch: the host pays the upload once per exec."""
        if not self.uploaded:
            CLOCK.host_work(cost_model().upload_us(len(self.nodes)))
            self.uploaded = True

    def adopt_parameters(self, template: SimGraphTemplate) -> None:
        """cudaGraphExecUpdate: every node takes the other graph's kernel and arguments."""
        for mine, theirs in zip(self.nodes, template.nodes):
            for name in ("func", "args", "kwargs", "outputs", "mutating", "kernel_us", "rng"):
                setattr(mine, name, getattr(theirs, name))
        self.hooks = list(template.hooks)
        self.path_us, self.spans = schedule(self.nodes)

    def run(self, start_us: float = 0.0) -> None:
        finish = {i: end for i, (_, _, end) in enumerate(self.spans)}
        hooks = sorted(self.hooks, key=lambda h: h.position)
        with _disable_current_modes():
            for node in self.nodes:
                while hooks and hooks[0].position <= node.index:
                    hooks.pop(0).run(start_us, finish)
                node.run()
            for hook in hooks:
                hook.run(start_us, finish)


class CUDAGraph:
    """Stands in for `torch.cuda.CUDAGraph`."""

    def __init__(self, keep_graph: bool = False):
        self.keep_graph = keep_graph
        self._capture: Capture | None = None
        self._template: SimGraphTemplate | None = None
        self._exec: SimGraphExec | None = None
        self._pool: Pool | None = None
        self._debug = False
        self._generator_states: list = []  # the generator states registered with this graph

    # -- capture --------------------------------------------------------------------------
    def capture_begin(self, pool=None, capture_error_mode: str = "global", **kwargs) -> None:
        if capture_error_mode not in ("global", "thread_local", "relaxed"):
            raise RuntimeError(f"Unknown capture error mode. Expected `global`, `thread_local`, or `relaxed`, got {capture_error_mode}")
        if self._template is not None or self._exec is not None:
            raise RuntimeError(
                "This CUDAGraph instance already owns a captured graph. To capture a new graph, create a new instance."
            )
        s = current_stream()
        if s == DEFAULT_STREAM:
            # On a GPU PyTorch has already put its CUDA generator in capture state (seen on an H100).
            _rng["poisoned"] = True
            raise RuntimeError(
                "CUDA graphs must be captured on a non-default stream. "
                "(However, after capture, it's ok to replay them on the default stream.)"
                "\n[graphlab simulator] capture on a side stream: `with torch.cuda.graph(g):` does it for you (lesson 02)."
            )
        if s.capture is not None:
            raise cuda_error(cudaError_t.cudaErrorIllegalState, "this stream is already capturing; end that capture first (lesson 01).")
        self.register_generator_state(_rngs.default_device_generator())  # capture_begin registers the default generator
        handle = tuple(pool) if pool is not None else ALLOCATOR.new_pool_handle()
        self._pool = ALLOCATOR.pool(handle)
        self._pool.users += 1
        self._capture = Capture(self, s, capture_error_mode, self._pool)

    def capture_end(self) -> None:
        cap = self._capture
        if cap is None:
            raise RuntimeError("Called CUDAGraph::capture_end without a preceding capture_begin.")
        if current_stream() != cap.origin:
            raise RuntimeError("Capture must end on the same stream it began on.")
        unjoined = cap.unjoined_streams()
        cap.end()
        self._capture = None
        if cap.invalid is not None:
            _rng["poisoned"] = True
            raise cuda_error(
                cudaError_t.cudaErrorStreamCaptureInvalidated,
                f"the capture was invalidated earlier by {cap.invalid}; this graph is unusable, and on a GPU "
                "the process's CUDA state is damaged too: restart the kernel, or show failing captures in a "
                "child process with %%run_isolated (lesson 02).",
            )
        if unjoined:
            _rng["poisoned"] = True
            raise cuda_error(
                cudaError_t.cudaErrorStreamCaptureUnjoined,
                "a stream forked into the capture still has work that the capturing stream never waited for: "
                "join it back with torch.cuda.current_stream().wait_stream(side) before the capture ends (lesson 02).",
            )
        if not cap.nodes:
            warnings.warn(
                "The CUDA Graph is empty. This usually means that the graph was attempted to be captured on wrong device or stream.",
                UserWarning,
                stacklevel=2,
            )
        self._template = SimGraphTemplate(cap.nodes, cap.hooks)
        if not self.keep_graph:
            self._instantiate()

    # -- execution ------------------------------------------------------------------------
    def instantiate(self) -> None:
        self._instantiate()

    def _instantiate(self) -> None:
        if self._template is None:
            if self._exec is not None and not self.keep_graph:
                raise RuntimeError("instantiate() is intended to be called by the user only when keep_graph=true")
            raise RuntimeError("capture_end() must have been called before calling instantiate")
        self._exec = SimGraphExec(self._template)
        CLOCK.host_work(cost_model().instantiate_us(len(self._exec.nodes)))
        if not self.keep_graph:
            self._template = None

    def replay(self) -> None:
        if self._exec is None:
            if self._template is None:
                raise RuntimeError("Called CUDAGraph::replay without a preceding successful capture.")
            self._instantiate()
        s = current_stream()
        if s.capture is not None:
            raise not_simulated("replaying a graph inside another capture (a child graph node)")
        self._exec.upload()  # a fresh exec's first launch uploads it first
        start = CLOCK.launch_graph(s.stream_id, self._exec.path_us, self._exec.spans)
        self._exec.run(start)

    def reset(self) -> None:
        self._template = self._exec = None
        if self._pool is not None:
            ALLOCATOR.release_user(self._pool)  # one graph fewer uses the pool
            self._pool = None

    def __del__(self):
        try:
            # The destructor unregisters the generator states, then resets; reset() alone keeps
            # them, and their seed and offset blocks stay allocated (as in PyTorch 2.11).
            for state in self._generator_states:
                state.unregister(id(self))
            self._generator_states = []
            self.reset()
        except Exception:
            pass

    def pool(self):
        if self._pool is None or self._capture is not None:
            raise RuntimeError("Called CUDAGraph::pool() without a preceding successful capture.")
        return self._pool.handle

    # -- raw handles and debugging ----------------------------------------------------------
    def raw_cuda_graph(self) -> int:
        if not self.keep_graph:
            raise RuntimeError(
                "You cannot access the raw cudaGraph_t instance unless CUDAGraph was initialized with keep_graph=true"
            )
        if self._template is None:
            raise RuntimeError("You cannot access the raw cudaGraph_t instance until capture_end() has been called")
        return self._template.handle

    def raw_cuda_graph_exec(self) -> int:
        if self._exec is None:
            raise RuntimeError(
                "You cannot access the raw cudaGraphExec_t instance until instantiate() has been called"
            )
        return self._exec.handle

    def enable_debug_mode(self) -> None:
        self._debug = True

    def debug_dump(self, debug_path: str) -> None:
        nodes = (self._template or self._exec).nodes if (self._template or self._exec) else []
        if not self._debug:
            warnings.warn("CUDA Graphs debug not enabled, set with [graph].enable_debug_mode()", UserWarning, stacklevel=2)
            return
        write_dot(nodes, debug_path)

    def register_generator_state(self, generator) -> None:
        """Let this graph draw from ``generator``'s state (a generator, or a state from graphsafe_get_state)."""
        state = _rngs.state_of(generator)
        if state not in self._generator_states:
            state.register(id(self), current_stream().stream_id)
            self._generator_states.append(state)

    # the simulator's own view, for lessons' pictures and tests
    def sim_nodes(self) -> list[Node]:
        holder = self._template or self._exec
        return list(holder.nodes) if holder else []


def graph_pool_handle():
    return ALLOCATOR.new_pool_handle()


def is_current_stream_capturing() -> bool:
    return current_stream().capture is not None


class graph:
    """Stands in for the context manager `torch.cuda.graph`."""

    default_capture_stream: Stream | None = None

    def __init__(self, cuda_graph: CUDAGraph, pool=None, stream: Stream | None = None, capture_error_mode: str = "global", **kwargs):
        if stream is None and self.__class__.default_capture_stream is None:
            self.__class__.default_capture_stream = Stream()
        self.pool = () if pool is None else (pool,)
        self.capture_stream = stream if stream is not None else self.__class__.default_capture_stream
        from .streams import stream as stream_ctx

        self.stream_ctx = stream_ctx(self.capture_stream)
        self.cuda_graph = cuda_graph
        self.capture_error_mode = capture_error_mode

    def __enter__(self):
        synchronize()
        ALLOCATOR.empty_cache()
        CLOCK.host_work(cost_model().capture_base_us)
        self.stream_ctx.__enter__()
        self.cuda_graph.capture_begin(*self.pool, capture_error_mode=self.capture_error_mode)

    def __exit__(self, *exc):
        try:
            self.cuda_graph.capture_end()
        finally:
            self.stream_ctx.__exit__(*exc)
        return False


def synchronize(device=None) -> None:
    refuse_sync(None, "torch.cuda.synchronize()")
    CLOCK.sync_device()


def check_rng(func) -> None:
    if _rng["poisoned"] and torch.Tag.nondeterministic_seeded in getattr(func, "tags", ()):
        raise RuntimeError(
            RNG_POISONED + "\n[graphlab simulator] an earlier capture failed and left PyTorch's CUDA random generator "
            "in capture state, as on a GPU: restart the kernel. Lessons show failing captures in a child "
            "process (%%run_isolated) so this never happens to the notebook (lesson 02)."
        )


def warn_invented_bytes(ref: TensorRef) -> None:
    warnings.warn(
        f"replay read memory at {ref.address:#x} that was freed and not reused; on a GPU it holds "
        "whatever was last written there. The simulator fills it with NaN.",
        SimulatorWarning,
        stacklevel=3,
    )


def write_dot(nodes: list[Node], path) -> None:
    """A DOT file in the shape of cudaGraphDebugDotPrint's: one box per node, one edge per dependency."""
    lines = ["digraph dot {", "subgraph cluster_1 {", 'label="graph_1" graph[style="dashed"];']
    shapes = {"kernel": "octagon", "memcpy": "trapezium", "memset": "invtrapezium"}
    for n in nodes:
        # A GPU labels a kernel node with its index and mangled kernel name; we give the aten op.
        lines.append(f'"graph_1_node_{n.index}"[style="bold" shape="{shapes[n.kind]}" label="{n.index}\n{n.name}\n"];\n')
    for n in nodes:
        for d in n.deps:
            lines.append(f'"graph_1_node_{d}" -> "graph_1_node_{n.index}";')
    lines += ["}", "}"]
    with open(path if isinstance(path, str) else path.decode(), "w") as fh:
        fh.write("\n".join(lines) + "\n")
