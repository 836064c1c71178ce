"""Failure katas: broken CUDA-graph snippets modelled on real bug reports, each with a check.

A kata is a short piece of code that goes wrong the way a real program went wrong in a
public bug report (stale results, a capture that fails, memory that runs out, a speed-up
that never comes). For each one the course gives:

* the **symptom**, as the reporter saw it (in our words);
* the **snippet**, broken on purpose: a function or class the learner copies and fixes;
* a **demo** that shows the symptom (``show(key)``); a snippet whose failure is a failed
  capture is only ever run in a child process (:mod:`graphlab_utils.isolation`), because a
  failed capture damages a real CUDA process;
* a **check** (``check(key, answer)``) in the style of :mod:`graphlab_utils.checks`: one
  fixed line for a fixed answer, a hint (expected / seen / idea) otherwise;
* the **explanation**, and the reports it is modelled on (``Kata.sources``).

The learner's fixed version always runs in the notebook's own process. Checks guard it: a
host sync, a tensor made from Python data, or a draw from a random generator the graph does
not know, met *during a capture*, is refused before it reaches PyTorch, so a wrong answer
becomes a hint instead of a damaged process.

    from graphlab_utils import katas
    katas.catalogue()                       # the table of katas
    katas.show("kv-cache-reset")            # the broken snippet's symptom
    katas.check("kv-cache-reset", MyFix)    # [PASS] ... or a hint

Every demo and check prints the same text on a GPU and on the simulator (verdicts and
counts; timings only as ratios). Where the simulator cannot reproduce a symptom, the demo
says so and the kata is marked real-GPU-only (``Kata.demo_needs_gpu``).
"""
from __future__ import annotations

import contextlib
import random
import textwrap
import warnings
from dataclasses import dataclass, field
from typing import Callable

from .checks.core import CheckResult, check as _check_decorator, fail, ok

__all__ = [
    "KATAS",
    "Kata",
    "Source",
    "capture",
    "catalogue",
    "check",
    "get",
    "show",
    "DequantLinear",
    "DenoiserRunner",
    "cfg_batch",
    "serve",
]

RTOL, ATOL = 1e-4, 1e-5


# =======================================================================================
# Shared helpers
# =======================================================================================
def _device():
    import torch

    from graphlab_utils import simulator

    if simulator.is_installed():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        fail("a GPU or the simulator", "neither: graphlab_utils.setup() has not run in this process",
             "run the setup cell at the top of the notebook first: it installs the simulator when no GPU is present")
    return torch.device("cuda")


def _on_simulator() -> bool:
    from graphlab_utils import simulator

    return simulator.is_installed()


def _randn(seed: int, *shape):
    """Standard normal numbers that are the same on both backends (drawn on the CPU, then moved)."""
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(_device())


def _close(a, b, rtol: float = RTOL, atol: float = ATOL) -> bool:
    import torch

    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and bool(torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol)))


def _describe(value) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {str(value.dtype).replace('torch.', '')}"
    return type(value).__name__


def capture(fn, pool=None, warmup: int = 1):
    """Warm ``fn`` up on a side stream (PyTorch's recipe), then capture it into a new graph.

    Returns ``(graph, output)``: the graph replays ``fn``'s kernels on the memory they used
    during capture, and ``output`` is the tensor (or tuple) each replay writes.
    """
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


def _free_memory() -> None:
    """Give cached, unused blocks back so that memory_reserved() counts what is held.

    (No gc.collect(): the graphs measured here are freed by reference counting, and a full
    collection of a notebook's heap costs more than everything else a check does.)"""
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()


# =======================================================================================
# Watching learner code: syncs, host data, eager compute, replays, captures, generators
# =======================================================================================
_SYNC_OPS = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select",
             "_unique2", "unique_consecutive", "unique_dim", "repeat_interleave"}
_HOST_DATA_OPS = {"lift_fresh", "lift_fresh_copy"}
_DATA_MOVEMENT_OPS = {
    "copy_", "fill_", "zero_", "clone", "_to_copy", "detach", "lift_fresh", "lift_fresh_copy",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "full", "full_like",
    "scalar_tensor", "zeros", "zeros_like", "ones", "ones_like", "new_zeros", "new_ones", "new_full",
    "_copy_from", "_copy_from_and_resize", "resize_", "set_", "contiguous",
}
GENERATOR_REFUSED = "Attempt to increase offset for a CUDA generator not in capture mode."
_GUARD_NOTE = (" [refused by the check before it reached PyTorch, so that this process stays usable; "
               "during a capture on a GPU it fails the same way]")


class _Watch:
    """What learner code did: host syncs, tensors made from Python data, eager compute ops,
    graph replays and captures, generators registered with a graph."""

    def __init__(self):
        self.syncs: list[str] = []
        self.host_data: list[str] = []
        self.compute: list[str] = []
        self.replays = 0
        self.captures = 0
        self.registered: set[int] = set()
        self.refused: list[str] = []

    def note_sync(self, what: str) -> None:
        if what not in self.syncs:
            self.syncs.append(what)


class _Refused(RuntimeError):
    """Raised by a guard inside a capture, before the call reaches PyTorch."""


def _capturing() -> bool:
    import torch

    try:
        return bool(torch.cuda.is_current_stream_capturing())
    except Exception:
        return False


def _default_generators() -> set[int]:
    import torch

    ids = {torch.default_generator._cdata}
    try:
        ids |= {g._cdata for g in torch.cuda.default_generators}
    except Exception:
        pass
    return ids


def _is_alias_op(func) -> bool:
    try:
        return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)
    except Exception:
        return False


def _spy_mode(watch: _Watch):
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    defaults = _default_generators()

    class _Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func.overloadpacket.__name__
            capturing = _capturing()
            sync = None
            if name in _SYNC_OPS:
                sync = f"{name} (a device value read on the CPU: .item(), `if tensor:`, a data-dependent size)"
            elif name == "index" and len(args) > 1 and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []) if i is not None
            ):
                sync = "x[mask] (a boolean index: the CPU needs the number of True values to size the result)"
            if sync:
                watch.note_sync(sync)
                if capturing:
                    watch.refused.append(sync)
                    raise _Refused(f"a host sync during capture: {sync}" + _GUARD_NOTE)
            if name in _HOST_DATA_OPS:
                what = "a tensor made from Python data (torch.tensor(list), .new_tensor, as_tensor)"
                watch.host_data.append(what)
                if capturing:
                    watch.refused.append(what)
                    raise _Refused(
                        "Cannot copy between CPU and CUDA tensors during CUDA graph capture unless the CPU "
                        "tensor is pinned (a tensor made from Python data)" + _GUARD_NOTE)
            if capturing:
                for value in list(args) + list(kwargs.values()):
                    if isinstance(value, torch.Generator) and value._cdata not in defaults \
                            and value._cdata not in watch.registered:
                        watch.refused.append("an unregistered generator")
                        raise _Refused(GENERATOR_REFUSED + _GUARD_NOTE)
            if name not in _DATA_MOVEMENT_OPS and name not in _SYNC_OPS and not _is_alias_op(func):
                watch.compute.append(name)
            return func(*args, **kwargs)

    return _Spy()


@contextlib.contextmanager
def _watching(watch: _Watch | None = None, spy: bool = True):
    """Watch (and guard) the code run inside; yields the :class:`_Watch`.

    With ``spy=False`` only graph replays, captures and registered generators are counted (no
    dispatch mode: cheap enough to leave on while timing)."""
    import torch

    watch = watch or _Watch()
    device_type = _device().type
    missing = object()
    saved = []

    def patch(owner, name, make):
        old = owner.__dict__.get(name, missing)
        current = getattr(owner, name)
        setattr(owner, name, make(current))
        saved.append((owner, name, old))

    def host_read(what):
        def make(original):
            def method(self, *args, **kwargs):
                if isinstance(self, torch.Tensor) and self.device.type == device_type:
                    watch.note_sync(what)
                    if _capturing():
                        watch.refused.append(what)
                        raise _Refused(f"a host sync during capture: {what}" + _GUARD_NOTE)
                return original(self, *args, **kwargs)

            return method

        return make

    def sync_fn(original):
        def synchronize(*args, **kwargs):
            watch.note_sync("torch.cuda.synchronize()")
            if _capturing():
                watch.refused.append("torch.cuda.synchronize()")
                raise _Refused("torch.cuda.synchronize() during capture" + _GUARD_NOTE)
            return original(*args, **kwargs)

        return synchronize

    def replay_fn(original):
        def replay(self, *args, **kwargs):
            watch.replays += 1
            return original(self, *args, **kwargs)

        return replay

    def begin_fn(original):
        def capture_begin(self, *args, **kwargs):
            watch.captures += 1
            return original(self, *args, **kwargs)

        return capture_begin

    def register_fn(original):
        def register_generator_state(self, generator, *args, **kwargs):
            watch.registered.add(generator._cdata)
            return original(self, generator, *args, **kwargs)

        return register_generator_state

    graph_cls = torch.cuda.CUDAGraph
    try:
        for name in ("cpu", "tolist", "numpy"):
            patch(torch.Tensor, name, host_read("a copy to the CPU (.cpu(), .tolist(), .numpy())"))
        for name in ("__repr__", "__format__"):
            patch(torch.Tensor, name, host_read("printing a tensor (its values are copied to the CPU)"))
        patch(torch.cuda, "synchronize", sync_fn)
        patch(graph_cls, "replay", replay_fn)
        patch(graph_cls, "capture_begin", begin_fn)
        if hasattr(graph_cls, "register_generator_state"):
            patch(graph_cls, "register_generator_state", register_fn)
        if spy:
            with _spy_mode(watch):
                yield watch
        else:
            yield watch
    finally:
        for owner, name, old in reversed(saved):
            if old is missing:
                try:
                    delattr(owner, name)
                except AttributeError:
                    pass
            else:
                setattr(owner, name, old)


