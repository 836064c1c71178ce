"""The shared machinery of every lab check (see the package docstring).

A check prints one line (or a hint of four lines) for the learner, and leaves a record for
tools beside it: a display output whose MIME bundle holds the result as JSON under
``RECORD_MIME`` (with an empty ``text/plain`` so notebook front-ends show nothing more).
``graphlab check`` reads those records, never the printed text; nbval leaves them out of its
comparison (the repository's ``conftest.py``), so stored outputs hold with or without them.
"""
from __future__ import annotations

import functools
import linecache
import site
import sysconfig
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from graphlab_utils import backend, recipes
from graphlab_utils.errors import RNG_POISONED
from graphlab_utils.recipes import close, describe

__all__ = ["RECORD_MIME", "CheckResult", "check", "fail", "ok", "ok_timings", "device", "in_fresh_process",
           "close", "describe", "ok_bucket_captures", "ok_class", "ok_faster", "ok_function", "refuse_syncs", "refuse_seen", "graph_and_output", "ok_one_shared_pool",
           "ok_near_own_measurement"]

RECORD_MIME = "application/vnd.graphlab.check+json"


class _Fail(Exception):
    """Raised inside a check body to stop with a hint."""

    def __init__(self, expected: str, seen: str, idea: str):
        super().__init__(seen)
        self.expected, self.seen, self.idea = expected, seen, idea


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    expected: str = ""
    seen: str = ""
    idea: str = ""

    def __bool__(self) -> bool:
        return self.passed

    def text(self) -> str:
        if self.passed:
            return f"[PASS] {self.name}: check passed"
        return (
            f"[HINT] {self.name}: not yet.\n"
            f"  expected: {self.expected}\n"
            f"  seen:     {self.seen}\n"
            f"  idea:     {self.idea}"
        )

    def record(self) -> dict:
        """The result as data: what ``graphlab check`` reads from a notebook's outputs."""
        try:
            which = backend.current().backend
        except backend.BackendError:
            which = None
        return {**asdict(self), "backend": which}

    def _repr_pretty_(self, p, cycle) -> None:  # IPython shows nothing extra after the printed line
        p.text("")

    def __repr__(self) -> str:
        return f"CheckResult(name={self.name!r}, passed={self.passed})"


def fail(expected: str, seen: str, idea: str):
    """Stop the check with a hint (call inside a function decorated with @check)."""
    raise _Fail(expected, seen, idea)


def ok(condition: bool, expected: str, seen: str, idea: str) -> None:
    """fail(...) unless `condition` holds."""
    if not condition:
        fail(expected, seen, idea)


def device():
    """The device the lesson's tensors live on: the GPU, or the CPU under the simulator."""
    try:
        return backend.device()
    except backend.BackendError:
        fail(
            "a GPU or the simulator",
            "neither: graphlab_utils.setup() has not run in this notebook",
            "run the setup cell at the top first: it installs the simulator when no GPU is present",
        )


def in_fresh_process(verify, fn) -> None:
    """Run ``verify(fn)``, a check's body for a learner's capture, in a fresh process.

    A capture that fails damages a process on a GPU (lesson 02), so the checks of lessons
    where it may fail run the learner's function there (``isolation.run_function``): the hint
    that ``verify`` fails with there, or the learner's own error, comes back here as it is.
    """
    from graphlab_utils import isolation

    try:
        isolation.run_function(verify, fn)
    except isolation.NotTransferable as exc:
        fail("a function the check can send to a fresh process", exc.reason,
             "a failed capture damages a process on a GPU, so the check runs your function in a fresh "
             "one, with what it uses from the notebook: create streams, generators, locks and open files "
             "inside the function")
    except Exception as exc:
        if hasattr(exc, "remote_frames"):
            # The learner's code travels by value (cloudpickle), which drops its file names:
            # name them again from ``fn``'s own code, so that the hint can quote the line.
            files = {code.co_name: code.co_filename for code in _codes(fn)}
            exc.remote_frames = [(files.get(name, path) if path == "<dynamic-code>" else path, line, name, src)
                                 for path, line, name, src in exc.remote_frames]
        raise


def _codes(obj):
    """The code objects of a function or a class's methods, nested functions included."""
    import inspect

    functions = [v for v in vars(obj).values() if inspect.isfunction(v)] if inspect.isclass(obj) else [obj]
    stack = [f.__code__ for f in functions if hasattr(f, "__code__")]
    while stack:
        code = stack.pop()
        yield code
        stack.extend(c for c in code.co_consts if inspect.iscode(c))


