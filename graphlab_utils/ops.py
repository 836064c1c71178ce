"""What each aten op does on a GPU, in the terms a capture cares about: one list, used everywhere.

The simulator's dispatch mode (which op must refuse a capture), its cost model (which op
launches a kernel) and the watchers of learner code (which op was a sync, which one computed
eagerly) all ask this module, so they cannot disagree.

* **sync**: the host waits for the device because a value or an output size must come back
  (``.item()``, ``nonzero``, a boolean-mask index, ...); refused during a capture.
* **host data**: Python data (a list, a NumPy array) becomes a tensor: on a GPU a copy from
  pageable host memory, which PyTorch refuses on a capturing stream.
* **cuBLAS**: needs a cuBLAS handle, created on first use; ``cublasCreate`` cannot run during a
  capture (the first matmul of a process inside a capture fails on a GPU).
* **allocation**: memory without initialisation (no kernel).
* **data movement**: moves or creates data without computing from the inputs: what a graph
  runner may do eagerly around a replay (fill static buffers, clone the output).
* **alias**: returns a view of an input without writing it; **in-place view** changes a tensor's
  shape, not its bytes.
* **kernel**: everything else that returns a tensor launches a kernel.

Ops are named as ``torch.ops.aten.<name>`` without the overload (``aten.add.Tensor`` -> ``add``).
"""
from __future__ import annotations

from typing import Any

__all__ = [
    "SYNC", "HOST_DATA", "CUBLAS", "ALLOCATION", "DATA_MOVEMENT", "NO_KERNEL",
    "op_name", "is_sync", "is_host_data", "is_cublas", "is_allocation", "is_data_movement",
    "is_alias", "is_inplace_view", "is_kernel_op",
]

SYNC = frozenset({
    "_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select",
    "_unique2", "unique_consecutive", "unique_dim", "repeat_interleave",
})
HOST_DATA = frozenset({"lift_fresh", "lift_fresh_copy"})
CUBLAS = frozenset({"mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "dot"})
ALLOCATION = frozenset({"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided"})
DATA_MOVEMENT = frozenset({
    "copy_", "fill_", "zero_", "clone", "_to_copy", "detach", "lift_fresh", "lift_fresh_copy",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "full", "full_like",
    "scalar_tensor", "zeros", "zeros_like", "ones", "ones_like", "new_zeros", "new_ones", "new_full",
    "_copy_from", "_copy_from_and_resize", "resize_", "set_", "contiguous",
})
# Ops that launch no kernel but are not recognisable from their schema alone.
NO_KERNEL = frozenset({
    # allocation only
    "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided",
    "empty_permuted", "_empty_affine_quantized", "_empty_per_channel_affine_quantized",
    # metadata / storage manipulation
    "set_", "resize_", "resize_as_", "_resize_output_", "_unsafe_view", "_reshape_alias",
    "lift_fresh", "lift", "_nested_view_from_buffer",
    "requires_grad_", "retain_grad", "_version", "_coalesced_", "record_stream",
    "_unsafe_set_version_counter", "_propagate_xla_data", "_has_compatible_shallow_copy_type",
    # host-side reads; a sync, not a kernel
    "_local_scalar_dense", "item", "is_nonzero", "sym_size", "sym_stride", "sym_numel",
    "sym_storage_offset", "size", "stride", "storage_offset", "dim", "numel",
    "is_contiguous", "is_same_size", "is_complex", "is_floating_point",
    # profiler / autograd bookkeeping
    "_record_function_enter", "_record_function_enter_new", "_record_function_exit",
    "_assert_async", "_functional_assert_async", "_assert_scalar", "_functional_assert_scalar",
    "_assert_tensor_metadata", "sym_constrain_range", "sym_constrain_range_for_size",
    "_print", "_make_dep_token",
})

_NAMES: dict = {}
_ALIAS: dict = {}
_KERNEL: dict = {}
_INPLACE_VIEW: dict = {}


def _memo(table: dict, func: Any, compute) -> Any:
    """``compute(func)``, kept in ``table``: the simulator asks these questions for every op it runs.

    An op that cannot be a key (not hashable) is answered each time, uncached."""
    try:
        return table[func]
    except (KeyError, TypeError):
        pass
    result = compute(func)
    try:
        table[func] = result
    except TypeError:
        pass
    return result


def op_name(func: Any) -> str:
    """``aten.add.Tensor`` -> ``'add'``; tolerates any object (a string passes through)."""
    if isinstance(func, str):
        return func.split("::")[-1].split(".")[0]
    try:
        return _NAMES[func]
    except (KeyError, TypeError):
        pass
    try:
        name = func._schema.name.split("::")[-1]
    except Exception:
        name = (getattr(func, "__name__", None) or str(func)).split("::")[-1].split(".")[0]
    try:
        _NAMES[func] = name
    except TypeError:
        pass
    return name


def is_sync(func: Any, args: tuple = ()) -> bool:
    """Whether the op makes the host wait for the device (``x[mask]`` counts: it needs ``nonzero``)."""
    name = op_name(func)
    if name in SYNC:
        return True
    if name == "index" and len(args) > 1 and args[1] is not None:
        import torch

        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
    return False


def is_host_data(func: Any) -> bool:
    return op_name(func) in HOST_DATA


def is_cublas(func: Any) -> bool:
    return op_name(func) in CUBLAS


def is_allocation(func: Any) -> bool:
    return op_name(func) in ALLOCATION


def is_data_movement(func: Any) -> bool:
    return op_name(func) in DATA_MOVEMENT


def is_alias(func: Any) -> bool:
    """Returns a view of an input that it does not write (``view``, ``t``, ``expand``, ...)."""
    return _memo(_ALIAS, func, _alias)


def _alias(func: Any) -> bool:
    try:
        return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)
    except Exception:  # noqa: BLE001 - an op without a schema is not an alias
        return False


def is_inplace_view(func: Any) -> bool:
    """``squeeze_``, ``unsqueeze_``, ``t_``, ``transpose_``, ``as_strided_``: shape, not bytes."""
    return _memo(_INPLACE_VIEW, func, _inplace_view)


def _inplace_view(func: Any) -> bool:
    import torch

    tag = getattr(torch.Tag, "inplace_view", None)
    return tag is not None and tag in getattr(func, "tags", ())


def is_kernel_op(func: Any) -> bool:
    """Whether ``func`` (a ``torch._ops.OpOverload``) launches a kernel on a GPU.

    False for views and other metadata-only ops (told apart by the schema: ``func.is_view``,
    the ``inplace_view`` tag, returns that only alias an input without writing to it), for
    allocations without initialisation (``empty``...), for ops that return no tensor
    (``size``, ``sym_numel``...) and for host reads (``_local_scalar_dense``, ``item``: a sync,
    not a kernel). True otherwise, including for ops this module does not know.
    """
    return _memo(_KERNEL, func, _kernel)


def _kernel(func: Any) -> bool:
    if op_name(func) in NO_KERNEL:
        return False
    try:
        if getattr(func, "is_view", False):
            return False
    except Exception:
        pass
    try:
        if is_inplace_view(func):
            return False
    except Exception:
        pass
    try:
        rets = list(func._schema.returns)
    except Exception:
        rets = []
    if rets:
        tensor_rets = [r for r in rets if "Tensor" in str(getattr(r, "type", ""))]
        if not tensor_rets:
            return False
        # All tensor results alias an input and none is written: a view in disguise
        # (alias, detach, split, unbind, ... whichever are not flagged is_view).
        aliased = [getattr(r, "alias_info", None) for r in tensor_rets]
        if all(a is not None and not a.is_write for a in aliased):
            return False
    return True