_SYNC_REASON = (
    "a boolean index, .item(), `if tensor:`, .cpu(), .tolist() or print(tensor) makes the CPU wait for a "
    "value the GPU has; during capture nothing runs, so the capture fails with "
    "cudaErrorStreamCaptureUnsupported and damages the process. Compute with masks and torch.where "
    "instead, so the result never needs a size or a value on the CPU."
)
_SYNC_IDEA = _SYNC_REASON + " (This check ran your code eagerly and did not capture it: your notebook is fine.)"
_SYNC_REFUSED_IDEA = (_SYNC_REASON + " (This check stopped the call inside the capture before it reached "
                      "PyTorch: your notebook is fine.)")
_HOST_DATA_IDEA = (
    "torch.tensor(python_list, device=...) copies host memory to the device; during capture PyTorch "
    "refuses that copy from pageable memory (\"Cannot copy between CPU and CUDA tensors during CUDA graph "
    "capture unless the CPU tensor is pinned\"), and a pinned copy would re-read one host buffer on every "
    "replay. Build the tensor once, before capture, and let the function read that device tensor."
)


def _refuse_syncs(watch: _Watch, what: str) -> None:
    ok(not watch.syncs, f"{what} with no host sync (nothing that needs a device value on the CPU)",
       "a host sync: " + "; ".join(watch.syncs), _SYNC_IDEA)


def _refuse_host_data(watch: _Watch, what: str) -> None:
    ok(not watch.host_data, f"{what} that makes no tensor from Python data",
       "; ".join(dict.fromkeys(watch.host_data)) + " inside the function", _HOST_DATA_IDEA)


def _capture_failed(exc: BaseException, what: str):
    """Turn an exception raised while the learner's code captured into a hint."""
    from graphlab_utils.errors import error_name_in

    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, _Refused):
        if GENERATOR_REFUSED in first:
            fail(f"{what} that captures", f"RuntimeError: {GENERATOR_REFUSED}",
                 "a torch.Generator you create yourself is unknown to the graph: PyTorch only advances the "
                 "generators registered with it. Call graph.register_generator_state(generator) before the "
                 "capture begins.")
        fail(f"{what} that captures", first, _SYNC_REFUSED_IDEA if "sync" in first else _HOST_DATA_IDEA)
    name = error_name_in(str(exc))
    fail(f"{what} that captures", f"{type(exc).__name__}" + (f" ({name})" if name else f": {first}"),
         "something in it is forbidden during capture (a sync, a copy from host memory, a new stream). "
         "On a GPU a failed capture damages the process: restart the kernel before the next try.")


# =======================================================================================
# The kata record
# =======================================================================================
@dataclass(frozen=True)
class Source:
    """A public report a kata is modelled on."""

    url: str
    what: str  # one line: what the report showed, in our words

    @property
    def label(self) -> str:
        parts = self.url.rstrip("/").split("/")
        if len(parts) >= 7 and parts[2] == "github.com":
            return f"{parts[3]}/{parts[4]}#{parts[6]}"
        return self.url


@dataclass(frozen=True)
class Kata:
    """One kata: the symptom, the broken snippet, the exercise, the check and the explanation."""

    number: int
    key: str
    title: str
    symptom: str
    sources: tuple
    snippet: str  # the broken code, as the learner sees and copies it
    entry: str  # the name the snippet defines that the learner fixes
    fixed_name: str  # the name of the learner's fixed version in the lab
    task: str  # what to write, one paragraph
    hint: str
    explanation: str
    checker: Callable = field(repr=False, compare=False, default=None)
    demo: Callable | None = field(repr=False, compare=False, default=None)
    isolated: bool = False  # the broken snippet fails capture: shown only in a child process
    trigger: str = ""  # code that captures the snippet, appended to it in the child process
    demo_needs_gpu: bool = False  # the simulator cannot reproduce the symptom
    demo_skip: str = ""  # what the demo says instead, on the simulator

    @property
    def check_name(self) -> str:
        return f"kata {self.number} ({self.key})"

    def namespace(self) -> dict:
        """What the snippet's code sees: the notebook's names."""
        import torch

        return {"torch": torch, "DEVICE": _device(), "capture": capture, "__name__": f"kata_{self.key}"}

    def broken(self):
        """The snippet's function or class, made from its source."""
        ns = self.namespace()
        exec(compile(self.snippet, f"<kata {self.key}>", "exec"), ns)  # noqa: S102 - our own snippet
        return ns[self.entry]

    def check(self, answer, quiet: bool = False) -> CheckResult:
        return self.checker(answer, quiet=quiet)

    def isolated_code(self) -> str:
        return self.snippet.rstrip() + "\n\n\n" + textwrap.dedent(self.trigger).strip() + "\n"


KATAS: dict[str, Kata] = {}


def _register(kata: Kata) -> Kata:
    KATAS[kata.key] = kata
    return kata


def get(key) -> Kata:
    """A kata by key (``"kv-cache-reset"``) or number (``1``)."""
    if isinstance(key, Kata):
        return key
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
        for kata in KATAS.values():
            if kata.number == int(key):
                return kata
    if key in KATAS:
        return KATAS[key]
    known = ", ".join(KATAS)
    raise KeyError(f"no kata {key!r}; the katas are: {known}")


def catalogue() -> None:
    """Print the table of katas: number, key, title, and the reports each one is modelled on."""
    width = max(len(k.key) for k in KATAS.values())
    for kata in KATAS.values():
        print(f"{kata.number:>2}  {kata.key:<{width}}  {kata.title}")
        print(f"    {'':<{width}}  modelled on {', '.join(s.label for s in kata.sources)}")


def check(key, answer, quiet: bool = False) -> CheckResult:
    """Run kata ``key``'s check on the learner's fixed version ``answer``."""
    return get(key).check(answer, quiet=quiet)


def show(key, answer=None) -> None:
    """Show the symptom: run the kata's scenario on ``answer`` (default: the broken snippet).

    For a snippet whose failure is a failed capture, the broken code runs in a child process
    (the demo never captures it here); on the simulator, a kata whose symptom only a GPU shows
    prints why it is skipped.
    """
    kata = get(key)
    if answer is None and kata.demo_needs_gpu and _on_simulator():
        print(f"kata {kata.number}: real GPU only: {kata.demo_skip}")
        return
    if answer is None and kata.isolated:
        from graphlab_utils.isolation import run_isolated

        result = run_isolated(kata.isolated_code())
        if result.stdout.strip():
            print(result.stdout.rstrip())
        print(result.summary())
        return
    if kata.demo is None:
        print(f"kata {kata.number}: no in-process demo")
        return
    kata.demo(answer if answer is not None else kata.broken())


# =======================================================================================
# Kata 1: the KV cache reset that moved the cache
# =======================================================================================
K1_SNIPPET = '''\
class KVCache:
    """A toy KV cache: one key vector per slot, read by a captured decode step."""

    def __init__(self, slots, dim, device):
        self.keys = torch.zeros(slots, dim, device=device)

    def write(self, keys):
        """Store a request's keys in the first slots."""
        self.keys[: keys.shape[0]].copy_(keys)

    def reset(self):
        """Empty the cache before the next request."""
        self.keys = torch.zeros_like(self.keys)
'''
K1_SLOTS, K1_DIM = 8, 32


def _attend(keys, query):
    """One attention read over the cache: softmax(keys @ query) @ keys."""
    import torch

    return torch.softmax(keys @ query, dim=0) @ keys


def _k1_run(cls) -> dict:
    """Request 1 through a captured decode step, reset, request 2 through the same graph."""
    import torch

    dev = _device()
    keys_a = _randn(101, K1_SLOTS, K1_DIM)
    keys_b = _randn(102, 5, K1_DIM)  # request 2 fills 5 of the 8 slots
    query = _randn(103, K1_DIM)
    padded_b = torch.cat([keys_b, torch.zeros(K1_SLOTS - 5, K1_DIM, device=dev)])
    expect_a, expect_b = _attend(keys_a, query), _attend(padded_b, query)
    cache = cls(K1_SLOTS, K1_DIM, dev)
    ok(isinstance(getattr(cache, "keys", None), torch.Tensor), "a cache with a `keys` tensor (slots x dim)",
       f"`keys` is {_describe(getattr(cache, 'keys', None))}", "keep the KVCache interface: keys, write, reset")
    cache.write(keys_a)
    with _watching():  # guards the capture: nothing in it may sync or copy host data
        graph, out = capture(lambda: _attend(cache.keys, query))
    graph.replay()
    first = _close(out, expect_a)
    cache.reset()
    cache.write(keys_b)
    graph.replay()  # nothing allocated since reset(): a moved buffer's old bytes are still there
    correct, stale = _close(out, expect_b), _close(out, expect_a)
    # reset() must have emptied the slots request 2 does not fill (checked after the replay, so
    # that the check's own tensors cannot land in memory the graph reads)
    emptied = isinstance(cache.keys, torch.Tensor) and tuple(cache.keys.shape) == (K1_SLOTS, K1_DIM) \
        and bool((cache.keys[5:] == 0).all())
    return {"request_1_correct": first, "reset_empties": emptied, "request_2_correct": correct,
            "request_2_reads_request_1": stale}


def _k1_demo(cls) -> None:
    r = _k1_run(cls)
    print("request 1 through the graph matches eager:", r["request_1_correct"])
    print("after reset(), request 2 through the graph matches eager:", r["request_2_correct"])
    print("the graph still reads request 1's keys:", r["request_2_reads_request_1"])


@_check_decorator("kata 1 (kv-cache-reset)")
def check_kv_cache_reset(cls):
    """`cls` is a KVCache class; its reset() must empty the cache where the graph reads it."""
    ok(isinstance(cls, type), "the fixed KVCache class", type(cls).__name__, "pass the class itself, not an instance")
    r = _k1_run(cls)
    ok(r["request_1_correct"], "request 1 replayed equal to eager", "request 1 differs from eager",
       "write() must copy the keys into the cache's first slots in place (keys[:n].copy_(new))")
    ok(r["reset_empties"], "reset() leaves a cache of the same shape with every slot zero",
       "after reset() the cache still holds values (or changed shape)",
       "reset() must empty the cache: request 2 fills only 5 of 8 slots and must not see request 1's keys")
    if r["request_2_reads_request_1"]:
        fail("request 2's result from the graph", "the graph still computes with request 1's keys",
             "reset() gave `self.keys` a new tensor; the graph baked the address of the old one and keeps "
             "reading it. Empty the same memory in place (self.keys.zero_()), or re-capture after every "
             "move; serving systems preallocate their cache once and never move it.")
    ok(r["request_2_correct"], "request 2 replayed equal to eager", "request 2 differs from eager",
       "the graph reads the cache's memory as it was captured: write and reset in place")


