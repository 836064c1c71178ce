"""Lesson 03 · static control flow: Python decides once, at capture; the device decides at every replay."""
from __future__ import annotations

import random

from graphlab_utils.claims import CUDA_ERROR, FIRST_ERROR, RAISED, claim, error_verdicts
from graphlab_utils.recipes import capture, close, warm_up


@claim("a Python `if random() > 0.5` is decided once, at capture", {
    "distinct branch results over 20 replays": 1, "the branch replayed is the one taken at capture": True})
def frozen_python_branch(device):
    import torch

    rng = random.Random(7)
    x = torch.ones(8, device=device)
    taken = []

    def step():
        if rng.random() > 0.5:
            taken.append("plus")
            return x + 1
        taken.append("minus")
        return x - 1

    warm_up(step, iters=1)
    taken.clear()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = step()
    seen = set()
    for _ in range(20):
        g.replay()
        seen.add(float(y[0]))
    expected = 2.0 if taken[0] == "plus" else 0.0
    return {"distinct branch results over 20 replays": len(seen),
            "the branch replayed is the one taken at capture": seen == {expected}}


@claim("a Python loop is unrolled: one node per iteration",
       {"kernel nodes added per loop iteration": 1, "nodes of a 3-iteration loop": 3})
def loop_unrolled(device):
    import torch

    from graphlab_utils import graphinfo

    x = torch.ones(8, device=device)

    def nodes_for(n):
        g = torch.cuda.CUDAGraph(keep_graph=True)
        with torch.cuda.graph(g):
            z = x
            for _ in range(n):
                z = z * 2
        return graphinfo.node_count(g)

    n3, n6 = nodes_for(3), nodes_for(6)
    return {"kernel nodes added per loop iteration": (n6 - n3) // 3, "nodes of a 3-iteration loop": n3}


@claim("`if x.sum() > 0:` on device data fails the capture", {
    RAISED: "AcceleratorError", CUDA_ERROR: "cudaErrorStreamCaptureInvalidated",
    FIRST_ERROR: "cudaErrorStreamCaptureUnsupported"}, isolated=True)
def data_branch_fails(device):
    import torch

    x = torch.randn(64, device=device)
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            y = x * 2 if x.sum() > 0 else x * 3  # bool() of a device tensor: a sync
        return {RAISED: None}
    except Exception as exc:  # noqa: BLE001 - the error is the outcome
        return error_verdicts(exc)


@claim("`torch.where` keeps a data-dependent choice inside the graph", {
    "replays took both paths as the input changed": True, "every replay matched eager": True})
def device_select(device):
    import torch

    x = torch.ones(1024, device=device)

    def step():
        return torch.where(x.sum() > 0, x * 2, x + 3)  # decided on the device, no sync

    g, out = capture(step)
    seen, matched = set(), True
    for sign in (1.0, -1.0, 1.0):
        x.fill_(sign)
        g.replay()
        seen.add("x * 2" if close(out, x * 2) else "x + 3" if close(out, x + 3) else "other")
        matched = matched and close(out, step())
    return {"replays took both paths as the input changed": seen == {"x * 2", "x + 3"},
            "every replay matched eager": matched}


@claim("device RNG draws anew at each replay; a Python draw is frozen", {
    "torch.rand gives new numbers each replay": True, "dropout mask changes each replay": True,
    "the Python random() value is frozen": True})
def rng_in_graphs(device):
    import torch

    x = torch.ones(4096, device=device)
    cpu_draw = []

    def f():
        cpu_draw.append(random.random())
        noise = torch.rand(4096, device=device)
        return noise, torch.nn.functional.dropout(x, p=0.5, training=True), x * cpu_draw[-1]

    warm_up(f, iters=1)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        noise, dropped, scaled = f()
    g.replay()
    n1, d1, s1 = noise.clone(), dropped.clone(), scaled.clone()
    g.replay()
    return {"torch.rand gives new numbers each replay": not torch.equal(n1, noise),
            "dropout mask changes each replay": not torch.equal(d1, dropped),
            "the Python random() value is frozen": torch.equal(s1, scaled)}
