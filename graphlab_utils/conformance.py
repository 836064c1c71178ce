"""Scenarios that pin down what a learner can observe of CUDA graphs, on either backend.

Each scenario runs the same PyTorch code on the backend it is given and returns its
observable outcome as a small dict of verdicts (booleans, counts, error names). The
simulator must give the outcome a real GPU gives; `EXPECTED` holds that outcome, and a run
on a GPU checks the real backend against it too.

    python -m graphlab_utils.conformance --backend sim          # table on the simulator
    python -m graphlab_utils.conformance --backend real --backend sim --json out.json

Scenarios marked `isolated` end in a failed capture, which damages a real CUDA process:
each of them runs in a child process of its own; the others share one child process.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import warnings
from dataclasses import dataclass

SCENARIOS: dict = {}


@dataclass
class Scenario:
    name: str
    number: int
    title: str
    fn: object
    isolated: bool
    expected: dict


def scenario(number: int, title: str, expected: dict, isolated: bool = False):
    def wrap(fn):
        SCENARIOS[fn.__name__] = Scenario(fn.__name__, number, title, fn, isolated, expected)
        return fn

    return wrap


def _err(exc: BaseException) -> dict:
    from graphlab_utils.errors import error_name_in

    return {"raised": type(exc).__name__, "cuda_error": error_name_in(str(exc))}


def _side_warmup(fn, n: int = 3):
    """PyTorch's recipe: warm up on a side stream before capture."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(n):
            fn()
    torch.cuda.current_stream().wait_stream(s)


def _close(a, b) -> bool:
    import torch

    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5))


# ---------------------------------------------------------------------------------------
@scenario(1, "capture records and does not run", {"result_before_replay": False, "result_after_replay": True})
def capture_does_not_run(device):
    import torch

    x = torch.randn(1024, device=device)
    f = lambda: torch.sin(x) * 2 + 1  # noqa: E731
    _side_warmup(f)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = f()
    torch.cuda.synchronize()
    before = _close(y, torch.sin(x) * 2 + 1)
    g.replay()
    torch.cuda.synchronize()
    return {"result_before_replay": before, "result_after_replay": _close(y, torch.sin(x) * 2 + 1)}


@scenario(2, "replay reads the captured storage: copy_ is seen", {"new_result_after_copy": True})
def copy_into_static_input(device):
    import torch

    static_in = torch.randn(256, device=device)
    _side_warmup(lambda: static_in.exp())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = static_in.exp()
    new = torch.randn(256, device=device)
    static_in.copy_(new)
    g.replay()
    return {"new_result_after_copy": _close(out, new.exp())}


@scenario(3, "rebinding the Python name leaves the graph on the old storage",
          {"result_for_old_input": True, "result_for_new_input": False})
def rebinding_is_stale(device):
    import torch

    static_in = torch.randn(256, device=device)
    old = static_in.clone()
    _side_warmup(lambda: static_in * 3)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = static_in * 3
    static_in = torch.randn(256, device=device)  # a new tensor; the graph still reads the old one
    g.replay()
    return {"result_for_old_input": _close(out, old * 3), "result_for_new_input": _close(out, static_in * 3)}


@scenario(4, "a Python branch is frozen at capture; a Python loop is unrolled",
          {"distinct_branch_results": 1, "branch_matches_capture": True, "nodes_per_loop_iteration": 1})
def python_control_flow_frozen(device):
    import torch

    from graphlab_utils import graphinfo

    rng = random.Random(7)
    x = torch.ones(8, device=device)
    taken = []

    def step():
        if rng.random() > 0.5:
            taken.append("plus")
            return x + 1
        taken.append("minus")
        return x - 1

    _side_warmup(step, n=1)
    taken.clear()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = step()
    seen = set()
    for _ in range(20):
        g.replay()
        seen.add(float(y[0]))
    expected = 2.0 if taken[0] == "plus" else 0.0

    def unrolled(n):
        gg = torch.cuda.CUDAGraph(keep_graph=True)
        with torch.cuda.graph(gg):
            z = x
            for _ in range(n):
                z = z * 2
        return graphinfo.node_count(gg)

    n3, n6 = unrolled(3), unrolled(6)
    return {
        "distinct_branch_results": len(seen),
        "branch_matches_capture": seen == {expected},
        "nodes_per_loop_iteration": (n6 - n3) // 3,
    }


