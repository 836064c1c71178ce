"""Simulated CUDA streams and events (`torch.cuda.Stream`, `torch.cuda.Event`, `torch.cuda.stream`).

A stream carries its place in a capture: the capture it belongs to (the one it began, or the
one it joined by waiting on a capturing stream) and its frontier, the last nodes its work
depends on. That is all CUDA needs to turn fork/join into parallel branches of a graph.
``stream.is_capturing()`` reads it. An event recorded in a capture joins streams; made with
``external=True`` it is also recorded by every replay, when the work before it is done, so a
pair of them times a replay.
"""
from __future__ import annotations

import itertools
import threading

import torch

from .clock import CLOCK
from .errors import cudaError_t, cuda_error

_ids = itertools.count(1)
_tls = threading.local()


class Stream:
    """Stands in for `torch.cuda.Stream`."""

    def __new__(cls, device=None, priority: int = 0, **kwargs):
        self = object.__new__(cls)
        self.stream_id = 0 if kwargs.get("_default") else next(_ids)
        self.device = torch.device("cuda", 0)
        self.priority = priority
        self.capture = None  # the Capture this stream records into, if any
        self.frontier: list[int] = []  # node indices the stream's next work depends on
        return self

    def __init__(self, device=None, priority: int = 0, **kwargs):
        pass

    # -- identity ---------------------------------------------------------------------
    @property
    def cuda_stream(self) -> int:
        return self.stream_id

    def __eq__(self, other) -> bool:
        return isinstance(other, Stream) and other.stream_id == self.stream_id

    def __hash__(self) -> int:
        return hash(("stream", self.stream_id))

    def __repr__(self) -> str:
        return f"<torch.cuda.Stream device=cuda:0 cuda_stream={self.stream_id:#x}>"

    # -- ordering -----------------------------------------------------------------------
    def wait_stream(self, stream: "Stream") -> None:
        """Make future work on self wait for all work queued on `stream` so far."""
        self.wait_event(stream.record_event())

    def wait_event(self, event: "Event") -> None:
        event.wait(self)

    def record_event(self, event: "Event | None" = None) -> "Event":
        event = Event() if event is None else event
        event.record(self)
        return event

    def synchronize(self) -> None:
        from .graphs import refuse_sync

        refuse_sync(self, "stream.synchronize()")
        CLOCK.sync_stream(self.stream_id)

    def query(self) -> bool:
        return CLOCK.ready_us(self.stream_id) <= CLOCK.host_us

    def is_capturing(self) -> bool:
        """Whether this stream is recording into a graph now."""
        return self.capture is not None

    def __enter__(self):  # torch.cuda.Stream is usable as a context manager
        self._ctx = stream(self)
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


DEFAULT_STREAM = Stream(_default=True)


def current_stream(device=None) -> Stream:
    return getattr(_tls, "current", DEFAULT_STREAM)


def default_stream(device=None) -> Stream:
    return DEFAULT_STREAM


def set_stream(s: Stream) -> None:
    _tls.current = s


class StreamContext:
    """Stands in for `torch.cuda.StreamContext` / `torch.cuda.stream(s)`."""

    def __init__(self, s: Stream | None):
        self.stream = s
        self.prev = None

    def __enter__(self):
        if self.stream is None:
            return None
        self.prev = current_stream()
        set_stream(self.stream)
        return self.stream

    def __exit__(self, *exc):
        if self.stream is not None:
            set_stream(self.prev)
        return False


def stream(s: Stream | None) -> StreamContext:
    return StreamContext(s)


class Event:
    """Stands in for `torch.cuda.Event`: device timestamps come from the modelled clock."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False, external: bool = False):
        self.enable_timing = enable_timing
        self.external = external
        self.time_us: float | None = None
        self.captured = None  # (capture, frontier) when recorded inside a capture

    def record(self, stream: Stream | None = None) -> None:
        stream = current_stream() if stream is None else stream
        if stream.capture is not None:
            self.captured = (stream.capture, list(stream.frontier))
            self.time_us = None
            if self.external:  # an event-record node: each replay records it when its dependencies finish
                frontier = list(stream.frontier)
                stream.capture.add_hook(lambda start, finish: self._replayed(start, finish, frontier))
        else:
            self.captured = None
            self.time_us = CLOCK.event_time_us(stream.stream_id)

    def _replayed(self, start_us: float, finish: dict, frontier: list) -> None:
        self.time_us = start_us + max((finish.get(i, 0.0) for i in frontier), default=0.0)

    def wait(self, stream: Stream | None = None) -> None:
        stream = current_stream() if stream is None else stream
        if self.captured is not None and self.captured[0].active:
            capture, frontier = self.captured
            if stream.capture is None:
                capture.join(stream)  # fork: the stream now records into the capture
            elif stream.capture is not capture:
                raise cuda_error(
                    cudaError_t.cudaErrorStreamCaptureMerge,
                    "this stream already records into another graph; two captures cannot be merged (lesson 02).",
                )
            stream.frontier = sorted(set(stream.frontier) | set(frontier))
        elif self.time_us is not None:
            CLOCK.stream_waits(stream.stream_id, self.time_us)

    def query(self) -> bool:
        return self.time_us is None or self.time_us <= CLOCK.host_us

    def synchronize(self) -> None:
        if self.time_us is not None:
            CLOCK.sync_until(self.time_us)

    def elapsed_time(self, end_event: "Event") -> float:
        if not (self.enable_timing and end_event.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        if self.time_us is None or end_event.time_us is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        if max(self.time_us, end_event.time_us) > CLOCK.host_us:
            raise torch.AcceleratorError(
                "CUDA error: device not ready\n[graphlab simulator] the GPU has not reached the end event yet: "
                "call end.synchronize() or torch.cuda.synchronize() before elapsed_time (lesson 01)."
            )
        return (end_event.time_us - self.time_us) / 1000.0

    def __repr__(self) -> str:
        return "<torch.cuda.Event (simulated)>"
