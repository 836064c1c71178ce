"""Profile one pass of GPU work, on either backend, and read the trace as the course does.

One call works on both backends::

    from graphlab_utils import profiling
    trace = profiling.profile(step, warmup=3)     # warm up, synchronise, record ONE call
    trace.summary()        # launch calls on the CPU, kernels on the GPU, busy / idle time
    profiling.table({"eager": t_eager, "graphed": t_graph})
    profiling.plot_timeline(trace, ax)            # a CPU lane and a GPU lane
    profiling.export_chrome_trace(trace, "step.json")   # open it in Perfetto / chrome://tracing

Where the trace comes from:

* **real backend**: ``torch.profiler.profile(activities=[CPU, CUDA])`` around one call of
  ``fn`` and the ``torch.cuda.synchronize()`` that waits for it. The host spans are the CUDA
  runtime and driver API calls the profiler saw on the CPU (``cudaLaunchKernel``,
  ``cudaGraphLaunch``, ``cudaDeviceSynchronize``, ``cudaMemcpyAsync``, ...); the device
  spans are the kernels, copies and memsets CUPTI saw on the GPU. Measured.
* **simulator**: the simulator's own timeline (``CLOCK.recording()``): one host span per
  launch or sync, one device span per kernel or graph node, named by its aten op. Modelled
  from the cost model calibrated on a GPU, and labelled so.

Warm-up calls run before the profiler starts and the device is synchronised. On a GPU the
profiler has start-up work of its own: at the first CUDA call it records, CUPTI requests its
activity buffer (an ``Activity Buffer Request`` event, milliseconds long). So ``profile``
makes one ``torch.cuda.synchronize()`` inside the profiler before the pass, marks the pass
with ``torch.profiler.record_function(PASS_MARK)``, and keeps only what falls inside the
mark (the profiler's closing synchronise is left out too). A trace holds exactly one pass:
on a GPU, a chain of N elementwise ops shows N ``cudaLaunchKernel``
calls and N kernels; one replay of its graph shows one ``cudaGraphLaunch`` and N kernels.

Launch calls are recognised by the prefix of their name, because CUDA versions and the
profiler name them differently (``cudaLaunchKernel``, ``cudaLaunchKernelExC``,
``cudaLaunchKernel_v7000``, the driver's ``cuLaunchKernel`` / ``cuLaunchKernelEx``): see
``KERNEL_LAUNCH_PREFIXES``, ``GRAPH_LAUNCH_PREFIXES`` and ``SYNC_PREFIXES``. A launch call
nested inside another one on the same thread (a driver call made by a runtime call) is
counted once.

``count_graph_calls()`` counts captures and replays of ``torch.cuda.CUDAGraph`` inside a
block, on both backends: the quickest way to see a graph re-captured at every call (it lives
in :mod:`graphlab_utils.watch`, with the other watchers of learner code).

PyTorch and matplotlib are imported when a function needs them.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from graphlab_utils import backend
from graphlab_utils.watch import count_graph_calls  # lesson 08 teaches it by this name

__all__ = [
    "GRAPH_LAUNCH_PREFIXES",
    "KERNEL_LAUNCH_PREFIXES",
    "SYNC_PREFIXES",
    "Span",
    "Trace",
    "chrome_trace_json",
    "classify_host",
    "count_graph_calls",
    "export_chrome_trace",
    "from_profiler_events",
    "from_sim_events",
    "plot_timeline",
    "plot_timelines",
    "profile",
    "table",
]

# -- names ------------------------------------------------------------------------------

#: Host calls that launch one kernel (runtime and driver API; suffixes such as ``ExC``,
#: ``Ex`` or ``_v7000`` are accepted by prefix).
KERNEL_LAUNCH_PREFIXES = (
    "cudaLaunchKernel",
    "cuLaunchKernel",
    "cudaLaunchCooperativeKernel",
    "cuLaunchCooperativeKernel",
)
#: Host calls that launch a whole executable graph.
GRAPH_LAUNCH_PREFIXES = ("cudaGraphLaunch", "cuGraphLaunch")
#: Host calls that wait for the device.
SYNC_PREFIXES = (
    "cudaDeviceSynchronize",
    "cudaStreamSynchronize",
    "cudaEventSynchronize",
    "cuCtxSynchronize",
    "cuStreamSynchronize",
    "cuEventSynchronize",
)

# CUDA runtime (cudaXxx) and driver (cuXxx) API names: what the CPU lane shows.
_API_NAME = re.compile(r"^cu(da)?[A-Z]")
# Profiler activity types (where PyTorch reports them) of the events this module keeps.
_HOST_ACTIVITIES = {"cuda_runtime", "cuda_driver"}
_DEVICE_ACTIVITIES = {"kernel", "gpu_memcpy", "gpu_memset"}

HOST_LANE = "host"
# The record_function range around the one profiled pass: spans outside it are the profiler's.
PASS_MARK = "graphlab.profiling: the pass"


def classify_host(name: str) -> str:
    """``"kernel launch"``, ``"graph launch"``, ``"sync"`` or ``"runtime"`` (any other API call)."""
    if name.startswith(KERNEL_LAUNCH_PREFIXES):
        return "kernel launch"
    if name.startswith(GRAPH_LAUNCH_PREFIXES):
        return "graph launch"
    if name.startswith(SYNC_PREFIXES):
        return "sync"
    return "runtime"


def _classify_device(name: str) -> str:
    if name.startswith("Memcpy") or name.startswith("memcpy"):
        return "memcpy"
    if name.startswith("Memset") or name.startswith("memset"):
        return "memset"
    return "kernel"


# -- the trace --------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """One interval of a trace: a host API call, or a kernel / copy on a device stream.

    Times are microseconds from the start of the trace.
    """

    lane: str  # "host" or "stream <id>"
    name: str
    start_us: float
    end_us: float
    kind: str  # host: kernel launch | graph launch | sync | runtime; device: kernel | memcpy | memset
    correlation: int = 0  # links a launch call to the device work it launched (0: unknown)
    thread: int = 0

    @property
    def duration_us(self) -> float:
        return self.end_us - self.start_us


def _union_us(spans: Iterable[Span]) -> float:
    """Total length covered by the spans (overlaps counted once)."""
    total, end = 0.0, -math.inf
    for s in sorted(spans, key=lambda s: s.start_us):
        if s.end_us <= end:
            continue
        total += s.end_us - max(s.start_us, end)
        end = s.end_us
    return total


@dataclass
class Trace:
    """One profiled pass: host spans (the CPU lane) and device spans (one lane per stream)."""

    host: list
    device: list
    label: str  # "measured on <GPU>" or "modelled (calibrated on <GPU>)"
    modelled: bool
    title: str = ""
    profiler: Any = field(default=None, repr=False)  # the torch.profiler.profile (real backend)

    # -- counts ---------------------------------------------------------------------------
    def _host_count(self, kind: str) -> int:
        return sum(1 for s in self.host if s.kind == kind)

    @property
    def kernel_launches(self) -> int:
        """``cudaLaunchKernel`` calls (and their driver / extended variants) on the CPU."""
        return self._host_count("kernel launch")

    @property
    def graph_launches(self) -> int:
        """``cudaGraphLaunch`` calls on the CPU."""
        return self._host_count("graph launch")

    @property
    def syncs(self) -> int:
        return self._host_count("sync")

    @property
    def kernels(self) -> int:
        """Kernels that ran on the GPU (graph nodes included; copies and memsets not)."""
        return sum(1 for s in self.device if s.kind == "kernel")

    @property
    def lanes(self) -> list:
        """The device lanes (streams) in the order they first appear."""
        seen: list = []
        for s in sorted(self.device, key=lambda s: s.start_us):
            if s.lane not in seen:
                seen.append(s.lane)
        return seen

    def kernel_names(self) -> list:
        """Names of the kernels, in the order they started (they differ between backends)."""
        return [s.name for s in sorted(self.device, key=lambda s: s.start_us) if s.kind == "kernel"]

    # -- times ----------------------------------------------------------------------------
    def summary(self) -> dict:
        """Counts and times of the pass (times in microseconds).

        * ``cudaLaunchKernel`` / ``cudaGraphLaunch``: launch calls on the CPU;
        * ``syncs``: calls that waited for the device;
        * ``device_kernels``: kernels on the GPU; ``device_copies``: copies and memsets;
        * ``host_launch_us``: CPU time spent inside launch calls;
        * ``device_busy_us``: time the GPU ran something (overlaps counted once);
        * ``device_window_us``: from the first device span's start to the last one's end;
        * ``device_idle_us``: the gaps inside that window (the GPU waiting for work);
        * ``busy_share``: busy / window;
        * ``span_us``: the whole pass, CPU and GPU;
        * ``label``: measured or modelled, and on which GPU.
        """
        dev = self.device
        busy = _union_us(dev)
        if dev:
            window = max(s.end_us for s in dev) - min(s.start_us for s in dev)
        else:
            window = 0.0
        everything = list(self.host) + list(dev)
        span = (max(s.end_us for s in everything) - min(s.start_us for s in everything)) if everything else 0.0
        return {
            "cudaLaunchKernel": self.kernel_launches,
            "cudaGraphLaunch": self.graph_launches,
            "syncs": self.syncs,
            "device_kernels": self.kernels,
            "device_copies": sum(1 for s in dev if s.kind in ("memcpy", "memset")),
            "host_launch_us": sum(s.duration_us for s in self.host if s.kind in ("kernel launch", "graph launch")),
            "device_busy_us": busy,
            "device_window_us": window,
            "device_idle_us": max(0.0, window - busy),
            "busy_share": (busy / window) if window > 0 else 0.0,
            "span_us": span,
            "label": self.label,
        }

    def counts(self) -> str:
        """One line of counts that reads the same on a GPU and on the simulator."""
        return (
            f"{_plural(self.kernel_launches, 'kernel launch', 'kernel launches')} and "
            f"{_plural(self.graph_launches, 'graph launch', 'graph launches')} on the CPU; "
            f"{_plural(self.kernels, 'kernel')} on the GPU"
        )

    def __repr__(self) -> str:
        head = f"Trace({self.title!r}: " if self.title else "Trace("
        return f"{head}{self.counts()}; {self.label})"


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _normalised(host: list, device: list) -> tuple:
    everything = host + device
    t0 = min((s.start_us for s in everything), default=0.0)
    shift = lambda s: Span(s.lane, s.name, s.start_us - t0, s.end_us - t0, s.kind, s.correlation, s.thread)  # noqa: E731
    return (sorted((shift(s) for s in host), key=lambda s: s.start_us),
            sorted((shift(s) for s in device), key=lambda s: s.start_us))


# -- building a trace -------------------------------------------------------------------


def from_sim_events(events: Iterable, label: str, title: str = "") -> Trace:
    """A Trace from the simulator's TraceEvents (``lane``, ``name``, ``start_us``, ``end_us``).

    The simulator emits a launch call, then the device work it launched: each device span
    is linked to the launch call before it.
    """
    host, device = [], []
    correlation = 0
    for e in events:
        if e.lane == HOST_LANE:
            kind = classify_host(e.name)
            corr = 0
            if kind in ("kernel launch", "graph launch"):
                correlation += 1
                corr = correlation
            host.append(Span(HOST_LANE, e.name, float(e.start_us), float(e.end_us), kind, corr))
        else:
            device.append(Span(e.lane, e.name, float(e.start_us), float(e.end_us),
                               _classify_device(e.name), correlation))
    host, device = _normalised(host, device)
    return Trace(host, device, label, modelled=True, title=title)


def _is_cuda_device(device_type) -> bool:
    return str(device_type).split(".")[-1].upper() == "CUDA"


def _activity(event) -> str | None:
    act = getattr(event, "activity_type", None)
    if act is None:
        return None
    return str(act).split(".")[-1].lower() or None


def _without_nested_launches(host: list) -> list:
    """Drop a launch call that lies inside another launch call of the same thread.

    (A driver call such as ``cuLaunchKernel`` made by the runtime's ``cudaLaunchKernel``
    is one launch, not two.)
    """
    kept: list = []
    last_end: dict = {}  # thread -> end of the last launch call kept
    for s in sorted(host, key=lambda s: (s.start_us, -s.end_us)):
        if s.kind in ("kernel launch", "graph launch"):
            if s.end_us <= last_end.get(s.thread, -math.inf):
                continue  # it starts after that call began and ends before it ends: nested
            last_end[s.thread] = s.end_us
        kept.append(s)
    return kept


def from_profiler_events(events: Iterable, label: str, title: str = "", profiler: Any = None) -> Trace:
    """A Trace from ``torch.profiler.profile(...).events()`` (PyTorch's FunctionEvents).

    Keeps, from the CPU, the CUDA runtime / driver API calls (names ``cudaXxx`` / ``cuXxx``)
    and, from the GPU, kernels, copies and memsets; PyTorch's own operator events, Python
    functions and user annotations are left out.
    """
    events = list(events)
    window = _pass_window(events)
    host, device = [], []
    for e in events:
        name = str(getattr(e, "name", ""))
        start, end = float(e.time_range.start), float(e.time_range.end)
        if window and not window[0] <= start <= window[1]:
            continue  # the profiler's own calls around the pass
        act = _activity(e)
        corr = int(getattr(e, "id", 0) or 0)
        if _is_cuda_device(getattr(e, "device_type", None)):
            if getattr(e, "is_user_annotation", False):
                continue
            if act is not None and act not in _DEVICE_ACTIVITIES:
                continue
            stream = getattr(e, "device_resource_id", 0)
            device.append(Span(f"stream {stream}", name, start, end, _classify_device(name), corr))
        else:
            if act is not None and act not in _HOST_ACTIVITIES:
                continue
            if not _API_NAME.match(name):
                continue
            host.append(Span(HOST_LANE, name, start, end, classify_host(name), corr,
                             int(getattr(e, "thread", 0) or 0)))
    host = _without_nested_launches(host)
    host, device = _normalised(host, device)
    return Trace(host, device, label, modelled=False, title=title, profiler=profiler)


def _pass_window(events: list) -> tuple | None:
    """(start, end) of the CPU range PASS_MARK around the pass, where the trace has one."""
    for e in events:
        if str(getattr(e, "name", "")) == PASS_MARK and not _is_cuda_device(getattr(e, "device_type", None)):
            return float(e.time_range.start), float(e.time_range.end)
    return None


# -- profiling --------------------------------------------------------------------------

_PROFILER_READY: list = []


def _real_profiler(fn: Callable[[], Any]):
    """Run ``fn()`` and a synchronise under torch.profiler, inside PASS_MARK; return the profiler."""
    import torch
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    prof = torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the profiler's own notices, not the learner's
        prof.__enter__()
    try:
        torch.cuda.synchronize()  # CUPTI's buffer request happens here, before the pass
        with record_function(PASS_MARK):
            fn()
            torch.cuda.synchronize()
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prof.__exit__(None, None, None)
    return prof


def profile(fn: Callable[[], Any], *, warmup: int = 3, title: str = "") -> Trace:
    """Warm ``fn`` up, synchronise, then record exactly one call of ``fn()`` and its sync.

    Returns a :class:`Trace`: measured by ``torch.profiler`` on a GPU, modelled by the
    simulator otherwise. Warm-up calls and the warm-up's synchronise are not in the trace.
    """
    import torch

    from graphlab_utils import timing

    for _ in range(max(0, int(warmup))):
        fn()
    torch.cuda.synchronize()
    label = timing.label()
    if backend.is_simulated():
        from graphlab_utils.simulator.clock import CLOCK

        with CLOCK.recording() as events:
            fn()
            torch.cuda.synchronize()
        return from_sim_events(list(events), label, title)
    if not torch.cuda.is_available():
        raise RuntimeError(
            "profiling needs a GPU or the simulator: call graphlab_utils.setup() first "
            "(it installs the simulator when no GPU is present)."
        )
    if not _PROFILER_READY:  # the first profiler session of a process initialises CUPTI
        _real_profiler(torch.cuda.synchronize)
        _PROFILER_READY.append(True)
    prof = _real_profiler(fn)
    return from_profiler_events(prof.events(), label, title, profiler=prof)


# -- reading traces side by side --------------------------------------------------------


def _fmt_us(us: float) -> str:
    from graphlab_utils import timing

    return timing.format_ms(us / 1000.0)


def table(traces: Mapping[str, Trace], times: bool = False) -> str:
    """The traces side by side, one column each.

    Without ``times`` the table holds counts only, which read the same on a GPU and on the
    simulator; with ``times`` it adds CPU launch time, GPU busy and idle time and the whole
    pass, and a last line saying where the figures come from.
    """
    names = list(traces)
    sums = {n: traces[n].summary() for n in names}
    rows = [
        ("cudaLaunchKernel calls (CPU)", lambda s: str(s["cudaLaunchKernel"])),
        ("cudaGraphLaunch calls (CPU)", lambda s: str(s["cudaGraphLaunch"])),
        ("kernels (GPU)", lambda s: str(s["device_kernels"])),
    ]
    if times:
        rows += [
            ("CPU time in launch calls", lambda s: _fmt_us(s["host_launch_us"])),
            ("GPU busy", lambda s: _fmt_us(s["device_busy_us"])),
            ("GPU idle between kernels", lambda s: _fmt_us(s["device_idle_us"])),
            ("GPU busy share", lambda s: f"{100 * s['busy_share']:.0f}%"),
            ("whole pass (CPU and GPU)", lambda s: _fmt_us(s["span_us"])),
        ]
    head_w = max(len(r[0]) for r in rows)
    cells = [[fmt(sums[n]) for n in names] for _, fmt in rows]
    col_w = [max(len(n), *(len(c[i]) for c in cells)) for i, n in enumerate(names)]
    lines = [" " * head_w + "".join(f"  {n:>{w}}" for n, w in zip(names, col_w))]
    for (title, _), row in zip(rows, cells):
        lines.append(f"{title:<{head_w}}" + "".join(f"  {c:>{w}}" for c, w in zip(row, col_w)))
    if times:
        labels = sorted({traces[n].label for n in names})
        lines.append("times " + "; ".join(labels))
    return "\n".join(lines)


# -- pictures ---------------------------------------------------------------------------

HOST_COLOURS = {
    "kernel launch": "#F58518",
    "graph launch": "#E45756",
    "sync": "#9D9D9D",
    "runtime": "#CFCFCF",
}
LAUNCH_SHADE = "#FFBF79"  # every other cudaLaunchKernel, so that back-to-back calls show apart
DEVICE_COLOURS = ("#4C78A8", "#72B7B2")  # alternate, so that neighbouring kernels show apart
COPY_COLOUR = "#54A24B"


def plot_timeline(trace: Trace, ax: Any = None, title: str | None = None, xlim: tuple | None = None,
                  legend: bool = True):
    """Draw the trace as lanes: the CPU on top, then one lane per GPU stream.

    Launch calls are orange (``cudaLaunchKernel``) or red (``cudaGraphLaunch``), syncs grey;
    kernels alternate two blues, copies are green. ``xlim=(start_us, end_us)`` zooms in.
    Returns the Axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if ax is None:
        _fig, ax = plt.subplots(figsize=(9, 2.2))
    lanes = [HOST_LANE] + trace.lanes
    y_of = {lane: len(lanes) - 1 - i for i, lane in enumerate(lanes)}
    height = 0.6

    def bars(spans, colour, y):
        spans = list(spans)
        if spans:
            ax.broken_barh([(s.start_us, max(s.duration_us, 1e-3)) for s in spans], (y - height / 2, height),
                           facecolors=colour, edgecolors=colour, linewidth=0.4)

    for kind, colour in HOST_COLOURS.items():
        spans = [s for s in trace.host if s.kind == kind]
        if kind == "kernel launch":  # back-to-back launches: alternate two shades
            bars(spans[1::2], LAUNCH_SHADE, y_of[HOST_LANE])
            spans = spans[0::2]
        bars(spans, colour, y_of[HOST_LANE])
    for lane in trace.lanes:
        kernels = [s for s in trace.device if s.lane == lane and s.kind == "kernel"]
        for i, colour in enumerate(DEVICE_COLOURS):
            bars(kernels[i::2], colour, y_of[lane])
        bars((s for s in trace.device if s.lane == lane and s.kind != "kernel"), COPY_COLOUR, y_of[lane])

    ax.set_yticks([y_of[lane] for lane in lanes])
    ax.set_yticklabels(["CPU"] + [f"GPU {lane}" for lane in trace.lanes], fontsize=8)
    ax.set_ylim(-0.6, len(lanes) - 0.4)
    ax.set_xlabel("time (us)", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    if xlim is not None:
        ax.set_xlim(*xlim)
    else:
        everything = trace.host + trace.device
        end = max((s.end_us for s in everything), default=1.0)
        ax.set_xlim(0, end * 1.02)
    if title is None:
        title = f"{trace.title + ': ' if trace.title else ''}{trace.counts()}\n{trace.label}"
    if title:
        ax.set_title(title, fontsize=9, loc="left")
    if legend:
        present = {s.kind for s in trace.host}
        handles = [Patch(facecolor=HOST_COLOURS[k], label=label) for k, label in (
            ("kernel launch", "cudaLaunchKernel"), ("graph launch", "cudaGraphLaunch"), ("sync", "synchronize"))
            if k in present]
        if any(s.kind == "kernel" for s in trace.device):
            handles.append(Patch(facecolor=DEVICE_COLOURS[0], label="kernel"))
        if any(s.kind != "kernel" for s in trace.device):
            handles.append(Patch(facecolor=COPY_COLOUR, label="copy / memset"))
        if handles:  # right of the lanes, where no title can run into it
            ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0),
                      ncol=1, frameon=False, borderaxespad=0.0)
    return ax


