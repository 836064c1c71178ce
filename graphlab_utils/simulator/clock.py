"""The simulator's modelled clock: host time and one device timeline per stream.

Eager ops charge the host a launch cost and queue kernel time on their stream; a graph
replay charges one launch and queues its nodes (parallel branches overlap); syncs move the
host clock forward to the device. Figures come from the cost model calibrated on a GPU, so
the launch-bound and compute-bound regimes appear where they appear on that GPU.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field


_MODEL: list = []


def cost_model():
    """The calibrated cost model, loaded once (every simulated op asks for it)."""
    if not _MODEL:
        from graphlab_utils.simulator import costmodel

        _MODEL.append(costmodel.load())
    return _MODEL[0]


def reload_cost_model() -> None:
    _MODEL.clear()


@dataclass
class TraceEvent:
    """One span of the modelled timeline, in the shape of a profiler event."""

    lane: str  # "host" or "stream <id>"
    name: str  # cudaLaunchKernel, cudaGraphLaunch, cudaDeviceSynchronize, or the kernel's op
    start_us: float
    end_us: float


@dataclass
class SimClock:
    host_us: float = 0.0
    stream_ready_us: dict = field(default_factory=dict)  # stream id -> device time its queue drains
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    trace: list | None = None  # TraceEvents while recording (see `recording`), else None

    # -- reading -------------------------------------------------------------------
    def host_now_ms(self) -> float:
        return self.host_us / 1000.0

    def ready_us(self, stream_id: int) -> float:
        return max(self.stream_ready_us.get(stream_id, 0.0), 0.0)

    # -- the modelled timeline -------------------------------------------------------
    @contextlib.contextmanager
    def recording(self):
        """Collect the spans of everything modelled inside the block (the simulator's profiler)."""
        previous, self.trace = self.trace, []
        try:
            yield self.trace
        finally:
            self.trace = previous

    def _span(self, lane: str, name: str, start: float, end: float) -> None:
        if self.trace is not None:
            self.trace.append(TraceEvent(lane, name, start, end))

    # -- host work -------------------------------------------------------------------
    def host_work(self, us: float) -> None:
        with self.lock:
            self.host_us += us

    # -- device work -----------------------------------------------------------------
    def launch_kernel(self, stream_id: int, kernel_us: float, launch_us: float | None = None, name: str = "kernel") -> None:
        """One eager kernel: the host pays the launch, the stream runs the kernel after it."""
        with self.lock:
            m = cost_model()
            t0 = self.host_us
            self.host_us += m.eager_launch_us if launch_us is None else launch_us
            self._span("host", "cudaLaunchKernel", t0, self.host_us)
            start = max(self.ready_us(stream_id), self.host_us)
            self.stream_ready_us[stream_id] = start + kernel_us
            self._span(f"stream {stream_id}", name, start, start + kernel_us)

    def launch_graph(self, stream_id: int, critical_path_us: float, node_spans=()) -> float:
        """One replay: one host launch, then the nodes (name, start, end offsets) on the device.

        Returns the device time at which the replay starts.
        """
        with self.lock:
            m = cost_model()
            t0 = self.host_us
            self.host_us += m.graph_launch_us
            self._span("host", "cudaGraphLaunch", t0, self.host_us)
            start = max(self.ready_us(stream_id), self.host_us)
            self.stream_ready_us[stream_id] = start + critical_path_us
            for name, a, b in node_spans:
                self._span(f"stream {stream_id}", name, start + a, start + b)
            return start

    def stream_waits(self, waiter_id: int, until_us: float) -> None:
        with self.lock:
            self.stream_ready_us[waiter_id] = max(self.ready_us(waiter_id), until_us)

    def event_time_us(self, stream_id: int) -> float:
        """Device time at which work queued so far on the stream is done."""
        return max(self.ready_us(stream_id), self.host_us)

    # -- syncs -----------------------------------------------------------------------
    def sync_stream(self, stream_id: int) -> None:
        self.sync_until(self.ready_us(stream_id), "cudaStreamSynchronize")

    def sync_until(self, device_us: float, name: str = "cudaEventSynchronize") -> None:
        with self.lock:
            t0 = self.host_us
            self.host_us = max(self.host_us, device_us) + cost_model().sync_us
            self._span("host", name, t0, self.host_us)

    def sync_device(self) -> None:
        self.sync_until(max(self.stream_ready_us.values(), default=0.0), "cudaDeviceSynchronize")

    def reset(self) -> None:
        with self.lock:
            self.host_us = 0.0
            self.stream_ready_us.clear()


CLOCK = SimClock()