def _failing_capture(device, action):
    import torch

    x = torch.randn(64, device=device)
    _side_warmup(lambda: x.sum())
    g = torch.cuda.CUDAGraph()
    outcome = {}
    try:
        with torch.cuda.graph(g):
            total = x.sum()
            action(total)
        outcome["raised"] = None
    except Exception as exc:  # noqa: BLE001 - the error is the outcome
        outcome.update(_err(exc))
        outcome["while_handling"] = _err(exc.__context__)["cuda_error"] if exc.__context__ else None
    try:
        g.replay()
        outcome["replay_after_failure"] = "ran"
    except Exception as exc:  # noqa: BLE001
        outcome["replay_after_failure"] = type(exc).__name__
    try:
        torch.randn(4, device=device)
        outcome["rng_after_failure"] = "works"
    except Exception as exc:  # noqa: BLE001
        outcome["rng_after_failure"] = "Offset increment outside graph capture" if "Offset increment" in str(exc) else type(exc).__name__
    return outcome


_SYNC_FAIL = {
    "raised": "AcceleratorError",
    "cuda_error": "cudaErrorStreamCaptureInvalidated",
    "while_handling": "cudaErrorStreamCaptureUnsupported",
    "replay_after_failure": "RuntimeError",
    "rng_after_failure": "Offset increment outside graph capture",
}


@scenario(5, "`.item()` during capture fails and poisons the process", _SYNC_FAIL, isolated=True)
def item_during_capture(device):
    return _failing_capture(device, lambda t: t.item())


# PyTorch refuses a copy to pageable host memory on a capturing stream before CUDA sees it:
# the error is PyTorch's own, and the capture (and the process) stay usable.
_HOST_COPY_REFUSED = {
    "raised": "RuntimeError",
    "cuda_error": None,
    "while_handling": None,
    "replay_after_failure": "ran",
    "rng_after_failure": "works",
}


@scenario(5, "`.tolist()` during capture is refused (a copy to unpinned host memory)", _HOST_COPY_REFUSED, isolated=True)
def tolist_during_capture(device):
    return _failing_capture(device, lambda t: t.tolist())


@scenario(5, "`.cpu()` of a result during capture is refused (a copy to unpinned host memory)", _HOST_COPY_REFUSED, isolated=True)
def cpu_during_capture(device):
    return _failing_capture(device, lambda t: t.cpu())


@scenario(5, "`torch.cuda.synchronize()` during capture fails", _SYNC_FAIL, isolated=True)
def synchronize_during_capture(device):
    import torch

    return _failing_capture(device, lambda t: torch.cuda.synchronize())


@scenario(6, "work on a stream not forked from the capture fails the capture", {
    "raised": "AcceleratorError", "cuda_error": "cudaErrorStreamCaptureInvalidated",
    "while_handling": "cudaErrorStreamCaptureUnsupported"}, isolated=True)
def unforked_stream_fails(device):
    import torch

    x = torch.randn(1 << 16, device=device)
    other = torch.cuda.Stream()
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            y = x * 2
            with torch.cuda.stream(other):  # never forked from the capturing stream
                z = x + 1
        return {"raised": None}
    except Exception as exc:  # noqa: BLE001
        out = _err(exc)
        out["while_handling"] = _err(exc.__context__)["cuda_error"] if exc.__context__ else None
        return out


@scenario(6, "a forked stream never joined back fails the capture",
          {"raised": "AcceleratorError", "cuda_error": "cudaErrorStreamCaptureUnjoined"}, isolated=True)
def unjoined_fork_fails(device):
    import torch

    x = torch.randn(1024, device=device)
    side = torch.cuda.Stream()
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            y = x * 2
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                z = x + 1
        return {"raised": None}
    except Exception as exc:  # noqa: BLE001
        return _err(exc)


@scenario(6, "fork/join with wait_stream captures two parallel branches",
          {"nodes": 3, "roots": 2, "join_inputs": 2, "result_correct": True})
def fork_join_branches(device):
    import torch

    from graphlab_utils import graphinfo

    x = torch.randn(1024, device=device)
    side = torch.cuda.Stream()

    def two_branches():
        main = torch.cuda.current_stream()
        side.wait_stream(main)  # fork
        a = x * 2
        with torch.cuda.stream(side):
            b = x + 1
        main.wait_stream(side)  # join
        return a + b

    _side_warmup(two_branches)
    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g):
        out = two_branches()
    g.replay()
    torch.cuda.synchronize()
    st = graphinfo.structure(g)
    return {"nodes": len(st.nodes), "roots": len(st.roots), "join_inputs": st.max_in_degree,
            "result_correct": _close(out, x * 2 + x + 1)}


