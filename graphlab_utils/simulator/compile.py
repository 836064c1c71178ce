"""`torch.compile(mode="reduce-overhead")` under the simulator: a model of CUDAGraph Trees.

On a GPU, `mode="reduce-overhead"` hands each graph Inductor compiles to PyTorch's
CUDAGraph Trees (`torch/_inductor/cudagraph_trees.py`), which warm it up, record it into a
CUDA graph and replay it. A CPU build of PyTorch has no CUDA graphs, so under the simulator
`install()` replaces `torch.compile` with :func:`compile`, which keeps what a learner can
observe on a GPU and models it with the simulator's own `CUDAGraph`:

* **compiled units.** Dynamo compiles a function once per input signature it guards on; each
  compiled unit is one function of the tree. ``dynamic=False``: a unit per signature (shapes,
  strides, dtypes, Python scalars). ``dynamic=True``: one dynamic unit, which records one graph
  per distinct size anyway and logs PyTorch's warning once more sizes than
  ``torch._inductor.config.triton.cudagraph_dynamic_shape_warn_limit`` are seen.
  ``dynamic=None`` (the default): static at first, dynamic from the second size on
  (Dynamo's automatic dynamic shapes).
* **warm-up, record, replay.** A unit's first call runs it eagerly (the warm-up), the
  second records a graph (one pool for every graph of the process, as the tree has one per
  device), later calls copy the tensor inputs into the graph's static inputs and replay.
  :class:`TreeManager` keeps PyTorch's names for these steps (``run_eager``,
  ``record_function``, ``execute_node``), so a watcher sees the same calls on both backends.
* **generations.** Every call of a compiled function starts a new generation, unless
  ``torch.compiler.cudagraph_mark_step_begin()`` (PyTorch's own function: the model reads its
  counter) says when a step begins. When a new generation starts, the outputs of the
  previous warm-up or recording are freed, and reading them raises PyTorch's own error
  (:meth:`TreeManager.format_dealloc_msg` is PyTorch's text). Replays return the same output
  tensors every time, which the next replay overwrites. Within one generation a call while
  earlier outputs are still alive records a child graph (the tree's branches).
* **skip reasons**, logged with PyTorch's own function (the ``cudagraphs`` logger, the
  ``cudagraph_skips`` counter, ``cudagraph_or_error``): a copy to the CPU inside the function
  (``.cpu()``, ``.to("cpu")``): ``cpu device (<node>)``; an in-place update of an input that
  is not a parameter or buffer: ``mutated inputs (<n> instances)``; a dynamic unit with
  ``cudagraph_skip_dynamic_graphs=True``. A skipped unit runs eagerly on every call. (A CPU
  tensor passed in as an input skips too on a GPU; the simulator cannot see one, since all
  its tensors live on the CPU.)

Not modelled: Inductor's kernel fusion and code generation (the function's own ops run and
are recorded as they are), graph breaks (a function that reads a device value on the CPU
runs without graphs, with a :class:`SimulatorWarning`), autograd and backward graphs, and
the CPU time Dynamo's guards take per call. Other modes of ``torch.compile`` run the function
eagerly. The tree's rules follow PyTorch 2.13's source.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import sys
import traceback
import warnings
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .errors import SimulatorWarning

__all__ = ["compile", "install", "uninstall", "manager", "reset", "TreeManager", "CompiledFunction",
           "CompiledModule", "uses_cudagraphs"]

GRAPH_MODES = ("reduce-overhead", "max-autotune")
_state: dict = {"saved": None, "manager": None, "epoch": 0}
_depth = [0]  # compiled calls in progress: an inner compiled call is traced into the outer one


# ---------------------------------------------------------------------------------------
# PyTorch's own pieces (imported when first needed: torch._inductor is slow to import)
# ---------------------------------------------------------------------------------------
def _config():
    import torch._inductor.config as config

    return config.triton


def _log_skip(msg: str) -> None:
    """PyTorch's own: warn on the ``cudagraphs`` logger, count the skip, raise under ``cudagraph_or_error``."""
    from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter

    log_cudagraph_skip_and_bump_counter(msg)


