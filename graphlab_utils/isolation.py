"""Show a capture that is meant to fail without losing the notebook's CUDA context.

On a GPU a failed capture damages the process: PyTorch's CUDA random generator is left in
capture state, and the next `torch.randn(..., device="cuda")` raises "Offset increment
outside graph capture encountered unexpectedly." Lessons therefore run such demonstrations
in a child process, with the same backend, and print what happened there:

    %%run_isolated
    import torch
    ...

or, outside IPython, `run_isolated(code)`. The child's code must be self-contained (it
starts from a fresh interpreter); `DEVICE` and `torch` are defined for it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

_CHILD = r'''
import json, sys, traceback
import graphlab_utils as gl
S = gl.setup(backend=sys.argv[1], quiet=True)
DEVICE = S.device
import torch
from graphlab_utils.simulator.errors import error_name_in
code = sys.stdin.read()
result = {"ok": True}
try:
    exec(compile(code, "<isolated cell>", "exec"), {"__name__": "__isolated__", "torch": torch, "DEVICE": DEVICE, "gl": gl})
except BaseException as exc:
    chain = []
    e = exc
    while e is not None and len(chain) < 4:
        chain.append({"type": type(e).__name__, "cuda_error": error_name_in(str(e)), "first_line": str(e).splitlines()[0] if str(e) else ""})
        e = e.__context__
    result = {"ok": False, "chain": chain}
sys.stdout.flush()
print("\n@@graphlab-isolated@@" + json.dumps(result))
'''


@dataclass
class IsolatedResult:
    ok: bool
    error_type: str | None
    cuda_error: str | None
    first_line: str | None
    cause: dict | None  # the exception that was being handled when this one was raised
    stdout: str

    def summary(self) -> str:
        """One line that reads the same on a GPU and on the simulator."""
        if self.ok:
            return "ran without error"
        where = f" ({self.cuda_error})" if self.cuda_error else ""
        line = f"raised {self.error_type}{where}: {self.first_line}"
        if self.cause:
            c_where = f" ({self.cause['cuda_error']})" if self.cause.get("cuda_error") else ""
            line += f"\n  while handling {self.cause['type']}{c_where}: {self.cause['first_line']}"
        return line


def current_backend() -> str:
    from graphlab_utils import simulator

    return "sim" if simulator.is_installed() else "real"


def run_isolated(code: str, backend: str | None = None, timeout: float = 300) -> IsolatedResult:
    """Run `code` in a fresh Python process on the same backend and report how it ended."""
    backend = backend or current_backend()
    env = dict(os.environ, GRAPHLAB_BACKEND=backend, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, backend],
        input=textwrap.dedent(code),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    out, _, tail = proc.stdout.rpartition("\n@@graphlab-isolated@@")
    if not _:
        raise RuntimeError(
            "the isolated child process ended without a report (exit code "
            f"{proc.returncode}); its error output ends with:\n{proc.stderr[-2000:]}"
        )
    data = json.loads(tail)
    if data["ok"]:
        return IsolatedResult(True, None, None, None, None, out)
    first, *rest = data["chain"]
    return IsolatedResult(False, first["type"], first["cuda_error"], first["first_line"], rest[0] if rest else None, out)


def _run_isolated_magic(line: str, cell: str):
    result = run_isolated(cell)
    if result.stdout.strip():
        print(result.stdout.rstrip())
    print(result.summary())
    return None


def load_ipython_extension(ipython) -> None:
    """`%load_ext graphlab_utils.isolation` (setup() does this for you)."""
    ipython.register_magic_function(_run_isolated_magic, magic_kind="cell", magic_name="run_isolated")


def register_magic() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    if ip is None:
        return False
    load_ipython_extension(ip)
    return True