def plot_timelines(traces: Mapping[str, Trace], sharex: bool = True, xlim: tuple | None = None,
                   width: float = 10.0, zoom_us: float | None = None):
    """One timeline per trace, stacked, on a common time axis by default. Returns the Figure.

    ``zoom_us`` shows that many microseconds of each trace around its first kernel (from a
    quarter of the window before it), each trace on its own axis: where the GPU work starts,
    whatever the CPU did before (on a GPU, a launch under the profiler can take hundreds of
    microseconds)."""
    import matplotlib.pyplot as plt

    if zoom_us is not None and (not isinstance(zoom_us, (int, float)) or zoom_us <= 0):
        raise ValueError(f"zoom_us must be a positive number of microseconds, not {zoom_us!r}")
    names = list(traces)
    if zoom_us is not None:
        sharex = False
    heights = [1.0 + 0.45 * (1 + len(traces[n].lanes)) for n in names]
    fig, axes = plt.subplots(len(names), 1, figsize=(width, sum(heights)), sharex=sharex,
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[:, 0], names)):
        t = traces[name]
        limits = xlim
        if zoom_us is not None:
            first = min((s.start_us for s in t.device), default=0.0)
            start = max(0.0, first - zoom_us / 4)
            limits = (start, start + zoom_us)
        plot_timeline(t, ax, title=f"{name}: {t.counts()}", xlim=limits)
        if sharex and i < len(names) - 1:
            ax.set_xlabel("")
    if xlim is None and sharex:
        end = max((s.end_us for n in names for s in traces[n].host + traces[n].device), default=1.0)
        axes[0, 0].set_xlim(0, end * 1.02)
    labels = sorted({traces[n].label for n in names})
    fig.suptitle("times " + "; ".join(labels), fontsize=8, x=0.99, ha="right")
    fig.tight_layout()
    return fig


