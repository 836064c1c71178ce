"""The rest of the CUDA runtime a learner meets around graphs, under the simulator.

``install()`` puts these into ``torch`` while the simulator is on, and ``uninstall()`` gives
PyTorch its own names back:

* **random generators** (``rng.py``): ``torch.cuda.manual_seed`` and friends,
  ``torch.cuda.default_generators``, ``torch.Generator`` with the graph-safe API of a CUDA
  generator; ``torch.get_rng_state``/``set_rng_state`` during a capture read and restore the
  state at that point of every replay (what activation checkpointing relies on);
* **memory**: ``torch.cuda.memory_stats``, ``memory_snapshot``, ``mem_get_info``, the peaks and
  their resets, ``caching_allocator_alloc``/``caching_allocator_delete`` (``memory.py``);
* ``Tensor.record_stream``: a freed block that another stream used is not reused until that
  stream's work is done, nor while a capture is under way;
* what PyTorch refuses on a CPU tensor but allows on a GPU: optimizers built with
  ``capturable=True`` (and their check that a captured ``step()`` is capturable), ``foreach``
  as their default, ``GradScaler`` on ``"cuda"``, and ``torch.autocast("cuda")`` (which casts
  the simulator's tensors as autocast casts CUDA tensors, through CPU autocast with the CUDA
  dtype);
* threads: PyTorch's dispatch modes belong to the thread that entered them, so every thread
  started while the simulator is on enters its dispatch mode first (a capture, a replay or an
  allocation in a worker thread is simulated as in the main one);
* what the simulator does not model raises one sentence that names it (``torch.cuda._sleep``,
  ``torch.accelerator.Graph``, the allocator's settings).
"""
from __future__ import annotations

import threading
import warnings
import weakref

import torch

from . import autocast as _autocast
from . import rng
from .errors import not_simulated
from .graphs import active_captures, refuse_malloc
from .memory import ALLOCATOR
from .streams import Stream, current_stream

__all__ = ["install", "uninstall"]

_MISSING = object()
_saved: list = []  # (owner, name, previous value or _MISSING), in the order they were replaced


# -- random generators ---------------------------------------------------------------------------
def manual_seed(seed) -> None:
    """``torch.cuda.manual_seed``: seeds the device's default generator (refused during a capture)."""
    rng.default_device_generator().manual_seed(int(seed))


def manual_seed_all(seed) -> None:
    rng.default_device_generator().manual_seed(int(seed))


def seed() -> None:
    rng.default_device_generator().seed()


def seed_all() -> None:
    rng.default_device_generator().seed()


def initial_seed() -> int:
    return rng.default_device_generator().initial_seed()


_TOKENS: dict = {}  # id(state tensor read during a capture) -> the slot its replay-time state fills


def get_rng_state(device="cuda") -> torch.Tensor:
    """The default generator's state; during a capture, the state at this point of each replay."""
    state = rng.state_of(None)
    value = torch._C.Generator.get_state(state.engine)
    capture = current_stream().capture
    if capture is not None:
        slot: dict = {}

        def read(start_us, finish, state=state, slot=slot):
            slot.update(state=state, value=torch._C.Generator.get_state(state.engine), offset=state.offset)

        capture.add_hook(read)
        key = id(value)
        _TOKENS[key] = slot
        weakref.finalize(value, _TOKENS.pop, key, None)
    return value


def set_rng_state(new_state, device="cuda") -> None:
    """Set the default generator's state; during a capture, restore one read earlier in the same capture."""
    capture = current_stream().capture
    if capture is None:
        torch._C.Generator.set_state(rng.state_of(None).engine, new_state)
        return
    slot = _TOKENS.get(id(new_state))
    if slot is None:
        raise not_simulated("setting the random generator's state during a capture to a state that was not read "
                            "earlier in the same capture")

    def restore(start_us, finish, slot=slot):
        torch._C.Generator.set_state(slot["state"].engine, slot["value"])
        slot["state"].offset = slot["offset"]

    capture.add_hook(restore)


def get_rng_state_all() -> list:
    return [get_rng_state()]


def set_rng_state_all(new_states) -> None:
    for state in new_states:
        set_rng_state(state)


# -- memory ----------------------------------------------------------------------------------------
def memory_stats(device=None) -> dict:
    return ALLOCATOR.memory_stats()


def memory_snapshot(mempool_id=None) -> list:
    segments = ALLOCATOR.snapshot()
    if mempool_id is not None:
        segments = [s for s in segments if s["segment_pool_id"] == tuple(mempool_id)]
    return segments


def mem_get_info(device=None) -> tuple:
    """(free, total) bytes of the device: the calibration GPU's memory less what the allocator reserved."""
    total = ALLOCATOR.limit()
    if not total:
        raise not_simulated("torch.cuda.mem_get_info() with a calibration file that does not record the GPU's memory")
    return (max(total - ALLOCATOR.reserved_bytes(), 0), total)


