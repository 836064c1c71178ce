"""Kata 7: too many graphs, each with its own pool."""
from __future__ import annotations

from graphlab_utils.checks import core
from graphlab_utils.checks.core import close, device, ok
from graphlab_utils.recipes import seeded_randn
from graphlab_utils.watch import watching

from . import fixed_function, register

SNIPPET = '''\
def capture_all(layer, sizes):
    """Capture the layer once per batch size; return {batch size: (graph, static_x, out)}."""
    graphs = {}
    for bs in sizes:
        static_x = torch.zeros(bs, layer.in_features, device=DEVICE)
        graph, out = capture(lambda: layer(static_x))
        graphs[bs] = (graph, static_x, out)
    return graphs
'''
# The fix, as lab 10's solution shows it: the snippet with one shared pool, capturing the largest size first.
FIX = fixed_function(SNIPPET, "one shared pool, largest size first", insert_after={
    "graphs = {}": "pool = torch.cuda.graph_pool_handle()",
}, replace={
    "for bs in sizes:": "for bs in sorted(sizes, reverse=True):",
    "graph, out = capture(lambda: layer(static_x))": "graph, out = capture(lambda: layer(static_x), pool=pool)",
})
FEATURES = 1024
SIZES = (4, 1, 32, 8, 2, 16)
BUDGET = 0.5  # graphs for every size in one pool: at most half of what one pool per size holds


class DequantLinear:
    """A weight-only int8 linear layer that dequantizes its weight on every call (a 4 MiB workspace)."""

    def __init__(self, features: int = FEATURES, seed: int = 801):
        import torch

        gen = torch.Generator().manual_seed(seed)
        self.in_features = self.out_features = features
        dev = device()
        self.weight_q = torch.randint(-127, 128, (features, features), generator=gen, dtype=torch.int8).to(dev)
        self.scale = (torch.rand(features, generator=gen) * 0.01 + 0.001).to(dev)

    def __call__(self, x):
        w = self.weight_q.float() * self.scale[:, None]  # the workspace: features x features floats
        return x @ w.t()


def _free_memory() -> None:
    """Give cached, unused blocks back so that memory_reserved() counts what is held.

    (No gc.collect(): the graphs measured here are freed by reference counting, and a full
    collection of a notebook's heap costs more than everything else a check does.)"""
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def _measure(capture_all, layer, sizes):
    import torch

    _free_memory()
    base = torch.cuda.memory_reserved()
    with watching():  # guards the captures: nothing in them may sync or copy host data
        graphs = capture_all(layer, list(sizes))
    _free_memory()
    return graphs, torch.cuda.memory_reserved() - base


def _separate_pools():
    """The kata's broken snippet (one private pool per size): the yardstick, measured side by side."""
    return KATA.broken()


def _run(capture_all) -> dict:
    layer = DequantLinear()
    separate, one_bytes = _measure(_separate_pools(), layer, SIZES)
    del separate
    _free_memory()
    graphs, all_bytes = _measure(capture_all, layer, SIZES)
    ratio = all_bytes / max(one_bytes, 1)
    correct = True
    shapes_ok = isinstance(graphs, dict) and set(graphs) == set(SIZES)
    if shapes_ok:
        for bs in sorted(SIZES):
            entry = graphs[bs]
            if not (isinstance(entry, tuple) and len(entry) == 3):
                shapes_ok = False
                break
            graph, static_x, out = entry
            x = seeded_randn(810 + bs, bs, FEATURES, device=device())
            static_x.copy_(x)
            graph.replay()
            correct = correct and close(out, layer(x), rtol=1e-3, atol=1e-3)
    result = {"one_bytes": one_bytes, "all_bytes": all_bytes, "ratio": ratio, "shapes_ok": shapes_ok,
              "correct": correct, "graphs": len(graphs) if isinstance(graphs, dict) else 0}
    del graphs
    _free_memory()
    return result


def _demo(capture_all) -> None:
    from graphlab_utils.timing import format_ratio

    r = _run(capture_all)
    mib = 2 ** 20
    print(f"one pool per size (the snippet): {r['one_bytes'] / mib:.1f} MiB reserved")
    print(f"{r['graphs']} graphs (batch sizes {sorted(SIZES)}): {r['all_bytes'] / mib:.1f} MiB reserved, "
          f"{format_ratio(r['ratio'])} one pool per size")
    print(f"at most {BUDGET:g} of one pool per size:", r["ratio"] <= BUDGET)
    print("every graph replays eager's result:", r["correct"])


@core.check("kata 7 (graph-memory)")
def check_graph_memory(capture_all):
    """`capture_all(layer, sizes)` captures one graph per size; together they may reserve at most
    half the memory the snippet's one-pool-per-size version holds (both measured here, side by side)."""
    from graphlab_utils.timing import format_ratio

    ok(callable(capture_all), "a function capture_all(layer, sizes)", type(capture_all).__name__,
       "pass the function itself")
    r = _run(capture_all)
    ok(r["shapes_ok"], f"a dict {{batch size: (graph, static_x, out)}} for sizes {sorted(SIZES)}",
       f"{r['graphs']} entries", "keep the snippet's return value: one (graph, static_x, out) per size")
    ok(r["correct"], "every graph's replay equal to the layer run eagerly", "a replay differs from eager",
       "each graph must read its own static_x and write its own out")
    ok(r["ratio"] <= BUDGET,
       f"graphs for {len(SIZES)} sizes holding at most {BUDGET:g} of what one pool per size holds",
       f"{format_ratio(r['ratio'])} of one pool per size",
       "without pool=, every capture gets a private memory pool that keeps its own workspace (here the "
       "dequantized weight) for as long as the graph lives, so memory grows with every size. Capture all "
       "sizes into one pool (pool = torch.cuda.graph_pool_handle(); capture(..., pool=pool)), largest size "
       "first: each capture reuses the workspace the previous one freed.")


KATA = register(
    "graph-memory",
    snippet=SNIPPET,
    fix=FIX,
    entry="capture_all",
    fixed_name="capture_all_fixed",
    task="Write `capture_all_fixed(layer, sizes)`: the same graphs, but all of them together may reserve at "
         f"most {BUDGET:g} of what the snippet's graphs reserve (measured side by side).",
    hint="Where does a graph captured without `pool=` get its memory, and when does that memory come back? "
         "`capture(fn, pool=...)` passes a pool to `torch.cuda.graph`.",
    explanation=(
        "A capture without `pool=` gets a private memory pool, and a live graph keeps everything its pool "
        "reserved: here the 4 MiB dequantized weight of every capture. Six sizes, six workspaces. Graphs "
        "that never run at the same time can share one pool: create "
        "`pool = torch.cuda.graph_pool_handle()`, capture every size with `pool=pool`, the largest first, "
        "and each capture reuses the blocks the previous one freed; only the tensors that stay alive (each "
        "graph's output) add up. That is why SGLang and vLLM capture largest first into one global pool, "
        "and why the memory of their graphs scales with the largest batch size, not with the number of "
        "sizes. (Few sizes, with padding to the next one, is the other half of the fix: lesson 05; the "
        "measurements are lesson 07's.)"),
    checker=check_graph_memory,
    demo=_demo,
)
