"""graphlab_utils.diagnose: the line that broke a capture, found in a child process."""

from __future__ import annotations

import pytest

import graphlab_utils
from graphlab_utils import diagnose


pytestmark = pytest.mark.usefixtures("sim")


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
    site = diagnose.capture_error_site(SYNC_IN_HELPER)
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
    site = diagnose.capture_error_site(code)
    assert (site.first_type, site.first_cuda_error, site.line) == ("RuntimeError", None, 4)
    assert str(site) == "first error: RuntimeError at line 4: y = (x + 1).cpu()"


def test_code_that_runs_says_so():
    site = diagnose.capture_error_site("x = torch.ones(4, device=DEVICE) * 2\n")
    assert site.ok and str(site) == "ran without error"
