"""The device's random generators as CUDA graphs see them: states that graphs register and replays advance.

On a GPU, PyTorch draws random numbers from a seed and an offset. A graph does not bake the
numbers in: it reads the seed and the offset of every generator *state* registered with it at
each replay, and advances the offset by what its draws consumed. The default generator's state
is registered by ``capture_begin`` itself; any other generator must be registered with
``graph.register_generator_state(...)`` before capture, or its first draw during capture fails.
A generator's state can be shared (``graphsafe_get_state()``), copied (``clone_state()``) and
swapped in (``graphsafe_set_state()``); ``torch.cuda.manual_seed`` may not change the seed during
a capture; each state registered with a live graph keeps two one-element tensors on the device
(the seed and offset the graph reads).

The simulator keeps one ``GeneratorState`` per state: a CPU ``torch.Generator`` that draws (the
engine) and an offset that counts the random ops drawn from it (one per op, not Philox units).
A replay runs its random ops again on the engines of the states they drew from, in capture order,
so a replay continues each registered state's sequence exactly as eager code would. The default
device generator's engine is ``torch.default_generator``: eager code draws the numbers it always did.
"""
from __future__ import annotations

import threading
import weakref

import torch

__all__ = [
    "DeviceGenerator", "GeneratorState", "default_device_generator", "state_of", "draw",
    "SEED_DURING_CAPTURE", "UNREGISTERED_DRAW",
]

SEED_DURING_CAPTURE = (
    "CUDAGeneratorImpl::set_current_seed can be called during stream capture only if new seed is the same "
    "as the original seed.")
UNREGISTERED_DRAW = "Attempt to increase offset for a CUDA generator not in capture mode."

_lock = threading.RLock()
_STATES: dict = {}  # a generator's _cdata -> its current GeneratorState
_DEFAULT: dict = {}  # "proxy": the DeviceGenerator that torch.cuda.default_generators[0] returns


class GeneratorState:
    """One generator state: the engine that draws, the offset its draws reached, the graphs that hold it."""

    def __init__(self, engine: torch.Generator, offset: int = 0):
        self.engine = engine
        self.offset = offset
        self.graphs: set = set()  # ids of the graphs this state is registered with
        self.holders: tuple = ()  # the seed and offset tensors a registered state keeps on the device

    def register(self, graph_id: int, stream_id: int) -> None:
        """A graph registers this state; the first one allocates the seed and offset the graph reads."""
        if not self.graphs:
            from .memory import ALLOCATOR

            self.holders = tuple(ALLOCATOR.empty((1,), (1,), torch.int64, ALLOCATOR.default, stream_id) for _ in range(2))
        self.graphs.add(graph_id)

    def unregister(self, graph_id: int) -> None:
        self.graphs.discard(graph_id)
        if not self.graphs:
            self.holders = ()

    def __repr__(self) -> str:
        return f"<generator state offset={self.offset}>"


def _meta_generator(base):
    """``torch.Generator`` under the simulator: a device generator, and still what isinstance expects."""

    class _Meta(type(base)):
        def __instancecheck__(cls, obj):
            return isinstance(obj, base)

        def __subclasscheck__(cls, sub):
            return issubclass(sub, base)

    return _Meta


