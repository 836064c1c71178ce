"""Runnable claims: what a learner can observe of CUDA graphs, with the outcome a real GPU gives.

A claim is a short function ``fn(device) -> dict`` that runs genuine PyTorch CUDA-graph code
and returns what it observed as verdicts: booleans, counts, error names, never tensors,
addresses or timings (a speed claim is a ratio of two timings taken side by side). The keys
are the words a learner reads ("result ready after one replay"). ``@claim(statement,
expected)`` registers the function with the outcome a real GPU gives, in the file of the
lesson that teaches it (``claims/lesson01.py`` ... ``claims/lesson09.py``; PyTorch's own CUDA-graph
tests, ported, are in ``claims/torch_suite.py``, lesson ``"torch"``)::

    from graphlab_utils import claims
    result = claims.run("frozen_python_branch")
    print(result.text())            # the verdicts, each beside what a GPU gives where they differ

The same registry serves the conformance suite (every claim on the simulator, and on a GPU
both backends side by side: ``python -m graphlab_utils.authoring.conformance``) and lesson
10's drills (a question names the claim that proves its answer).

Claims marked ``isolated`` end in a failed capture, which damages a real CUDA process: they
run in a fresh process of their own (``graphlab_utils.isolation.run_function``). Claims
marked ``spawns`` start a child process themselves. Both cost a few seconds.
"""
from __future__ import annotations

import difflib
import gc
import importlib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from graphlab_utils.errors import GraphlabError, error_name_in

__all__ = [
    "CLAIMS", "CUDA_ERROR", "FIRST_ERROR", "LESSONS", "RAISED", "Claim", "ClaimError", "ClaimResult", "claim",
    "error_verdicts", "get", "in_child", "observe", "public", "run", "source",
]

LESSONS = ("01", "02", "03", "04", "05", "06", "07", "08", "09", "11", "12", "13", "14")
SUITE = "torch"  # claims/torch_suite.py: PyTorch's own CUDA-graph tests, ported
CHILD_TIMEOUT_S = 600

CLAIMS: dict = {}


class ClaimError(GraphlabError, KeyError):
    """A claim name the registry does not hold; the message says which names are near."""

    def __str__(self) -> str:  # KeyError would quote the sentence
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Claim:
    name: str
    lesson: str  # "01".."09": the lesson that teaches it ("torch": ported from PyTorch's tests)
    statement: str  # what it shows, in one line
    fn: Callable
    expected: dict  # what a real GPU gives
    isolated: bool = False  # ends in a failed capture: runs in a fresh process of its own
    spawns: bool = False  # starts a child process itself

    @property
    def slow(self) -> bool:
        """Costs a child process (a few seconds)."""
        return self.isolated or self.spawns

    def observe(self, device) -> dict:
        """The claim's outcome on ``device``, once the graphs nothing can reach any more are freed.

        A graph that only a reference cycle holds (make_graphed_callables makes such cycles) keeps its
        pool and its registration with the default generator, whose seed and offset blocks stay
        allocated, until the garbage collector runs: a claim that counts blocks would count them.
        """
        gc.collect()
        return self.fn(device)


def claim(statement: str, expected: dict, *, isolated: bool = False, spawns: bool = False):
    """Register ``fn(device) -> dict`` as a claim of the lesson whose file defines it."""

    def wrap(fn):
        found = re.search(r"\.(?:lesson(\d\d)|(torch)_suite)$", fn.__module__)
        if found is None or (found.group(1) or found.group(2)) not in (*LESSONS, SUITE):
            raise ValueError(f"@claim belongs in graphlab_utils/claims/lessonNN.py, not in {fn.__module__}")
        if fn.__name__ in CLAIMS:
            raise ValueError(f"a claim named {fn.__name__!r} is already registered (lesson {CLAIMS[fn.__name__].lesson})")
        CLAIMS[fn.__name__] = Claim(fn.__name__, found.group(1) or found.group(2), statement, fn, dict(expected), isolated, spawns)
        return fn

    return wrap


