"""Runnable proofs of the interview drills' answers (lesson 10), on either backend.

Each proof is a short function ``proof_fn(device) -> dict`` that runs genuine PyTorch CUDA
graph code and returns what it observed as verdicts (booleans, counts, error names): the
same on a GPU and on the simulator. ``@proof(claim, expected)`` registers it with the
outcome a real GPU gives; a question of the bank names its proof in ``"proof"``.

    from graphlab_utils import quiz_proofs
    result = quiz_proofs.run("frozen_python_branch")
    print(result.text())

Proofs marked ``isolated`` end in a failed capture, which damages a real CUDA process: they
run in a child process of their own (``graphlab_utils.isolation.run_isolated``). Proofs
marked ``child`` start a child process themselves. Both cost a few seconds.

Where a scenario of ``graphlab_utils.conformance`` already pins the behaviour down, the
proof runs that scenario and relabels its verdicts; timings are compared as ratios of two
timings taken side by side (``graphlab_utils.timing``), never against an absolute time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["PROOFS", "Proof", "ProofResult", "proof", "run", "source"]

PROOFS: dict = {}
_MARK = "@@graphlab-proof@@"


@dataclass(frozen=True)
class Proof:
    name: str
    claim: str
    fn: Callable
    expected: dict
    isolated: bool = False  # must run in a child process (a failing capture)
    child: bool = False  # starts a child process itself

    @property
    def slow(self) -> bool:
        """Costs a child process (a few seconds)."""
        return self.isolated or self.child


def proof(claim: str, expected: dict, isolated: bool = False, child: bool = False):
    """Register ``fn(device) -> dict`` as a proof of ``claim`` with the outcome a GPU gives."""

    def wrap(fn):
        PROOFS[fn.__name__] = Proof(fn.__name__, claim, fn, dict(expected), isolated, child)
        return fn

    return wrap


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} x{v}" for k, v in sorted(value.items())) or "none"
    if value is None:
        return "none"
    return str(value)


@dataclass
class ProofResult:
    name: str
    claim: str
    observed: dict = field(default_factory=dict)
    expected: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def holds(self) -> bool:
        return self.error is None and self.observed == self.expected

    def __bool__(self) -> bool:
        return self.holds

    def lines(self) -> list:
        out = []
        for key, value in self.observed.items():
            line = f"  {key}: {_show(value)}"
            if key in self.expected and self.expected[key] != value:
                line += f"   (a GPU gives: {_show(self.expected[key])})"
            out.append(line)
        return out

    def text(self) -> str:
        head = f"proof: {self.claim}"
        if self.error is not None:
            return f"{head}\n  the proof could not run: {self.error}\nverdict: no proof on this backend"
        verdict = "the proof holds" if self.holds else "the proof does NOT hold here (see the lines marked above)"
        return "\n".join([head, *self.lines(), f"verdict: {verdict}"])

    def __str__(self) -> str:
        return self.text()


def _device():
    """The device of the running backend (setting the backend up if nothing has)."""
    import torch

    from graphlab_utils import simulator

    if simulator.is_installed():
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    import graphlab_utils

    return graphlab_utils.setup(quiet=True).device


def _in_child(name: str) -> dict:
    from graphlab_utils.isolation import run_isolated

    code = (
        "import json\n"
        "from graphlab_utils import quiz_proofs\n"
        f"print({_MARK!r} + json.dumps(quiz_proofs.PROOFS[{name!r}].fn(DEVICE)))\n"
    )
    result = run_isolated(code)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    raise RuntimeError(f"the child process reported no outcome ({result.summary()})")


def run(name: str, device=None) -> ProofResult:
    """Run the proof ``name`` on the current backend and compare with what a GPU gives."""
    p = PROOFS[name]
    result = ProofResult(p.name, p.claim, expected=dict(p.expected))
    try:
        observed = _in_child(name) if p.isolated else p.fn(device if device is not None else _device())
        result.observed = {k: v for k, v in observed.items() if not k.startswith("_")}
    except Exception as exc:  # noqa: BLE001 - reported as the proof's outcome, not a traceback
        first = str(exc).splitlines()[0] if str(exc) else ""
        result.error = f"{type(exc).__name__}: {first}"
    return result


def source(name: str) -> str:
    """The proof's code, to read."""
    import inspect

    return inspect.getsource(PROOFS[name].fn)


