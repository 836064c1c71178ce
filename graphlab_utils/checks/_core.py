"""The shared machinery of every lab check (see the package docstring)."""
from __future__ import annotations

import functools
from dataclasses import dataclass


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
    import torch

    from graphlab_utils import simulator

    if simulator.is_installed():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        fail(
            "a GPU or the simulator",
            "neither: graphlab_utils.setup() has not run in this notebook",
            "run the setup cell at the top first: it installs the simulator when no GPU is present",
        )
    return torch.device("cuda")


def side_warm_up(fn, iters: int = 3) -> None:
    """PyTorch's recipe before a capture: a few eager calls on a side stream, then join it."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(iters):
            fn()
    torch.cuda.current_stream().wait_stream(side)


def close(a, b, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Both tensors, same shape, equal within the tolerances."""
    import torch

    return (
        isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
        and bool(torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol))
    )


def describe(value) -> str:
    """A few words on what a learner's function returned, for a hint."""
    import torch

    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if value is None:
        return "None"
    return f"a {type(value).__name__}"


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
                first = str(exc).splitlines()[0] if str(exc) else ""
                result = CheckResult(
                    name, False, "code that runs to the end",
                    f"{type(exc).__name__}: {first}",
                    "read the error above: it comes from your code or from PyTorch, not from the check",
                )
            if not quiet:
                print(result.text())
            return result

        return run

    return wrap
