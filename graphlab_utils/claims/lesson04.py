"""Lesson 04 · pointer baking: a graph holds addresses, so replay reads whatever they hold."""
from __future__ import annotations

from graphlab_utils.claims import claim
from graphlab_utils.recipes import capture, close, warm_up


@claim("a KV-cache pool defragmented under the graph gives wrong results; re-capture or update fixes it", {
    "correct before the move": True, "correct after the move": False,
    "fixed by re-capture": True, "fixed by cudaGraphExecUpdate": True})
def defragmentation(device):
    import torch

    from graphlab_utils import cudart

    rt = cudart.runtime()
    heads, dim = 4, 64
    arena = torch.zeros(8, heads, dim, device=device)  # a toy KV-cache pool with 8 slots
    kv = arena[4:8]  # this request's cache lives in slots 4..7
    kv.copy_(torch.randn(4, heads, dim, device=device))
    q = torch.randn(heads, dim, device=device)

    def attend(cache):
        return (cache * q).sum(-1).softmax(0)

    warm_up(lambda: attend(kv))
    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g):
        out = attend(kv)
    g.instantiate()
    g.replay()
    before = close(out, attend(kv))
    # "Defragment": compact the request into slots 0..3 and reuse slots 4..7 for someone else.
    arena[0:4].copy_(arena[4:8])
    kv = arena[0:4]
    arena[4:8].normal_()
    kv[3].mul_(-1)  # the request's cache keeps changing in its new place
    g.replay()
    after = close(out, attend(kv))
    g2 = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g2, pool=g.pool()):
        out2 = attend(kv)
    g2.replay()
    recaptured = close(out2, attend(kv))
    err, _info = rt.cudaGraphExecUpdate(g.raw_cuda_graph_exec(), g2.raw_cuda_graph())
    out2.zero_()
    g.replay()
    torch.cuda.synchronize()
    return {"correct before the move": before, "correct after the move": after, "fixed by re-capture": recaptured,
            "fixed by cudaGraphExecUpdate": err.name == "cudaSuccess" and close(out2, attend(kv))}


@claim("rebinding the name leaves the graph on the old storage; `copy_` is seen", {
    "after rebinding: result for the old input": True, "after rebinding: result for the new input": False,
    "after copy_: result for the new input": True})
def rebinding_vs_copy(device):
    import torch

    static_in = torch.randn(256, device=device)
    old = static_in.clone()
    g, out = capture(lambda: static_in * 3)
    captured = static_in
    static_in = torch.randn(256, device=device)  # a new tensor; the graph still reads the old one
    g.replay()
    outcome = {"after rebinding: result for the old input": close(out, old * 3),
               "after rebinding: result for the new input": close(out, static_in * 3)}
    captured.copy_(static_in)  # the new values, written into the captured storage
    g.replay()
    outcome["after copy_: result for the new input"] = close(out, static_in * 3)
    return outcome


@claim("a held output is overwritten by the next replay; a clone is not", {
    "the held reference shows the second replay": True, "the clone keeps the first replay": True})
def outputs_overwritten(device):
    import torch

    static_in = torch.randn(128, device=device)
    g, out = capture(lambda: static_in.relu())
    first_in = torch.randn(128, device=device)
    static_in.copy_(first_in)
    g.replay()
    held, kept = out, out.clone()
    second_in = torch.randn(128, device=device)
    static_in.copy_(second_in)
    g.replay()
    return {"the held reference shows the second replay": close(held, second_in.relu()),
            "the clone keeps the first replay": close(kept, first_in.relu())}


@claim("a freed input's memory, reused by a new tensor, is read by the replay", {
    "result for the original input": False, "result for the new occupant of the memory": True})
def freed_input_reused(device):
    import torch

    n = 1 << 18
    static_in = torch.randn(n, device=device)
    original = static_in.clone()
    g, out = capture(lambda: static_in * 2)
    del static_in  # the block goes back to the caching allocator...
    occupant = torch.full((n,), 5.0, device=device)  # ...and the next tensor of that size gets it
    g.replay()
    torch.cuda.synchronize()
    return {"result for the original input": close(out, original * 2),
            "result for the new occupant of the memory": close(out, occupant * 2)}
