"""graphlab_utils.isolation: calls, code and failing captures in a fresh process.

Each call starts a new interpreter (seconds), so each test here makes one or two.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from graphlab_utils import isolation
from graphlab_utils.errors import GraphlabError


pytestmark = pytest.mark.usefixtures("sim")


# ---------------------------------------------------------------------------------------
# run_function
# ---------------------------------------------------------------------------------------
def test_a_closure_runs_in_a_fresh_process_on_the_same_backend_and_its_output_comes_back(capsys):
    factor = 7  # seen by the closure only through what travels with it

    def report(n, *, label):
        from graphlab_utils import backend

        print(f"{label}: first line")
        print("a partial line", end="")
        os.system("echo from a shell in the child")  # native output (file descriptor 1) too
        print("last line")
        return os.getpid(), backend.is_simulated(), n * factor

    pid, simulated, value = isolation.run_function(report, 6, label="child")
    assert pid != os.getpid() and simulated and value == 42
    assert capsys.readouterr().out == (
        "child: first line\na partial linefrom a shell in the child\nlast line\n")


class NeedsTwo(Exception):
    """An exception whose __init__ does not take its own args back (plain pickling fails)."""

    def __init__(self, what, why):
        super().__init__(f"{what} failed: {why}")
        self.what = what


def test_an_exception_comes_back_as_its_class_with_its_message_and_its_chain():
    def fails():
        try:
            {}["missing"]
        except KeyError:
            try:
                err = RuntimeError("CUDA error: capturing stream has unjoined work")
                err.lock = threading.Lock()  # cannot be pickled: comes back as a stand-in
                raise err
            except RuntimeError:
                raise NeedsTwo("the step", "see above")

    with pytest.raises(NeedsTwo) as info:
        isolation.run_function(fails)
    top = info.value
    assert str(top) == "the step failed: see above" and top.what == "the step"
    assert "Raised in a fresh process" in top.__notes__[0] and ", in fails\n" in top.__notes__[0]
    middle = top.__context__
    assert type(middle).__name__ == "RuntimeError" and isinstance(middle, isolation.RemoteError)
    assert isinstance(middle, GraphlabError) and middle.cuda_error == "cudaErrorStreamCaptureUnjoined"
    assert str(middle).startswith("CUDA error: capturing stream has unjoined work (builtins.RuntimeError raised")
    assert type(middle.__context__) is KeyError and middle.__context__.args == ("missing",)


def test_a_process_that_dies_says_so_in_one_sentence():
    with pytest.raises(isolation.ChildDied) as info:
        isolation.run_function(os._exit, 3)
    text = str(info.value)
    assert text.startswith("the fresh process running _exit ended with exit code 3 before it returned")
    assert "\n" not in text and isinstance(info.value, GraphlabError)


def test_a_call_past_its_timeout_is_stopped_and_says_so():
    started = time.monotonic()
    with pytest.raises(isolation.ChildTimeout) as info:
        isolation.run_function(time.sleep, 120, timeout=3)
    assert time.monotonic() - started < 60
    assert str(info.value) == (
        "sleep was still running after 3 s in its fresh process, which was stopped: look for a loop "
        "or a wait that never ends, or pass a larger timeout=")


def test_what_cannot_be_pickled_is_refused_before_a_process_starts():
    lock = threading.Lock()
    with pytest.raises(isolation.NotTransferable) as info:
        isolation.run_function(lambda: lock.locked())
    assert "cannot be sent to a fresh process (TypeError: cannot pickle '_thread.lock' object)" in str(info.value)


# ---------------------------------------------------------------------------------------
# run_code (%%run_isolated) and capture_error_site
# ---------------------------------------------------------------------------------------
def test_run_code_returns_the_output_and_the_error_chain_of_a_failed_capture(capsys):
    result = isolation.run_code("""
        x = torch.randn(1024, device=DEVICE)
        print("before the capture")
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            value = x.sum().item()
    """)
    assert capsys.readouterr().out == ""  # returned, not printed
    assert result.stdout == "before the capture\n" and not result.ok
    assert result.summary().splitlines() == [
        "raised AcceleratorError (cudaErrorStreamCaptureInvalidated): CUDA error: operation failed due to "
        "a previous error during capture",
        "  while handling AcceleratorError (cudaErrorStreamCaptureUnsupported): CUDA error: operation not "
        "permitted when stream is capturing",
    ]
    assert isolation.run_isolated is isolation.run_code


SYNC_IN_HELPER = """
def guard(t):
    if t.sum() > 0:
        return t
    return -t

x = torch.ones(16, device=DEVICE)
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    y = guard(x * 2)
"""


def test_a_sync_is_located_in_the_helper_that_made_it():
    site = isolation.capture_error_site(SYNC_IN_HELPER)
    assert not site.ok
    assert (site.first_type, site.first_cuda_error) == ("AcceleratorError", "cudaErrorStreamCaptureUnsupported")
    assert (site.reported_type, site.reported_cuda_error) == ("AcceleratorError", "cudaErrorStreamCaptureInvalidated")
    assert (site.line, site.source) == (3, "if t.sum() > 0:")
    assert str(site).splitlines() == [
        "first error: AcceleratorError (cudaErrorStreamCaptureUnsupported) at line 3: if t.sum() > 0:",
        "reported:    AcceleratorError (cudaErrorStreamCaptureInvalidated) when the capture ended",
    ]


def test_a_refused_host_copy_is_one_error_at_its_line():
    code = "x = torch.ones(4, device=DEVICE)\ng = torch.cuda.CUDAGraph()\nwith torch.cuda.graph(g):\n    y = (x + 1).cpu()\n"
    site = isolation.capture_error_site(code)
    assert (site.first_type, site.first_cuda_error, site.line) == ("RuntimeError", None, 4)
    assert str(site) == "first error: RuntimeError at line 4: y = (x + 1).cpu()"


def test_code_that_runs_says_so():
    site = isolation.capture_error_site("x = torch.ones(4, device=DEVICE) * 2\n")
    assert site.ok and str(site) == "ran without error"