def _skip_message(reason: str) -> str:
    from torch._inductor.cudagraph_utils import format_default_skip_message

    return format_default_skip_message(reason)


def _mark_step_counter() -> int:
    """The counter ``torch.compiler.cudagraph_mark_step_begin()`` moves (0 until it is called)."""
    module = sys.modules.get("torch._inductor.cudagraph_trees")
    return module.MarkStepBox.mark_step_counter if module is not None else 0


# ---------------------------------------------------------------------------------------
# Outputs that a later generation freed: reading them raises PyTorch's error
# ---------------------------------------------------------------------------------------
class _Freed:
    """Storages of freed outputs, and the dispatch mode that refuses every op reading them."""

    def __init__(self) -> None:
        self.storages: dict[int, tuple] = {}  # storage cdata -> (weak reference, message)
        self.mode = None
        self.saved: dict = {}  # Tensor methods replaced while the guard is on

    def add(self, tensor: torch.Tensor, message: str) -> None:
        from torch.multiprocessing.reductions import StorageWeakRef

        # A weak reference keeps the storage's address from being reused while it is listed.
        self.storages[tensor.untyped_storage()._cdata] = (StorageWeakRef(tensor.untyped_storage()), message)
        for key in [k for k, (ref, _) in self.storages.items() if ref.expired()]:
            del self.storages[key]
        if self.mode is None:
            self.mode = _make_guard(self)
            self.mode.__enter__()
            self._guard_host_reads()

    def _guard_host_reads(self) -> None:
        """Printing and copies to Python read the bytes without a dispatch mode: guard them too."""
        self.saved = {}
        for name in ("__repr__", "__format__", "tolist", "numpy"):
            original = getattr(torch.Tensor, name)
            self.saved[name] = torch.Tensor.__dict__.get(name)

            def method(tensor, *args, __original=original, **kwargs):
                message = self.message_for(tensor)
                if message:
                    raise RuntimeError(message)
                return __original(tensor, *args, **kwargs)

            method.__name__, method.__doc__ = name, original.__doc__
            setattr(torch.Tensor, name, method)

    def message_for(self, value) -> str | None:
        if isinstance(value, torch.Tensor):
            hit = self.storages.get(value.untyped_storage()._cdata)
            return hit[1] if hit else None
        if isinstance(value, (list, tuple)):
            for v in value:
                found = self.message_for(v)
                if found:
                    return found
        return None

    def close(self) -> None:
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            for name, value in self.saved.items():
                if value is None:
                    delattr(torch.Tensor, name)
                else:
                    setattr(torch.Tensor, name, value)
        self.mode = None
        self.saved = {}
        self.storages.clear()


