"""Lab checks: one fixed line when an answer is right, a hint when it is not.

Each lesson has its own module (`graphlab_utils.checks.lesson01`, ...). A check never lets a
traceback from inside the package reach the learner: a wrong answer, a stub still raising
NotImplementedError, or learner code that crashes all become a hint that says what was
expected, what was seen, and which idea explains the gap.
"""
from __future__ import annotations

from .core import CheckResult, check, fail, ok, ok_timings

__all__ = ["CheckResult", "check", "fail", "ok", "ok_timings"]