@scenario(7, "shapes are baked into the graph",
          {"copy_other_shape": "RuntimeError", "output_shape": [4, 8], "new_shape_needs_new_graph": True})
def shapes_are_baked(device):
    import torch

    static_in = torch.randn(4, 16, device=device)
    w = torch.randn(16, 8, device=device)
    _side_warmup(lambda: static_in @ w)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = static_in @ w
    try:
        static_in.copy_(torch.randn(6, 16, device=device))
        copied = "no error"
    except RuntimeError:
        copied = "RuntimeError"
    g.replay()
    bigger = torch.randn(6, 16, device=device)
    g6 = torch.cuda.CUDAGraph()
    static6 = bigger.clone()
    _side_warmup(lambda: static6 @ w)
    with torch.cuda.graph(g6):
        out6 = static6 @ w
    g6.replay()
    return {"copy_other_shape": copied, "output_shape": list(out.shape), "new_shape_needs_new_graph": _close(out6, bigger @ w)}


@scenario(8, "device RNG draws anew each replay; CPU randomness is frozen",
          {"rand_changes_per_replay": True, "dropout_mask_changes": True, "cpu_random_frozen": True})
def rng_in_graphs(device):
    import torch

    x = torch.ones(4096, device=device)
    cpu_draw = []

    def f():
        cpu_draw.append(random.random())
        noise = torch.rand(4096, device=device)
        return noise, torch.nn.functional.dropout(x, p=0.5, training=True), x * cpu_draw[-1]

    _side_warmup(f, n=1)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        noise, dropped, scaled = f()
    g.replay()
    n1, d1, s1 = noise.clone(), dropped.clone(), scaled.clone()
    g.replay()
    return {
        "rand_changes_per_replay": not torch.equal(n1, noise),
        "dropout_mask_changes": not torch.equal(d1, dropped),
        "cpu_random_frozen": torch.equal(s1, scaled),
    }


@scenario(9, "outputs are overwritten by the next replay",
          {"held_reference_shows_replay2": True, "clone_keeps_replay1": True})
def outputs_overwritten(device):
    import torch

    static_in = torch.randn(128, device=device)
    _side_warmup(lambda: static_in.relu())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = static_in.relu()
    first_in = torch.randn(128, device=device)
    static_in.copy_(first_in)
    g.replay()
    held, kept = out, out.clone()
    second_in = torch.randn(128, device=device)
    static_in.copy_(second_in)
    g.replay()
    return {"held_reference_shows_replay2": _close(held, second_in.relu()), "clone_keeps_replay1": _close(kept, first_in.relu())}


@scenario(10, "a freed input's memory reused by another tensor corrupts replay silently",
          {"result_for_original_input": False, "result_reads_new_occupant": True})
def freed_input_reused(device):
    import torch

    n = 1 << 18
    static_in = torch.randn(n, device=device)
    original = static_in.clone()
    _side_warmup(lambda: static_in * 2)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = static_in * 2
    del static_in  # the block goes back to the caching allocator...
    occupant = torch.full((n,), 5.0, device=device)  # ...and the next tensor of that size gets it
    g.replay()
    torch.cuda.synchronize()
    return {"result_for_original_input": _close(out, original * 2), "result_reads_new_occupant": _close(out, occupant * 2)}


@scenario(11, "a capture allocates from the graph's private pool; graphs can share a pool", {
    "pool_grew_during_capture": True, "memory_held_while_graph_lives": True,
    "returned_after_reset": True, "shared_pool_needs_less": True})
def private_pools(device):
    import torch

    n = 1 << 20  # 4 MiB of float32 per tensor
    x = torch.randn(n, device=device)

    def work():
        h = x * 2  # an intermediate: freed inside the capture, its block reusable in the pool
        return h + 1

    _side_warmup(work)
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
        "pool_grew_during_capture": after_g1 > base,
        "memory_held_while_graph_lives": held >= after_shared - (after_shared - after_sep) and held > base,
        "returned_after_reset": after_reset < held,
        "shared_pool_needs_less": (after_shared - after_sep) < (after_sep - after_g1),
        "_figures_MiB": {k: round(v / 2**20, 2) for k, v in dict(
            base=base, after_g1=after_g1, after_separate=after_sep, after_shared=after_shared, after_reset=after_reset).items()},
    }


def _capture_chain(device, static_in, n_ops, pool=None):
    import torch

    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g, pool=pool):
        y = static_in
        for _ in range(n_ops):
            y = y * 1.01 + 0.5
    return g, y