def get(name: str) -> Claim:
    """The claim called ``name``; an unknown name raises ClaimError naming the close ones."""
    try:
        return CLAIMS[name]
    except KeyError:
        near = difflib.get_close_matches(str(name), list(CLAIMS), n=3)
        hint = f": did you mean {', '.join(near)}?" if near else "; the claims are listed in graphlab_utils/claims/lessonNN.py"
        raise ClaimError(f"no claim is called {name!r}{hint}") from None


def source(name: str) -> str:
    """The claim's code, to read."""
    return inspect.getsource(get(name).fn)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} x{v}" for k, v in sorted(value.items())) or "none"
    if value is None:
        return "none"
    return str(value)


# The words of a failed capture's verdicts, shared by the claims that end in one.
RAISED = "exception raised"
CUDA_ERROR = "CUDA error reported"
FIRST_ERROR = "first error (the exception's __context__)"


def error_verdicts(exc: BaseException) -> dict:
    """The exception's type, the CUDA error it reports, and the CUDA error of the one it interrupted."""
    context = exc.__context__
    return {RAISED: type(exc).__name__, CUDA_ERROR: error_name_in(str(exc)),
            FIRST_ERROR: error_name_in(str(context)) if context is not None else None}


def public(outcome: dict) -> dict:
    """The verdicts of an outcome, without its ``_``-prefixed figures."""
    return {k: v for k, v in outcome.items() if not k.startswith("_")}


@dataclass
class ClaimResult:
    name: str
    statement: str
    observed: dict = field(default_factory=dict)
    expected: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def holds(self) -> bool:
        return self.error is None and self.observed == self.expected

    def __bool__(self) -> bool:
        return self.holds

    def lines(self) -> list:
        out = []
        for key, value in self.observed.items():
            line = f"  {key}: {_show(value)}"
            if key in self.expected and self.expected[key] != value:
                line += f"   (a GPU gives: {_show(self.expected[key])})"
            out.append(line)
        return out

    def text(self) -> str:
        head = f"proof: {self.statement}"
        if self.error is not None:
            return f"{head}\n  the proof could not run: {self.error}\nverdict: no proof on this backend"
        verdict = "the proof holds" if self.holds else "the proof does NOT hold here (see the lines marked above)"
        return "\n".join([head, *self.lines(), f"verdict: {verdict}"])

    def __str__(self) -> str:
        return self.text()


# -- running ---------------------------------------------------------------------------------
def observe(name: str, backend_name: str) -> dict:
    """Set ``backend_name`` up in this process and return the claim's outcome, figures included.

    The entry point of a fresh process (``in_child``, the conformance runner); in a notebook
    use ``run``, which keeps the backend that is already there.
    """
    from graphlab_utils import backend

    session = backend.setup(backend=backend_name, quiet=True)
    return get(name).observe(session.device)


def in_child(name: str, backend_name: str, timeout: float = CHILD_TIMEOUT_S) -> dict:
    """The claim's outcome, observed in a fresh process on ``backend_name``."""
    from graphlab_utils import isolation

    return isolation.run_function(observe, name, backend_name, timeout=timeout)


def run(name: str, device=None) -> ClaimResult:
    """Run the claim ``name`` on this process's backend and compare with what a GPU gives.

    An ``isolated`` claim runs in a fresh process on the same backend. A claim that cannot
    run says why in ``error`` (one line), never with a traceback.
    """
    from graphlab_utils import backend
    from graphlab_utils.recipes import error_line

    c = get(name)
    result = ClaimResult(c.name, c.statement, expected=dict(c.expected))
    try:
        if c.isolated:
            observed = in_child(c.name, backend.current().backend)
        else:
            observed = c.observe(device if device is not None else backend.device())
        result.observed = public(observed)
    except Exception as exc:  # noqa: BLE001 - reported as the claim's outcome, not a traceback
        result.error = error_line(exc)
    return result


for _lesson in LESSONS:
    importlib.import_module(f"{__name__}.lesson{_lesson}")
del _lesson
importlib.import_module(f"{__name__}.torch_suite")
