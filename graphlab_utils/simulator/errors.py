"""The errors a learner meets on a GPU, raised by the simulator with the same class and text.

Each simulated error starts with the text PyTorch prints on a GPU (so a lesson's stored
output is the same on both backends) and adds one sentence, after a line break, that says
why in the course's terms and which lesson covers it.
"""
from __future__ import annotations

import torch

from graphlab_utils.errors import ERROR_STRINGS, RNG_POISONED, GraphlabError, cudaError_t, error_name_in  # noqa: F401 (re-exported)


# The line PyTorch's C10_CUDA_CHECK appends after the error string.
_TORCH_TAIL = (
    "CUDA kernel errors might be asynchronously reported at some other API call, "
    "so the stacktrace below might be incorrect.\n"
    "For debugging consider passing CUDA_LAUNCH_BLOCKING=1"
)

class SimulatorWarning(UserWarning):
    """The simulator says something a GPU would not print, e.g. that it invented bytes."""


def cuda_error(code: cudaError_t, why: str) -> torch.AcceleratorError:
    """The exception PyTorch raises on a GPU for `code`, plus the course's explanation."""
    text = f"CUDA error: {ERROR_STRINGS[code]}\n{_TORCH_TAIL}\n[graphlab simulator] {why}"
    return torch.AcceleratorError(text)


class NotSimulatedError(GraphlabError, RuntimeError):
    """Something a GPU does that the simulator does not model; the message names it."""


def not_simulated(what: str) -> NotSimulatedError:
    """The one sentence for a feature the simulator leaves out (docs/ARCHITECTURE.md lists them)."""
    return NotSimulatedError(
        f"[graphlab simulator] {what} is not simulated: run this on a GPU "
        "(docs/ARCHITECTURE.md lists what the simulator leaves out).")
