"""Lesson 06 · exec update: new content needs nothing, new addresses need an update, a new topology a new graph."""
from __future__ import annotations

from graphlab_utils.claims import claim
from graphlab_utils.recipes import capture, close, warm_up


def _chain(x, n: int):
    """``n`` tiny kernels: x * 1.01 + 0.5, ``n`` times (a fused multiply-add each)."""
    for _ in range(n):
        x = x * 1.01 + 0.5
    return x


def _capture_chain(static_in, n: int, pool=None):
    """Capture ``_chain(static_in, n)`` keeping the graph beside its exec (ExecUpdate needs both)."""
    import torch

    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g, pool=pool):
        out = _chain(static_in, n)
    return g, out


@claim("cudaGraphExecUpdate rebinds an exec to new buffers when the topology is the same", {
    "update with the same topology": "cudaSuccess", "update result": "cudaGraphExecUpdateSuccess",
    "the replay computes on the new buffers": True})
def update_vs_reinstantiate(device):
    import torch

    from graphlab_utils import cudart

    rt = cudart.runtime()
    a_in = torch.randn(1024, device=device)
    b_in = torch.randn(1024, device=device)
    warm_up(lambda: _chain(a_in, 20))
    g_a, a_out = _capture_chain(a_in, 20)
    g_a.instantiate()
    g_b, b_out = _capture_chain(b_in, 20, pool=g_a.pool())  # the same work on other buffers
    err, info = rt.cudaGraphExecUpdate(g_a.raw_cuda_graph_exec(), g_b.raw_cuda_graph())
    g_a.replay()  # g_a's exec, now reading b_in and writing b_out
    torch.cuda.synchronize()
    return {"update with the same topology": err.name,
            "update result": info.result.name if info is not None else None,
            "the replay computes on the new buffers": close(b_out, _chain(b_in, 20))}


@claim("new content at the same address needs no update: copy_ and replay",
       {"the replay computes on the new content": True})
def content_change_no_update(device):
    import torch

    static_in = torch.randn(256, device=device)
    g, out = capture(lambda: static_in.exp())
    followed = []
    for _ in range(3):  # each new content, written in place, is what the next replay reads
        new = torch.randn(256, device=device)
        static_in.copy_(new)
        g.replay()
        followed.append(close(out, new.exp()))
    return {"the replay computes on the new content": all(followed)}


@claim("an update to another topology fails and leaves the exec as it was", {
    "update with one op fewer": "cudaErrorGraphExecUpdateFailure", "the exec still replays as before": True})
def update_topology_fails(device):
    import torch

    from graphlab_utils import cudart

    rt = cudart.runtime()
    a_in = torch.randn(1024, device=device)
    warm_up(lambda: _chain(a_in, 20))
    g_a, a_out = _capture_chain(a_in, 20)
    g_a.instantiate()
    g_c, _ = _capture_chain(a_in, 19, pool=g_a.pool())  # one op fewer: another topology
    err, _info = rt.cudaGraphExecUpdate(g_a.raw_cuda_graph_exec(), g_c.raw_cuda_graph())
    a_in.copy_(torch.randn(1024, device=device))
    g_a.replay()
    torch.cuda.synchronize()
    return {"update with one op fewer": err.name, "the exec still replays as before": close(a_out, _chain(a_in, 20))}


@claim("ExecUpdate saves the instantiate, not the capture", {
    "update status": "cudaSuccess", "the update costs less than an instantiate": True,
    "the capture it needs costs more than the update": True})
def update_saves_instantiate(device):
    import torch

    from graphlab_utils import cudart, timing

    rt = cudart.runtime()
    a, b = torch.randn(1024, device=device), torch.randn(1024, device=device)

    def chain(x):
        for _ in range(200):
            x = x * 1.01 + 0.5
        return x

    warm_up(lambda: chain(a))
    g_a = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g_a):
        chain(a)
    t_instantiate = timing.measure_host(g_a.instantiate)
    g_b = torch.cuda.CUDAGraph(keep_graph=True)

    def capture_on_b():
        with torch.cuda.graph(g_b, pool=g_a.pool()):
            chain(b)

    t_capture = timing.measure_host(capture_on_b)
    status = []
    t_update = timing.measure_host(
        lambda: status.append(rt.cudaGraphExecUpdate(g_a.raw_cuda_graph_exec(), g_b.raw_cuda_graph())[0]))
    return {"update status": status[0].name, "the update costs less than an instantiate": t_update.ms < t_instantiate.ms,
            "the capture it needs costs more than the update": t_capture.ms > t_update.ms}