@scenario(12, "cudaGraphExecUpdate: same topology succeeds and rebinds buffers; a new topology fails", {
    "same_topology": "cudaSuccess", "update_result": "cudaGraphExecUpdateSuccess",
    "replay_computes_on_new_buffers": True, "changed_topology": "cudaErrorGraphExecUpdateFailure",
    "still_replays_as_before": True})
def exec_update(device):
    import torch

    from graphlab_utils import cudart

    rt = cudart.runtime()
    a_in = torch.randn(1024, device=device)
    b_in = torch.randn(1024, device=device)

    def ref(t, n):
        for _ in range(n):
            t = t * 1.01 + 0.5
        return t

    _side_warmup(lambda: ref(a_in, 20))
    g_a, a_out = _capture_chain(device, a_in, 20)
    g_a.instantiate()
    g_b, b_out = _capture_chain(device, b_in, 20, pool=g_a.pool())
    err, info = rt.cudaGraphExecUpdate(g_a.raw_cuda_graph_exec(), g_b.raw_cuda_graph())
    g_a.replay()
    torch.cuda.synchronize()
    ok_new = _close(b_out, ref(b_in, 20))
    g_c, c_out = _capture_chain(device, a_in, 19, pool=g_a.pool())
    err2, info2 = rt.cudaGraphExecUpdate(g_a.raw_cuda_graph_exec(), g_c.raw_cuda_graph())
    b_in.copy_(torch.randn(1024, device=device))
    g_a.replay()
    torch.cuda.synchronize()
    return {
        "same_topology": err.name,
        "update_result": info.result.name if info is not None else None,
        "replay_computes_on_new_buffers": ok_new,
        "changed_topology": err2.name,
        "still_replays_as_before": _close(b_out, ref(b_in, 20)),
    }


@scenario(13, "a pool 'defragmented' behind the graph's back gives wrong results; re-capture or update fixes it", {
    "correct_before_move": True, "correct_after_move": False, "fixed_by_recapture": True, "fixed_by_exec_update": True})
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

    _side_warmup(lambda: attend(kv))
    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g):
        out = attend(kv)
    g.instantiate()
    g.replay()
    before = _close(out, attend(kv))
    # "Defragment": compact the request into slots 0..3 and reuse slots 4..7 for someone else.
    arena[0:4].copy_(arena[4:8])
    kv = arena[0:4]
    arena[4:8].normal_()
    kv[3].mul_(-1)  # the request's cache keeps changing in its new place
    g.replay()
    after = _close(out, attend(kv))
    g2 = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g2, pool=g.pool()):
        out2 = attend(kv)
    g2.replay()
    recaptured = _close(out2, attend(kv))
    err, _info = rt.cudaGraphExecUpdate(g.raw_cuda_graph_exec(), g2.raw_cuda_graph())
    out2.zero_()
    g.replay()
    torch.cuda.synchronize()
    return {"correct_before_move": before, "correct_after_move": after, "fixed_by_recapture": recaptured,
            "fixed_by_exec_update": err.name == "cudaSuccess" and _close(out2, attend(kv))}


@scenario(14, "make_graphed_callables gives eager's outputs and gradients",
          {"outputs_match": True, "grads_match": True})
