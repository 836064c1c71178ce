"""Lesson 08 · debugging and profiling: what a trace, a node count and the error chain show."""
from __future__ import annotations

from graphlab_utils.claims import claim
from graphlab_utils.recipes import capture, warm_up


@claim("a replay is one cudaGraphLaunch on the CPU and still every kernel on the GPU", {
    "eager: cudaLaunchKernel calls": 50, "eager: kernels on the GPU": 50,
    "graphed: cudaLaunchKernel calls": 0, "graphed: cudaGraphLaunch calls": 1,
    "graphed: kernels on the GPU": 50})
def profile_graph_launch(device):
    from graphlab_utils import profiling, workloads

    fn, _ = workloads.chain(50, device)
    g, _ = capture(fn)
    eager = profiling.profile(fn, warmup=3).summary()
    graphed = profiling.profile(g.replay, warmup=3).summary()
    return {"eager: cudaLaunchKernel calls": eager["cudaLaunchKernel"],
            "eager: kernels on the GPU": eager["device_kernels"],
            "graphed: cudaLaunchKernel calls": graphed["cudaLaunchKernel"],
            "graphed: cudaGraphLaunch calls": graphed["cudaGraphLaunch"],
            "graphed: kernels on the GPU": graphed["device_kernels"]}


@claim("cudaGraphGetNodes and the DOT dump show one kernel node per op of a 10-op chain", {
    "nodes": 10, "node kinds": {"Kernel": 10}, "edges in the DOT dump": 9, "widest level": 1})
def count_nodes(device):
    from graphlab_utils import graphinfo, workloads

    fn, _ = workloads.chain(10, device)
    g, _ = capture(fn, keep_graph=True)
    st = graphinfo.structure(g)
    return {"nodes": graphinfo.node_count(g), "node kinds": dict(graphinfo.node_types(g)),
            "edges in the DOT dump": len(st.edges), "widest level": st.width}


@claim("a runner that captures at every call loses the saving; one that replays keeps it", {
    "naive runner: captures for 5 requests": 5, "cached runner: captures for 5 requests": 0,
    "cached runner: replays for 5 requests": 5, "the cached runner serves a request faster": True})
def recapture_every_call(device):
    import torch

    from graphlab_utils import profiling, timing, workloads

    fn, (static_x,) = workloads.chain(30, device)
    warm_up(fn)
    requests = [torch.randn(1024, device=device) for _ in range(5)]

    def naive(x):  # captures a new graph for every request
        static_x.copy_(x)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = fn()
        g.replay()
        return out.clone()

    g_cached, out_cached = capture(fn)

    def cached(x):
        static_x.copy_(x)
        g_cached.replay()
        return out_cached.clone()

    with profiling.count_graph_calls() as naive_calls:
        for x in requests:
            naive(x)
    with profiling.count_graph_calls() as cached_calls:
        for x in requests:
            cached(x)
    t_naive = timing.measure_host(lambda: naive(requests[0]), repeat=3)
    t_cached = timing.measure_host(lambda: cached(requests[0]), repeat=3)
    return {"naive runner: captures for 5 requests": naive_calls.captures,
            "cached runner: captures for 5 requests": cached_calls.captures,
            "cached runner: replays for 5 requests": cached_calls.replays,
            "the cached runner serves a request faster": t_cached.ms < t_naive.ms}


_BROKEN_CAPTURE = """\
x = torch.randn(1024, device=DEVICE)
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    total = x.sum()
    scale = total.item()
    y = x / scale
"""


@claim("the first error of the chain names the line that broke the capture", {
    "first error": "AcceleratorError (cudaErrorStreamCaptureUnsupported)",
    "at line": "5: scale = total.item()",
    "reported when the capture ended": "AcceleratorError (cudaErrorStreamCaptureInvalidated)"}, spawns=True)
def capture_error_site(device):
    from graphlab_utils import isolation

    site = isolation.capture_error_site(_BROKEN_CAPTURE)
    return {"first error": f"{site.first_type} ({site.first_cuda_error})",
            "at line": f"{site.line}: {site.source}",
            "reported when the capture ended": f"{site.reported_type} ({site.reported_cuda_error})"}
