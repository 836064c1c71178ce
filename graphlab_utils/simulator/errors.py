"""The errors a learner meets on a GPU, raised by the simulator with the same class and text.

Each simulated error starts with the text PyTorch prints on a GPU (so a lesson's stored
output is the same on both backends) and adds one sentence, after a line break, that says
why in the course's terms and which lesson covers it.
"""
from __future__ import annotations

import enum

import torch


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

# The line PyTorch's C10_CUDA_CHECK appends after the error string.
_TORCH_TAIL = (
    "CUDA kernel errors might be asynchronously reported at some other API call, "
    "so the stacktrace below might be incorrect.\n"
    "For debugging consider passing CUDA_LAUNCH_BLOCKING=1"
)

RNG_POISONED = "Offset increment outside graph capture encountered unexpectedly."


class SimulatorWarning(UserWarning):
    """The simulator says something a GPU would not print, e.g. that it invented bytes."""


def cuda_error(code: cudaError_t, why: str) -> torch.AcceleratorError:
    """The exception PyTorch raises on a GPU for `code`, plus the course's explanation."""
    text = f"CUDA error: {ERROR_STRINGS[code]}\n{_TORCH_TAIL}\n[graphlab simulator] {why}"
    return torch.AcceleratorError(text)


def error_name_in(message: str) -> str | None:
    """The CUDA error name (e.g. 'cudaErrorStreamCaptureUnsupported') a message reports, if any.

    Works on the text of a real GPU error and on the simulator's alike, so lessons and the
    conformance suite can compare outcomes across backends.
    """
    for code, text in ERROR_STRINGS.items():
        if code != cudaError_t.cudaSuccess and (text in message or code.name in message):
            return code.name
    return None