def graphed_callables(device):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).to(device)
    eager = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).to(device)
    eager.load_state_dict(model.state_dict())
    sample = torch.randn(16, 32, device=device, requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(model, (sample,))
    x = torch.randn(16, 32, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    out = graphed(x)
    out.sum().backward()
    ref = eager(x2)
    ref.sum().backward()
    grads_ok = all(_close(p.grad, q.grad) for p, q in zip(model.parameters(), eager.parameters()))
    return {"outputs_match": _close(out, ref), "grads_match": grads_ok and _close(x.grad, x2.grad)}


@scenario(15, "raw capture_begin on the default stream is refused, and the process's RNG is left in capture state",
          {"raised": "RuntimeError", "says_non_default_stream": True, "rng_after_failure": "Offset increment outside graph capture"},
          isolated=True)
def capture_on_default_stream(device):
    import torch

    g = torch.cuda.CUDAGraph()
    try:
        g.capture_begin()
        return {"raised": None}
    except RuntimeError as exc:
        outcome = {"raised": "RuntimeError", "says_non_default_stream": "non-default stream" in str(exc)}
    try:
        torch.randn(4, device=device)
        outcome["rng_after_failure"] = "works"
    except RuntimeError as exc:
        outcome["rng_after_failure"] = "Offset increment outside graph capture" if "Offset increment" in str(exc) else type(exc).__name__
    return outcome


@scenario(15, "capture must end on the stream it began on",
          {"raised": "RuntimeError", "says_same_stream": True}, isolated=True)
def capture_end_on_other_stream(device):
    import torch

    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    g = torch.cuda.CUDAGraph()
    x = torch.randn(16, device=device)
    with torch.cuda.stream(s1):
        g.capture_begin()
        y = x + 1
    try:
        with torch.cuda.stream(s2):
            g.capture_end()
        return {"raised": None}
    except RuntimeError as exc:
        return {"raised": "RuntimeError", "says_same_stream": "same stream" in str(exc)}


@scenario(15, "capturing nothing warns that the graph is empty", {"warned_empty": True})
def empty_graph_warns(device):
    import torch

    g = torch.cuda.CUDAGraph()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.cuda.graph(g):
            pass
    return {"warned_empty": any("empty" in str(w.message) for w in caught)}


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------
def _public(outcome: dict) -> dict:
    return {k: v for k, v in outcome.items() if not k.startswith("_")}


def run_here(names, backend: str) -> dict:
    """Run scenarios in this process (after setup on `backend`)."""
    import graphlab_utils as gl

    session = gl.setup(backend=backend, quiet=True)
    results = {}
    for name in names:
        try:
            results[name] = SCENARIOS[name].fn(session.device)
        except Exception as exc:  # noqa: BLE001 - a crash is reported as the outcome
            results[name] = {"crashed": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    return results


def _child(names, backend: str, timeout: float = 600) -> dict:
    env = dict(os.environ, GRAPHLAB_BACKEND=backend, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "graphlab_utils.conformance", "--child", "--backend", backend, *names],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    marker = "@@conformance@@"
    if marker not in proc.stdout:
        tail = (proc.stderr or proc.stdout)[-1500:]
        return {n: {"crashed": f"child process exited {proc.returncode}: {tail}"} for n in names}
    return json.loads(proc.stdout.rsplit(marker, 1)[1])


def run(backend: str, names=None) -> dict:
    """Run scenarios on `backend`, each failing capture in a child process of its own."""
    names = list(names or SCENARIOS)
    shared = [n for n in names if not SCENARIOS[n].isolated]
    results = _child(shared, backend) if shared else {}
    for n in names:
        if SCENARIOS[n].isolated:
            results.update(_child([n], backend))
    return {n: results[n] for n in names}


def verdict(name: str, outcome: dict) -> bool:
    return _public(outcome) == SCENARIOS[name].expected


def table(results_by_backend: dict) -> str:
    backends = list(results_by_backend)
    head = "| # | scenario | " + " | ".join(f"{b}" for b in backends) + " | same outcome |"
    lines = [head, "|" + "---|" * (3 + len(backends))]
    for name, sc in SCENARIOS.items():
        if not all(name in results_by_backend[b] for b in backends):
            continue
        cells = ["as expected" if verdict(name, results_by_backend[b][name]) else "DIFFERS: " + json.dumps(_public(results_by_backend[b][name]))
                 for b in backends]
        same = len({json.dumps(_public(results_by_backend[b][name]), sort_keys=True) for b in backends}) == 1
        lines.append(f"| {sc.number} | {sc.title} | " + " | ".join(cells) + f" | {'yes' if same else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="graphlab conformance", description=__doc__.splitlines()[0])
    p.add_argument("--backend", action="append", choices=["real", "sim"], help="repeat to compare backends")
    p.add_argument("--json", help="write all outcomes to this file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("names", nargs="*", help="scenarios to run (default: all)")
    a = p.parse_args(argv)
    backends = a.backend or ["sim"]
    unknown = [n for n in a.names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
        return 2
    if a.child:
        print("@@conformance@@" + json.dumps(run_here(a.names, backends[0])))
        return 0
    results = {b: run(b, a.names or None) for b in backends}
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1, sort_keys=True)
    print(table(results))
    ok = all(verdict(n, results[b][n]) for b in backends for n in results[b])
    same = all(len({json.dumps(_public(results[b][n]), sort_keys=True) for b in backends}) == 1 for n in results[backends[0]])
    print(f"{'all scenarios as expected' if ok else 'some scenarios differ from the expected outcome'}"
          f"{'' if len(backends) == 1 else '; backends agree' if same else '; BACKENDS DISAGREE'}")
    return 0 if ok and same else 1


if __name__ == "__main__":
    sys.exit(main())