class DeviceGenerator(torch._C.Generator, metaclass=_meta_generator(torch._C.Generator)):
    """Stands in for ``torch.Generator`` and for ``torch.cuda.default_generators[0]``.

    Its draws come from its current state, which graphs can register and replays advance; it has
    the graph-safe API of a CUDA generator (``graphsafe_get_state``, ``graphsafe_set_state``,
    ``clone_state``, ``get_offset``).
    """

    def __new__(cls, device=None, *, _state: GeneratorState | None = None):
        self = super().__new__(cls)
        with _lock:
            # A fresh generator draws with an engine of its own (a CPU generator, seeded alike).
            _STATES[self._cdata] = _state if _state is not None else GeneratorState(torch._C.Generator())
        weakref.finalize(self, _forget, self._cdata)
        return self

    def __init__(self, device=None, *, _state: GeneratorState | None = None):
        super().__init__()

    # -- the graph-safe API of CUDA generators ---------------------------------------------
    def graphsafe_get_state(self) -> "DeviceGenerator":
        """This generator's state, shared: draws through either advance both."""
        return DeviceGenerator(_state=state_of(self))

    def graphsafe_set_state(self, state) -> None:
        """Draw from ``state`` from now on (a state from graphsafe_get_state or clone_state)."""
        with _lock:
            _STATES[self._cdata] = state_of(state)

    def clone_state(self) -> "DeviceGenerator":
        """A copy of this generator's state: the same seed and offset, advancing on its own."""
        mine = state_of(self)
        engine = torch._C.Generator()
        engine.set_state(mine.engine.get_state())
        return DeviceGenerator(_state=GeneratorState(engine, mine.offset))

    def get_offset(self) -> int:
        return state_of(self).offset

    def set_offset(self, offset: int) -> None:
        if int(offset) != state_of(self).offset:
            from .errors import not_simulated

            raise not_simulated("generator.set_offset() to another offset (the simulator's generators draw in sequence, "
                                "they cannot jump to an offset)")

    # -- seeding and state -------------------------------------------------------------------
    def manual_seed(self, seed) -> "DeviceGenerator":
        state = state_of(self)
        check_seed(state, int(seed))
        _seed_engine(state, int(seed))
        return self

    def seed(self) -> int:
        state = state_of(self)
        value = _call_engine(state, "seed")
        state.offset = 0
        return value

    def initial_seed(self) -> int:
        return _call_engine(state_of(self), "initial_seed")

    def get_state(self) -> torch.Tensor:
        return _call_engine(state_of(self), "get_state")

    def set_state(self, new_state) -> "DeviceGenerator":
        _call_engine(state_of(self), "set_state", new_state)
        return self


def _call_engine(state: GeneratorState, name: str, *args):
    return getattr(torch._C.Generator, name)(state.engine, *args)


def _seed_engine(state: GeneratorState, seed: int) -> None:
    torch._C.Generator.manual_seed(state.engine, seed)
    state.offset = 0


def _forget(cdata: int) -> None:
    with _lock:
        _STATES.pop(cdata, None)


def default_device_generator() -> DeviceGenerator:
    """``torch.cuda.default_generators[0]``: its first state draws with ``torch.default_generator``."""
    with _lock:
        if "proxy" not in _DEFAULT:
            _DEFAULT["proxy"] = DeviceGenerator(_state=GeneratorState(torch.default_generator))
        return _DEFAULT["proxy"]


def reset() -> None:
    """A fresh process: forget every state; the default generator draws with torch.default_generator again."""
    with _lock:
        _STATES.clear()
        _DEFAULT.clear()


def state_of(generator) -> GeneratorState:
    """The state ``generator`` draws from now (None and torch.default_generator: the default device generator's)."""
    proxy = default_device_generator()
    if generator is None or generator._cdata == torch.default_generator._cdata:
        generator = proxy
    with _lock:
        state = _STATES.get(generator._cdata)
        if state is None:  # a generator made before the simulator took over torch.Generator
            state = _STATES[generator._cdata] = GeneratorState(generator)
        return state


def check_seed(state: GeneratorState, seed: int) -> None:
    """A CUDA generator refuses a new seed while the current stream captures.

    Checked for the states the capture draws from (the default generator's and the registered
    ones): a generator the capture never registered may be a host generator, which a GPU lets
    a capture seed.
    """
    from .streams import current_stream

    capture = current_stream().capture
    if capture is not None and id(capture.graph) in state.graphs and seed != _call_engine(state, "initial_seed"):
        raise RuntimeError(SEED_DURING_CAPTURE)


def draw(func, kwargs: dict, capture=None) -> GeneratorState | None:
    """Route a random op to the state it draws from; returns that state (None for other ops).

    Rewrites ``kwargs['generator']`` to the state's engine. During a capture the state must be
    registered with the graph, as on a GPU.
    """
    if torch.Tag.nondeterministic_seeded not in getattr(func, "tags", ()):
        return None
    has_generator = any(a.name == "generator" for a in func._schema.arguments)
    state = state_of(kwargs.get("generator") if has_generator else None)
    if capture is not None and id(capture.graph) not in state.graphs:
        raise RuntimeError(
            UNREGISTERED_DRAW + "\n[graphlab simulator] this generator is not registered with the graph being "
            "captured: call graph.register_generator_state(generator) before the capture begins (the default "
            "generator is registered by capture_begin itself).")
    if has_generator:
        kwargs["generator"] = state.engine
    if capture is None:
        state.offset += 1
    return state
