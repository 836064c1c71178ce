"""graphlab_utils.profiling: traces on the simulator, the profiler-event parser, pictures,
Chrome traces, and the capture / replay counter under the name lesson 08 uses. Tests marked
``gpu`` run the real torch.profiler path on a GPU (skipped here)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import graphlab_utils
from graphlab_utils import profiling, workloads


@pytest.fixture(scope="module")
def sim():
    session = graphlab_utils.setup(backend="sim", quiet=True)
    yield session
    from graphlab_utils import simulator

    simulator.uninstall()


def _graph_of(fn):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


# ---------------------------------------------------------------------------------------
# The simulator's traces
# ---------------------------------------------------------------------------------------
def test_eager_chain_launches_one_kernel_per_op(sim):
    fn, _ = workloads.chain(30, sim.device)
    trace = profiling.profile(fn, warmup=2, title="eager")
    assert (trace.kernel_launches, trace.graph_launches, trace.kernels) == (30, 0, 30)
    assert trace.modelled and trace.label.startswith("modelled")
    assert trace.counts() == "30 kernel launches and 0 graph launches on the CPU; 30 kernels on the GPU"
    assert trace.syncs == 1  # the synchronize that closes the pass
    assert "eager" in repr(trace)


def test_graph_replay_is_one_launch_and_the_same_kernels(sim):
    fn, _ = workloads.chain(30, sim.device)
    g = _graph_of(fn)
    trace = profiling.profile(g.replay)
    assert (trace.kernel_launches, trace.graph_launches, trace.kernels) == (0, 1, 30)
    assert trace.counts() == "0 kernel launches and 1 graph launch on the CPU; 30 kernels on the GPU"
    launch = next(s for s in trace.host if s.kind == "graph launch")
    assert all(s.correlation == launch.correlation for s in trace.device)


def test_warmup_is_not_in_the_trace(sim):
    fn, _ = workloads.chain(5, sim.device)
    assert profiling.profile(fn, warmup=7).kernel_launches == 5
    assert profiling.profile(fn, warmup=0).kernel_launches == 5


def test_summary_times_are_consistent(sim):
    fn, _ = workloads.chain(50, sim.device)
    eager = profiling.profile(fn).summary()
    graphed = profiling.profile(_graph_of(fn).replay).summary()
    for s in (eager, graphed):
        assert 0 < s["device_busy_us"] <= s["device_window_us"] + 1e-6 <= s["span_us"] + 1e-6
        assert s["device_idle_us"] == pytest.approx(s["device_window_us"] - s["device_busy_us"])
        assert 0 < s["busy_share"] <= 1
    assert eager["busy_share"] < graphed["busy_share"]
    assert graphed["span_us"] < eager["span_us"]
    assert graphed["host_launch_us"] < eager["host_launch_us"]


def test_trace_starts_at_zero(sim):
    fn, _ = workloads.chain(3, sim.device)
    t = profiling.profile(fn)
    assert min(s.start_us for s in t.host + t.device) == 0.0
    assert t.lanes and all(lane.startswith("stream ") for lane in t.lanes)
    assert t.kernel_names() == [s.name for s in t.device]


def test_table_counts_and_times(sim):
    fn, _ = workloads.chain(10, sim.device)
    traces = {"eager": profiling.profile(fn), "graphed": profiling.profile(_graph_of(fn).replay)}
    counts = profiling.table(traces)
    lines = counts.splitlines()
    assert lines[0].split() == ["eager", "graphed"]
    assert lines[1].split()[-2:] == ["10", "0"]
    assert lines[2].split()[-2:] == ["0", "1"]
    assert lines[3].split()[-2:] == ["10", "10"]
    assert " us" not in counts and "ms" not in counts
    timed = profiling.table(traces, times=True)
    assert "GPU busy share" in timed and timed.splitlines()[-1].startswith("times modelled")


def test_plots_draw_without_error(sim):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fn, _ = workloads.chain(8, sim.device)
    traces = {"eager": profiling.profile(fn), "graphed": profiling.profile(_graph_of(fn).replay)}
    ax = profiling.plot_timeline(traces["eager"])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["CPU", "GPU stream 0"]
    fig = profiling.plot_timelines(traces, xlim=(0, 50))
    assert len(fig.axes) == 2 and fig.axes[0].get_xlim() == (0, 50)
    # zoom: each trace from a quarter of the window before its own first kernel
    fig = profiling.plot_timelines(traces, zoom_us=40)
    for ax, trace in zip(fig.axes, traces.values()):
        first = trace.device[0].start_us
        lo, hi = ax.get_xlim()
        assert hi - lo == 40 and lo == max(0.0, first - 10)
    with pytest.raises(ValueError, match="zoom_us must be a positive number"):
        profiling.plot_timelines(traces, zoom_us=0)
    plt.close("all")


def test_timeline_title_names_the_timing_once_and_clears_the_legend(sim):
    """A long title (lesson 09's eager step) and the legend: no doubled parentheses, no overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fn, _ = workloads.chain(8, sim.device)
    trace = profiling.profile(fn, title="eager step of the UNet, classifier-free guidance, batch 1")
    ax = profiling.plot_timeline(trace)
    title = ax.get_title(loc="left")
    assert title.splitlines() == [f"{trace.title}: {trace.counts()}", trace.label]
    assert "((" not in title and "))" not in title
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    title_box = ax._left_title.get_window_extent(renderer)  # the Text of a loc="left" title
    assert not title_box.overlaps(ax.get_legend().get_window_extent(renderer))
    plt.close("all")


def test_chrome_trace_export(sim, tmp_path):
    fn, _ = workloads.chain(12, sim.device)
    trace = profiling.profile(_graph_of(fn).replay, title="graphed")
    path = profiling.export_chrome_trace(trace, tmp_path / "sub" / "t.json")
    data = json.loads(open(path).read())
    events = data["traceEvents"]
    assert sum(e.get("cat") == "kernel" for e in events) == 12
    assert sum(e.get("name") == "cudaGraphLaunch" for e in events) == 1
    assert {e["args"]["name"] for e in events if e.get("name") == "process_name"} == {"CPU (modelled)", "GPU 0 (modelled)"}
    assert sum(e.get("ph") == "s" for e in events) == sum(e.get("ph") == "f" for e in events) == 1
    assert data["otherData"]["timing"].startswith("modelled")
    assert all(e["dur"] >= 0 for e in events if e.get("ph") == "X")


def test_count_graph_calls_keeps_the_name_lesson_08_teaches():
    from graphlab_utils import watch

    assert profiling.count_graph_calls is watch.count_graph_calls  # tested in test_watch.py


# ---------------------------------------------------------------------------------------
# torch.profiler's events (the real backend's path), with stand-ins for FunctionEvents
# ---------------------------------------------------------------------------------------
def ev(name, start, end, device="CPU", corr=0, thread=1, stream=7, **extra):
    return SimpleNamespace(
        name=name, time_range=SimpleNamespace(start=start, end=end),
        device_type=f"DeviceType.{device}",
        id=corr, thread=thread, device_resource_id=stream, **extra)


def test_classify_host_accepts_known_variants():
    for name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cudaLaunchKernel_v7000", "cuLaunchKernel",
                 "cuLaunchKernelEx", "cudaLaunchCooperativeKernel"):
        assert profiling.classify_host(name) == "kernel launch", name
    for name in ("cudaGraphLaunch", "cudaGraphLaunch_v10000", "cuGraphLaunch"):
        assert profiling.classify_host(name) == "graph launch", name
    for name in ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cuCtxSynchronize"):
        assert profiling.classify_host(name) == "sync", name
    for name in ("cudaMemcpyAsync", "cudaLaunchHostFunc", "cudaStreamIsCapturing"):
        assert profiling.classify_host(name) == "runtime", name