_register(Kata(
    number=1,
    key="kv-cache-reset",
    title="A cache reset that moved the cache",
    symptom=(
        "The first request is right. After the cache is reset for the next request, answers are built "
        "from the previous request's cache. No error is raised, and with CUDA graphs disabled every "
        "request is right."),
    sources=(
        Source("https://github.com/infinigence/ApxInf/pull/89",
               "clearing the KV cache replaced its allocations under a captured decode graph; after a reset "
               "the replay read freed memory"),
        Source("https://github.com/sgl-project/sglang/pull/27140",
               "state buffers freed and restored at new addresses behind captured graphs: the next rollout "
               "was garbled text, with no error"),
    ),
    snippet=K1_SNIPPET,
    entry="KVCache",
    fixed_name="KVCacheFixed",
    task="Write `KVCacheFixed`, a `KVCache` whose `reset()` empties the cache so that a graph captured before "
         "the reset reads the emptied cache.",
    hint="A graph reads the addresses it captured. Which statement in `reset()` gives `self.keys` new memory? "
         "Empty the memory the graph already reads instead.",
    explanation=(
        "`torch.zeros_like` allocates a new tensor and the assignment rebinds `self.keys` to it. The captured "
        "graph never sees Python names: its kernels hold the address of the old buffer, which the caching "
        "allocator has taken back but not overwritten, so the replay computes with the previous request's "
        "keys (on a GPU it may later read whatever tensor is given that block). `self.keys.zero_()` empties "
        "the same memory, so the graph reads the new state. The other fixes are re-capturing, or "
        "`cudaGraphExecUpdate` (lesson 06), after every move; serving systems such as SGLang avoid the "
        "question by allocating the KV-cache pool once, before capture, and never moving it (lessons 04, 07)."),
    checker=check_kv_cache_reset,
    demo=_k1_demo,
))


# =======================================================================================
# Kata 2: the weight update that rebound the parameters
# =======================================================================================
K2_SNIPPET = '''\
def load_weights(model, state_dict):
    """Put the trainer's new weights (same names, shapes and device) into the serving model."""
    for name, param in model.named_parameters():
        param.data = state_dict[name]
'''


def _k2_model(seed: int):
    import torch

    torch_gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=torch_gen) * 0.3)
    return model.to(_device()).requires_grad_(False)


def _k2_forward(state, x):
    import torch

    h = torch.relu(x @ state["0.weight"].t() + state["0.bias"])
    return h @ state["2.weight"].t() + state["2.bias"]


def _k2_run(load_weights) -> dict:
    model = _k2_model(201)
    old = {n: p.detach().clone() for n, p in model.named_parameters()}
    new = {n: t.clone() for n, t in _k2_model(202).state_dict().items()}
    static_x = _randn(203, 4, 16)
    expect_old, expect_new = _k2_forward(old, static_x), _k2_forward(new, static_x)
    graph, out = capture(lambda: model(static_x))
    graph.replay()
    before = _close(out, expect_old)
    load_weights(model, new)
    graph.replay()  # right after the update: nothing else has reused the old weights' memory
    after_new, after_old = _close(out, expect_new), _close(out, expect_old)
    eager_new = _close(model(static_x), expect_new)
    return {"before_update_correct": before, "replay_uses_new_weights": after_new,
            "replay_uses_old_weights": after_old, "model_has_new_weights": eager_new}


def _k2_demo(load_weights) -> None:
    r = _k2_run(load_weights)
    print("before the update, the replay matches eager:", r["before_update_correct"])
    print("after the update, the model (run eagerly) has the new weights:", r["model_has_new_weights"])
    print("after the update, the replay uses the new weights:", r["replay_uses_new_weights"])
    print("after the update, the replay still uses the old weights:", r["replay_uses_old_weights"])


@_check_decorator("kata 2 (weight-sync)")
def check_weight_sync(load_weights):
    """`load_weights(model, state_dict)` must update the weights where a captured graph reads them."""
    ok(callable(load_weights), "a function load_weights(model, state_dict)", type(load_weights).__name__,
       "pass the function itself")
    r = _k2_run(load_weights)
    ok(r["model_has_new_weights"], "the model computes with the new weights after load_weights()",
       "the model (run eagerly) still gives the old weights' result",
       "copy every tensor of state_dict into the parameter of the same name")
    if r["replay_uses_old_weights"]:
        fail("the graph's replay computes with the new weights", "the replay still computes with the old weights",
             "assigning param.data = new_tensor points the parameter at new memory; the graph baked the old "
             "address. Copy the values into the existing memory: param.data.copy_(new) (or "
             "model.load_state_dict(state_dict), which copies in place); otherwise re-capture after the update.")
    ok(r["replay_uses_new_weights"], "the graph's replay computes with the new weights",
       "the replay matches neither the old nor the new weights",
       "the graph reads the parameters' memory: update it in place, with copy_")


_register(Kata(
    number=2,
    key="weight-sync",
    title="A weight update the graph never saw",
    symptom=(
        "An RL loop pushes new weights into the serving engine after each training step. The first rollout "
        "is fine; after the weight sync the generations are wrong or garbled, although the parameters hold "
        "the right values when printed. Updating the weights one way works, the other way does not."),
    sources=(
        Source("https://github.com/vllm-project/vllm/issues/9313",
               "`param.data.copy_(new)` and `param.data = new` gave different generations with the same values"),
        Source("https://github.com/vllm-project/vllm-ascend/pull/7473",
               "a weight re-made with .contiguous() got a new address; the graph captured once kept reading "
               "the old one in the RL loop"),
        Source("https://github.com/sgl-project/sglang/pull/4961",
               "loading weights after launch changed the addresses of two weights, conflicting with the graphs"),
    ),
    snippet=K2_SNIPPET,
    entry="load_weights",
    fixed_name="load_weights_fixed",
    task="Write `load_weights_fixed(model, state_dict)`, which puts the new weights into the model so that "
         "the graphs captured before the update compute with them.",
    hint="After `param.data = t`, where does the parameter's memory live, and where does the graph read?",
    explanation=(
        "`param.data = state_dict[name]` makes the parameter point at the state dict's tensor: new memory. "
        "The graph captured before the update holds the old parameter addresses, so a replay computes with "
        "the old weights (or, once that memory is reused, with garbage) while an eager forward shows the new "
        "ones. `param.data.copy_(state_dict[name])`, or `model.load_state_dict(state_dict)` which copies in "
        "place, keeps every address and updates the values. When an update has to change addresses "
        "(a different dtype or layout), re-capture the graphs after it, as SGLang's "
        "`update_weights_from_disk(recapture_cuda_graph=True)` does."),
    checker=check_weight_sync,
    demo=_k2_demo,
))


# =======================================================================================
# Kata 3: a boolean index inside the captured function
# =======================================================================================
K3_SNIPPET = '''\
def masked_mean(hidden, mask):
    """Mean of the rows of a padded batch that hold real tokens (mask is True there)."""
    return hidden[mask].mean(dim=0)
'''
K3_TRIGGER = '''\
hidden = torch.randn(8, 16, device=DEVICE)
mask = torch.arange(8, device=DEVICE) < 5  # 5 real tokens, 3 padding rows
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    pooled = masked_mean(hidden, mask)
'''
K3_ROWS, K3_DIM = 8, 16


def _k3_mask(n_real: int, order_seed: int):
    import torch

    order = torch.randperm(K3_ROWS, generator=torch.Generator().manual_seed(order_seed))
    mask = torch.zeros(K3_ROWS, dtype=torch.bool)
    mask[order[:n_real]] = True
    return mask.to(_device())


def _k3_reference(hidden, mask):
    m = mask.to(hidden.dtype)
    return (hidden * m[:, None]).sum(0) / m.sum()


@_check_decorator("kata 3 (mask-sync)")
def check_masked_mean(fn):
    """`fn(hidden, mask)` = mean of the rows where mask is True, with no host sync; checked eagerly,
    then captured once and replayed for new rows and masks."""
    import torch

    ok(callable(fn), "a function fn(hidden, mask)", type(fn).__name__, "pass the function itself")
    cases = [(_randn(300 + n, K3_ROWS, K3_DIM), _k3_mask(n, 40 + n)) for n in (5, 1, 8, 3)]
    for hidden, mask in cases:
        with _watching() as watch:
            out = fn(hidden.clone(), mask.clone())
        _refuse_syncs(watch, "a masked mean")
        ok(isinstance(out, torch.Tensor) and tuple(out.shape) == (K3_DIM,), f"a tensor of shape ({K3_DIM},)",
           _describe(out), "return the mean over the real rows: one vector of the hidden size")
        n = int(mask.sum())
        if not _close(out, _k3_reference(hidden, mask)):
            if n < K3_ROWS and _close(out, hidden.mean(0)):
                fail("the mean over the rows where mask is True",
                     f"with {n} real rows of {K3_ROWS}, the mean of all rows",
                     "the padding rows must not count: weight each row by the mask (0 or 1) and divide by the "
                     "number of real rows, mask.sum()")
            fail("the mean over the rows where mask is True", f"with {n} real rows of {K3_ROWS}, a different vector",
                 "sum hidden * mask[:, None] over the rows and divide by mask.sum()")
    static_h, static_m = cases[0][0].clone(), cases[0][1].clone()
    try:
        with _watching():
            graph, out = capture(lambda: fn(static_h, static_m))
    except Exception as exc:  # noqa: BLE001 - a failed capture becomes the hint
        _capture_failed(exc, "a masked mean")
    for i, n in enumerate((2, 7, 4)):
        hidden, mask = _randn(400 + i, K3_ROWS, K3_DIM), _k3_mask(n, 60 + i)
        static_h.copy_(hidden)
        static_m.copy_(mask)
        graph.replay()
        ok(_close(out, _k3_reference(hidden, mask)), "replays equal to eager for every new mask",
           f"captured with 5 real rows, the replay with {n} real rows differs",
           "a replay reads only the static tensors: the count of real rows must come from the mask on the "
           "device (mask.sum()), not from a Python number fixed at capture")


