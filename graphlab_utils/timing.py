"""The one timing helper of the course.

Every time a notebook, lab or check prints or compares comes from here:

* ``measure(fn)``: device time per call of ``fn``, from ``torch.cuda.Event`` pairs after
  warm-up, median over repeats. On the simulator, ``torch.cuda.Event`` and
  ``torch.cuda.synchronize`` are the simulator's (a modelled clock), so the same code runs.
* ``measure_host(fn)``: host wall time of a call (capture, instantiate, ExecUpdate):
  ``time.perf_counter`` on a GPU, the simulator's modelled host clock otherwise.
* ``Timing``: the result; ``str(t)`` says "measured on <GPU>" or "modelled, calibrated on
  <GPU>".
* ``format_ms``, ``speedup``, ``format_ratio``, ``label``.

Comparisons are always ratios of two timings taken side by side in one run; nothing here
compares against an absolute time.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from graphlab_utils import backend

__all__ = [
    "Timing",
    "measure",
    "measure_host",
    "speedup",
    "format_ms",
    "format_ratio",
    "label",
    "device_name",
    "is_modelled",
]


# -- which clock ------------------------------------------------------------------------


def is_modelled() -> bool:
    """True when timings come from the simulator's cost model."""
    return backend.is_simulated()


def device_name() -> str:
    """The GPU the figures come from: the real one, or the one the cost model was calibrated on."""
    try:
        return backend.gpu_name()
    except backend.BackendError:
        return "an unknown GPU"


def label() -> str:
    """``"measured on <GPU>"`` on a GPU, ``"modelled (calibrated on <GPU>)"`` on the simulator."""
    if is_modelled():
        return f"modelled (calibrated on {backend.calibration_gpu_name()})"
    return f"measured on {device_name()}"


# -- formatting -------------------------------------------------------------------------


def _sig3(x: float) -> str:
    """Three significant figures, no exponent: 1.23, 12.3, 123, 1234."""
    ax = abs(x)
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    if ax >= 0.1:
        return f"{x:.3f}"
    if ax == 0:
        return "0"
    return f"{x:.3g}"