def test_profiler_events_keep_api_calls_and_device_work():
    events = [
        ev("aten::add", 10, 30),                                   # PyTorch's operator: left out
        ev("cudaLaunchKernel", 12, 20, corr=5),
        ev("void at::native::vectorized_elementwise_kernel<4>", 25, 26, device="CUDA", corr=5),
        ev("cudaMemcpyAsync", 31, 33, corr=6),
        ev("Memcpy DtoD (Device -> Device)", 34, 35, device="CUDA", corr=6),
        ev("Memset (Device)", 36, 36.5, device="CUDA", corr=7),
        ev("cudaGraphLaunch", 40, 48, corr=8),
        ev("kernel_a", 49, 50, device="CUDA", corr=8),
        ev("kernel_b", 50, 51, device="CUDA", corr=8),
        ev("cudaDeviceSynchronize", 48, 52),
        ev("ProfilerStep#1", 9, 53, device="CUDA", is_user_annotation=True),   # a GPU annotation: left out
        ev("my_python_fn", 9, 53),                                 # no cuda prefix: left out
    ]
    t = profiling.from_profiler_events(events, "measured on a GPU", "test")
    assert not t.modelled and t.label == "measured on a GPU"
    assert [s.name for s in t.host] == ["cudaLaunchKernel", "cudaMemcpyAsync", "cudaGraphLaunch", "cudaDeviceSynchronize"]
    assert (t.kernel_launches, t.graph_launches, t.syncs, t.kernels) == (1, 1, 1, 3)
    assert t.summary()["device_copies"] == 2
    assert t.lanes == ["stream 7"]
    assert min(s.start_us for s in t.host + t.device) == 0.0  # shifted so the trace starts at 0
    assert [s.correlation for s in t.device if s.kind == "kernel"] == [5, 8, 8]