def _make_guard(freed: _Freed):
    from torch.utils._python_dispatch import TorchDispatchMode

    class _FreedOutputGuard(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if freed.storages:
                message = freed.message_for(args) or freed.message_for(list(kwargs.values()))
                if message:
                    raise RuntimeError(message)
            return func(*args, **kwargs)

    return _FreedOutputGuard()


_FREED = _Freed()
_SIM_NOTE = ("\n[graphlab simulator] this output lived in the memory of the compiled function's CUDA graphs; a "
             "later call began a new generation and reused it: clone() what you keep (lesson 12).")


# ---------------------------------------------------------------------------------------
# What a compiled unit does to the CPU and to its inputs (found on its first call)
# ---------------------------------------------------------------------------------------
def _user_frame() -> str:
    """The learner's line that is running, in the shape of a stack trace PyTorch prints."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        name = frame.filename.replace("\\", "/")
        if "/torch/" in name or "/graphlab_utils/" in name:
            continue
        return f'File "{frame.filename}", line {frame.lineno}, in {frame.name}\n    {(frame.line or "").strip()}'
    return ""


class _Findings:
    def __init__(self) -> None:
        self.cpu_op: str | None = None
        self.cpu_trace = ""
        self.mutated: set = set()
        self.mutation_trace = ""
        self.sync = False


@contextlib.contextmanager
def _analysing(findings: _Findings, inputs: set, static: set):
    """Note copies to the CPU, in-place updates of the inputs and host syncs of the code run inside.

    A copy to the CPU is ``.cpu()`` or ``.to("cpu")``: its result is a CPU tensor in the graph,
    which Inductor cannot move to the GPU. (Tensors *made* on the CPU inside the function and
    used on the GPU are moved there by Inductor's ``move_constructors_to_gpu`` pass, so they
    are not noted; a CPU tensor passed in as an input is not seen: every tensor of the
    simulator lives on the CPU.)
    """
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    from graphlab_utils import ops

    def note_cpu() -> None:
        if findings.cpu_op is None:
            findings.cpu_op = "_to_copy"
            findings.cpu_trace = _user_frame()

    class _Functions(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if getattr(func, "__name__", "") == "to" and args and isinstance(args[0], torch.Tensor) and any(
                    a == "cpu" for a in list(args[1:]) + [kwargs.get("device")] if isinstance(a, str)):
                note_cpu()
            return func(*args, **kwargs)

    class _Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if ops.is_sync(func, args):
                findings.sync = True
            schema = func._schema
            if schema.is_mutable:
                for i, a in enumerate(schema.arguments):
                    if a.alias_info is None or not a.alias_info.is_write:
                        continue
                    value = kwargs.get(a.name, args[i] if i < len(args) and not a.kwarg_only else None)
                    if isinstance(value, torch.Tensor):
                        key = value.untyped_storage().data_ptr()
                        if key in inputs and key not in static and key not in findings.mutated:
                            findings.mutated.add(key)
                            if not findings.mutation_trace:
                                findings.mutation_trace = _user_frame()
            return func(*args, **kwargs)

    to_cpu = torch.Tensor.cpu  # the simulator's own (a copy): it never reaches a dispatch mode

    def cpu(self, *args, **kwargs):
        note_cpu()
        return to_cpu(self, *args, **kwargs)

    torch.Tensor.cpu = cpu
    try:
        with _Functions(), _Ops():
            yield
    finally:
        torch.Tensor.cpu = to_cpu


# ---------------------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------------------
class Unit:
    """One compiled graph: a function of the tree (PyTorch's FunctionID)."""

    _ids = itertools.count(0)

    def __init__(self, owner: "CompiledFunction", dynamic: bool):
        self.id = next(Unit._ids)
        self.owner, self.dynamic = owner, dynamic
        self.compiled = False
        self.skip: str | None = None  # the skip message, for a unit that runs without graphs


class _Invocation:
    """The inputs of one call: flat leaves and how to rebuild ``(args, kwargs)`` from them."""

    def __init__(self, args: tuple, kwargs: dict):
        self.leaves, self.spec = tree_flatten((args, kwargs))
        self.done = None  # set when the first call already ran the function (while it was analysed)

    def storages(self) -> set:
        return {leaf.untyped_storage().data_ptr() for leaf in self.leaves if isinstance(leaf, torch.Tensor)}

    def call(self, fn: Callable, leaves: list | None = None):
        args, kwargs = tree_unflatten(self.leaves if leaves is None else leaves, self.spec)
        return fn(*args, **kwargs)


class _Node:
    """A warm-up run or a recorded graph on a path of the tree."""

    def __init__(self, unit: Unit, parent: "_Node | None", graph=None):
        self.unit, self.parent, self.graph = unit, parent, graph
        self.children: dict[int, list] = {}
        self.static_inputs: list = []  # (leaf index, static tensor)
        self.out_spec = None
        self.static_outputs: list = []  # where the graph writes its outputs (TensorRefs: addresses, not tensors)
        self.cached: list | None = None  # what every replay returns: the same tensors each time
        self.returned: list = []  # weak references to the storages of what this node returned last

    @property
    def path_from_root(self) -> list:
        node, path = self, []
        while node is not None:
            path.append(node)
            node = node.parent
        return list(reversed(path))

    def track(self, outputs, exclude: set) -> None:
        """Remember what this run returned (outputs that alias its inputs are not the tree's)."""
        import weakref

        from torch.multiprocessing.reductions import StorageWeakRef

        leaves, _ = tree_flatten(outputs)
        self.returned = [(weakref.ref(t), StorageWeakRef(t.untyped_storage())) for t in leaves
                         if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in exclude]

    def all_outputs_are_dead(self) -> bool:
        for tensor_ref, storage_ref in self.returned:
            if self.cached is not None:  # a replay's outputs: alive while anyone but the node holds them
                t = tensor_ref()
                if t is not None and sys.getrefcount(t) > 3:
                    return False
            elif not storage_ref.expired():
                return False
        return True


class TreeManager:
    """Stands in for PyTorch's ``CUDAGraphTreeManager``: one per process (one device)."""

    def __init__(self) -> None:
        self.stream = torch.cuda.Stream()
        self.cuda_graphs_thread_pool = torch.cuda.graph_pool_handle()
        self.graph = torch.cuda.CUDAGraph()  # keeps the pool alive, as PyTorch's does
        with warnings.catch_warnings(record=True):
            with torch.cuda.graph(self.graph, pool=self.cuda_graphs_thread_pool, stream=self.stream,
                                  capture_error_mode="thread_local"):
                pass
        self.roots: dict[int, list] = {}
        self.warmed_up_functions: set = set()
        self.ids_to_units: dict[int, Unit] = {}
        self.current_node: _Node | None = None
        self.path_state = "none"  # none | warmup | recording | execution
        self.current_gen = -1
        self.generation = 0  # Dynamo's GenerationTracker: one more on every compiled call
        self.warned_mutation: set = set()
        self.recordings = 0

    # -- generations ----------------------------------------------------------------------
    def get_curr_generation(self) -> int:
        counter = _mark_step_counter()
        return counter if counter != 0 else self.generation

    def in_new_torch_compile_invocation(self) -> bool:
        return self.current_gen != self.get_curr_generation()

    def can_start_new_generation(self) -> bool:
        return self.in_new_torch_compile_invocation()  # inference: no backward is ever pending

    def update_generation(self) -> None:
        self.current_gen = self.get_curr_generation()

    @staticmethod
    def format_dealloc_msg(stack_trace: str | None) -> str:
        """PyTorch's own text for reading an output that a later run overwrote."""
        from torch._inductor.cudagraph_trees import CUDAGraphTreeManager

        return CUDAGraphTreeManager.format_dealloc_msg(stack_trace)

    def dealloc_current_path_weakrefs(self) -> None:
        for node in self.current_node.path_from_root:
            if node.cached is not None:
                continue  # a replay's outputs are the node's own, overwritten in place
            for tensor_ref, storage_ref in node.returned:
                t = tensor_ref()
                if t is not None:
                    _FREED.add(t, self.format_dealloc_msg(node.unit.owner.stack_trace) + _SIM_NOTE)

    @property
    def in_recording(self) -> bool:
        return self.path_state == "recording"

    @property
    def in_warmup(self) -> bool:
        return self.path_state == "warmup"

    def _set_current(self, node: _Node | None, state: str) -> None:
        self.current_node = node
        self.path_state = state if node is not None else "none"

    def try_end_curr_recording(self) -> None:
        if self.can_start_new_generation():
            self.dealloc_current_path_weakrefs()
            self._set_current(None, "none")
        elif self.current_node.all_outputs_are_dead():
            self._set_current(None, "none")

    try_end_curr_warmup = try_end_curr_recording

    def try_end_curr_execution(self) -> None:
        if self.current_node is None:
            return
        if self.can_start_new_generation() or self.current_node.all_outputs_are_dead():
            self._set_current(None, "none")

    # -- one call -------------------------------------------------------------------------
    def end_stale_path(self) -> None:
        """What a call does first: end the warm-up or recording of an earlier generation, if it can."""
        if self.in_recording:
            self.try_end_curr_recording()
        if self.in_warmup:
            self.try_end_curr_warmup()

    def run(self, new_inputs: _Invocation, function_id: int):
        unit = self.ids_to_units[function_id]
        if unit.skip is not None:
            return new_inputs.call(unit.owner.fn)
        self.end_stale_path()
        if function_id not in self.warmed_up_functions or self.in_warmup:
            return self.run_eager(new_inputs, function_id)
        children = self.roots if self.current_node is None else self.current_node.children
        if not self.in_recording:
            for child in children.get(function_id, []):
                return self.execute_node(child, new_inputs)
            if self.current_node is not None and function_id in self.roots:
                self.try_end_curr_execution()
                if self.current_node is None:
                    return self.run(new_inputs, function_id)
            self.try_end_curr_execution()
        return self.record_function(new_inputs, function_id)

    def run_eager(self, new_inputs: _Invocation, function_id: int):
        """A warm-up: the unit's ops run eagerly; the outputs belong to the tree until the next generation."""
        self.warmed_up_functions.add(function_id)
        node = _Node(self.ids_to_units[function_id], self.current_node)
        self._set_current(node, "warmup")
        self.update_generation()
        out = new_inputs.done if new_inputs.done is not None else new_inputs.call(node.unit.owner.fn)
        new_inputs.done = None
        node.track(out, exclude=new_inputs.storages())
        return out

    def record_function(self, new_inputs: _Invocation, function_id: int):
        """Record the unit into a graph of the tree's pool, then run it once for this call's result."""
        unit = self.ids_to_units[function_id]
        node = _Node(unit, self.current_node, graph=torch.cuda.CUDAGraph())
        leaves = list(new_inputs.leaves)
        for i, value in enumerate(leaves):
            if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
                static = torch.empty_strided(value.size(), value.stride(), dtype=value.dtype, device=value.device)
                static.copy_(value)
                node.static_inputs.append((i, static))
                leaves[i] = static
        torch.cuda.synchronize()
        with torch.cuda.graph(node.graph, pool=self.cuda_graphs_thread_pool, stream=self.stream,
                              capture_error_mode="thread_local"):
            out = new_inputs.call(unit.owner.fn, leaves)
        node.graph.replay()  # capture ran nothing: this call's result comes from one replay
        from .graphs import TensorRef

        flat, node.out_spec = tree_flatten(out)
        node.static_outputs = [TensorRef(t) if isinstance(t, torch.Tensor) else t for t in flat]  # addresses only
        if self.current_node is None:
            self.roots.setdefault(function_id, []).append(node)
        else:
            self.current_node.children.setdefault(function_id, []).append(node)
        self._set_current(node, "recording")
        self.update_generation()
        self.recordings += 1
        statics = {t.untyped_storage().data_ptr() for _, t in node.static_inputs}
        node.track(out, exclude=new_inputs.storages() | statics)
        return out

    def execute_node(self, node: _Node, new_inputs: _Invocation):
        """Replay: copy the inputs into the graph's static inputs, replay, return the graph's outputs."""
        self._set_current(node, "execution")
        self.update_generation()
        for i, static in node.static_inputs:
            static.copy_(new_inputs.leaves[i])
        node.graph.replay()
        if node.cached is None:  # made on the first replay, returned by every replay after it
            from .graphs import TensorRef

            node.cached = [ref.tensor() if isinstance(ref, TensorRef) else ref for ref in node.static_outputs]
        out = tree_unflatten(list(node.cached), node.out_spec)
        node.track(out, exclude=new_inputs.storages())
        return out


def manager() -> TreeManager:
    """The tree of this process (made on first use, as PyTorch makes one per device)."""
    if _state["manager"] is None:
        _state["manager"] = TreeManager()
    return _state["manager"]


def reset() -> None:
    """Forget every compiled unit, tree and freed output, as ``torch.compiler.reset()`` does on a GPU.

    PyTorch's reset also sets the counter of ``cudagraph_mark_step_begin()`` back to 0 once a
    tree exists; the model does the same.
    """
    _FREED.close()
    _state["manager"] = None
    _state["epoch"] = _state.get("epoch", 0) + 1
    module = sys.modules.get("torch._inductor.cudagraph_trees")
    if module is not None:
        module.MarkStepBox.mark_step_counter = 0


# ---------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------
def _signature(value) -> tuple:
    leaves, spec = tree_flatten(value)
    key = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            key.append(("tensor", tuple(leaf.shape), tuple(leaf.stride()), leaf.dtype))
        elif isinstance(leaf, (int, float, bool, str, type(None))):
            key.append(("value", leaf))
        else:
            key.append(("object", type(leaf).__name__))
    return str(spec), tuple(key)


def _structure(signature: tuple) -> tuple:
    """A signature with the sizes left out: what a dynamic compile still guards on."""
    spec, key = signature
    return spec, tuple(("tensor", len(k[1]), k[3]) if k[0] == "tensor" else k for k in key)


def uses_cudagraphs(backend: Any = "inductor", mode: str | None = None, options: dict | None = None) -> bool:
    """Whether ``torch.compile`` with these arguments records CUDA graphs on a GPU."""
    if backend == "cudagraphs":
        return True
    if options:
        return bool(options.get("triton.cudagraphs", False))
    return mode in GRAPH_MODES


class CompiledFunction:
    """What ``torch.compile(fn, ...)`` returns under the simulator."""

    def __init__(self, fn: Callable, graphs: bool, dynamic: bool | None, static_storages: Callable = lambda: set()):
        self.fn, self.graphs, self.dynamic = fn, graphs, dynamic
        self._static_storages = static_storages
        self.units: dict = {}  # signature -> Unit (static units)
        self.dynamic_units: dict = {}  # structure -> {signature: Unit}
        self.dynamic_skip: dict = {}  # structure -> skip message of its dynamic compile, or None
        self.seen_sizes: dict = {}  # structure -> first signature (for automatic dynamic shapes)
        self.stack_trace = None
        self.epoch = _state.get("epoch", 0)
        functools.update_wrapper(self, fn, updated=())

    def _forget_if_reset(self) -> None:
        """After ``torch.compiler.reset()`` every unit compiles again, as Dynamo forgot its code."""
        if self.epoch != _state.get("epoch", 0):
            self.epoch = _state.get("epoch", 0)
            self.units, self.dynamic_units, self.dynamic_skip, self.seen_sizes = {}, {}, {}, {}

    def __call__(self, *args, **kwargs):
        if _depth[0]:  # called from inside another compiled function: traced into it
            return self.fn(*args, **kwargs)
        tree = manager()
        tree.generation += 1
        _depth[0] += 1
        try:
            if not self.graphs:
                return self.fn(*args, **kwargs)
            self._forget_if_reset()
            unit = self._unit_for(args, kwargs)
            invocation = _Invocation(args, kwargs)
            if not unit.compiled:
                return self._first_call(tree, unit, invocation)
            return tree.run(invocation, unit.id)
        finally:
            _depth[0] -= 1

    # -- which unit serves these inputs -------------------------------------------------
    def _unit_for(self, args, kwargs) -> Unit:
        signature = _signature((args, kwargs))
        structure = _structure(signature)
        dynamic = self.dynamic
        if dynamic is None:
            first = self.seen_sizes.setdefault(structure, signature)
            dynamic = first != signature or structure in self.dynamic_units
            if not dynamic and signature in self.units:
                return self.units[signature]
        if not dynamic:
            if signature not in self.units:
                self.units[signature] = self._new_unit(False)
            return self.units[signature]
        cache = self.dynamic_units.setdefault(structure, {})
        if structure not in self.dynamic_skip:
            self.dynamic_skip[structure] = self._dynamic_compile()
        if signature not in cache:
            unit = self._new_unit(True)
            unit.skip = self.dynamic_skip[structure]
            if unit.skip is None and cache:
                from torch._inductor.cudagraph_utils import maybe_warning_due_to_dynamic_shape

                maybe_warning_due_to_dynamic_shape(cache, signature)
            cache[signature] = unit
        return cache[signature]

    def _dynamic_compile(self) -> str | None:
        """A compile with symbolic sizes: skipped when the configuration says so (logged at compile time)."""
        if not _config().cudagraph_skip_dynamic_graphs:
            return None
        message = _skip_message(
            "graph with symbolic shapes inputs and config.triton.cudagraph_skip_dynamic_graphs=True.\n")
        _log_skip(message)
        return message

    def _new_unit(self, dynamic: bool) -> Unit:
        unit = Unit(self, dynamic)
        tree = manager()
        tree.ids_to_units[unit.id] = unit
        return unit

    # -- a unit's first call: compile, then warm up (or run without graphs) -------------
    def _first_call(self, tree: TreeManager, unit: Unit, invocation: _Invocation):
        """Dynamo and Inductor compile the unit here on a GPU; the model runs it once, watching what it does.

        A unit that makes CPU tensors or updates its inputs in place is skipped (logged with
        PyTorch's message) and runs eagerly from now on; any other unit's run is its warm-up.
        """
        unit.compiled = True
        if unit.skip is not None:
            return invocation.call(self.fn)
        static = set(self._static_storages()) | {
            leaf.untyped_storage().data_ptr() for leaf in invocation.leaves  # parameters, and mark_static_address
            if isinstance(leaf, torch.nn.Parameter) or getattr(leaf, "_dynamo_static_input_type", None) is not None}
        findings = _Findings()
        tree.end_stale_path()
        with _analysing(findings, invocation.storages(), static):
            out = invocation.call(self.fn)
        skip = None
        if findings.cpu_op is not None:
            skip = _skip_message(f"cpu device ({findings.cpu_op})")
            trace = findings.cpu_trace
        elif findings.mutated:
            skip = _skip_message(f"mutated inputs ({len(findings.mutated)} instances)")
            trace = findings.mutation_trace
        if skip is not None:
            unit.skip = f"{skip}. Found from : \n {trace}" if trace else skip
            _log_skip(unit.skip)
            return out
        if findings.sync:
            unit.skip = "a graph break (not modelled)"
            warnings.warn(
                f"[graphlab simulator] {getattr(self.fn, '__name__', 'this function')} reads a device value on the CPU "
                "(.item(), `if tensor:`): on a GPU torch.compile breaks the graph there and records the pieces; the "
                "simulator does not model graph breaks and runs the function without graphs.",
                SimulatorWarning, stacklevel=3)
            return out
        invocation.done = out
        return tree.run(invocation, unit.id)


class CompiledModule(torch.nn.Module):
    """What ``torch.compile(module, ...)`` returns under the simulator: the module, compiled."""

    def __init__(self, module: torch.nn.Module, graphs: bool, dynamic: bool | None):
        super().__init__()
        self._orig_mod = module

        def static_storages():
            tensors = list(module.parameters()) + list(module.buffers())
            return {t.untyped_storage().data_ptr() for t in tensors}

        self._compiled = CompiledFunction(module, graphs, dynamic, static_storages)

    def forward(self, *args, **kwargs):
        return self._compiled(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._orig_mod, name)


def compile(model: Callable | None = None, *, fullgraph: bool = False, dynamic: bool | None = None,
            backend: Any = "inductor", mode: str | None = None, options: dict | None = None,
            disable: bool = False) -> Any:
    """Stands in for ``torch.compile`` under the simulator (see the module's docstring)."""
    if mode is not None and options is not None:
        raise RuntimeError("Either mode or options can be specified, but both can't be specified at the same time.")
    if model is None:
        return lambda m: compile(m, fullgraph=fullgraph, dynamic=dynamic, backend=backend, mode=mode,
                                 options=options, disable=disable)
    if disable:
        return model
    graphs = uses_cudagraphs(backend, mode, options)
    if isinstance(model, torch.nn.Module):
        return CompiledModule(model, graphs, dynamic)
    return CompiledFunction(model, graphs, dynamic)


def _compiler_reset(original: Callable) -> Callable:
    @functools.wraps(original)
    def reset_all() -> None:
        original()
        reset()

    return reset_all


def install() -> None:
    """Put :func:`compile` in ``torch.compile`` and let ``torch.compiler.reset()`` reset the model too
    (the simulator's ``install()`` calls this)."""
    if _state["saved"] is None:
        _state["saved"] = (torch.compile, torch.compiler.reset)
        torch.compile = compile
        torch.compiler.reset = _compiler_reset(torch.compiler.reset)
    reset()


def uninstall() -> None:
    """Give ``torch.compile`` back and forget the tree (before the simulator's dispatch mode leaves)."""
    reset()
    if _state["saved"] is not None:
        torch.compile, torch.compiler.reset = _state["saved"]
        _state["saved"] = None