_register(Kata(
    number=3,
    key="mask-sync",
    title="A boolean mask inside the graph",
    symptom=(
        "Capture fails with `CUDA error: operation not permitted when stream is capturing`, raised from "
        "inside an ordinary-looking indexing line; eagerly the same function runs fine. After the failure, "
        "the process keeps raising CUDA errors."),
    sources=(
        Source("https://github.com/pytorch/pytorch/issues/78549",
               "SyncBatchNorm began to index with a mask (`count_all[mask]`) and stopped being capturable: "
               "\"operation not permitted when stream is capturing\""),
        Source("https://github.com/pytorch/pytorch/issues/87794",
               "the same error text from a small network captured on a two-GPU machine"),
    ),
    snippet=K3_SNIPPET,
    entry="masked_mean",
    fixed_name="masked_mean_fixed",
    task="Write `masked_mean_fixed(hidden, mask)`: the same result as `masked_mean` for every mask with at "
         "least one True, with no host sync, so that one graph captured once serves every mask.",
    hint="`hidden[mask]` has as many rows as `mask` has True values: who needs to know that number? Weight "
         "the rows by the mask instead of selecting them.",
    explanation=(
        "`hidden[mask]` returns a tensor whose size is the number of True values; PyTorch has to copy that "
        "count to the CPU to allocate the result (a `nonzero` and a sync). During capture nothing has run, "
        "so CUDA refuses the sync (`cudaErrorStreamCaptureUnsupported`), the capture is invalidated "
        "(`cudaErrorStreamCaptureInvalidated` on exit) and the process is left damaged. A fixed-shape "
        "formulation keeps everything on the device: `m = mask.to(hidden.dtype)`, "
        "`(hidden * m[:, None]).sum(0) / m.sum()` (or `torch.where`). The graph then computes the right "
        "mean for any mask copied into its static input. Lesson 02 lists what a capture forbids; lesson 08 "
        "shows how to find the line that synced."),
    checker=check_masked_mean,
    demo=None,
    isolated=True,
    trigger=K3_TRIGGER,
))


# =======================================================================================
# Kata 4: a tensor built from a Python list inside the captured function
# =======================================================================================
K4_SNIPPET = '''\
CHANNEL_GAINS = [1.0, 0.5, 0.25, 2.0]  # from the model's config file


def apply_gains(x):
    """Scale each of x's 4 channels (its last dimension) by its gain from the config."""
    gains = torch.tensor(CHANNEL_GAINS, device=x.device)
    return x * gains
'''
K4_TRIGGER = '''\
x = torch.randn(3, 4, device=DEVICE)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    y = apply_gains(x)
'''
K4_GAINS = (1.0, 0.5, 0.25, 2.0)


@_check_decorator("kata 4 (host-list)")
def check_host_list(fn):
    """`fn(x)` = x * gains per channel, with no tensor built from Python data inside it; checked
    eagerly, then captured once and replayed for new inputs."""
    import torch

    ok(callable(fn), "a function fn(x)", type(fn).__name__, "pass the function itself")
    gains = torch.tensor(K4_GAINS).to(_device())
    for seed in (501, 502):
        x = _randn(seed, 3, 4)
        with _watching() as watch:
            out = fn(x.clone())
        _refuse_syncs(watch, "a function")
        _refuse_host_data(watch, "a function")
        ok(_close(out, x * gains), f"x scaled per channel by {list(K4_GAINS)}", _describe(out) if not
           isinstance(out, torch.Tensor) or out.shape != x.shape else "different values",
           "multiply the last dimension by the config's gains, in their order")
    static_x = _randn(503, 3, 4)
    try:
        with _watching():
            graph, out = capture(lambda: fn(static_x))
    except Exception as exc:  # noqa: BLE001
        _capture_failed(exc, "a function")
    for seed in (504, 505):
        x = _randn(seed, 3, 4)
        static_x.copy_(x)
        graph.replay()
        ok(_close(out, x * gains), "replays equal to eager for new inputs", "a replay differs from eager",
           "the gains tensor must live on the device before capture, and the graph must read static_x")


_register(Kata(
    number=4,
    key="host-list",
    title="A config list turned into a tensor on every call",
    symptom=(
        "Capture stops with `RuntimeError: Cannot copy between CPU and CUDA tensors during CUDA graph capture "
        "unless the CPU tensor is pinned`, raised from a line that only builds a small constant tensor from "
        "a Python list. Before PyTorch added that check, such copies were captured and replays read garbage."),
    sources=(
        Source("https://github.com/flagos-ai/FlagGems/pull/4472",
               "an operator built shape tensors with torch.tensor(list, device=x.device) on every call and "
               "broke graph capture with this error"),
        Source("https://github.com/pytorch/pytorch/pull/172156",
               "PyTorch made unpinned copies during capture an error because they had been producing silent "
               "garbage"),
    ),
    snippet=K4_SNIPPET,
    entry="apply_gains",
    fixed_name="apply_gains_fixed",
    task="Write `apply_gains_fixed(x)`: the same result as `apply_gains`, capturable, with the gains made into "
         "a device tensor once, outside the function.",
    hint="`torch.tensor(list, device=...)` is a copy from host memory to the device. Do that copy once, "
         "before any capture, and let the function read the device tensor it made.",
    explanation=(
        "`torch.tensor(CHANNEL_GAINS, device=x.device)` first builds the tensor in pageable host memory and "
        "then copies it to the device. During capture that copy would become a graph node reading a host "
        "buffer that is freed right after the call, so PyTorch refuses it with \"Cannot copy between CPU and "
        "CUDA tensors during CUDA graph capture unless the CPU tensor is pinned\" (a PyTorch check: the "
        "capture itself stays valid). Constants belong on the device before capture: build "
        "`GAINS = torch.tensor(CHANNEL_GAINS, device=DEVICE)` once (a module buffer in a real model) and "
        "multiply by it; per-request values go into static device tensors with `copy_` before each replay "
        "(lesson 04)."),
    checker=check_host_list,
    demo=None,
    isolated=True,
    trigger=K4_TRIGGER,
))


# =======================================================================================
# Kata 5: a scheduler coefficient frozen into the graph
# =======================================================================================
K5_SNIPPET = '''\
def make_euler_step(latent, eps, sigmas):
    """Capture one Euler update, x + (sigma[i+1] - sigma[i]) * eps, and replay it at every step i."""
    static_latent, static_eps = latent.clone(), eps.clone()
    dt = sigmas[1] - sigmas[0]  # a Python float
    graph, out = capture(lambda: static_latent + dt * static_eps)

    def step(latent, eps, i):
        static_latent.copy_(latent)
        static_eps.copy_(eps)
        graph.replay()
        return out.clone()

    return step
'''
K5_SIGMAS = [14.6, 7.0, 3.2, 1.4, 0.55, 0.18, 0.0]
K5_SHAPE = (4, 64)


def _k5_run(make_euler_step) -> dict:
    import torch

    latent0, eps0 = _randn(601, *K5_SHAPE), _randn(602, *K5_SHAPE)
    with _watching():
        step = make_euler_step(latent0.clone(), eps0.clone(), list(K5_SIGMAS))
    ok(callable(step), "make_euler_step(...) returns a function step(latent, eps, i)", _describe(step),
       "return the inner function at the end")
    results = []
    for i in range(len(K5_SIGMAS) - 1):
        latent, eps = _randn(610 + i, *K5_SHAPE), _randn(620 + i, *K5_SHAPE)
        with _watching() as watch:
            out = step(latent.clone(), eps.clone(), i)
        dt = K5_SIGMAS[i + 1] - K5_SIGMAS[i]
        used = None
        if isinstance(out, torch.Tensor) and out.shape == latent.shape:
            used = float(((out - latent) / eps).median())
        results.append({"i": i, "dt": dt, "out": out, "correct": _close(out, latent + dt * eps, rtol=1e-4, atol=1e-4),
                        "used_dt": used, "watch": watch})
    return {"steps": results}


def _k5_demo(make_euler_step) -> None:
    steps = _k5_run(make_euler_step)["steps"]
    for s in steps:
        print(f"step {s['i']}: sigma step {s['dt']:+.2f}, the graph applied {s['used_dt']:+.2f}, "
              f"matches eager: {s['correct']}")


@_check_decorator("kata 5 (frozen-sigma)")
def check_euler_step(make_euler_step):
    """`make_euler_step(latent, eps, sigmas)` captures once; `step(latent, eps, i)` replays with
    sigma[i+1] - sigma[i] for every i, compared with eager."""
    ok(callable(make_euler_step), "a function make_euler_step(latent, eps, sigmas)",
       type(make_euler_step).__name__, "pass the function itself")
    try:
        steps = _k5_run(make_euler_step)["steps"]
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, _Refused):
            _capture_failed(exc, "an Euler step")
        raise
    for s in steps:
        w = s["watch"]
        ok(w.captures == 0, "step() that replays the graph captured once in make_euler_step",
           f"step {s['i']} captured {w.captures} new graph(s)",
           "capturing on every call costs a capture and an instantiate per step, more than the graph saves: "
           "capture once, then fill a static tensor before each replay")
        ok(w.replays >= 1, "every step replays the captured graph", f"step {s['i']} replayed no graph",
           "copy the inputs into the static tensors, fill the coefficient, then graph.replay()")
        compute = list(dict.fromkeys(w.compute))
        ok(not compute, "step() that only fills static tensors, replays and clones",
           f"step {s['i']} computed eagerly: " + ", ".join(compute[:5]),
           "the update belongs in the graph; around a replay only copy_/fill_ inputs and clone the output")
    wrong = [s for s in steps if not s["correct"]]
    if wrong:
        baked = steps[0]["dt"]
        if all(s["used_dt"] is not None and abs(s["used_dt"] - baked) < 1e-3 for s in wrong):
            fail("each step applies its own sigma[i+1] - sigma[i]",
                 f"every step applied {baked:+.2f}, the value of step 0",
                 "a Python float used during capture becomes a constant kernel argument: the graph replays it "
                 "forever. Keep the coefficient in a static 0-d device tensor and fill_() it before each replay.")
        s = wrong[0]
        fail("each step equal to the eager Euler update", f"step {s['i']} differs from eager",
             "out = latent + (sigmas[i+1] - sigmas[i]) * eps, with the coefficient filled into the graph's "
             "static tensor before the replay")


