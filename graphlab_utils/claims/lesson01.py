"""Lesson 01 · capture, instantiate, launch: what each phase does and what it costs."""
from __future__ import annotations

import warnings

from graphlab_utils.claims import claim
from graphlab_utils.recipes import capture, close, warm_up


@claim("capture records the kernels and runs none of them",
       {"result ready before the first replay": False, "result ready after one replay": True})
def capture_records_nothing(device):
    import torch

    x = torch.randn(1024, device=device)
    f = lambda: torch.sin(x) * 2 + 1  # noqa: E731
    warm_up(f)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = f()
    torch.cuda.synchronize()
    before = close(y, torch.sin(x) * 2 + 1)
    g.replay()
    torch.cuda.synchronize()
    return {"result ready before the first replay": before,
            "result ready after one replay": close(y, torch.sin(x) * 2 + 1)}


@claim("instantiate is a one-off cost far above a replay, and PyTorch's capture costs more still; a replay beats an eager pass", {
    "capture costs more than one replay": True,
    "capture costs more host time than instantiate": True,
    "instantiate costs more than one replay": True,
    "a replay costs less than an eager pass": True})
def phases_cost(device):
    import torch

    from graphlab_utils import timing, workloads

    fn, _ = workloads.chain(100, device)  # 100 tiny kernels
    warm_up(fn)
    g = torch.cuda.CUDAGraph(keep_graph=True)  # instantiate becomes a call of its own

    def record():
        with torch.cuda.graph(g):
            fn()

    t_capture = timing.measure_host(record)
    t_instantiate = timing.measure_host(g.instantiate)
    t_replay = timing.measure(g.replay, repeat=5)
    t_eager = timing.measure(fn, repeat=5)
    return {"capture costs more than one replay": t_capture.ms > t_replay.ms,
            "capture costs more host time than instantiate": t_capture.ms > t_instantiate.ms,
            "instantiate costs more than one replay": t_instantiate.ms > t_replay.ms,
            "a replay costs less than an eager pass": t_replay.ms < t_eager.ms}


@claim("a graph built on the first request makes it pay warm-up, capture and instantiate",
       {"building the graph costs more than 10 replays": True})
def warmup_first_request(device):
    import torch

    from graphlab_utils import timing, workloads

    fn, _ = workloads.chain(100, device)
    graphs = []

    def build():  # what a server that builds lazily does on its first request
        warm_up(fn)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        graphs.append(g)

    t_build = timing.measure_host(build)
    t_replay = timing.measure(graphs[0].replay, repeat=5)
    return {"building the graph costs more than 10 replays": t_build.ms > 10 * t_replay.ms}


@claim("the first launch of a fresh graph uploads it and costs more; a warm replay or cudaGraphUpload pays that before traffic", {
    "a fresh graph's first replay costs more than a later replay": True,
    "after one warm replay, the next replay costs less than a fresh graph's first": True,
    "after cudaGraphUpload, the first replay costs less than a fresh graph's first": True})
def first_launch_uploads(device):
    import statistics

    import torch

    from graphlab_utils import cudart, timing, workloads

    fn, _ = workloads.chain(200, device)
    warm_up(fn)
    stream = torch.cuda.current_stream().cuda_stream

    def first_and_later(prepare, graphs=5):
        """Medians over fresh graphs: the first replay after prepare(g), and the replays after it."""
        firsts, laters = [], []
        for _ in range(graphs):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            prepare(g)
            firsts.append(timing.measure_host(g.replay).ms)
            laters.append(timing.measure_host(g.replay, repeat=5).ms)
        return statistics.median(firsts), statistics.median(laters)

    fresh = first_and_later(lambda g: None)
    warm = first_and_later(lambda g: g.replay())
    uploaded = first_and_later(lambda g: cudart.check(cudart.cudaGraphUpload(g.raw_cuda_graph_exec(), stream)))
    return {"a fresh graph's first replay costs more than a later replay": fresh[0] > fresh[1],
            "after one warm replay, the next replay costs less than a fresh graph's first": warm[0] < fresh[0],
            "after cudaGraphUpload, the first replay costs less than a fresh graph's first": uploaded[0] < fresh[0]}


@claim("a graph speeds up many tiny kernels far more than one large kernel", {
    "speed-up on 200 tiny kernels larger than on one large matmul": True,
    "speed-up on one large matmul below 2x": True})
def launch_bound_vs_big_kernel(device):
    from graphlab_utils import timing, workloads

    def speedup(fn):
        g, _ = capture(fn)
        eager = timing.measure(fn, warmup=1, repeat=5)
        graphed = timing.measure(g.replay, warmup=1, repeat=5)
        return timing.speedup(eager, graphed)

    tiny = speedup(workloads.chain(200, device)[0])
    big = speedup(workloads.big_matmul(device, size=1024)[0])
    return {"speed-up on 200 tiny kernels larger than on one large matmul": tiny > big,
            "speed-up on one large matmul below 2x": big < 2.0}


@claim("capturing nothing warns that the graph is empty", {"a warning says the graph is empty": True})
def empty_graph_warns(device):
    import torch

    g = torch.cuda.CUDAGraph()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.cuda.graph(g):
            pass
    return {"a warning says the graph is empty": any("empty" in str(w.message) for w in caught)}