# -- helpers shared by the proofs ---------------------------------------------------------
def warm_up(fn, iters: int = 3) -> None:
    """PyTorch's recipe: run ``fn`` on a side stream before capturing it."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(iters):
            fn()
    torch.cuda.current_stream().wait_stream(side)


def capture(fn, pool=None, keep_graph: bool = False, warmup: int = 3):
    """Warm ``fn`` up, capture one call; return (graph, output)."""
    import torch

    warm_up(fn, warmup)
    g = torch.cuda.CUDAGraph(keep_graph=keep_graph)
    with torch.cuda.graph(g, pool=pool):
        out = fn()
    return g, out


def close(a, b) -> bool:
    import torch

    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5))


def scenario(name: str, device, labels: dict) -> dict:
    """Run a conformance scenario here and return the verdicts named in ``labels``, relabelled."""
    from graphlab_utils import conformance

    outcome = conformance.SCENARIOS[name].fn(device)
    return {label: outcome[key] for key, label in labels.items()}


def _error_names(exc: BaseException) -> dict:
    from graphlab_utils.errors import error_name_in

    context = exc.__context__
    return {
        "exception raised": type(exc).__name__,
        "CUDA error reported": error_name_in(str(exc)),
        "first error (the exception's __context__)": error_name_in(str(context)) if context is not None else None,
    }


_FAILED_CAPTURE_LABELS = {
    "raised": "exception raised",
    "cuda_error": "CUDA error reported",
    "while_handling": "first error (the exception's __context__)",
    "replay_after_failure": "replaying the graph afterwards",
    "rng_after_failure": "the next torch.randn on the device",
}


# -- 01 · capture, instantiate, launch ----------------------------------------------------
@proof("capture records the kernels and runs none of them",
       {"result ready before the first replay": False, "result ready after one replay": True})
def capture_records_nothing(device):
    return scenario("capture_does_not_run", device, {
        "result_before_replay": "result ready before the first replay",
        "result_after_replay": "result ready after one replay"})


@proof("instantiate is a one-off cost far above a replay; a replay beats an eager pass", {
    "capture costs more than one replay": True,
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
            "instantiate costs more than one replay": t_instantiate.ms > t_replay.ms,
            "a replay costs less than an eager pass": t_replay.ms < t_eager.ms}


@proof("a graph built on the first request makes it pay warm-up, capture and instantiate",
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


@proof("a graph speeds up many tiny kernels far more than one large kernel", {
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


# -- 02 · streams and capture -------------------------------------------------------------
@proof("a forked and joined side stream becomes a parallel branch of the graph", {
    "nodes": 3, "root nodes (branches that start in parallel)": 2,
    "inputs of the join node": 2, "result correct": True})
def fork_join_branches(device):
    return scenario("fork_join_branches", device, {
        "nodes": "nodes", "roots": "root nodes (branches that start in parallel)",
        "join_inputs": "inputs of the join node", "result_correct": "result correct"})


@proof("work on a stream never forked from the capture fails the capture", {
    "exception raised": "AcceleratorError",
    "CUDA error reported": "cudaErrorStreamCaptureInvalidated",
    "first error (the exception's __context__)": "cudaErrorStreamCaptureUnsupported"}, isolated=True)
def unforked_stream_fails(device):
    return scenario("unforked_stream_fails", device, {
        k: _FAILED_CAPTURE_LABELS[k] for k in ("raised", "cuda_error", "while_handling")})


@proof("a forked stream never joined back fails the capture", {
    "exception raised": "AcceleratorError", "CUDA error reported": "cudaErrorStreamCaptureUnjoined"},
    isolated=True)
def unjoined_fork_fails(device):
    return scenario("unjoined_fork_fails", device, {
        "raised": "exception raised", "cuda_error": "CUDA error reported"})


@proof("`.item()` during capture fails the capture and damages the process", {
    "exception raised": "AcceleratorError",
    "CUDA error reported": "cudaErrorStreamCaptureInvalidated",
    "first error (the exception's __context__)": "cudaErrorStreamCaptureUnsupported",
    "replaying the graph afterwards": "RuntimeError",
    "the next torch.randn on the device": "Offset increment outside graph capture"}, isolated=True)
def item_during_capture(device):
    return scenario("item_during_capture", device, _FAILED_CAPTURE_LABELS)


@proof("`.cpu()` during capture is refused by PyTorch; the capture and the process stay usable", {
    "exception raised": "RuntimeError", "CUDA error reported": None,
    "first error (the exception's __context__)": None,
    "replaying the graph afterwards": "ran", "the next torch.randn on the device": "works"},
    isolated=True)
def cpu_during_capture(device):
    return scenario("cpu_during_capture", device, _FAILED_CAPTURE_LABELS)


@proof("in relaxed mode an unforked stream's work runs once, outside the graph", {
    "nodes in the graph": 1, "z computed during the capture": True,
    "y follows a new x after a replay": True, "z follows a new x after a replay": False})
def relaxed_mode_excludes(device):
    import torch

    from graphlab_utils import graphinfo

    x = torch.randn(1 << 16, device=device)
    other = torch.cuda.Stream()
    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g, capture_error_mode="relaxed"):
        y = x * 2
        with torch.cuda.stream(other):  # never forked: allowed in relaxed mode, but not recorded
            z = x + 1
    torch.cuda.synchronize()
    computed = torch.equal(z, x + 1)
    x.fill_(0.0)
    g.replay()
    torch.cuda.synchronize()
    return {"nodes in the graph": graphinfo.node_count(g), "z computed during the capture": computed,
            "y follows a new x after a replay": torch.equal(y, x * 2),
            "z follows a new x after a replay": torch.equal(z, x + 1)}


# -- 03 · static control flow -------------------------------------------------------------
@proof("a Python `if random() > 0.5` is decided once, at capture", {
    "distinct branch results over 20 replays": 1, "the branch replayed is the one taken at capture": True})
def frozen_python_branch(device):
    return scenario("python_control_flow_frozen", device, {
        "distinct_branch_results": "distinct branch results over 20 replays",
        "branch_matches_capture": "the branch replayed is the one taken at capture"})


@proof("a Python loop is unrolled: one node per iteration",
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


@proof("`if x.sum() > 0:` on device data fails the capture", {
    "exception raised": "AcceleratorError",
    "CUDA error reported": "cudaErrorStreamCaptureInvalidated",
    "first error (the exception's __context__)": "cudaErrorStreamCaptureUnsupported"}, isolated=True)
def data_branch_fails(device):
    import torch

    x = torch.randn(64, device=device)
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            y = x * 2 if x.sum() > 0 else x * 3  # bool() of a device tensor: a sync
        return {"exception raised": None}
    except Exception as exc:  # noqa: BLE001 - the error is the outcome
        return _error_names(exc)


@proof("`torch.where` keeps a data-dependent choice inside the graph", {
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


@proof("device RNG draws anew at each replay; a Python draw is frozen", {
    "torch.rand gives new numbers each replay": True, "dropout mask changes each replay": True,
    "the Python random() value is frozen": True})
def rng_in_graphs(device):
    return scenario("rng_in_graphs", device, {
        "rand_changes_per_replay": "torch.rand gives new numbers each replay",
        "dropout_mask_changes": "dropout mask changes each replay",
        "cpu_random_frozen": "the Python random() value is frozen"})


# -- 04 · pointer baking ------------------------------------------------------------------
@proof("a KV-cache pool defragmented under the graph gives wrong results; re-capture or update fixes it", {
    "correct before the move": True, "correct after the move": False,
    "fixed by re-capture": True, "fixed by cudaGraphExecUpdate": True})
def defragmentation(device):
    return scenario("defragmentation", device, {
        "correct_before_move": "correct before the move", "correct_after_move": "correct after the move",
        "fixed_by_recapture": "fixed by re-capture", "fixed_by_exec_update": "fixed by cudaGraphExecUpdate"})


@proof("rebinding the name leaves the graph on the old storage; `copy_` is seen", {
    "after rebinding: result for the old input": True, "after rebinding: result for the new input": False,
    "after copy_: result for the new input": True})
def rebinding_vs_copy(device):
    out = scenario("rebinding_is_stale", device, {
        "result_for_old_input": "after rebinding: result for the old input",
        "result_for_new_input": "after rebinding: result for the new input"})
    out.update(scenario("copy_into_static_input", device, {
        "new_result_after_copy": "after copy_: result for the new input"}))
    return out


@proof("a held output is overwritten by the next replay; a clone is not", {
    "the held reference shows the second replay": True, "the clone keeps the first replay": True})
def outputs_overwritten(device):
    return scenario("outputs_overwritten", device, {
        "held_reference_shows_replay2": "the held reference shows the second replay",
        "clone_keeps_replay1": "the clone keeps the first replay"})


@proof("a freed input's memory, reused by a new tensor, is read by the replay", {
    "result for the original input": False, "result for the new occupant of the memory": True})
def freed_input_reused(device):
    return scenario("freed_input_reused", device, {
        "result_for_original_input": "result for the original input",
        "result_reads_new_occupant": "result for the new occupant of the memory"})


# -- 05 · shape bucketing -----------------------------------------------------------------
@proof("shapes are baked; one graph per bucket, pad and slice serves any batch size", {
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


@proof("a batch of 3 is served by the bucket-4 graph: pad, replay, slice", {
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


@proof("bucket graphs captured largest first into one pool need less memory than separate pools",
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


# -- 06 · exec update ---------------------------------------------------------------------
@proof("cudaGraphExecUpdate rebinds an exec to new buffers when the topology is the same", {
    "update with the same topology": "cudaSuccess", "update result": "cudaGraphExecUpdateSuccess",
    "the replay computes on the new buffers": True})
def update_vs_reinstantiate(device):
    return scenario("exec_update", device, {
        "same_topology": "update with the same topology", "update_result": "update result",
        "replay_computes_on_new_buffers": "the replay computes on the new buffers"})


@proof("new content at the same address needs no update: copy_ and replay",
       {"the replay computes on the new content": True})
def content_change_no_update(device):
    return scenario("copy_into_static_input", device, {
        "new_result_after_copy": "the replay computes on the new content"})


@proof("an update to another topology fails and leaves the exec as it was", {
    "update with one op fewer": "cudaErrorGraphExecUpdateFailure", "the exec still replays as before": True})
def update_topology_fails(device):
    return scenario("exec_update", device, {
        "changed_topology": "update with one op fewer", "still_replays_as_before": "the exec still replays as before"})


@proof("ExecUpdate saves the instantiate, not the capture", {
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


# -- 07 · graph memory --------------------------------------------------------------------
@proof("a capture allocates from the graph's pool; the graph holds kernels and no allocation node", {
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


@proof("a graph's private pool holds memory while the graph lives; reset() returns it", {
    "the pool grew during the capture": True, "memory held while the graph lives": True,
    "memory returned after reset()": True, "a shared pool needs less than a new one": True})
def private_pools(device):
    return scenario("private_pools", device, {
        "pool_grew_during_capture": "the pool grew during the capture",
        "memory_held_while_graph_lives": "memory held while the graph lives",
        "returned_after_reset": "memory returned after reset()",
        "shared_pool_needs_less": "a shared pool needs less than a new one"})


@proof("graphs sharing a pool are safe in capture order, and corrupt each other out of order", {
    "in capture order: both outputs correct": True, "out of order: g2's output still correct": False,
    "out of order: g2's output holds g1's intermediate": True})
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
    return {"in capture order: both outputs correct": in_order,
            "out of order: g2's output still correct": close(out2, x2 * 3),
            "out of order: g2's output holds g1's intermediate": close(out2, x1 * 2)}


@proof("with a pool that never moves and an index table, data can move with no re-capture", {
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


# -- 08 · debugging and profiling ---------------------------------------------------------
@proof("a replay is one cudaGraphLaunch on the CPU and still every kernel on the GPU", {
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


@proof("cudaGraphGetNodes and the DOT dump show one kernel node per op of a 10-op chain", {
    "nodes": 10, "node kinds": {"Kernel": 10}, "edges in the DOT dump": 9, "widest level": 1})
def count_nodes(device):
    from graphlab_utils import graphinfo, workloads

    fn, _ = workloads.chain(10, device)
    g, _ = capture(fn, keep_graph=True)
    st = graphinfo.structure(g)
    return {"nodes": graphinfo.node_count(g), "node kinds": dict(graphinfo.node_types(g)),
            "edges in the DOT dump": len(st.edges), "widest level": st.width}


@proof("a runner that captures at every call loses the saving; one that replays keeps it", {
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


@proof("the first error of the chain names the line that broke the capture", {
    "first error": "AcceleratorError (cudaErrorStreamCaptureUnsupported)",
    "at line": "5: scale = total.item()",
    "reported when the capture ended": "AcceleratorError (cudaErrorStreamCaptureInvalidated)"}, child=True)
def capture_error_site(device):
    from graphlab_utils import isolation

    site = isolation.capture_error_site(_BROKEN_CAPTURE)
    return {"first error": f"{site.first_type} ({site.first_cuda_error})",
            "at line": f"{site.line}: {site.source}",
            "reported when the capture ended": f"{site.reported_type} ({site.reported_cuda_error})"}


# -- 09 · diffusion warm-up ---------------------------------------------------------------
@proof("a graph captured on dummy inputs in static buffers serves real inputs copied in", {
    "captured on an all-zero dummy input": True, "3 real requests match eager": True,
    "the input buffer's address never changed": True})
def dummy_then_real(device):
    import torch

    from graphlab_utils import workloads

    fn, (static_x,) = workloads.mlp(device)  # a small MLP reading the static input static_x
    static_x.zero_()  # the dummy input
    address = static_x.data_ptr()
    g, static_out = capture(fn)
    dummy = bool((static_x == 0).all())
    matched = True
    for _ in range(3):
        request = torch.randn_like(static_x)
        static_x.copy_(request)  # the real input goes into the captured buffer
        g.replay()
        with torch.no_grad():
            matched = matched and close(static_out, fn.model(request))
    return {"captured on an all-zero dummy input": dummy, "3 real requests match eager": matched,
            "the input buffer's address never changed": static_x.data_ptr() == address}


@proof("a Python float is baked into the graph; a device tensor is read at every replay", {
    "with a Python float: the replay uses the new timestep": False,
    "with a 0-dim device tensor: the replay uses the new timestep": True})
def baked_python_scalar(device):
    import torch

    x = torch.ones(1024, device=device)
    schedule = {"t": 0.5}  # the Python float the step reads
    t_dev = torch.full((), 0.5, device=device)  # the same timestep in a device tensor

    def step():
        return x * schedule["t"], x * t_dev

    g, (with_float, with_tensor) = capture(step)
    schedule["t"] = 0.25  # the sampler moves to the next timestep...
    t_dev.fill_(0.25)  # ...in both places
    g.replay()
    return {"with a Python float: the replay uses the new timestep": close(with_float, x * 0.25),
            "with a 0-dim device tensor: the replay uses the new timestep": close(with_tensor, x * 0.25)}


@proof("make_graphed_callables gives eager's outputs and gradients",
       {"outputs match eager": True, "gradients match eager": True})
def graphed_callables(device):
    return scenario("graphed_callables", device, {
        "outputs_match": "outputs match eager", "grads_match": "gradients match eager"})


@proof("a toy sampler loop (10 steps of a few small kernels) replayed as one graph", {
    "graphed loop matches eager": True, "graphed loop at least 3x faster than eager": True})
def denoise_loop_speedup(device):
    import torch

    from graphlab_utils import timing

    latents = torch.randn(4, 256, device=device)
    sigmas = torch.linspace(1.0, 0.1, 10, device=device)  # the schedule, on the device

    def sample():
        x = latents
        for i in range(10):  # each step: a tiny "UNet" of a few kernels
            eps = torch.tanh(x * 0.5) * 0.1
            x = (x - sigmas[i] * eps) * 0.99
        return x

    g, out = capture(sample)
    g.replay()
    matched = close(out, sample())
    speedup = timing.speedup(timing.measure(sample, repeat=5), timing.measure(g.replay, repeat=5))
    return {"graphed loop matches eager": matched, "graphed loop at least 3x faster than eager": speedup >= 3.0}