def ok_function(fn, expected: str) -> None:
    """Fail unless the learner passed a function itself (``check(step)``, not ``check(step(x))``)."""
    ok(callable(fn), expected, describe(fn), "pass the function itself, by its name alone, not what calling it returned")


def ok_class(cls, expected: str) -> None:
    """Fail unless the learner passed a class itself, not an instance of it (``check(Decoder)``, not ``check(Decoder(W))``)."""
    ok(isinstance(cls, type), expected, f"{describe(cls)}, an object and not a class",
       "pass the class itself, by its name alone, not an object made by calling it")


def ok_bucket_captures(log, buckets, what: str, capture_idea: str, order_idea: str, where: str = "") -> None:
    """One capture per bucket, from the largest down (lesson 05), read from a probe's ``(rows, capturing)`` log."""
    order = sorted(set(buckets), reverse=True)
    captured = [rows for rows, capturing in log if capturing]
    prefix = f"{where}: " if where else ""
    ok(sorted(captured) == sorted(order), f"{prefix}one capture of {what} per bucket, on that many rows: {order} in "
       "some order", f"{what} captured with {captured or 'no'} rows", capture_idea)
    ok(captured == order, f"{prefix}captures from the largest bucket down: {order}", f"captured in the order {captured}",
       order_idea)


def ok_faster(fast, eager, needed: float, expected: str, idea: str, name: str = "graphed") -> None:
    """``fast`` (a Timing) at least ``needed`` times faster than ``eager``; ``expected`` says what is compared
    ("the runner ... faster than eager ..."), the hint adds how it was timed and both figures."""
    from graphlab_utils import timing

    ratio = timing.speedup(eager, fast)
    ok(ratio >= needed, f"{expected}, {timing.label()}",
       f"{name} {timing.format_ms(fast.ms)}, eager {timing.format_ms(eager.ms)}: {timing.format_ratio(ratio)}", idea)


def refuse_syncs(watch, what: str, idea: str) -> None:
    """Fail with ``idea`` when the code a ``graphlab_utils.watch.Watch`` saw read a device value on the CPU."""
    ok(not watch.syncs, f"{what} with no host sync (nothing that needs a device value on the CPU)",
       "a host sync: " + "; ".join(watch.syncs), idea)


def refuse_seen(items: list, expected: str, idea: str) -> None:
    """Fail with ``idea`` when a watcher listed anything (``watch.uploads``, ``watch.host_data``)."""
    ok(not items, expected, "; ".join(dict.fromkeys(items)) + " inside the function", idea)


def graph_and_output(result, call: str, pair: str, return_idea: str, create_idea: str, new: bool = False):
    """``(graph, out)`` from what a learner's capture function returned, or the hint that says what it lacks."""
    import torch

    ok(isinstance(result, tuple) and len(result) == 2, f"{call} returns a pair {pair}",
       f"{type(result).__name__}", return_idea)
    graph, out = result
    ok(isinstance(graph, torch.cuda.CUDAGraph), f"the first item is a {'new ' if new else ''}torch.cuda.CUDAGraph",
       f"{type(graph).__name__}", create_idea)
    return graph, out


def ok_one_shared_pool(runner, graphs: dict, expected: str, idea: str, keep_idea: str, name_pool: bool = True):
    """Every graph of a bucket runner in one memory pool, and ``runner.pool`` the handle of that pool."""
    pools = {tuple(g.pool()) for g in graphs.values()}
    ok(len(pools) == 1, expected, f"the {len(graphs)} graphs use {len(pools)} pools", idea)
    pool = getattr(runner, "pool", None)
    try:
        same = pool is not None and tuple(pool) == next(iter(pools))
    except TypeError:
        same = False
    seen = f"runner.pool is {pool!r}" + (f"; the graphs' pool is {next(iter(pools))!r}" if name_pool else "")
    ok(same, "runner.pool: the handle of the pool the graphs share", seen, keep_idea)
    return pools


def ok_near_own_measurement(theirs: dict, mine: dict, keys, ideas: dict, tolerance: float) -> None:
    """Each of the learner's timings within ``tolerance``x (either way) of the check's own measurement."""
    for key in keys:
        ratio = theirs[key].median_ms / mine[key].median_ms
        ok(1.0 / tolerance <= ratio <= tolerance,
           f"{key}: close to the check's own measurement, {mine[key]} (within {tolerance:.0f}x either way)",
           f"{key}: {theirs[key]}", ideas[key])


