"""Errors: the course's own, and the CUDA runtime's as both backends report them.

``GraphlabError`` is the base class of the errors the course's own code raises on purpose:
each one carries a single sentence that says what went wrong and what to do, and the
``graphlab`` command prints that sentence instead of a traceback.

``cudaError_t``, ``ERROR_STRINGS`` and ``error_name_in`` name the CUDA errors a learner
meets; they read a real GPU's error text and the simulator's alike, so lessons, checks and
claims compare outcomes across backends with them.
"""

from __future__ import annotations

import enum

__all__ = ["ERROR_STRINGS", "GraphlabError", "RNG_POISONED", "cudaError_t", "error_name_in"]


# What PyTorch raises at any random op once a failed capture has left its CUDA generator in
# capture mode (lesson 02): the process stays damaged until it restarts.
RNG_POISONED = "Offset increment outside graph capture encountered unexpectedly."


class GraphlabError(Exception):
    """An error of the course's helpers whose message is one sentence for the learner."""


class cudaError_t(enum.IntEnum):
    """The CUDA runtime's error codes the course meets (values as in cuda_runtime_api.h)."""

    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorIllegalState = 401
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901
    cudaErrorStreamCaptureMerge = 902
    cudaErrorStreamCaptureUnmatched = 903
    cudaErrorStreamCaptureUnjoined = 904
    cudaErrorStreamCaptureIsolation = 905
    cudaErrorStreamCaptureImplicit = 906
    cudaErrorCapturedEvent = 907
    cudaErrorStreamCaptureWrongThread = 908
    cudaErrorGraphExecUpdateFailure = 910


# cudaGetErrorString() of each code: the text PyTorch puts after "CUDA error: ".
ERROR_STRINGS = {
    cudaError_t.cudaSuccess: "no error",
    cudaError_t.cudaErrorInvalidValue: "invalid argument",
    cudaError_t.cudaErrorIllegalState: "the operation cannot be performed in the present state",
    cudaError_t.cudaErrorStreamCaptureUnsupported: "operation not permitted when stream is capturing",
    cudaError_t.cudaErrorStreamCaptureInvalidated: "operation failed due to a previous error during capture",
    cudaError_t.cudaErrorStreamCaptureMerge: "operation would result in a merge of separate capture sequences",
    cudaError_t.cudaErrorStreamCaptureUnmatched: "capture was not ended in the same stream as it began",
    cudaError_t.cudaErrorStreamCaptureUnjoined: "capturing stream has unjoined work",
    cudaError_t.cudaErrorStreamCaptureIsolation: "dependency created on uncaptured work in another stream",
    cudaError_t.cudaErrorStreamCaptureImplicit: "operation would make the legacy stream depend on a capturing blocking stream",
    cudaError_t.cudaErrorCapturedEvent: "operation not permitted on an event last recorded in a capturing stream",
    cudaError_t.cudaErrorStreamCaptureWrongThread: "attempt to terminate a thread-local capture sequence from another thread",
    cudaError_t.cudaErrorGraphExecUpdateFailure: "the graph update was not performed because it included changes which violated constraints specific to instantiated graph update",
}


def error_name_in(message: str) -> str | None:
    """The CUDA error name (e.g. 'cudaErrorStreamCaptureUnsupported') a message reports, if any.

    Works on the text of a real GPU error and on the simulator's alike, so lessons and the
    conformance suite can compare outcomes across backends.
    """
    for code, text in ERROR_STRINGS.items():
        if code != cudaError_t.cudaSuccess and (text in message or code.name in message):
            return code.name
    return None