_register(Kata(
    number=5,
    key="frozen-sigma",
    title="A scheduler coefficient frozen into the graph",
    symptom=(
        "The first denoising step matches eager; every later step is wrong and the image comes out "
        "corrupted. Changing the timestep schedule at run time has no effect until everything is rebuilt."),
    sources=(
        Source("https://github.com/jcelerier/librediffusion/pull/20",
               "a captured step baked the scheduler coefficients as by-value kernel arguments; a new schedule "
               "replayed the stale ones and corrupted the output"),
    ),
    snippet=K5_SNIPPET,
    entry="make_euler_step",
    fixed_name="make_euler_step_fixed",
    task="Write `make_euler_step_fixed(latent, eps, sigmas)`: capture once, and return `step(latent, eps, i)` "
         "that applies `sigmas[i + 1] - sigmas[i]` at step `i` by replaying that graph.",
    hint="What is `dt` to the graph: a value read at every replay, or a number written into a kernel once? "
         "Give the graph a 0-d device tensor to read, and `fill_()` it in `step` before each replay.",
    explanation=(
        "During capture, `dt * static_eps` launches a multiply whose scalar argument is the Python float `dt`; "
        "the kernel's arguments are recorded by value, so every replay multiplies by step 0's coefficient "
        "(the timestep trap of lesson 09). Tensors are read through their address at every replay, Python "
        "numbers are not. Keep the coefficient in a static device tensor, `static_dt = torch.zeros((), "
        "device=latent.device)`, capture `static_latent + static_dt * static_eps`, and call "
        "`static_dt.fill_(sigmas[i + 1] - sigmas[i])` before each replay. The same holds for timesteps, "
        "guidance scales and any other per-step scalar."),
    checker=check_euler_step,
    demo=_k5_demo,
))


# =======================================================================================
# Kata 6: outputs overwritten by the next replay
# =======================================================================================
K6_SNIPPET = '''\
def generate(step, first, n_steps):
    """Call the captured decode step n_steps times; return every step's output, stacked."""
    outputs = []
    x = first
    for _ in range(n_steps):
        x = step(x)
        outputs.append(x)
    return torch.stack(outputs)
'''
K6_DIM, K6_STEPS = 32, 5


def _k6_weights():
    return _randn(701, K6_DIM, K6_DIM) * 0.2, _randn(702, K6_DIM) * 0.1


def _k6_make_step():
    """A graph runner that returns its static output buffer, as production runners do."""
    import torch

    w, b = _k6_weights()
    static_in = torch.zeros(2, K6_DIM, device=_device())
    graph, static_out = capture(lambda: torch.tanh(static_in @ w + b))

    def step(x):
        static_in.copy_(x)
        graph.replay()
        return static_out  # valid until the next replay

    step.keep_alive = (w, b, static_in)  # a graph does not keep the tensors it reads alive

    return step


def _k6_run(generate) -> dict:
    import torch

    w, b = _k6_weights()
    first = _randn(703, 2, K6_DIM)
    expect, x = [], first
    for _ in range(K6_STEPS):
        x = torch.tanh(x @ w + b)
        expect.append(x)
    expect = torch.stack(expect)
    step = _k6_make_step()
    with _watching() as watch:
        out = generate(step, first.clone(), K6_STEPS)
    shape_ok = isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(expect.shape)
    all_last = shape_ok and all(_close(out[i], expect[-1]) for i in range(K6_STEPS))
    return {"out": out, "expect": expect, "shape_ok": shape_ok, "correct": shape_ok and _close(out, expect),
            "all_equal_last": all_last, "replays": watch.replays}


def _k6_demo(generate) -> None:
    r = _k6_run(generate)
    print(f"{K6_STEPS} steps generated; the result matches eager:", r["correct"])
    print("every step's entry equals the last step's output:", r["all_equal_last"])


@_check_decorator("kata 6 (overwritten-output)")
def check_generate(generate):
    """`generate(step, first, n_steps)` returns the n outputs of the graph runner `step`, stacked."""
    ok(callable(generate), "a function generate(step, first, n_steps)", type(generate).__name__,
       "pass the function itself")
    r = _k6_run(generate)
    ok(r["shape_ok"], f"a tensor of shape {tuple(r['expect'].shape)} (steps, batch, dim)", _describe(r["out"]),
       "stack the n_steps outputs along a new first dimension")
    ok(r["replays"] == K6_STEPS, f"{K6_STEPS} calls of step (one replay each)", f"{r['replays']} replays",
       "call the captured step once per generated step")
    if r["all_equal_last"]:
        fail("step i's output in row i", f"all {K6_STEPS} rows equal the last step's output",
             "step() returns the graph's static output buffer, and every replay writes into that same "
             "memory: the list holds one tensor five times. Keep a copy of each step's result "
             "(outputs.append(x.clone())) before the next replay.")
    ok(r["correct"], "the outputs of the eager loop", "some rows differ from eager",
       "each row must be the output of that step, kept before the next replay overwrites it")


_register(Kata(
    number=6,
    key="overwritten-output",
    title="Outputs overwritten by the next replay",
    symptom=(
        "A loop over a captured step collects its outputs; when the list is inspected, every entry is "
        "identical to the last one. (torch.compile's CUDA graphs detect this and raise \"accessing tensor "
        "output of CUDAGraphs that has been overwritten by a subsequent run\"; a hand-written runner is "
        "silent.)"),
    sources=(
        Source("https://github.com/pytorch/pytorch/issues/148439",
               "accessing a tensor output of CUDA graphs that had been overwritten by a subsequent run"),
        Source("https://github.com/sgl-project/sglang/pull/31852",
               "a full-forward graph for a diffusion transformer had to clone its outputs before returning them"),
    ),
    snippet=K6_SNIPPET,
    entry="generate",
    fixed_name="generate_fixed",
    task="Write `generate_fixed(step, first, n_steps)`: the same loop, returning the output of every step "
         "(stacked), where `step` is a graph runner that returns its static output buffer.",
    hint="How many different tensors does `outputs` hold at the end? Each replay writes into the same buffer.",
    explanation=(
        "A graph writes its output into memory fixed at capture, and `step` returns that buffer itself "
        "(production runners do, to save a copy: the caller consumes the result before the next replay). "
        "The list therefore holds the same tensor `n_steps` times, and after the loop it shows the last "
        "step's values. Clone what you keep: `outputs.append(x.clone())` (or copy each step into a "
        "preallocated result). Feeding `x` back into `step` is fine: it is copied into the static input "
        "before the replay. Lesson 04 shows the overwrite, lesson 05 the runner that clones."),
    checker=check_generate,
    demo=_k6_demo,
))


# =======================================================================================
# Kata 7: too many graphs, each with its own pool
# =======================================================================================
K7_SNIPPET = '''\
def capture_all(layer, sizes):
    """Capture the layer once per batch size; return {batch size: (graph, static_x, out)}."""
    graphs = {}
    for bs in sizes:
        static_x = torch.zeros(bs, layer.in_features, device=DEVICE)
        graph, out = capture(lambda: layer(static_x))
        graphs[bs] = (graph, static_x, out)
    return graphs
'''
K7_FEATURES = 1024
K7_SIZES = (4, 1, 32, 8, 2, 16)
K7_BUDGET = 0.5  # graphs for every size in one pool: at most half of what one pool per size holds


class DequantLinear:
    """A weight-only int8 linear layer that dequantizes its weight on every call (a 4 MiB workspace)."""

    def __init__(self, features: int = K7_FEATURES, seed: int = 801):
        import torch

        gen = torch.Generator().manual_seed(seed)
        self.in_features = self.out_features = features
        self.weight_q = torch.randint(-127, 128, (features, features), generator=gen, dtype=torch.int8).to(_device())
        self.scale = (torch.rand(features, generator=gen) * 0.01 + 0.001).to(_device())

    def __call__(self, x):
        w = self.weight_q.float() * self.scale[:, None]  # the workspace: features x features floats
        return x @ w.t()


def _k7_measure(capture_all, layer, sizes):
    import torch

    _free_memory()
    base = torch.cuda.memory_reserved()
    with _watching():  # guards the captures: nothing in them may sync or copy host data
        graphs = capture_all(layer, list(sizes))
    _free_memory()
    return graphs, torch.cuda.memory_reserved() - base


def _k7_separate_pools():
    """The kata's broken snippet (one private pool per size): the yardstick, measured side by side."""
    scope = {"torch": __import__("torch"), "DEVICE": _device(), "capture": capture}
    exec(K7_SNIPPET, scope)  # noqa: S102 - the kata's own snippet
    return scope["capture_all"]


def _k7_run(capture_all) -> dict:
    layer = DequantLinear()
    separate, one_bytes = _k7_measure(_k7_separate_pools(), layer, K7_SIZES)
    del separate
    _free_memory()
    graphs, all_bytes = _k7_measure(capture_all, layer, K7_SIZES)
    ratio = all_bytes / max(one_bytes, 1)
    correct = True
    shapes_ok = isinstance(graphs, dict) and set(graphs) == set(K7_SIZES)
    if shapes_ok:
        for bs in sorted(K7_SIZES):
            entry = graphs[bs]
            if not (isinstance(entry, tuple) and len(entry) == 3):
                shapes_ok = False
                break
            graph, static_x, out = entry
            x = _randn(810 + bs, bs, K7_FEATURES)
            static_x.copy_(x)
            graph.replay()
            correct = correct and _close(out, layer(x), rtol=1e-3, atol=1e-3)
    result = {"one_bytes": one_bytes, "all_bytes": all_bytes, "ratio": ratio, "shapes_ok": shapes_ok,
              "correct": correct, "graphs": len(graphs) if isinstance(graphs, dict) else 0}
    del graphs
    _free_memory()
    return result