def ok_timings(result, keys, example: str, how: str, unit: str = "step") -> None:
    """A learner's dict of timings: every key present, each a positive Timing of this backend.

    `example` shows the dict to return, `how` says which timing helper measures each figure.
    """
    from graphlab_utils import timing

    ok(isinstance(result, dict), f"a dict with the keys {', '.join(keys)}", f"{type(result).__name__}", f"return {example}")
    missing = [k for k in keys if k not in result]
    ok(not missing, f"a dict with the keys {', '.join(keys)}", f"missing: {', '.join(missing)}",
       f"time each {unit} on its own and return all {len(keys)} timings")
    for key in keys:
        value = result[key]
        ok(isinstance(value, timing.Timing), f"{key}: a Timing from the course's timing helper",
           f"{key}: {type(value).__name__}", how)
        ok(value.modelled == timing.is_modelled(), f"{key}: a timing from this session's backend",
           f"{key}: a timing labelled '{value.label}'", "measure in this session, after the setup cell")
        ok(value.median_ms > 0, f"{key}: a positive time", f"{key}: {timing.format_ms(value.median_ms)}",
           f"time a call that does the work of the {unit}")


def _emit_record(result: CheckResult) -> None:
    """Beside the printed line: the result as data, for ``graphlab check`` (only inside IPython)."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is None:
        return
    display({"text/plain": "", RECORD_MIME: result.record()}, raw=True)


# Where a traceback frame's code lives when it is not the learner's: the course's package, PyTorch,
# the standard library and other installed packages (a notebook cell's code lives in a file of
# the kernel's own, a script's in the learner's folder).
_NOT_LEARNER_CODE = tuple(str(Path(p).resolve()) for p in {
    str(Path(__file__).resolve().parents[1]), *site.getsitepackages(), site.getusersitepackages(),
    *(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib"))})


def _learner_frame(exc: BaseException):
    """``(filename, line number, function, source)`` of the last frame of ``exc``'s traceback that runs
    the learner's code, or None; for an exception from a fresh process, its frames there."""
    frames = getattr(exc, "remote_frames", None) or [
        (f.filename, f.lineno, f.name, f.line or "") for f in traceback.extract_tb(exc.__traceback__)]
    mine = [f for f in frames
            if not f[0].startswith("<frozen") and not str(Path(f[0]).resolve()).startswith(_NOT_LEARNER_CODE)]
    return mine[-1] if mine else None


def error_idea(exc: BaseException) -> str:
    """The idea of a hint for an exception that a learner's code raised inside a check.

    The check catches the exception, so nothing is printed above the hint: the idea says where
    the learner's code raised it, or, for an error that means this process's CUDA state is
    damaged by an earlier failed capture, that the code may be right and the kernel must restart.
    """
    if RNG_POISONED in str(exc):
        return ("an earlier capture failed in this kernel and left PyTorch's CUDA random generator in capture "
                "mode, so random ops now fail even in right code: restart the kernel (Kernel > Restart Kernel), "
                "then run the cells again; next time run an exercise's check before the cells that capture it: "
                "a check stops a capture that would fail before it can damage your kernel")
    found = _learner_frame(exc)
    if found is None:
        return ("PyTorch raised it from a call your code made: the message says what it refused; "
                "call the function yourself in a cell to see the whole traceback")
    filename, number, function, source = found
    source = (source or linecache.getline(filename, number)).strip()  # a notebook cell's lines live here
    where = f"line {number} of {function}()" if function != "<module>" else f"line {number}"
    return f"your code raised it at {where}: `{source}`; fix that line and run its cell again"


def check(name: str):
    """Decorate a check body: it prints one line and returns a CheckResult, whatever happens inside.

    The body calls `ok(...)`/`fail(...)`; returning normally means the answer passed.
    """

    def wrap(body):
        @functools.wraps(body)
        def run(*args, quiet: bool = False, **kwargs) -> CheckResult:
            try:
                body(*args, **kwargs)
                result = CheckResult(name, True)
            except _Fail as f:
                result = CheckResult(name, False, f.expected, f.seen, f.idea)
            except NotImplementedError:
                result = CheckResult(
                    name, False, "your implementation",
                    "the exercise stub still raises NotImplementedError",
                    "replace the `raise NotImplementedError(...)` line with your code",
                )
            except Exception as exc:  # noqa: BLE001 - learner code may raise anything
                result = CheckResult(name, False, "code that runs to the end", recipes.error_line(exc),
                                     error_idea(exc))
            if not quiet:
                print(result.text())
                _emit_record(result)
            return result

        return run

    return wrap
