"""The dispatch mode that makes CPU tensors behave like tensors on a GPU under capture.

Every aten op passes through `SimMode.__torch_dispatch__` while the simulator is installed:
- during capture, the op is recorded as a graph node and NOT run; its outputs are fresh
  blocks of the graph's private pool (so they hold no result until the first replay);
- a host sync (`.item()`, data-dependent shapes, ...) during capture raises the GPU's error;
- outside capture the op runs, its outputs get blocks of the default pool, and the
  modelled clock is charged a launch and a kernel;
- a random op draws from the generator state it names (``rng.py``), which a capture must
  have registered;
- page-locked host memory (``pin_memory()``, ``pin_memory=True``) comes from the pinned
  allocator, at once, even during a capture: it is host memory, not device work.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

import sys

from graphlab_utils import ops

from . import costmodel
from . import rng
from .graphs import active_captures, check_rng, refuse_host_copy, refuse_malloc, refuse_sync
from .clock import CLOCK, cost_model
from .memory import ALLOCATOR, PINNED
from .streams import current_stream

aten = torch.ops.aten

_cublas = {"ready": False}


_FRESH: dict = {}


def _fresh_returns(func) -> tuple:
    """Per return of the op: True when it is a new tensor, False when it is one of its arguments."""
    if func not in _FRESH:
        _FRESH[func] = tuple(r.alias_info is None for r in func._schema.returns)
    return _FRESH[func]


def _mutated_results(func, args, kwargs, result):
    """The argument objects an in-place / out= op returns (it returns its own arguments)."""
    schema = func._schema
    bound = {}
    for i, a in enumerate(schema.arguments):
        if a.name in kwargs:
            bound[a.name] = kwargs[a.name]
        elif i < len(args) and not a.kwarg_only:
            bound[a.name] = args[i]
    outs = []
    for r in schema.returns:
        match = None
        if r.alias_info is not None:
            for a in schema.arguments:
                if a.alias_info is not None and a.alias_info.before_set == r.alias_info.before_set:
                    match = bound.get(a.name)
                    break
        outs.append(match)
    if len(schema.returns) == 1:
        return outs[0] if outs[0] is not None else result
    return tuple(o if o is not None else r for o, r in zip(outs, result)) if isinstance(result, (list, tuple)) else result


def _meta(x):
    if isinstance(x, torch.Tensor):
        return torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device="meta")
    return x


# CPU ops whose meta kernel gives outputs of another size than the op itself (the workspace of
# oneDNN's recurrent layer): their shapes come from running them on copies.
_META_DIFFERS = frozenset({"mkldnn_rnn_layer"})


def _shapes_of(func, args, kwargs):
    """Run the op on shapes alone (meta tensors) to learn its outputs without computing them."""
    if ops.op_name(func) in _META_DIFFERS:
        return _on_copies(func, args, kwargs)
    try:
        mkwargs = dict(tree_map(_meta, kwargs))
        if "device" in mkwargs:
            mkwargs["device"] = torch.device("meta")
        mkwargs.pop("generator", None)
        return func(*tree_map(_meta, args), **mkwargs)
    except Exception:  # no meta kernel
        return _on_copies(func, args, kwargs)


def _on_copies(func, args, kwargs):
    """Run the op on copies of its arguments, which leaves the real ones (and generators) untouched."""
    clone = lambda x: x.clone() if isinstance(x, torch.Tensor) else x  # noqa: E731
    kwargs = dict(kwargs)
    if kwargs.get("generator") is not None:
        kwargs["generator"] = torch._C.Generator()
    return func(*tree_map(clone, args), **tree_map(clone, kwargs))


def _op_label(func) -> str:
    """The op as PyTorch names it in errors and traces (``_local_scalar_dense.default``)."""
    return func.__name__ if hasattr(func, "__name__") else str(func)


def _kernel_us(func, args, kwargs, out) -> float:
    nbytes, flops = costmodel.estimate_op_cost(func, args, kwargs, out)
    return cost_model().kernel_us(nbytes, flops, func)


_HOST_US: dict = {}


def _eager_host_us(func) -> float:
    if func not in _HOST_US:
        _HOST_US[func] = cost_model().eager_host_us(func)
    return _HOST_US[func]


def _pinned(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` in page-locked host memory; during a capture, from the capture's pool (as PyTorch's host allocator)."""
    capture = current_stream().capture
    pool = PINNED.pool(capture.pool.handle) if capture is not None else PINNED.default
    out = PINNED.empty(tuple(t.size()), tuple(t.stride()), t.dtype, pool)
    out.copy_(t)
    return out


def _pinned_factory(func, args, kwargs):
    result = func(*args, **dict(kwargs, pin_memory=False))
    return _pinned(result)


# Where PyTorch itself makes host tensors during a capture (the foreach optimizers' step on a
# CPU step counter): those are host scalars, not copies of host data to the device.
_HOST_SCALAR_CALLERS = ("/torch/optim/",)
_DISPATCH_FRAMES = ("/graphlab_utils/simulator/", "/torch/utils/_python_dispatch.py", "/torch/_ops.py",
                    "/torch/_compile.py", "/torch/_dynamo/")


def _torch_makes_a_host_tensor() -> bool:
    frame = sys._getframe(2)
    while frame is not None and any(part in frame.f_code.co_filename for part in _DISPATCH_FRAMES):
        frame = frame.f_back
    return frame is not None and any(part in frame.f_code.co_filename for part in _HOST_SCALAR_CALLERS)


def _asks_for_gigabytes(args) -> bool:
    """A factory op (no tensor arguments) whose size arguments reach 2**27 elements (a GiB in doubles)."""
    count = 1
    for a in args:
        if isinstance(a, torch.Tensor):
            return False
        if isinstance(a, (list, tuple, torch.Size)) and all(isinstance(n, int) for n in a):
            for n in a:
                count *= max(n, 1)
    return count >= 1 << 27