def _k7_demo(capture_all) -> None:
    from graphlab_utils.timing import format_ratio

    r = _k7_run(capture_all)
    mib = 2 ** 20
    print(f"one pool per size (the snippet): {r['one_bytes'] / mib:.1f} MiB reserved")
    print(f"{r['graphs']} graphs (batch sizes {sorted(K7_SIZES)}): {r['all_bytes'] / mib:.1f} MiB reserved, "
          f"{format_ratio(r['ratio'])} one pool per size")
    print(f"at most {K7_BUDGET:g} of one pool per size:", r["ratio"] <= K7_BUDGET)
    print("every graph replays eager's result:", r["correct"])


@_check_decorator("kata 7 (graph-memory)")
def check_graph_memory(capture_all):
    """`capture_all(layer, sizes)` captures one graph per size; together they may reserve at most
    half the memory the snippet's one-pool-per-size version holds (both measured here, side by side)."""
    from graphlab_utils.timing import format_ratio

    ok(callable(capture_all), "a function capture_all(layer, sizes)", type(capture_all).__name__,
       "pass the function itself")
    r = _k7_run(capture_all)
    ok(r["shapes_ok"], f"a dict {{batch size: (graph, static_x, out)}} for sizes {sorted(K7_SIZES)}",
       f"{r['graphs']} entries", "keep the snippet's return value: one (graph, static_x, out) per size")
    ok(r["correct"], "every graph's replay equal to the layer run eagerly", "a replay differs from eager",
       "each graph must read its own static_x and write its own out")
    ok(r["ratio"] <= K7_BUDGET,
       f"graphs for {len(K7_SIZES)} sizes holding at most {K7_BUDGET:g} of what one pool per size holds",
       f"{format_ratio(r['ratio'])} of one pool per size",
       "without pool=, every capture gets a private memory pool that keeps its own workspace (here the "
       "dequantized weight) for as long as the graph lives, so memory grows with every size. Capture all "
       "sizes into one pool (pool = torch.cuda.graph_pool_handle(); capture(..., pool=pool)), largest size "
       "first: each capture reuses the workspace the previous one freed.")


_register(Kata(
    number=7,
    key="graph-memory",
    title="One private pool per captured size",
    symptom=(
        "The server loads the model, starts capturing CUDA graphs for its list of batch sizes, and runs out "
        "of memory part-way through the list; with fewer sizes it starts, but the graphs take far more "
        "memory than one forward pass needs."),
    sources=(
        Source("https://github.com/PaddlePaddle/FastDeploy/pull/2844",
               "256 captured batch sizes often ran out of memory; padding to 27 sizes fixed it"),
        Source("https://github.com/vllm-project/vllm/pull/7894",
               "with one shared graph memory pool, the cost of many captured sizes scales with the largest only"),
        Source("https://github.com/NVIDIA/TensorRT-LLM/pull/3116",
               "capture order reversed, largest first, so smaller graphs reuse the memory of larger ones"),
    ),
    snippet=K7_SNIPPET,
    entry="capture_all",
    fixed_name="capture_all_fixed",
    task="Write `capture_all_fixed(layer, sizes)`: the same graphs, but all of them together may reserve at "
         f"most {K7_BUDGET:g} of what the snippet's graphs reserve (measured side by side).",
    hint="Where does a graph captured without `pool=` get its memory, and when does that memory come back? "
         "`capture(fn, pool=...)` passes a pool to `torch.cuda.graph`.",
    explanation=(
        "A capture without `pool=` gets a private memory pool, and a live graph keeps everything its pool "
        "reserved: here the 4 MiB dequantized weight of every capture. Six sizes, six workspaces. Graphs "
        "that never run at the same time can share one pool: create "
        "`pool = torch.cuda.graph_pool_handle()`, capture every size with `pool=pool`, the largest first, "
        "and each capture reuses the blocks the previous one freed; only the tensors that stay alive (each "
        "graph's output) add up. That is why SGLang and vLLM capture largest first into one global pool, "
        "and why the memory of their graphs scales with the largest batch size, not with the number of "
        "sizes. (Few sizes, with padding to the next one, is the other half of the fix: lesson 05; the "
        "measurements are lesson 07's.)"),
    checker=check_graph_memory,
    demo=_k7_demo,
))


# =======================================================================================
# Kata 8: a graph re-recorded for every new shape
# =======================================================================================
K8_SNIPPET = '''\
class GraphCache:
    """Replays one captured graph per input shape; captures a new one on a miss."""

    def __init__(self, fn):
        self.fn, self.graphs = fn, {}

    def __call__(self, x):
        key = tuple(x.shape)
        if key not in self.graphs:
            static_x = x.clone()
            graph, out = capture(lambda: self.fn(static_x))
            self.graphs[key] = (graph, static_x, out)
        graph, static_x, out = self.graphs[key]
        static_x.copy_(x)
        graph.replay()
        return out.clone()
'''
K8_HIDDEN, K8_LAYERS, K8_REQUESTS, K8_MAX_LEN = 32, 8, 40, 64
K8_MAX_GRAPHS = 8
K8_MIN_SPEEDUP = 2.0


def _k8_model():
    """A row-wise stack of small layers: each token's row is computed on its own."""
    import torch

    weights = [_randn(900 + i, K8_HIDDEN, K8_HIDDEN) / 6 for i in range(K8_LAYERS)]

    def mlp(x):
        for w in weights:
            x = torch.tanh(x @ w)
        return x

    return mlp


def _k8_requests():
    rng = random.Random(8)
    lengths = [rng.randint(1, K8_MAX_LEN) for _ in range(K8_REQUESTS)]
    return [_randn(950 + i, n, K8_HIDDEN) for i, n in enumerate(lengths)]


def _k8_serve(cache_cls, fn, requests) -> dict:
    """A fresh cache serves every request, timed (host time, device synchronised at both ends);
    captures and replays are counted on the side."""
    from graphlab_utils import timing

    holder = {}

    def serve_all():
        cache = cache_cls(fn)
        holder["outs"] = [cache(x) for x in requests]

    with _watching(spy=False) as watch:
        elapsed = timing.measure_host(serve_all)
    return {"time": elapsed, "outs": holder["outs"], "captures": watch.captures, "replays": watch.replays}


def _k8_setup():
    fn = _k8_model()
    requests = _k8_requests()
    fn(requests[0])  # lazy initialisation (libraries, allocator) before anything is timed
    return fn, requests


def _k8_demo(cache_cls) -> None:
    from graphlab_utils import timing

    fn, requests = _k8_setup()
    served = _k8_serve(cache_cls, fn, requests)

    def eager():
        for x in requests:
            fn(x)

    t_eager = timing.measure_host(eager)
    t_graph = served["time"]
    print(f"{len(requests)} requests of {len({x.shape[0] for x in requests})} different lengths: "
          f"{served['captures']} graphs captured, {served['replays']} replays")
    print(f"serving them through the graph cache: {timing.format_ms(t_graph.ms)}; eagerly: "
          f"{timing.format_ms(t_eager.ms)} ({t_graph.label})")
    print("the graph cache is slower than eager:", t_graph.ms > t_eager.ms)


@_check_decorator("kata 8 (rerecord-every-call)")
def check_graph_cache(cache_cls):
    """`cache_cls(fn)` serves requests of any length 1..64 through a few captured graphs; timed side
    by side with the snippet's cache on the same stream of requests."""
    from graphlab_utils import timing

    ok(isinstance(cache_cls, type), "the fixed GraphCache class", type(cache_cls).__name__,
       "pass the class itself, not an instance")
    fn, requests = _k8_setup()
    broken = _k8_serve(get("rerecord-every-call").broken(), fn, requests)
    answer = _k8_serve(cache_cls, fn, requests)
    wrong = [i for i, (o, x) in enumerate(zip(answer["outs"], requests)) if not _close(o, fn(x))]
    ok(not wrong, "every request's result equal to eager (same rows, same length)",
       f"{len(wrong)} of {len(requests)} results differ from eager (the first: a request of length "
       f"{requests[wrong[0]].shape[0] if wrong else 0})",
       "pad the input up to its bucket with zeros, copy it into the bucket's static input, replay, and "
       "return the first n rows of the output (a clone)")
    ok(answer["replays"] >= len(requests), "one replay per request",
       f"{answer['replays']} replays for {len(requests)} requests", "every request must go through a captured graph")
    distinct = len({x.shape[0] for x in requests})
    ok(answer["captures"] <= K8_MAX_GRAPHS, f"at most {K8_MAX_GRAPHS} graphs for lengths 1..{K8_MAX_LEN}",
       f"{answer['captures']} graphs captured for {distinct} different lengths",
       "a graph is specialised to its shapes, so keying graphs by the exact length captures anew for almost "
       "every request. Round each length up to a bucket (1, 2, 4, ..., 64), capture one graph per bucket, "
       "pad the input with zeros and slice the output.")
    speedup = timing.speedup(broken["time"], answer["time"])
    ok(speedup >= K8_MIN_SPEEDUP,
       f"serving at least {K8_MIN_SPEEDUP:g}x faster than the cache keyed by exact shape",
       f"{timing.format_ratio(speedup)} ({answer['time'].label})",
       "captures are expensive (warm-up, capture, instantiate); once each bucket has its graph, a request "
       "costs one copy, one replay and one slice")


_register(Kata(
    number=8,
    key="rerecord-every-call",
    title="A graph recorded again for every new shape",
    symptom=(
        "CUDA graphs were turned on to cut latency, and serving got slower than eager. The log shows a new "
        "graph being recorded for almost every request, each with its own memory."),
    sources=(
        Source("https://github.com/pytorch/pytorch/pull/188913",
               "with input sizes that change almost every call, reduce-overhead mode re-recorded a graph per "
               "size; recording cost more than replay saved and step time regressed"),
        Source("https://github.com/pytorch/pytorch/issues/196385",
               "one CUDA graph recorded per unique input size, forever"),
    ),
    snippet=K8_SNIPPET,
    entry="GraphCache",
    fixed_name="GraphCacheFixed",
    task=f"Write `GraphCacheFixed`, a cache with the same interface (`GraphCacheFixed(fn)`, then "
         f"`cache(x)` for `x` of shape `(n, {K8_HIDDEN})`, any `n` from 1 to {K8_MAX_LEN}) that captures at most "
         f"{K8_MAX_GRAPHS} graphs and serves the requests at least {K8_MIN_SPEEDUP:g}x faster than `GraphCache`. "
         "`fn` works row by row, so zero rows added at the end do not change the real rows.",
    hint="Round `n` up to the next power of two, keep one static input per bucket, copy `x` into its first "
         "`n` rows and zero the rest, replay, and return `out[:n].clone()`.",
    explanation=(
        "A CUDA graph is specialised to the shapes it captured, so a cache keyed by the exact shape captures "
        "a new graph for almost every new request length. Each capture pays a warm-up, the capture and the "
        "instantiation, which together cost far more than the launches a replay saves; with lengths spread "
        "over 1..64 the cache keeps capturing and serving is slower than eager, with a private pool per "
        "graph on top. Bucketing fixes it: round the length up (1, 2, 4, ..., 64), capture one graph per "
        "bucket, pad with zeros, slice the result. After at most 7 captures every request is a replay. The "
        "price is padding work, and a model must be row-wise (or masked) for padding to be harmless. "
        "torch.compile's `mode=\"reduce-overhead\"` can fall into the same trap with dynamic shapes; "
        "PyTorch warns when it keeps re-recording and has settings to skip or bound it. Lesson 05 builds the "
        "bucketed runner."),
    checker=check_graph_cache,
    demo=_k8_demo,
))


