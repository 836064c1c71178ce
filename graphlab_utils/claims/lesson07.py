"""Lesson 07 · graph memory: capture-time allocations come from the graph's private pool."""
from __future__ import annotations

from graphlab_utils.claims import claim
from graphlab_utils.recipes import capture, close, warm_up


@claim("a capture allocates from the graph's pool; the graph holds kernels and no allocation node", {
    "memory reserved during the capture": True, "memory-allocation (MemAlloc) nodes": 0,
    "node kinds": {"Kernel": 12}})
def capture_allocates_from_pool(device):
    import torch

    from graphlab_utils import graphinfo

    hidden = 65536
    w, bias = torch.randn(hidden, device=device), torch.randn(hidden, device=device)
    x = torch.randn(8, hidden, device=device)

    def step():  # 12 kernels, each with a new output tensor
        h = x
        for _ in range(4):
            h = torch.tanh(h * w) + bias
        return h

    warm_up(step, iters=2)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g):
        y = step()
    torch.cuda.synchronize()
    kinds = graphinfo.node_types(g)
    return {"memory reserved during the capture": torch.cuda.memory_reserved() > before,
            "memory-allocation (MemAlloc) nodes": kinds.get("MemAlloc", 0), "node kinds": dict(kinds)}


@claim("a graph's private pool holds memory while the graph lives; reset() returns it", {
    "the pool grew during the capture": True, "memory held while the graph lives": True,
    "memory returned after reset()": True, "a shared pool needs less than a new one": True})
def private_pools(device):
    import torch

    n = 1 << 20  # 4 MiB of float32 per tensor
    x = torch.randn(n, device=device)

    def work():
        h = x * 2  # an intermediate: freed inside the capture, its block reusable in the pool
        return h + 1

    warm_up(work)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    g1 = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g1):
        out1 = work()
    after_g1 = torch.cuda.memory_reserved()
    # a second graph in a pool of its own vs in g1's pool
    g_sep = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g_sep):
        out_sep = work()
    after_sep = torch.cuda.memory_reserved()
    g_shared = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g_shared, pool=g1.pool()):
        out_shared = work()
    after_shared = torch.cuda.memory_reserved()
    torch.cuda.empty_cache()
    held = torch.cuda.memory_reserved()
    del out_sep
    g_sep.reset()
    del g_sep
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    after_reset = torch.cuda.memory_reserved()
    return {
        "the pool grew during the capture": after_g1 > base,
        "memory held while the graph lives": held >= after_sep and held > base,
        "memory returned after reset()": after_reset < held,
        "a shared pool needs less than a new one": (after_shared - after_sep) < (after_sep - after_g1),
        "_figures_MiB": {k: round(v / 2**20, 2) for k, v in dict(
            base=base, after_g1=after_g1, after_separate=after_sep, after_shared=after_shared, after_reset=after_reset).items()},
    }


@claim("graphs sharing a pool never run concurrently, and an output still needed after another graph's replay can be overwritten", {
    "each output read before the next replay: both correct": True,
    "g2's output read after g1 replayed: still correct": False,
    "g2's output read after g1 replayed: holds g1's intermediate": True})
def shared_pool_order(device):
    import torch

    n = 1 << 12
    pool = torch.cuda.graph_pool_handle()
    x1, x2 = torch.randn(n, device=device), torch.randn(n, device=device)

    def work1():
        h = x1 * 2  # an intermediate, freed when work1 returns: its block goes back to the pool
        return h + 1

    g1, out1 = capture(work1, pool=pool)
    g2, out2 = capture(lambda: x2 * 3, pool=pool)  # its output may land in work1's freed block
    g1.replay()
    g2.replay()
    in_order = close(out1, x1 * 2 + 1) and close(out2, x2 * 3)
    g2.replay()
    g1.replay()
    return {"each output read before the next replay: both correct": in_order,
            "g2's output read after g1 replayed: still correct": close(out2, x2 * 3),
            "g2's output read after g1 replayed: holds g1's intermediate": close(out2, x1 * 2)}


@claim("reset() keeps the graph's registration with the random generator (two 512-byte blocks of the default pool); del frees them", {
    "blocks left after reset(), the output dropped and empty_cache()": 2, "their sizes in bytes": [512, 512],
    "in the default pool": True, "blocks left after del": 0}, isolated=True)  # no other graph alive in its process
def reset_keeps_generator_blocks(device):
    import torch

    def live():
        return {(seg["address"], b["address"]): (tuple(seg["segment_pool_id"]), b["size"])
                for seg in torch.cuda.memory_snapshot() for b in seg["blocks"] if b["state"] == "active_allocated"}

    x = torch.randn(1 << 16, device=device)
    warm_up(lambda: torch.tanh(x) + 1)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    baseline = live()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = torch.tanh(x) + 1
    g.reset()
    del out
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    after_reset = [v for k, v in live().items() if k not in baseline]
    del g
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    after_del = [v for k, v in live().items() if k not in baseline]
    return {"blocks left after reset(), the output dropped and empty_cache()": len(after_reset),
            "their sizes in bytes": sorted(size for _, size in after_reset),
            "in the default pool": all(pool == (0, 0) for pool, _ in after_reset),
            "blocks left after del": len(after_del)}


@claim("with a pool that never moves and an index table, data can move with no re-capture", {
    "correct before the move": True, "correct after the move, with no re-capture": True, "captures after the first": 0})
def index_table_no_recapture(device):
    import torch

    from graphlab_utils import profiling

    slots, dim = 16, 32
    k_pool = torch.randn(slots, dim, device=device)  # allocated once, before any capture
    q = torch.randn(dim, device=device)
    slot_ids = torch.arange(6, 12, device=device)  # the request's row of the index table

    def attend():
        keys = k_pool.index_select(0, slot_ids)
        return (keys @ q).softmax(0)

    g, out = capture(attend)
    g.replay()
    before = close(out, (k_pool[6:12] @ q).softmax(0))
    with profiling.count_graph_calls() as calls:
        k_pool[3:9] = k_pool[6:12].clone()  # compact the request into slots 3..8
        k_pool[9:].normal_()  # and give its old slots to someone else
        slot_ids.copy_(torch.arange(3, 9, device=device))  # the table says where it went
        g.replay()
    return {"correct before the move": before,
            "correct after the move, with no re-capture": close(out, (k_pool[3:9] @ q).softmax(0)),
            "captures after the first": calls.captures}