def _factory_nbytes(func, args, kwargs) -> int:
    """The bytes a factory op (no tensor arguments) will allocate, from its shape alone (0 if unknown)."""
    try:
        flat, _ = tree_flatten(_shapes_of(func, args, kwargs))
    except Exception:  # noqa: BLE001 - no meta kernel: let the op decide
        return 0
    return sum(t.untyped_storage().nbytes() for t in flat if isinstance(t, torch.Tensor))


def _node_kind(func, args) -> str:
    if func is aten.copy_.default and isinstance(args[1], torch.Tensor):
        dst, src = args[0], args[1]
        if dst.dtype == src.dtype and dst.is_contiguous() and src.is_contiguous() and dst.shape == src.shape:
            return "memcpy"
    return "kernel"


class SimMode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs) if kwargs else {}
        stream = current_stream()
        capture = stream.capture

        if func is aten.is_pinned.default:
            return PINNED.block_at(args[0]) is not None
        if func is aten._pin_memory.default:
            return _pinned(args[0])
        if kwargs.get("pin_memory"):
            return _pinned_factory(func, args, kwargs)
        if capture is not None and ops.is_host_data(func) and not _torch_makes_a_host_tensor():
            refuse_host_copy()  # torch.tensor(data, device=...) copies host memory to the device
        if ops.is_sync(func, args):
            refuse_sync(stream, f"{_op_label(func)} (a host sync, e.g. .item())")
            CLOCK.sync_stream(stream.stream_id)
        if ops.is_alias(func) or ops.is_inplace_view(func):  # metadata only, no kernel on a GPU
            CLOCK.host_work(cost_model().eager_view_us)
            return func(*args, **kwargs)
        if capture is not None:
            return self._record(capture, stream, func, args, kwargs)
        return self._run_eagerly(stream, func, args, kwargs)

    # -- outside capture -----------------------------------------------------------------
    def _run_eagerly(self, stream, func, args, kwargs):
        check_rng(func)
        rng.draw(func, kwargs)
        if ops.is_cublas(func):
            _cublas["ready"] = True
        if _asks_for_gigabytes(args):
            # A factory op's request beyond the device's memory fails before the host allocates it.
            ALLOCATOR.check_request(_factory_nbytes(func, args, kwargs))
        result = func(*args, **kwargs)
        if func._schema.is_mutable:
            out = result
            fresh = _fresh_returns(func)
            if any(fresh) and isinstance(result, torch.Tensor) and len(fresh) == 1:
                out = ALLOCATOR.adopt(result, ALLOCATOR.default, stream.stream_id)
        else:
            flat, spec = tree_flatten(result)
            if active_captures():
                for t in flat:
                    if isinstance(t, torch.Tensor) and ALLOCATOR.would_grow(t.untyped_storage().nbytes(), ALLOCATOR.default, stream.stream_id):
                        refuse_malloc(f"{_op_label(func)}")
            flat = [ALLOCATOR.adopt(t, ALLOCATOR.default, stream.stream_id) if isinstance(t, torch.Tensor) else t for t in flat]
            out = spec.unflatten(flat) if hasattr(spec, "unflatten") else torch.utils._pytree.tree_unflatten(flat, spec)
        if not ops.is_allocation(func) and ops.is_kernel_op(func):
            CLOCK.launch_kernel(stream.stream_id, _kernel_us(func, args, kwargs, out), _eager_host_us(func), _op_label(func))
        else:
            CLOCK.host_work(cost_model().eager_view_us)
        return out

    # -- during capture --------------------------------------------------------------------
    def _record(self, capture, stream, func, args, kwargs):
        from .graphs import TensorRef, _bind

        if ops.is_cublas(func) and not _cublas["ready"]:
            capture.invalidate("cublasCreate() during capture")
            raise RuntimeError(
                "CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate(handle)`\n"
                "[graphlab simulator] the first matrix product of a process creates PyTorch's cuBLAS handle, "
                "which cannot happen during a capture: warm up eagerly (on a side stream) before capturing (lesson 01)."
            )

        state = rng.draw(func, kwargs, capture)
        shapes = _shapes_of(func, args, kwargs)
        mutating = func._schema.is_mutable
        # Allocations on a stream joined to the capture come from the graph's pool, in that stream's blocks.
        new = lambda t: ALLOCATOR.empty(tuple(t.size()), tuple(t.stride()), t.dtype, capture.pool, stream.stream_id)  # noqa: E731
        if mutating:
            result = _mutated_results(func, args, kwargs, shapes)
            outputs = []
            fresh = _fresh_returns(func)
            if len(fresh) == 1 and fresh[0] and isinstance(result, torch.Tensor) and result.device.type == "meta":
                result = new(result)  # an op that writes an argument and returns a new tensor (rrelu_with_noise)
                outputs = [TensorRef(result)]
        else:
            flat, spec = tree_flatten(shapes)
            real = [new(t) if isinstance(t, torch.Tensor) else t for t in flat]
            result = torch.utils._pytree.tree_unflatten(real, spec)
            outputs = [TensorRef(t) if isinstance(t, torch.Tensor) else None for t in real]
        if ops.is_allocation(func):
            return result  # an allocation from the graph's pool, not a node
        capture.add_node(
            stream,
            func=func,
            args=_bind(tuple(args)),
            kwargs={k: _bind(v) for k, v in kwargs.items()},
            outputs=outputs,
            mutating=mutating,
            kernel_us=_kernel_us(func, args, kwargs, shapes),
            kind=_node_kind(func, args),
            rng=state,
        )
        return result
