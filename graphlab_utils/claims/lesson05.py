"""Lesson 05 · shape bucketing: a graph per shape, padded batches, one pool for all buckets."""
from __future__ import annotations

from graphlab_utils.claims import claim
from graphlab_utils.recipes import capture, close


@claim("shapes are baked into the graph: another shape needs another graph", {
    "copy_ of a 6-row batch into the 4-row static input": "RuntimeError", "output shape": [4, 8],
    "a graph captured for 6 rows gives the right result": True})
def shapes_are_baked(device):
    import torch

    static_in = torch.randn(4, 16, device=device)
    w = torch.randn(16, 8, device=device)
    g, out = capture(lambda: static_in @ w)
    try:
        static_in.copy_(torch.randn(6, 16, device=device))
        copied = "no error"
    except RuntimeError:
        copied = "RuntimeError"
    g.replay()
    bigger = torch.randn(6, 16, device=device)
    static6 = bigger.clone()
    g6, out6 = capture(lambda: static6 @ w)
    g6.replay()
    return {"copy_ of a 6-row batch into the 4-row static input": copied, "output shape": list(out.shape),
            "a graph captured for 6 rows gives the right result": close(out6, bigger @ w)}


@claim("shapes are baked; one graph per bucket, pad and slice serves any batch size", {
    "copy_ of a 6-row batch into a 4-row static input": "RuntimeError",
    "graphs captured (buckets 8, 4, 2, 1)": 4, "captures while serving batches of 3, 5, 1, 8": 0,
    "every batch matched eager": True})
def bucket_runner(device):
    import torch

    from graphlab_utils import profiling

    w = torch.randn(16, 8, device=device)
    buckets = (8, 4, 2, 1)
    pool = torch.cuda.graph_pool_handle()
    static_in, static_out, graphs = {}, {}, {}
    for bs in buckets:  # largest first, one shared pool
        static_in[bs] = torch.zeros(bs, 16, device=device)
        graphs[bs], static_out[bs] = capture(lambda bs=bs: static_in[bs] @ w, pool=pool)
    try:
        static_in[4].copy_(torch.randn(6, 16, device=device))
        refused = "no error"
    except RuntimeError:
        refused = "RuntimeError"

    def serve(batch):
        n = batch.shape[0]
        bs = min(b for b in buckets if b >= n)
        static_in[bs][:n].copy_(batch)
        static_in[bs][n:].zero_()
        graphs[bs].replay()
        return static_out[bs][:n]

    matched = True
    with profiling.count_graph_calls() as calls:
        for n in (3, 5, 1, 8):
            batch = torch.randn(n, 16, device=device)
            matched = matched and close(serve(batch), batch @ w)
    return {"copy_ of a 6-row batch into a 4-row static input": refused,
            "graphs captured (buckets 8, 4, 2, 1)": len(graphs),
            "captures while serving batches of 3, 5, 1, 8": calls.captures,
            "every batch matched eager": matched}


@claim("a batch of 3 is served by the bucket-4 graph: pad, replay, slice", {
    "captures while serving": 0, "replays while serving": 1, "the 3 real rows match eager": True})
def pad_and_slice(device):
    import torch

    from graphlab_utils import profiling

    w = torch.randn(16, 8, device=device)
    static_in = torch.zeros(4, 16, device=device)  # bucket 4
    g, static_out = capture(lambda: torch.relu(static_in @ w))
    batch = torch.randn(3, 16, device=device)
    with profiling.count_graph_calls() as calls:
        static_in[:3].copy_(batch)
        static_in[3:].zero_()  # a harmless padding row
        g.replay()
        result = static_out[:3]
    return {"captures while serving": calls.captures, "replays while serving": calls.replays,
            "the 3 real rows match eager": close(result, torch.relu(batch @ w))}


@claim("bucket graphs captured largest first into one pool need less memory than separate pools",
       {"one shared pool reserves less than one pool per graph": True})
def shared_pool_memory(device):
    import torch

    hidden = 1 << 19  # one row: 2 MiB of float32
    w = torch.randn(hidden, device=device)

    def growth(shared: bool) -> int:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_reserved()
        pool = torch.cuda.graph_pool_handle() if shared else None
        kept = []
        for bs in (8, 4, 2, 1):  # largest first
            x = torch.randn(bs, hidden, device=device)
            kept.append((x, *capture(lambda x=x: torch.tanh(x * w) * w + 1.0, pool=pool, warmup=1)))
        torch.cuda.synchronize()
        grown = torch.cuda.memory_reserved() - base
        for _, g, _out in kept:
            g.reset()
        kept.clear()
        return grown

    separate = growth(shared=False)
    shared = growth(shared=True)
    torch.cuda.empty_cache()
    return {"one shared pool reserves less than one pool per graph": shared < separate,
            "_MiB": {"separate": separate / 2**20, "shared": shared / 2**20}}