# =======================================================================================
# Kata 9: warm-up that captured shapes serving never uses
# =======================================================================================
K9_SNIPPET = '''\
def warm_up(runner, batch_sizes, channels, guidance, dtype):
    """Capture a graph for every batch size the server will see, before traffic arrives."""
    for bs in batch_sizes:
        dummy = torch.zeros(bs, channels, device=DEVICE)
        runner.capture(dummy)
'''
K9_CHANNELS = 64
K9_BATCHES = (1, 2, 4)
K9_TRAFFIC = (1, 2, 4, 2, 1)


def cfg_batch(latents, guidance):
    """What serving feeds the denoiser: with classifier-free guidance (guidance > 1) the batch is doubled
    (a conditional and an unconditional copy of every latent)."""
    import torch

    return torch.cat([latents, latents]) if guidance > 1 else latents


class _Denoiser:
    """A small denoiser that runs in the pipeline's dtype (it casts its input, as diffusers models do)."""

    def __init__(self, channels: int = K9_CHANNELS, dtype=None, seed: int = 1001):
        import torch

        self.dtype = dtype or torch.bfloat16
        gen = torch.Generator().manual_seed(seed)
        self.w1 = (torch.randn(channels, 4 * channels, generator=gen) / 8).to(_device(), self.dtype)
        self.w2 = (torch.randn(4 * channels, channels, generator=gen) / 16).to(_device(), self.dtype)

    def __call__(self, x):
        import torch

        x = x.to(self.dtype)
        return torch.nn.functional.gelu(x @ self.w1) @ self.w2


class DenoiserRunner:
    """Graphs keyed by (batch, dtype) of the denoiser's input; a miss runs the model eagerly."""

    def __init__(self, model):
        self.model, self.graphs = model, {}
        self.replays = self.fallbacks = 0

    @staticmethod
    def key(x):
        return (x.shape[0], x.dtype)

    def capture(self, example):
        static_x = example.clone()
        graph, out = capture(lambda: self.model(static_x))
        self.graphs[self.key(example)] = (graph, static_x, out)

    def __call__(self, x):
        entry = self.graphs.get(self.key(x))
        if entry is None:
            self.fallbacks += 1  # silent: the request still gets an answer
            return self.model(x)
        graph, static_x, out = entry
        static_x.copy_(x)
        graph.replay()
        self.replays += 1
        return out.clone()


def serve(runner, latents, guidance):
    """One denoiser call of a request: the pipeline's latents (in its dtype), guidance applied."""
    return runner(cfg_batch(latents, guidance))


def _k9_run(warm_up, guidance: float) -> dict:
    import torch

    model = _Denoiser()
    runner = DenoiserRunner(model)
    with _watching() as watch:
        warm_up(runner, K9_BATCHES, K9_CHANNELS, guidance, model.dtype)
    captured = sorted((bs, str(dtype).replace("torch.", "")) for bs, dtype in runner.graphs)
    correct, missed = True, []
    for i, bs in enumerate(K9_TRAFFIC):
        latents = _randn(1100 + i, bs, K9_CHANNELS).to(model.dtype)
        before = runner.fallbacks
        out = serve(runner, latents, guidance)
        if runner.fallbacks > before:
            missed.append(cfg_batch(latents, guidance).shape[0])
        correct = correct and _close(out, model(cfg_batch(latents, guidance)), rtol=2e-2, atol=2e-2)
    return {"captured": captured, "replays": runner.replays, "fallbacks": runner.fallbacks,
            "missed_batches": sorted(set(missed)), "correct": correct, "warmup_captures": watch.captures,
            "served_dtype": str(model.dtype).replace("torch.", "")}


def _k9_demo(warm_up) -> None:
    r = _k9_run(warm_up, guidance=7.5)
    print("warm-up captured graphs for (batch, dtype):", r["captured"])
    print(f"{len(K9_TRAFFIC)} requests with guidance 7.5 ({r['served_dtype']} latents): "
          f"{r['replays']} replayed, {r['fallbacks']} ran eagerly")


@_check_decorator("kata 9 (warmup-mismatch)")
def check_warm_up(warm_up):
    """`warm_up(runner, batch_sizes, channels, guidance, dtype)` must capture what serving looks up:
    every request afterwards is a replay (with guidance 7.5 and with guidance 1.0)."""
    ok(callable(warm_up), "a function warm_up(runner, batch_sizes, channels, guidance, dtype)",
       type(warm_up).__name__, "pass the function itself")
    for guidance in (7.5, 1.0):
        r = _k9_run(warm_up, guidance)
        ok(r["warmup_captures"] >= 1, "warm-up that captures graphs", "warm-up captured no graph",
           "call runner.capture(example) with an input shaped and typed like serving's")
        if r["fallbacks"]:
            fail(f"every request replayed a graph (guidance {guidance:g}, {r['served_dtype']} latents)",
                 f"{r['fallbacks']} of {len(K9_TRAFFIC)} requests ran eagerly; serving looked up batch "
                 f"{r['missed_batches']} in {r['served_dtype']}, warm-up captured {r['captured']}",
                 "the runner finds a graph by the exact (batch, dtype) of the denoiser's input. Build the "
                 "warm-up inputs the way serving builds them: latents in the pipeline's dtype, passed through "
                 "cfg_batch(latents, guidance), which doubles the batch when guidance > 1.")
        ok(r["replays"] == len(K9_TRAFFIC), f"{len(K9_TRAFFIC)} replays", f"{r['replays']} replays",
           "every request should be served by a graph captured at warm-up")
        ok(r["correct"], "replayed results equal to the eager denoiser", "a result differs from eager",
           "capture the runner with runner.capture(example) and leave the runner itself unchanged")


_register(Kata(
    number=9,
    key="warmup-mismatch",
    title="A warm-up that captured shapes serving never asks for",
    symptom=(
        "Start-up takes longer and memory goes up while graphs are captured, but latency stays at the eager "
        "level; a profile shows no graph launches. The runner never complains: every request falls back to "
        "eager."),
    sources=(
        Source("https://github.com/vllm-project/vllm/pull/40734",
               "the largest batch was not among the captured sizes, so at peak load the model fell back to "
               "eager and throughput dropped sharply"),
        Source("https://github.com/sgl-project/sglang/pull/21005",
               "the configured maximum batch size was not captured; the silent fallback cost a large slowdown"),
    ),
    snippet=K9_SNIPPET,
    entry="warm_up",
    fixed_name="warm_up_fixed",
    task="Write `warm_up_fixed(runner, batch_sizes, channels, guidance, dtype)` so that afterwards every "
         "request served with `serve(runner, latents, guidance)` (latents of a batch size from `batch_sizes`, "
         "in `dtype`) replays a graph.",
    hint="Print `runner.key(...)` of a warm-up input and of what `serve` passes to the runner. Two things "
         "differ. `katas.cfg_batch` is what serving uses.",
    explanation=(
        "The runner looks graphs up by the exact (batch, dtype) of the denoiser's input. Warm-up built its "
        "dummies as float32 tensors of the request batch size, but serving passes latents in the pipeline's "
        "dtype (bfloat16) and, with classifier-free guidance, doubles the batch (a conditional and an "
        "unconditional copy). No key matches, every request takes the silent eager fallback, and the "
        "captured graphs only cost start-up time and memory. Build warm-up inputs with the serving code "
        "itself: `runner.capture(cfg_batch(torch.zeros(bs, channels, dtype=dtype, device=DEVICE), guidance))`; "
        "and count fallbacks in production (log them), so a mismatch is seen rather than felt. Lesson 09 "
        "builds a runner keyed by (batch, resolution) with an eager fallback."),
    checker=check_warm_up,
    demo=_k9_demo,
))


# =======================================================================================
# Kata 10: a request's own random generator, unknown to the graph
# =======================================================================================
K10_SNIPPET = '''\
def make_noisy_step(latent, generator):
    """Capture latent + 0.5 * noise, the noise drawn from the request's own seeded generator."""
    static_latent = latent.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        noise = torch.randn(static_latent.shape, generator=generator, device=static_latent.device)
        out = static_latent + 0.5 * noise

    def step(latent):
        static_latent.copy_(latent)
        graph.replay()
        return out.clone()

    return step
'''
K10_TRIGGER = '''\
generator = torch.Generator(device=DEVICE).manual_seed(1234)
step = make_noisy_step(torch.zeros(4, 8, device=DEVICE), generator)
print("captured")
'''
K10_SHAPE = (16, 64)
K10_DEMO_SKIP = (
    "on the simulator a replay draws new numbers from any torch.Generator, so the error a GPU raises here "
    "(RuntimeError: Attempt to increase offset for a CUDA generator not in capture mode.) cannot be shown; "
    "the check below enforces the same rule on both backends")


def _k10_sequence(step, generator, seed: int, n: int = 3):
    generator.manual_seed(seed)
    return [((step(latent) - latent) / 0.5) for latent in (_randn(1200 + i, *K10_SHAPE) for i in range(n))]