def memory_allocated(device=None) -> int:
    return ALLOCATOR.allocated_bytes()


def memory_reserved(device=None) -> int:
    return ALLOCATOR.reserved_bytes()


def max_memory_allocated(device=None) -> int:
    return ALLOCATOR.memory_stats()["allocated_bytes.all.peak"]


def max_memory_reserved(device=None) -> int:
    return ALLOCATOR.memory_stats()["reserved_bytes.all.peak"]


def reset_peak_memory_stats(device=None) -> None:
    ALLOCATOR.reset_peaks()


def reset_accumulated_memory_stats(device=None) -> None:
    ALLOCATOR.reset_accumulated()


def empty_cache() -> None:
    ALLOCATOR.empty_cache()


def caching_allocator_alloc(size, device=None, stream=None) -> int:
    """Raw device memory from the caching allocator, on ``stream`` (default: the current one)."""
    stream = current_stream() if stream is None else stream
    stream_id = getattr(stream, "stream_id", 0)
    if active_captures() and ALLOCATOR.would_grow(int(size), ALLOCATOR.default, stream_id):
        refuse_malloc("torch.cuda.caching_allocator_alloc")
    return ALLOCATOR.raw_alloc(int(size), stream_id)


def caching_allocator_delete(mem_ptr) -> None:
    ALLOCATOR.raw_delete(int(mem_ptr))


def record_stream(self: torch.Tensor, stream) -> None:
    """``Tensor.record_stream``: the tensor's block waits for ``stream``'s work before it is reused."""
    if not isinstance(stream, Stream):
        raise TypeError(f"record_stream(): argument 's' must be torch.cuda.Stream, not {type(stream).__name__}")
    ALLOCATOR.record_use(self, stream.stream_id)


def _block_busy(stream_ids) -> bool:
    """Whether a freed block must wait: a capture is under way, or a stream that used it still has work."""
    from .clock import CLOCK

    return bool(active_captures()) or any(CLOCK.ready_us(s) > CLOCK.host_us for s in stream_ids)


# -- what the simulator does not model ---------------------------------------------------------------
def _sleep(cycles) -> None:
    raise not_simulated("torch.cuda._sleep (a kernel that spins for a number of GPU clock cycles)")


def _set_allocator_settings(settings: str) -> None:
    raise not_simulated(f"the caching allocator's settings ({settings!r}: PYTORCH_CUDA_ALLOC_CONF, expandable "
                        "segments, graph_capture_record_stream_reuse, ...)")


class _AcceleratorGraph:
    def __init__(self, *args, **kwargs):
        raise not_simulated("torch.accelerator.Graph (the simulator stands in for torch.cuda's graph API: "
                            "use torch.cuda.CUDAGraph)")


# -- optimizers, GradScaler, autocast: what a GPU allows ------------------------------------------------
_OPTIM_MODULES = ("adam", "adamw", "adadelta", "adamax", "asgd", "nadam", "radam", "rmsprop", "rprop")


def _with_cpu(original):
    def devices(*args, **kwargs):
        found = list(original(*args, **kwargs))
        return found if "cpu" in found else found + ["cpu"]

    devices.__doc__ = original.__doc__
    return devices


def _capture_health_check(self) -> None:
    """PyTorch's check for a step() under CUDA graph capture, on the simulated device."""
    if torch.compiler.is_compiling():
        return
    capturing = current_stream().capture is not None
    capturable = all(group.get("capturable", False) for group in self.param_groups)
    if capturing and not capturable:
        raise RuntimeError(
            "Attempting CUDA graph capture of step() for an instance of " + self.__class__.__name__
            + " but param_groups' capturable is False.")
    if not getattr(self, "_warned_capturable_if_run_uncaptured", False) and capturable and not capturing:
        warnings.warn(
            "This instance was constructed with capturable=True or some of all the param_groups came with "
            "capturable=True, but step() is running without CUDA graph capture. If you never intend to "
            "graph-capture this instance, capturable=True can impair performance, and you should set "
            "capturable=False.", stacklevel=2)
        self._warned_capturable_if_run_uncaptured = True


def _amp_available() -> bool:
    return False  # amp_definitely_not_available(): the simulated device runs AMP


def _bf16_supported(including_emulation: bool = True) -> bool:
    return True  # the calibration GPU (an H100) computes in bfloat16


_regions = [0]  # "cuda" autocast regions open: the outermost one's exit drops the cached casts


