"""What learner code does to the GPU, seen from outside: the one watcher every check uses.

A check runs the learner's code inside ``watching()`` and reads the :class:`Watch` it yields:

* ``syncs``: host syncs, each named once (``.item()``, ``if tensor:``, a boolean index,
  ``.cpu()`` / ``.tolist()`` / ``.numpy()``, printing a tensor, ``torch.cuda.synchronize()``,
  and on a GPU a copy of a device tensor to the CPU);
* ``host_data``: tensors made from Python data (``torch.tensor(list)``), and ``uploads``:
  copies of CPU tensors to the device (seen on a GPU);
* ``compute``: the ops that launched a kernel other than moving data (what a graph runner
  should not do eagerly around a replay), and ``ops``: every op, views left out, by name;
* ``captures``, ``replays``: calls of ``CUDAGraph.capture_begin`` and ``CUDAGraph.replay``
  (``torch.cuda.graph(g)`` calls ``capture_begin``, so every capture counts);
* ``registered``: the generators registered with a graph; ``refused``: what the guard stopped.

**The guard.** While a capture runs, a host sync, a tensor made from Python data or a draw
from a generator the graph does not know is refused with :class:`Refused` before it reaches
PyTorch: on a GPU the real call would fail the capture and leave the process unusable, so a
wrong answer becomes a hint instead.

Which op is a sync, which one moves data, which one launches a kernel: :mod:`graphlab_utils.ops`.
How a sync is named in a hint is the check's choice (:class:`Words`); the defaults suit most.

    with watch.watching() as seen:
        out = learner_fn(x)
    if seen.syncs: ...

    with watch.count_graph_calls() as calls:    # captures and replays only: cheap while timing
        runner(x)
    print(calls)                                  # "0 captures, 1 replay"
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from graphlab_utils import backend
from graphlab_utils import ops as _ops
from graphlab_utils.recipes import plural

__all__ = [
    "CountingGraph",
    "GENERATOR_REFUSED",
    "GUARD_NOTE",
    "Refused",
    "Watch",
    "Words",
    "capturing",
    "count_graph_calls",
    "count_ops",
    "guarded_capture",
    "watching",
]

GENERATOR_REFUSED = "Attempt to increase offset for a CUDA generator not in capture mode."
GUARD_NOTE = (" [refused by the check before it reached PyTorch, so that this process stays usable; "
              "during a capture on a GPU it fails the same way]")


@dataclass(frozen=True)
class Words:
    """How a check names what it saw, in the hint the learner reads.

    ``sync_op`` and ``to_cpu`` are formatted with ``name``: the op (``item``) or the method
    (``cpu``, ``tolist``, ``numpy``; ``to`` for a copy made by ``.to('cpu')``).
    """

    sync_op: str = "{name} (a device value read on the CPU: .item(), `if tensor:`, a data-dependent size)"
    bool_index: str = "x[mask] (a boolean index: the CPU needs the number of True values to size the result)"
    to_cpu: str = "a copy to the CPU (.cpu(), .tolist(), .numpy())"
    printing: str = "printing a tensor (its values are copied to the CPU)"
    synchronize: str = "torch.cuda.synchronize()"
    host_data: str = "a tensor made from Python data (torch.tensor(list), .new_tensor, as_tensor)"
    upload: str = "a copy of CPU data to the device"


@dataclass
class Watch:
    """What the code run inside ``watching()`` did (see the module's docstring)."""

    words: Words = field(default_factory=Words)
    syncs: list = field(default_factory=list)
    host_data: list = field(default_factory=list)
    uploads: list = field(default_factory=list)
    compute: list = field(default_factory=list)
    ops: Counter = field(default_factory=Counter)
    captures: int = 0
    replays: int = 0
    registered: set = field(default_factory=set)
    refused: list = field(default_factory=list)
    _reading: int = field(default=0, repr=False)  # inside a watched host read: its own copy is not noted again

    def note_sync(self, what: str) -> None:
        if what not in self.syncs:
            self.syncs.append(what)

    def __str__(self) -> str:
        """``'1 capture, 2 replays'``, and the host syncs when there were any."""
        text = f"{plural(self.captures, 'capture')}, {plural(self.replays, 'replay')}"
        return text + (f", {plural(len(self.syncs), 'host sync', 'host syncs')}" if self.syncs else "")


class Refused(RuntimeError):
    """Raised by the guard inside a capture, before the call reaches PyTorch."""


def capturing() -> bool:
    """Whether the current stream is capturing (False where the question cannot be asked)."""
    import torch

    try:
        return bool(torch.cuda.is_current_stream_capturing())
    except Exception:  # noqa: BLE001 - no CUDA and no simulator: nothing captures
        return False


def _device_type() -> str:
    """The type of the device the lesson's tensors live on ('cuda', or 'cpu' under the simulator)."""
    try:
        return backend.device().type
    except backend.BackendError:  # neither set up nor a GPU: every tensor is on the CPU
        return "cpu"


def _default_generators() -> set:
    """The generators PyTorch registers with every capture by itself."""
    import torch

    ids = {torch.default_generator._cdata}
    try:
        ids |= {g._cdata for g in torch.cuda.default_generators}
    except Exception:  # noqa: BLE001 - no CUDA generators on this build
        pass
    return ids


def _copy_direction(name: str, args: tuple, kwargs: dict, device_type: str) -> str | None:
    """'down' for a copy of a device tensor to the CPU, 'up' for CPU data copied to the device."""
    import torch

    src = args[1] if name == "copy_" else args[0]
    if name == "copy_":
        dst = args[0].device
    elif name == "_copy_from":
        dst = args[1].device
    else:
        dst = kwargs.get("device")
    if not isinstance(src, torch.Tensor) or dst is None:
        return None
    dst_type = torch.device(dst).type
    if src.device.type == device_type and dst_type == "cpu":
        return "down"
    if src.device.type == "cpu" and dst_type == device_type:
        return "up"
    return None


def _spy(watch: Watch, device_type: str, guard: bool):
    """A dispatch mode that sees every aten op of the code inside it."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    defaults = _default_generators()
    words = watch.words

    def refuse(what: str, message: str):
        watch.refused.append(what)
        raise Refused(message + GUARD_NOTE)

    class _Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = _ops.op_name(func)
            guarding = guard and capturing()
            sync = None
            if name in _ops.SYNC:
                sync = words.sync_op.format(name=name)
            elif _ops.is_sync(func, args):
                sync = words.bool_index
            elif device_type != "cpu" and not watch._reading and name in ("_to_copy", "copy_", "_copy_from"):
                direction = _copy_direction(name, args, kwargs, device_type)
                if direction == "down":
                    sync = words.to_cpu.format(name="to")
                elif direction == "up":
                    watch.uploads.append(words.upload)
            if sync:
                watch.note_sync(sync)
                if guarding:
                    refuse(sync, f"a host sync during capture: {sync}")
            if _ops.is_host_data(func):
                watch.host_data.append(words.host_data)
                if guarding:
                    refuse(words.host_data,
                           "Cannot copy between CPU and CUDA tensors during CUDA graph capture unless the CPU "
                           "tensor is pinned (a tensor made from Python data)")
            if guarding:
                for value in list(args) + list(kwargs.values()):
                    if isinstance(value, torch.Generator) and value._cdata not in defaults \
                            and value._cdata not in watch.registered:
                        refuse("an unregistered generator", GENERATOR_REFUSED)
            if not _ops.is_alias(func):
                watch.ops[name] += 1
            if name not in _ops.SYNC and not _ops.is_data_movement(func) and _ops.is_kernel_op(func):
                watch.compute.append(name)
            return func(*args, **kwargs)

    return _Spy()


@contextlib.contextmanager
def watching(watch: Watch | None = None, *, ops: bool = True, host_reads: bool = True, guard: bool = True,
             words: Words | None = None) -> Iterator[Watch]:
    """Watch (and guard) the code run inside; yields the :class:`Watch` (``watch``, or a new one).

    Graph captures, replays and registered generators are always counted. ``ops=False`` leaves
    out the dispatch mode (no op is seen: cheap enough to leave on while timing);
    ``host_reads=False`` leaves ``.cpu()``, ``.tolist()``, ``.numpy()``, printing and
    ``torch.cuda.synchronize()`` alone; ``guard=False`` lets a capture meet whatever it meets.
    Everything patched is put back on the way out, also after an exception.
    """
    import torch

    watch = watch if watch is not None else Watch(words or Words())
    words = watch.words
    device_type = _device_type() if (ops or host_reads) else "cpu"
    missing = object()
    saved: list = []

    def patch(owner: Any, name: str, make: Callable) -> None:
        old = owner.__dict__.get(name, missing)
        current = getattr(owner, name)
        setattr(owner, name, make(current))
        saved.append((owner, name, old))

    def host_read(what: str):
        def make(original):
            def method(self, *args, **kwargs):
                if isinstance(self, torch.Tensor) and self.device.type == device_type:
                    watch.note_sync(what)
                    if guard and capturing():
                        watch.refused.append(what)
                        raise Refused(f"a host sync during capture: {what}" + GUARD_NOTE)
                watch._reading += 1
                try:
                    return original(self, *args, **kwargs)
                finally:
                    watch._reading -= 1

            return method

        return make

    def synchronize_fn(original):
        def synchronize(*args, **kwargs):
            watch.note_sync(words.synchronize)
            if guard and capturing():
                watch.refused.append(words.synchronize)
                raise Refused("torch.cuda.synchronize() during capture" + GUARD_NOTE)
            return original(*args, **kwargs)

        return synchronize

    def counting(attr: str):
        def make(original):
            def method(self, *args, **kwargs):
                setattr(watch, attr, getattr(watch, attr) + 1)
                return original(self, *args, **kwargs)

            method.__doc__ = original.__doc__
            return method

        return make

    def register_fn(original):
        def register_generator_state(self, generator, *args, **kwargs):
            watch.registered.add(generator._cdata)
            return original(self, generator, *args, **kwargs)

        register_generator_state.__doc__ = original.__doc__
        return register_generator_state

    graph_cls = torch.cuda.CUDAGraph
    try:
        patch(graph_cls, "capture_begin", counting("captures"))
        patch(graph_cls, "replay", counting("replays"))
        if hasattr(graph_cls, "register_generator_state"):
            patch(graph_cls, "register_generator_state", register_fn)
        if host_reads:
            for name in ("cpu", "tolist", "numpy"):
                patch(torch.Tensor, name, host_read(words.to_cpu.format(name=name)))
            for name in ("__repr__", "__format__"):  # print(t), f"{t}": the values are copied to the CPU
                patch(torch.Tensor, name, host_read(words.printing))
            patch(torch.cuda, "synchronize", synchronize_fn)
        if ops:
            with _spy(watch, device_type, guard):
                yield watch
        else:
            yield watch
    finally:
        for owner, name, old in reversed(saved):
            if old is missing:
                with contextlib.suppress(AttributeError):
                    delattr(owner, name)
            else:
                setattr(owner, name, old)


def guarded_capture(fn: Callable[[], Any], pool: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    """Lesson 01's ``recipes.capture``, under the course's guard: a host sync (or an unregistered
    generator) inside the capture is refused with :class:`Refused` before it reaches PyTorch.

    A lab captures a learner's function in the notebook's own process with it: a capture that
    fails on a GPU damages the process (lesson 02), one refused by the guard leaves it usable.
    """
    from graphlab_utils.recipes import capture

    with watching(host_reads=True):
        return capture(fn, pool, **kwargs)


def count_graph_calls():
    """Count ``CUDAGraph.capture_begin`` and ``CUDAGraph.replay`` calls inside the block.

    ``torch.cuda.graph(g)`` calls ``g.capture_begin()``, so every capture is counted,
    however it was started. Works on both backends (it wraps whichever ``CUDAGraph``
    ``torch.cuda`` holds), and watches nothing else::

        with count_graph_calls() as calls:
            for x in requests:
                runner(x)
        print(calls)          # "8 captures, 8 replays": a graph captured at every call
    """
    return watching(ops=False, host_reads=False, guard=False)


def count_ops(fn: Callable, *args) -> dict:
    """The aten ops one call of ``fn(*args)`` dispatches, views left out: ``{op name: count}``.

    Views and reshapes are metadata only; every other op is (about) one kernel launch on a GPU.
    Runs the call eagerly, without autograd; use it outside a capture.
    """
    import torch

    with torch.no_grad(), watching(host_reads=False, guard=False) as watch:
        fn(*args)
    return dict(watch.ops)


class CountingGraph:
    """A learner's graph seen through a check: every attribute is the graph's, and ``replays``
    counts the calls of ``replay()`` (how often a learner's loop replayed it)."""

    def __init__(self, graph):
        self._graph, self.replays = graph, 0

    def replay(self):
        self.replays += 1
        self._graph.replay()

    def __getattr__(self, name):
        return getattr(self._graph, name)