@_check_decorator("kata 10 (unregistered-generator)")
def check_noisy_step(make_noisy_step):
    """`make_noisy_step(latent, generator)` captures once; `step(latent)` adds 0.5 * noise drawn from
    `generator`: new noise every replay, the same sequence again after re-seeding the generator."""
    import torch

    ok(callable(make_noisy_step), "a function make_noisy_step(latent, generator)", type(make_noisy_step).__name__,
       "pass the function itself")
    generator = torch.Generator(device=_device()).manual_seed(7)
    try:
        with _watching(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The CUDA Graph is empty")  # after a refused draw
            step = make_noisy_step(torch.zeros(*K10_SHAPE, device=_device()), generator)
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, _Refused):
            _capture_failed(exc, "a noisy step")
        raise
    ok(callable(step), "make_noisy_step(...) returns a function step(latent)", _describe(step),
       "return the inner function at the end")
    with _watching() as watch:
        first = _k10_sequence(step, generator, 7)
    ok(watch.replays >= 3, "every call of step replays the graph", f"{watch.replays} replays in 3 calls",
       "step must copy the latent in and replay the graph captured once")
    ok(all(isinstance(n, torch.Tensor) and tuple(n.shape) == K10_SHAPE for n in first),
       f"tensors of shape {K10_SHAPE}", _describe(first[0]), "return latent + 0.5 * noise, the latent's shape")
    ok(not _close(first[0], first[1], rtol=1e-4, atol=1e-4), "new noise on every replay", "the same noise twice",
       "the noise must be drawn inside the graph, from the generator, so each replay draws anew")
    again = _k10_sequence(step, generator, 7)
    ok(all(_close(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(first, again)),
       "the same noise sequence after generator.manual_seed(7) again",
       "a different sequence: the noise does not follow the request's generator",
       "draw from the generator you were given (generator=generator), registered with the graph: a replay "
       "then continues that generator's sequence, so a request's seed reproduces its images")
    other = _k10_sequence(step, generator, 8)
    ok(not _close(first[0], other[0], rtol=1e-4, atol=1e-4), "different noise for a different seed",
       "the same noise for seeds 7 and 8",
       "the noise must come from the request's generator")
    allnoise = torch.stack(first)
    mean, std = float(allnoise.mean()), float(allnoise.std())
    ok(abs(mean) < 0.1 and 0.85 < std < 1.15, "standard normal noise, scaled by 0.5",
       f"(out - latent) / 0.5 has mean {mean:.2f} and std {std:.2f}", "use torch.randn, times 0.5")


_register(Kata(
    number=10,
    key="unregistered-generator",
    title="A request's random generator the graph does not know",
    symptom=(
        "Sampling with a per-request seed: `torch.randn(..., generator=request_generator)` works eagerly, "
        "but capturing the step fails with `RuntimeError: Attempt to increase offset for a CUDA generator "
        "not in capture mode.` Switching to the default generator makes the capture pass, but then the "
        "request's seed no longer reproduces its samples."),
    sources=(
        Source("https://github.com/pytorch/pytorch/issues/91950",
               "a custom graph-capture wrapper failed on an unexpected CUDA generator used during capture"),
        Source("https://github.com/pytorch/pytorch/issues/172390",
               "how PyTorch registers each generator with a graph before capture and advances it at replay"),
    ),
    snippet=K10_SNIPPET,
    entry="make_noisy_step",
    fixed_name="make_noisy_step_fixed",
    task="Write `make_noisy_step_fixed(latent, generator)`: the same step, capturable, whose replays draw new "
         "noise from `generator` (so re-seeding the generator reproduces the sequence).",
    hint="PyTorch registers its default generator with every capture by itself. Any other "
         "`torch.Generator` must be registered with the graph before the capture begins: look at "
         "`torch.cuda.CUDAGraph`'s methods.",
    explanation=(
        "On a GPU, PyTorch draws random numbers in graphs with a seed and an offset that the graph reads at "
        "every replay, and it advances the offset of each generator *registered* with the graph. The default "
        "generator is registered by `capture_begin` itself; a `torch.Generator` you create is not, so the "
        "first draw from it during capture fails with \"Attempt to increase offset for a CUDA generator not "
        "in capture mode\". Call `graph.register_generator_state(generator)` before `torch.cuda.graph(graph)`: "
        "each replay then continues that generator's sequence, and `generator.manual_seed(s)` before a "
        "request reproduces it. (Falling back to the default generator captures, but mixes every request's "
        "randomness into one stream.) On the simulator every generator behaves as if registered, so the "
        "demo of the failure needs a GPU; the check enforces the rule on both."),
    checker=check_noisy_step,
    demo=None,
    isolated=True,
    trigger=K10_TRIGGER,
    demo_needs_gpu=True,
    demo_skip=K10_DEMO_SKIP,
))


# =======================================================================================
# Kata 11: a Python counter frozen at capture
# =======================================================================================
K11_SNIPPET = '''\
class RunningMean:
    """Stores one token vector per step and returns the mean of all tokens seen so far."""

    def __init__(self, slots, dim, device):
        self.cache = torch.zeros(slots, dim, device=device)
        self.pos = 0  # the next free slot

    def step(self, token):
        self.cache[self.pos].copy_(token)
        self.pos += 1
        return self.cache[: self.pos].mean(dim=0)
'''
K11_SLOTS, K11_DIM, K11_STEPS = 8, 16, 6


def _k11_run(cls) -> dict:
    import torch

    dev = _device()
    tokens = [_randn(1300 + i, K11_DIM) for i in range(K11_STEPS)]
    expect = [torch.stack(tokens[: i + 1]).mean(0) for i in range(K11_STEPS)]
    eager = cls(K11_SLOTS, K11_DIM, dev)
    with _watching() as watch:
        eager_outs = [eager.step(t.clone()) for t in tokens]
    eager_ok = all(_close(o, e) for o, e in zip(eager_outs, expect))
    result = {"eager_correct": eager_ok, "syncs": list(watch.syncs), "host_data": list(watch.host_data)}
    if watch.syncs or watch.host_data or not eager_ok:
        return result
    spare = cls(K11_SLOTS, K11_DIM, dev)  # warm-up on a spare instance: the captured one stays fresh
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        spare.step(tokens[0].clone())
    torch.cuda.current_stream().wait_stream(side)
    model = cls(K11_SLOTS, K11_DIM, dev)
    static_token = torch.zeros(K11_DIM, device=dev)
    graph = torch.cuda.CUDAGraph()
    with _watching():
        with torch.cuda.graph(graph):
            out = model.step(static_token)
    replayed = []
    for t in tokens:
        static_token.copy_(t)
        graph.replay()
        replayed.append(out.clone())
    result["replay_correct"] = [_close(o, e) for o, e in zip(replayed, expect)]
    result["replay_is_latest_token"] = all(_close(o, t) for o, t in zip(replayed, tokens))
    return result


def _k11_demo(cls) -> None:
    r = _k11_run(cls)
    print("eagerly, every step returns the running mean:", r["eager_correct"])
    print("replays that return the running mean:", sum(r["replay_correct"]), "of", K11_STEPS)
    print("every replay returns just the latest token:", r["replay_is_latest_token"])


@_check_decorator("kata 11 (python-counter)")
def check_running_mean(cls):
    """`cls(slots, dim, device).step(token)` returns the mean of the tokens so far, eagerly and when
    one call is captured and replayed once per token."""
    ok(isinstance(cls, type), "the fixed RunningMean class", type(cls).__name__, "pass the class itself")
    try:
        r = _k11_run(cls)
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, _Refused):
            _capture_failed(exc, "a step")
        raise
    w = _Watch()
    w.syncs, w.host_data = r["syncs"], r["host_data"]
    _refuse_syncs(w, "a step")
    _refuse_host_data(w, "a step")
    ok(r["eager_correct"], "eagerly, step i returns the mean of tokens 0..i", "an eager step differs",
       "write the token into the next slot, advance the position, average the slots written so far")
    if r["replay_is_latest_token"]:
        fail("replay i returns the mean of tokens 0..i", "every replay returns only the latest token",
             "self.pos is a Python int: it was read once, while recording, so the graph always writes slot 0 "
             "and averages one row, and `self.pos += 1` never runs again. Keep the position in a device "
             "tensor that the graph itself advances (self.pos += 1 on a tensor is a kernel), write with "
             "index_copy_, and average with a mask built from the position.")
    bad = [i for i, good in enumerate(r["replay_correct"]) if not good]
    ok(not bad, "replay i returns the mean of tokens 0..i", f"replays {bad} differ from eager",
       "everything a replay needs must be device state the graph reads and updates: position, mask, count")


_register(Kata(
    number=11,
    key="python-counter",
    title="A Python counter frozen at capture",
    symptom=(
        "A decode step keeps a Python attribute that it updates on every call. Eagerly everything is right; "
        "with the step captured, the attribute stops changing and every replay behaves like the first "
        "step after capture."),
    sources=(
        Source("https://github.com/pytorch/pytorch/issues/114844",
               "an attribute assigned inside forward was not updated by graph replay"),
    ),
    snippet=K11_SNIPPET,
    entry="RunningMean",
    fixed_name="RunningMeanFixed",
    task="Write `RunningMeanFixed(slots, dim, device)`, whose `step(token)` gives the running mean both eagerly "
         "and when a single call is captured and the graph is replayed once per token.",
    hint="Which lines of `step` run on every replay, and which ran only once, in Python, while recording? "
         "Make the position a 0-d `torch.long` tensor on the device and let kernels use and advance it.",
    explanation=(
        "Capture records kernels, not Python. `self.cache[self.pos]` turned the Python int into a fixed "
        "address (slot 0), `self.cache[: self.pos]` into a fixed one-row view, and `self.pos += 1` ran once, "
        "while recording. So every replay writes slot 0 and returns that one row: the latest token. Keep the "
        "state the step updates on the device: `self.pos = torch.zeros((), dtype=torch.long, device=device)`, "
        "write with `self.cache.index_copy_(0, self.pos.view(1), token.view(1, -1))`, advance with "
        "`self.pos += 1` (a kernel, replayed every time), and average with a mask "
        "`slot_ids < self.pos` and a division by `self.pos`. This is how graph-captured decoders keep "
        "sequence lengths and write positions in device buffers."),
    checker=check_running_mean,
    demo=_k11_demo,
))