def _autocast_methods():
    from torch.amp.autocast_mode import autocast

    enter, exit_ = autocast.__enter__, autocast.__exit__

    def __enter__(self):
        result = enter(self)
        if self.device == "cuda":  # the simulated device's tensors are CPU tensors: mirror onto CPU autocast
            if self._enabled:
                _autocast.enable()
            self._graphlab_cpu = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
            torch.set_autocast_enabled("cpu", self._enabled)
            torch.set_autocast_dtype("cpu", self.fast_dtype)
            _regions[0] += 1
        return result

    def __exit__(self, *exc):
        previous = self.__dict__.pop("_graphlab_cpu", None)
        if previous is not None:
            torch.set_autocast_enabled("cpu", previous[0])
            torch.set_autocast_dtype("cpu", previous[1])
            _regions[0] -= 1
            if _regions[0] == 0:
                _autocast.clear_cache()
        return exit_(self, *exc)

    return autocast, __enter__, __exit__


# -- threads -----------------------------------------------------------------------------------------
def _thread_start(original):
    def _bootstrap_inner(self):
        from torch.utils._python_dispatch import _push_mode

        from graphlab_utils import simulator

        mode = simulator._state["mode"]
        if mode is not None:
            _push_mode(mode)  # the thread's own dispatch-mode stack starts with the simulator's mode
        return original(self)

    return _bootstrap_inner


# -- install / uninstall -------------------------------------------------------------------------------
def _patch(owner, name: str, value) -> None:
    _saved.append((owner, name, owner.__dict__.get(name, _MISSING) if hasattr(owner, "__dict__") else _MISSING))
    setattr(owner, name, value)


def install() -> None:
    """Put the stand-ins into torch (the simulator's install() calls this)."""
    if _saved:
        return
    import importlib

    module = importlib.import_module

    rng.reset()
    ALLOCATOR.busy = _block_busy
    generators = (rng.default_device_generator(),)
    random_names = {"manual_seed": manual_seed, "manual_seed_all": manual_seed_all, "seed": seed, "seed_all": seed_all,
                    "initial_seed": initial_seed, "get_rng_state": get_rng_state, "set_rng_state": set_rng_state,
                    "get_rng_state_all": get_rng_state_all, "set_rng_state_all": set_rng_state_all}
    memory_names = {"memory_stats": memory_stats, "memory_snapshot": memory_snapshot, "mem_get_info": mem_get_info,
                    "memory_allocated": memory_allocated, "memory_reserved": memory_reserved,
                    "max_memory_allocated": max_memory_allocated, "max_memory_reserved": max_memory_reserved,
                    "reset_peak_memory_stats": reset_peak_memory_stats,
                    "reset_max_memory_allocated": reset_peak_memory_stats,
                    "reset_accumulated_memory_stats": reset_accumulated_memory_stats, "empty_cache": empty_cache,
                    "caching_allocator_alloc": caching_allocator_alloc,
                    "caching_allocator_delete": caching_allocator_delete}
    for name, value in random_names.items():
        _patch(torch.cuda, name, value)
        _patch(module("torch.cuda.random"), name, value)
    for name, value in memory_names.items():
        _patch(torch.cuda, name, value)
        _patch(module("torch.cuda.memory"), name, value)
    _patch(torch.cuda, "default_generators", generators)
    _patch(torch.cuda, "_sleep", _sleep)
    _patch(module("torch.cuda.memory"), "_set_allocator_settings", _set_allocator_settings)
    _patch(torch, "Generator", rng.DeviceGenerator)
    _patch(torch, "get_rng_state", get_rng_state)
    _patch(torch, "set_rng_state", set_rng_state)
    _patch(torch.Tensor, "record_stream", record_stream)
    _patch(torch.accelerator, "Graph", _AcceleratorGraph)
    # What PyTorch refuses for CPU tensors and allows on a GPU.
    optimizer = module("torch.optim.optimizer")
    _patch(optimizer.Optimizer, "_accelerator_graph_capture_health_check", _capture_health_check)
    _patch(optimizer.Optimizer, "_cuda_graph_capture_health_check", _capture_health_check)
    _patch(optimizer, "_get_foreach_kernels_supported_devices", _with_cpu(optimizer._get_foreach_kernels_supported_devices))
    for name in _OPTIM_MODULES:
        optim = module(f"torch.optim.{name}")
        if "_get_capturable_supported_devices" in optim.__dict__:
            _patch(optim, "_get_capturable_supported_devices", _with_cpu(optim._get_capturable_supported_devices))
    _patch(module("torch.cuda.amp.common"), "amp_definitely_not_available", _amp_available)
    _patch(torch.cuda, "is_bf16_supported", _bf16_supported)
    _patch(threading.Thread, "_bootstrap_inner", _thread_start(threading.Thread._bootstrap_inner))
    autocast, enter, exit_ = _autocast_methods()
    _patch(autocast, "__enter__", enter)
    _patch(autocast, "__exit__", exit_)


def uninstall() -> None:
    """Give torch its own names back."""
    while _saved:
        owner, name, value = _saved.pop()
        if value is _MISSING:
            try:
                delattr(owner, name)
            except AttributeError:
                pass
        else:
            setattr(owner, name, value)
    ALLOCATOR.busy = None
    _autocast.disable()
    _regions[0] = 0
