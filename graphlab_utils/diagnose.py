"""Find which line of a capture failed, without damaging the notebook's process.

A capture that fails on a GPU leaves the process damaged (lesson 02), and PyTorch's error
names the CUDA error but not the call that caused it: the exception that reaches you is
``cudaErrorStreamCaptureInvalidated``, raised when the capture ends, and the first error
(the sync that broke the capture) is only its ``__context__``.

``capture_error_site(code)`` runs ``code`` in a child process on the same backend (as
``%%run_isolated`` does), follows the chain of exceptions down to the first one, and
reports the line of ``code`` that raised it::

    site = diagnose.capture_error_site(CODE)
    print(site)
    # first error: AcceleratorError (cudaErrorStreamCaptureUnsupported) at line 3: value = total.item()
    # reported:    AcceleratorError (cudaErrorStreamCaptureInvalidated) when the capture ended

``code`` is self-contained, as for ``%%run_isolated``: ``torch``, ``DEVICE`` and ``gl`` are
defined for it.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass

__all__ = ["CaptureErrorSite", "capture_error_site"]

_MARK = "@@graphlab-site@@"

_WRAPPER = '''
import json as __json
import traceback as __tb
from graphlab_utils.errors import error_name_in as __error_name_in

__code = {code!r}
try:
    exec(compile(__code, "<cell>", "exec"), {{"__name__": "__cell__", "torch": torch, "DEVICE": DEVICE, "gl": gl}})
except BaseException as __exc:
    __chain = []
    __e = __exc
    while __e is not None and len(__chain) < 8:
        __frames = [f for f in __tb.extract_tb(__e.__traceback__) if f.filename == "<cell>"]
        __chain.append({{"type": type(__e).__name__, "cuda_error": __error_name_in(str(__e)),
                        "first_line": str(__e).splitlines()[0] if str(__e) else "",
                        "line": __frames[-1].lineno if __frames else 0}})
        __e = __e.__context__
    print("{mark}" + __json.dumps(__chain))
    raise
'''


@dataclass
class CaptureErrorSite:
    """Where a capture failed: the first error of the chain, its line, and what was reported."""

    ok: bool  # the code ran without error
    first_type: str | None = None
    first_cuda_error: str | None = None
    first_message: str | None = None
    line: int = 0  # line of the code (1-based) that raised the first error; 0 if unknown
    source: str = ""  # that line, stripped
    reported_type: str | None = None  # the exception that reached the caller
    reported_cuda_error: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return "ran without error"
        where = f" ({self.first_cuda_error})" if self.first_cuda_error else ""
        at = f" at line {self.line}: {self.source}" if self.line else ""
        text = f"first error: {self.first_type}{where}{at}"
        if (self.reported_type, self.reported_cuda_error) != (self.first_type, self.first_cuda_error):
            r_where = f" ({self.reported_cuda_error})" if self.reported_cuda_error else ""
            text += f"\nreported:    {self.reported_type}{r_where} when the capture ended"
        return text


def capture_error_site(code: str, backend: str | None = None) -> CaptureErrorSite:
    """Run ``code`` in a child process and say which of its lines raised the first error."""
    from graphlab_utils.isolation import run_isolated

    code = textwrap.dedent(code)
    result = run_isolated(_WRAPPER.format(code=code, mark=_MARK), backend=backend)
    if result.ok:
        return CaptureErrorSite(ok=True)
    chain = []
    for line in result.stdout.splitlines():
        if line.startswith(_MARK):
            chain = json.loads(line[len(_MARK):])
    if not chain:  # the wrapper itself failed: report what the child said
        return CaptureErrorSite(False, result.error_type, result.cuda_error, result.first_line,
                                reported_type=result.error_type, reported_cuda_error=result.cuda_error)
    first, reported = chain[-1], chain[0]
    lines = code.splitlines()
    number = int(first.get("line") or 0)
    source = lines[number - 1].strip() if 0 < number <= len(lines) else ""
    return CaptureErrorSite(
        ok=False,
        first_type=first["type"],
        first_cuda_error=first["cuda_error"],
        first_message=first["first_line"],
        line=number,
        source=source,
        reported_type=reported["type"],
        reported_cuda_error=reported["cuda_error"],
    )
