"""A CPU simulator of PyTorch's CUDA graph API, switched on by `graphlab_utils.setup()`.

Like Numba's CUDA simulator, it mirrors the real names so learner code does not change:
`install()` puts simulated `CUDAGraph`, `graph`, `Stream`, `Event`, ... into `torch.cuda`,
the rest of the runtime around graphs (random generators, memory statistics, pinned memory,
capturable optimizers, AMP: `runtime.py`) into `torch`, and enters a dispatch mode that sees
every aten op. Tensors live on the CPU.
"""
from __future__ import annotations

import torch

from . import graphs as _graphs
from . import memory as _memory
from . import runtime as _runtime
from . import streams as _streams
from .clock import CLOCK
from .errors import SimulatorWarning, error_name_in

__all__ = ["install", "uninstall", "is_installed", "SimulatorWarning", "error_name_in", "CLOCK"]

_state: dict = {"mode": None, "saved": {}}


def _cuda_names() -> dict:
    return {
        "CUDAGraph": _graphs.CUDAGraph,
        "graph": _graphs.graph,
        "graph_pool_handle": _graphs.graph_pool_handle,
        "is_current_stream_capturing": _graphs.is_current_stream_capturing,
        "synchronize": _graphs.synchronize,
        "Stream": _streams.Stream,
        "stream": _streams.stream,
        "StreamContext": _streams.StreamContext,
        "current_stream": _streams.current_stream,
        "default_stream": _streams.default_stream,
        "set_stream": _streams.set_stream,
        "Event": _streams.Event,
    }


def _host_read(name: str, copy: bool = False, copy_check: bool = False):
    """A Tensor method that reads device memory on the host: a sync, refused during capture."""
    original = getattr(torch.Tensor, name)

    def method(self, *args, **kwargs):
        if copy_check:
            _graphs.refuse_host_copy()
        _graphs.refuse_sync(None, f"tensor.{name}() (a copy to the host)")
        CLOCK.sync_stream(_streams.current_stream().stream_id)
        if copy and not args and not kwargs:
            return self.clone()  # on a GPU .cpu() is a copy: later replays do not change it
        return original(self, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = original.__doc__
    return method


def _tensor_names() -> dict:
    return {
        "cpu": _host_read("cpu", copy=True, copy_check=True),
        "numpy": _host_read("numpy", copy_check=True),
        "tolist": _host_read("tolist", copy_check=True),
        "__repr__": _host_read("__repr__"),
        "__format__": _host_read("__format__"),
    }


def is_installed() -> bool:
    return _state["mode"] is not None


def install() -> None:
    """Switch the simulator on (idempotent)."""
    if is_installed():
        return
    from .mode import SimMode

    saved = {}
    for name, value in _cuda_names().items():
        saved[("cuda", name)] = getattr(torch.cuda, name, None)
        setattr(torch.cuda, name, value)
    for name in ("CUDAGraph", "graph", "graph_pool_handle"):
        saved[("graphs", name)] = getattr(torch.cuda.graphs, name)
        setattr(torch.cuda.graphs, name, _cuda_names()[name])
    for name, value in _tensor_names().items():
        saved[("tensor", name)] = torch.Tensor.__dict__.get(name)
        setattr(torch.Tensor, name, value)
    # A new installation stands for a fresh process: a clean RNG, allocator and capture state.
    _graphs._rng["poisoned"] = False
    _graphs.Capture.live.clear()
    _memory.ALLOCATOR.reset()
    _memory.PINNED.reset()
    _runtime.install()
    from .mode import _cublas

    _cublas["ready"] = False
    mode = SimMode()
    mode.__enter__()
    _state.update(mode=mode, saved=saved)
    from . import compile as _compile

    _compile.install()  # torch.compile(mode="reduce-overhead"): a model of CUDAGraph Trees
    from . import distributed as _distributed

    _distributed.install()  # torch.distributed's collectives: captured as graph nodes, as NCCL does


def uninstall() -> None:
    """Switch the simulator off and give `torch.cuda` and `torch.Tensor` their own names back."""
    if not is_installed():
        return
    from . import compile as _compile

    _compile.uninstall()  # its dispatch mode, if any, leaves before the simulator's
    from . import distributed as _distributed

    _distributed.uninstall()
    _state["mode"].__exit__(None, None, None)
    _runtime.uninstall()
    for (where, name), value in _state["saved"].items():
        target = {"cuda": torch.cuda, "graphs": torch.cuda.graphs, "tensor": torch.Tensor}[where]
        if value is None:
            if name in target.__dict__:
                delattr(target, name)
        else:
            setattr(target, name, value)
    _state.update(mode=None, saved={})