# -- Chrome trace -----------------------------------------------------------------------

_CHROME_HOST_PID, _CHROME_DEVICE_PID = 1, 2


def _chrome_events(trace: Trace) -> list:
    suffix = " (modelled)" if trace.modelled else ""
    events = [
        {"ph": "M", "name": "process_name", "pid": _CHROME_HOST_PID, "tid": 0, "args": {"name": f"CPU{suffix}"}},
        {"ph": "M", "name": "process_name", "pid": _CHROME_DEVICE_PID, "tid": 0, "args": {"name": f"GPU 0{suffix}"}},
        {"ph": "M", "name": "thread_name", "pid": _CHROME_HOST_PID, "tid": 1, "args": {"name": "host thread"}},
    ]
    tids = {}
    for i, lane in enumerate(trace.lanes):
        tids[lane] = i + 1
        events.append({"ph": "M", "name": "thread_name", "pid": _CHROME_DEVICE_PID, "tid": i + 1, "args": {"name": lane}})
    host_cat = {"kernel launch": "cuda_runtime", "graph launch": "cuda_runtime", "sync": "cuda_runtime", "runtime": "cuda_runtime"}
    device_cat = {"kernel": "kernel", "memcpy": "gpu_memcpy", "memset": "gpu_memset"}
    launches = {}
    for s in trace.host:
        events.append({"ph": "X", "cat": host_cat[s.kind], "name": s.name, "pid": _CHROME_HOST_PID, "tid": 1,
                       "ts": round(s.start_us, 3), "dur": round(s.duration_us, 3),
                       "args": {"correlation": s.correlation}})
        if s.correlation and s.kind in ("kernel launch", "graph launch"):
            launches[s.correlation] = s
    flows = set()
    for s in trace.device:
        events.append({"ph": "X", "cat": device_cat.get(s.kind, "kernel"), "name": s.name, "pid": _CHROME_DEVICE_PID,
                       "tid": tids[s.lane], "ts": round(s.start_us, 3), "dur": round(s.duration_us, 3),
                       "args": {"correlation": s.correlation, "stream": s.lane}})
        launch = launches.get(s.correlation)
        if launch is not None and s.correlation not in flows:  # an arrow from the launch call to its first kernel
            flows.add(s.correlation)
            events.append({"ph": "s", "id": s.correlation, "cat": "ac2g", "name": "ac2g", "pid": _CHROME_HOST_PID,
                           "tid": 1, "ts": round(launch.start_us, 3)})
            events.append({"ph": "f", "bp": "e", "id": s.correlation, "cat": "ac2g", "name": "ac2g",
                           "pid": _CHROME_DEVICE_PID, "tid": tids[s.lane], "ts": round(s.start_us, 3)})
    return events


def chrome_trace_json(trace: Trace) -> dict:
    """The trace in Chrome's trace-event format (what Perfetto and chrome://tracing open)."""
    return {
        "traceEvents": _chrome_events(trace),
        "displayTimeUnit": "ms",
        "otherData": {"source": "graphlab_utils.profiling", "timing": trace.label, "title": trace.title},
    }


def export_chrome_trace(trace: Trace, path: str | Path) -> str:
    """Write the trace as a Chrome trace (JSON) for https://ui.perfetto.dev; returns the path.

    On a GPU this is ``torch.profiler``'s own ``export_chrome_trace`` (every event the
    profiler saw); on the simulator, the modelled timeline in the same format, its processes
    named "CPU (modelled)" and "GPU 0 (modelled)".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if trace.profiler is not None:
        trace.profiler.export_chrome_trace(str(path))
    else:
        path.write_text(json.dumps(chrome_trace_json(trace)))
    return str(path)
