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

Each kata's story (its number, title, symptom and sources) is an entry of the table
``CATALOGUE`` here; its exercise lives in its own module, ``kNN_<key>.py``. This package holds
the record, the registry, the catalogue, and the helpers and guards the modules share. The
learner's fixed version always runs in the notebook's own process. Checks watch it with
:mod:`graphlab_utils.watch`: a host sync, a tensor made from Python data, or a draw from a
random generator the graph does not know, met *during a capture*, is refused before it
reaches PyTorch, so a wrong answer becomes a hint instead of a damaged process.

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


def fixed_function(snippet: str, solution: str, replace: dict | None = None,
                   insert_after: dict | None = None) -> str:
    """Lab 10's solution for a kata whose fix is the broken function with a few lines changed.

    The snippet's function ``name`` becomes ``name_fixed``, its one-line docstring goes, and its
    body stands between the lab's ``### BEGIN SOLUTION <solution>`` and ``### END SOLUTION``
    markers (the lab replaces what they enclose with a stub). ``replace`` maps a line of the
    snippet, without its indentation, to the line that takes its place; ``insert_after`` maps a
    line to the line added after it. Both keep the indentation of the line they name. Each named
    line must stand in the snippet exactly once, so that a snippet edited later stops here
    rather than giving a solution that no longer fits it.
    """
    replace, insert_after = replace or {}, insert_after or {}
    header, docstring, *body = snippet.rstrip("\n").split("\n")
    if not (header.startswith("def ") and docstring.strip().startswith('"""') and docstring.strip().endswith('"""')):
        raise ValueError("the snippet must be one function whose docstring is one line")
    for line in [*replace, *insert_after]:
        found = sum(1 for own in body if own.strip() == line)
        if found != 1:
            raise ValueError(f"the line {line!r} stands {found} times in the snippet's body, not once")
    name = header[len("def "):header.index("(")]
    fixed = [header.replace(f"def {name}(", f"def {name}_fixed(", 1), f"    ### BEGIN SOLUTION {solution}"]
    for own in body:
        indent = own[: len(own) - len(own.lstrip())]
        fixed.append(indent + replace[own.strip()] if own.strip() in replace else own)
        if own.strip() in insert_after:
            fixed.append(indent + insert_after[own.strip()])
    fixed.append("    ### END SOLUTION")
    return "\n".join(fixed) + "\n"


KATAS: dict[str, Kata] = {}


def register(key: str, **exercise) -> Kata:
    """Make kata ``key`` and add it to the registry (each kata module calls it once, at import).

    The kata's story (number, title, symptom, sources) comes from its entry in ``CATALOGUE``
    below; ``exercise`` is the rest of the record, which the kata's module defines.
    """
    kata = Kata(key=key, **CATALOGUE[key], **exercise)
    KATAS[key] = kata
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
# The catalogue: each kata's story, in the catalogue's order
# =======================================================================================
# A kata's number, its title, the symptom as the reporter saw it and the public reports it
# is modelled on, in one table, as the catalogue and lab 10 show them. The kata's module adds
# the exercise (snippet, fix, task, hint, explanation, check and demo) when it registers.
CATALOGUE: dict[str, dict] = {
    "kv-cache-reset": dict(
        number=1,
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
    ),
    "weight-sync": dict(
        number=2,
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
    ),
    "mask-sync": dict(
        number=3,
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
    ),
    "host-list": dict(
        number=4,
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
    ),
    "frozen-sigma": dict(
        number=5,
        title="A scheduler coefficient frozen into the graph",
        symptom=(
            "The first denoising step matches eager; every later step is wrong and the image comes out "
            "corrupted. Changing the timestep schedule at run time has no effect until everything is rebuilt."),
        sources=(
            Source("https://github.com/jcelerier/librediffusion/pull/20",
                   "a captured step baked the scheduler coefficients as by-value kernel arguments; a new schedule "
                   "replayed the stale ones and corrupted the output"),
        ),
    ),
    "overwritten-output": dict(
        number=6,
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
    ),
    "graph-memory": dict(
        number=7,
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
    ),
    "rerecord-every-call": dict(
        number=8,
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
    ),
    "warmup-mismatch": dict(
        number=9,
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
    ),
    "unregistered-generator": dict(
        number=10,
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
    ),
    "python-counter": dict(
        number=11,
        title="A Python counter frozen at capture",
        symptom=(
            "A decode step keeps a Python attribute that it updates on every call. Eagerly everything is right; "
            "with the step captured, the attribute stops changing and every replay behaves like the first "
            "step after capture."),
        sources=(
            Source("https://github.com/pytorch/pytorch/issues/114844",
                   "an attribute assigned inside forward was not updated by graph replay"),
        ),
    ),
}


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
