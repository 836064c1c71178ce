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