def _finite(x) -> float | None:
    """``x`` as a finite float, or None (a figure the formatters print as "n/a")."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def format_ms(ms: float) -> str:
    """The course's one format for a time given in ms: three significant figures, in us
    below 0.1 ms. ``format_ms(1.2345) == "1.23 ms"``, ``format_ms(0.0117) == "11.7 us"``."""
    ms = _finite(ms)
    if ms is None:
        return "n/a"
    if abs(ms) < 0.1:
        return f"{_sig3(ms * 1e3)} us"
    return f"{_sig3(ms)} ms"


def format_ratio(x: float) -> str:
    """A speed-up or ratio: ``format_ratio(11.04) == "11.0x"``, ``format_ratio(0.5) == "0.50x"``."""
    x = _finite(x)
    if x is None:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:.0f}x"
    if abs(x) >= 1:
        return f"{x:.1f}x"
    return f"{x:.2f}x"


# -- the result ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """A timing: the median of ``samples_ms``, and where it comes from."""

    median_ms: float
    samples_ms: list = field(default_factory=list, compare=False)
    modelled: bool = False
    device_name: str = "an unknown GPU"

    @property
    def us(self) -> float:
        """The median in microseconds."""
        return self.median_ms * 1e3

    @property
    def ms(self) -> float:
        return self.median_ms

    @property
    def label(self) -> str:
        if self.modelled:
            return f"modelled, calibrated on {self.device_name}"
        return f"measured on {self.device_name}"

    def per(self, n: int) -> "Timing":
        """This timing divided by ``n`` (for example per kernel of an ``n``-kernel pass)."""
        n = max(1, int(n))
        return Timing(
            self.median_ms / n, [s / n for s in self.samples_ms], self.modelled, self.device_name
        )

    def __str__(self) -> str:
        return f"{format_ms(self.median_ms)} ({self.label})"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec) if spec else str(self)


def _make(samples: list, modelled: bool) -> Timing:
    if not samples:
        raise ValueError("no samples to time: repeat must be at least 1")
    return Timing(
        median_ms=float(statistics.median(samples)),
        samples_ms=[float(s) for s in samples],
        modelled=modelled,
        device_name=backend.calibration_gpu_name() if modelled else device_name(),
    )


def _need_backend() -> bool:
    """True when modelled; raises when neither a GPU nor the simulator is there."""
    if is_modelled():
        return True
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            "timing needs a GPU or the simulator: call graphlab_utils.setup() first"
            " (it installs the simulator when no GPU is present)."
        )
    return False


# -- measuring ---------------------------------------------------------------------------


def measure(fn: Callable[[], Any], *, warmup: int = 3, repeat: int = 20) -> Timing:
    """Device time per call of ``fn()`` (median of ``repeat`` calls after ``warmup`` calls).

    Each call is bracketed by two ``torch.cuda.Event(enable_timing=True)`` recorded on the
    current stream; the device is synchronised after the warm-up and after each call. The
    time therefore covers what the device did for the call, including the gaps it spent
    waiting for the host to launch the next kernel (which is what makes eager execution of
    small kernels slow).
    """
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    modelled = _need_backend()
    import torch

    cuda = torch.cuda  # looked up at call time: the simulator patches these names
    for _ in range(max(0, int(warmup))):
        fn()
    cuda.synchronize()
    samples = []
    for _ in range(int(repeat)):
        start = cuda.Event(enable_timing=True)
        end = cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        cuda.synchronize()
        samples.append(float(start.elapsed_time(end)))
    return _make(samples, modelled)


def _host_clock_ms(modelled: bool) -> Callable[[], float]:
    if modelled:
        from graphlab_utils.simulator.clock import CLOCK  # noqa: PLC0415

        return CLOCK.host_now_ms
    return lambda: time.perf_counter() * 1e3


def measure_host(
    fn: Callable[[], Any], *, warmup: int = 0, repeat: int = 1, sync: "bool | str" = True
) -> Timing:
    """Host wall time of ``fn()`` (median of ``repeat`` calls after ``warmup`` calls).

    Use it for host-side phases: capture, ``instantiate()``, ``cudaGraphExecUpdate``.
    With ``sync=True`` the device is synchronised before the clock starts and again before
    it stops, so the time covers the work the call launched; with ``sync=False`` it is the
    time until ``fn`` returns, calls following each other with no wait (launches of work
    still running can then block); with ``sync="before"`` the device is idle when each call
    starts and the time is again until ``fn`` returns: the CPU cost of a launch call alone.
    The default ``repeat=1`` suits one-off phases such as a capture; pass a larger
    ``repeat`` for calls that can be repeated.
    """
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    if sync not in (True, False, "before"):
        raise ValueError(f"sync must be True, False or 'before', not {sync!r}")
    modelled = _need_backend()
    import torch

    cuda = torch.cuda
    now = _host_clock_ms(modelled)
    for _ in range(max(0, int(warmup))):
        fn()
    samples = []
    for _ in range(int(repeat)):
        if sync:
            cuda.synchronize()
        t0 = now()
        fn()
        if sync is True:
            cuda.synchronize()
        samples.append(float(now() - t0))
    return _make(samples, modelled)


def speedup(slow: "Timing | float", fast: "Timing | float") -> float:
    """How many times faster ``fast`` is than ``slow`` (``slow / fast``).

    Both must come from the same backend (both measured or both modelled).
    """
    if isinstance(slow, Timing) and isinstance(fast, Timing) and slow.modelled != fast.modelled:
        raise ValueError("cannot compare a measured timing with a modelled one")
    s = slow.median_ms if isinstance(slow, Timing) else float(slow)
    f = fast.median_ms if isinstance(fast, Timing) else float(fast)
    if f <= 0:
        return math.inf if s > 0 else math.nan
    return s / f