def test_profiler_events_keep_only_the_marked_pass():
    # what an H100 showed: CUPTI's buffer request (ms) and a primer sync before the pass, the
    # profiler's closing sync after it; the trace must hold the pass alone
    events = [
        ev("cudaDeviceSynchronize", 0, 5),                         # profile()'s primer call
        ev("Activity Buffer Request", 1, 2200),                    # CUPTI's start-up
        ev(profiling.PASS_MARK, 2300, 2900),
        ev("cudaStreamIsCapturing", 2305, 2310),
        ev("cudaGraphLaunch", 2320, 2600, corr=9),
        ev("k", 2610, 2830, device="CUDA", corr=9),
        ev("cudaDeviceSynchronize", 2610, 2890),
        ev("cudaDeviceSynchronize", 3000, 3010),                   # the profiler's exit
    ]
    t = profiling.from_profiler_events(events, "measured")
    assert [s.name for s in t.host] == ["cudaStreamIsCapturing", "cudaGraphLaunch", "cudaDeviceSynchronize"]
    assert t.syncs == 1 and t.kernels == 1
    assert t.summary()["span_us"] == 2890 - 2305


def test_profiler_events_filter_by_activity_type_when_present():
    events = [
        ev("cudaLaunchKernel", 0, 5, activity_type="cuda_runtime"),
        ev("cudaLaunchKernel", 10, 15, activity_type="cpu_op"),          # not a runtime call
        ev("k", 6, 7, device="CUDA", activity_type="kernel"),
        ev("cudaGraphLaunch", 8, 9, device="CUDA", activity_type="gpu_user_annotation"),
    ]
    t = profiling.from_profiler_events(events, "measured")
    assert (t.kernel_launches, t.graph_launches, t.kernels) == (1, 0, 1)


def test_nested_driver_launch_counts_once():
    events = [
        ev("cudaLaunchKernel", 0, 10, thread=1),
        ev("cuLaunchKernel", 2, 8, thread=1),      # made by the runtime call above
        ev("cuLaunchKernel", 3, 9, thread=2),      # another thread: a launch of its own
        ev("cudaLaunchKernel", 11, 20, thread=1),
    ]
    t = profiling.from_profiler_events(events, "measured")
    assert t.kernel_launches == 3


def test_empty_trace_summary():
    t = profiling.from_profiler_events([], "measured")
    s = t.summary()
    assert (s["cudaLaunchKernel"], s["device_kernels"], s["span_us"], s["busy_share"]) == (0, 0, 0.0, 0.0)


def test_from_sim_events_links_device_work_to_its_launch():
    E = SimpleNamespace
    events = [E(lane="host", name="cudaLaunchKernel", start_us=100, end_us=112),
              E(lane="stream 0", name="add.Tensor", start_us=112, end_us=113),
              E(lane="host", name="cudaGraphLaunch", start_us=113, end_us=118),
              E(lane="stream 0", name="mul.Tensor", start_us=118, end_us=119),
              E(lane="stream 0", name="copy_", start_us=119, end_us=120),
              E(lane="host", name="cudaDeviceSynchronize", start_us=118, end_us=130)]
    t = profiling.from_sim_events(events, "modelled")
    assert [s.correlation for s in t.device] == [1, 2, 2]
    assert t.host[0].start_us == 0.0 and t.device[-1].end_us == 20.0


# ---------------------------------------------------------------------------------------
# On a GPU: torch.profiler's own counts
# ---------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_real_profiler_counts_match_the_simulator():
    session = graphlab_utils.setup(backend="real", quiet=True)
    fn, _ = workloads.chain(50, session.device)
    eager = profiling.profile(fn, warmup=3, title="eager")
    graphed = profiling.profile(_graph_of(fn).replay, warmup=3, title="graphed")
    names = sorted({s.name for s in eager.host + graphed.host if s.kind != "runtime"})
    assert (eager.kernel_launches, eager.graph_launches, eager.kernels) == (50, 0, 50), names
    assert (graphed.kernel_launches, graphed.graph_launches, graphed.kernels) == (0, 1, 50), names
    assert eager.summary()["busy_share"] < graphed.summary()["busy_share"]
    # the pass alone: one synchronise each, the profiler's start-up outside the graphed pass
    assert eager.syncs == graphed.syncs == 1, names
    assert graphed.summary()["span_us"] < eager.summary()["span_us"]
    assert not eager.modelled and eager.label.startswith("measured on")
