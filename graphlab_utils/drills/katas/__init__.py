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
* the **fix**, as lab 10's solution shows it (``Kata.fix``), and the **explanation** with the
  reports it is modelled on (``Kata.sources``).

Each kata lives in its own module, ``kNN_<key>.py``; this package holds the record, the
registry and the guards they share. The learner's fixed version always runs in the
notebook's own process. Checks watch it with :mod:`graphlab_utils.watch`: a host sync, a
tensor made from Python data, or a draw from a random generator the graph does not know,
met *during a capture*, is refused before it reaches PyTorch, so a wrong answer becomes a
hint instead of a damaged process.

    from graphlab_utils.drills import katas
    katas.catalogue()                       # the table of katas
    katas.show("kv-cache-reset")            # the broken snippet's symptom
    katas.check("kv-cache-reset", MyFix)    # [PASS] ... or a hint

The snippets use :func:`graphlab_utils.recipes.capture` and :func:`cfg_batch`. Every demo and
check prints the same text on a GPU and on the simulator (verdicts and counts; timings only
as ratios). Where the simulator cannot reproduce a symptom, the demo says so and the kata is
marked real-GPU-only (``Kata.demo_needs_gpu``).
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Callable

from graphlab_utils import backend, recipes
from graphlab_utils.checks import core
from graphlab_utils.checks.core import CheckResult, device, fail, ok
from graphlab_utils.errors import error_name_in
from graphlab_utils.watch import GENERATOR_REFUSED, Refused, Watch

__all__ = [
    "KATAS",
    "Kata",
    "Source",
    "catalogue",
    "check",
    "get",
    "show",
    "DequantLinear",
    "DenoiserRunner",
    "cfg_batch",
    "serve",
]


# =======================================================================================
# The kata record and the registry
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
    """One kata: the symptom, the broken snippet, the exercise, the fix, the check and the explanation."""

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
    fix: str  # the fixed version as lab 10's solution shows it, between "### BEGIN/END SOLUTION" markers
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

        return {"torch": torch, "DEVICE": device(), "capture": recipes.capture, "__name__": f"kata_{self.key}"}

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


def register(kata: Kata) -> Kata:
    """Add a kata to the registry (each kata module calls it once, at import)."""
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
    if answer is None and kata.demo_needs_gpu and backend.is_simulated():
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
# The guards the checks share: what a watched call saw, as a hint
# =======================================================================================
SYNC_REASON = (
    "a boolean index, .item(), `if tensor:`, .cpu(), .tolist() or print(tensor) makes the CPU wait for a "
    "value the GPU has; during capture nothing runs, so the capture fails with "
    "cudaErrorStreamCaptureUnsupported and damages the process. Compute with masks and torch.where "
    "instead, so the result never needs a size or a value on the CPU."
)
SYNC_IDEA = SYNC_REASON + " (This check ran your code eagerly and did not capture it: your notebook is fine.)"
SYNC_REFUSED_IDEA = (SYNC_REASON + " (This check stopped the call inside the capture before it reached "
                     "PyTorch: your notebook is fine.)")
HOST_DATA_IDEA = (
    "torch.tensor(python_list, device=...) copies host memory to the device; during capture PyTorch "
    "refuses that copy from pageable memory (\"Cannot copy between CPU and CUDA tensors during CUDA graph "
    "capture unless the CPU tensor is pinned\"), and a pinned copy would re-read one host buffer on every "
    "replay. Build the tensor once, before capture, and let the function read that device tensor."
)


def refuse_syncs(watch: Watch, what: str) -> None:
    """Fail with the sync hint when the watched code read a device value on the CPU."""
    core.refuse_syncs(watch, what, SYNC_IDEA)


def refuse_host_data(watch: Watch, what: str) -> None:
    """Fail with the host-data hint when the watched code made a tensor from Python data."""
    core.refuse_seen(watch.host_data, f"{what} that makes no tensor from Python data", HOST_DATA_IDEA)


def capture_failed(exc: BaseException, what: str):
    """Turn an exception raised while the learner's code captured into a hint."""
    first = recipes.first_line(exc) or type(exc).__name__
    if isinstance(exc, Refused):
        if GENERATOR_REFUSED in first:
            fail(f"{what} that captures", f"RuntimeError: {GENERATOR_REFUSED}",
                 "a torch.Generator you create yourself is unknown to the graph: PyTorch only advances the "
                 "generators registered with it. Call graph.register_generator_state(generator) before the "
                 "capture begins.")
        fail(f"{what} that captures", first, SYNC_REFUSED_IDEA if "sync" in first else HOST_DATA_IDEA)
    name = error_name_in(str(exc))
    fail(f"{what} that captures", f"{type(exc).__name__}" + (f" ({name})" if name else f": {first}"),
         "something in it is forbidden during capture (a sync, a copy from host memory, a new stream). "
         "On a GPU a failed capture damages the process: restart the kernel before the next try.")


# =======================================================================================
# The katas, in order: each module registers its own
# =======================================================================================
from . import (  # noqa: E402 - the kata modules use the record and the guards defined above
    k01_kv_cache_reset,
    k02_weight_sync,
    k03_mask_sync,
    k04_host_list,
    k05_frozen_sigma,
    k06_overwritten_output,
    k07_graph_memory,
    k08_rerecord_every_call,
    k09_warmup_mismatch,
    k10_unregistered_generator,
    k11_python_counter,
)
from .k07_graph_memory import DequantLinear  # noqa: E402
from .k09_warmup_mismatch import DenoiserRunner, cfg_batch, serve  # noqa: E402
