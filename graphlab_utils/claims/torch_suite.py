"""PyTorch's own CUDA-graph tests, ported as claims: what PyTorch asserts of a GPU, run on either backend.

Each claim follows one test of ``test/test_cuda.py`` in pytorch/pytorch (named in its
docstring) with the facts that test asserts, written for the course: sizes small enough for
the simulator, the device an argument, and each assertion a verdict. The expected outcomes
are the ones PyTorch's test requires of a GPU. Tests left out, and why, are listed in
docs/ARCHITECTURE.md (the simulator's limits).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import warnings
from copy import deepcopy

from graphlab_utils.claims import CUDA_ERROR, FIRST_ERROR, RAISED, claim, error_verdicts
from graphlab_utils.recipes import capture, close

EMPTY_GRAPH = "The CUDA Graph is empty"


@contextlib.contextmanager
def _quiet():
    """Hide the warning the ported tests provoke on purpose: a capture that ends empty after a refusal."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=EMPTY_GRAPH)
        yield


def _side_stream():
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    return s


# -- streams and capture -------------------------------------------------------------------------
@claim("a stream knows when it captures, and so does torch.cuda.is_current_stream_capturing()", {
    "capturing before capture_begin": False, "stream.is_capturing() before capture_begin": False,
    "capturing after capture_begin": True, "stream.is_capturing() after capture_begin": True,
    "capturing after capture_end": False})
def stream_reports_capturing(device):
    """test_graph_is_current_stream_capturing"""
    import torch

    x = torch.ones(8, device=device)
    s = torch.cuda.Stream()
    out = {}
    with torch.cuda.stream(s):
        g = torch.cuda.CUDAGraph()
        out["capturing before capture_begin"] = torch.cuda.is_current_stream_capturing()
        out["stream.is_capturing() before capture_begin"] = s.is_capturing()
        g.capture_begin()
        out["capturing after capture_begin"] = torch.cuda.is_current_stream_capturing()
        out["stream.is_capturing() after capture_begin"] = s.is_capturing()
        y = x + 1
        g.capture_end()
        out["capturing after capture_end"] = torch.cuda.is_current_stream_capturing()
    torch.cuda.current_stream().wait_stream(s)
    return out


def _ten_additions(s, device, empty_cache: bool = False):
    """Capture ``b = a + 1`` ten times over 1,000 ones on stream ``s`` (``empty_cache()`` first, if asked).

    Returns the graph, a (its input, which the caller keeps alive) and b (its output).
    """
    import torch

    with torch.cuda.stream(s):
        a = torch.full((1000,), 1.0, device=device)
        g = torch.cuda.CUDAGraph()
        if empty_cache:
            torch.cuda.empty_cache()
        g.capture_begin()
        b = a
        for _ in range(10):
            b = b + 1
        g.capture_end()
    torch.cuda.current_stream().wait_stream(s)
    return g, a, b


@claim("ten additions captured on a side stream run once per replay", {"sum after one replay": 11000.0})
def capture_simple(device):
    """test_graph_capture_simple"""
    import torch

    g, _a, b = _ten_additions(torch.cuda.Stream(), device, empty_cache=True)
    g.replay()
    return {"sum after one replay": b.sum().item()}


@claim("a graph reset with reset() captures again", {
    "sum after the first capture's replay": 11000.0, "sum after reset, a new capture and its replay": 22000.0})
def reset_and_recapture(device):
    """test_graph_capture_reset_recapture"""
    import torch

    s = torch.cuda.Stream()
    g, _a, b = _ten_additions(s, device)
    g.replay()
    first = b.sum().item()
    g.reset()
    with torch.cuda.stream(s):
        g.capture_begin()
        b.fill_(2.0)
        for _ in range(10):
            b = b + 2
        g.capture_end()
    torch.cuda.current_stream().wait_stream(s)
    g.replay()
    return {"sum after the first capture's replay": first, "sum after reset, a new capture and its replay": b.sum().item()}


def _refusal(call, raised: str, message: str, words: str) -> dict:
    """Whether ``call()`` raises a RuntimeError (under the key ``raised``) and, if it does, whether its
    message holds ``words`` (under the key ``message``)."""
    try:
        call()
        return {raised: None}
    except RuntimeError as exc:
        return {raised: "RuntimeError", message: words in str(exc)}


def _capture_fork_join(g, numel: int, device, inside: bool):
    """Capture ``z = x + y`` on a side stream s0 and ``w = z + y`` on s1, forked from s0 and joined back.

    ``inside``: s1's work is issued inside s0's ``with`` block (test_graph_debugdump); otherwise
    after it, with s0 entered again to end the capture (test_cuda_graph_allocator_propagates_stream).
    Returns s0 and the outputs z and w (the tests keep them alive to the end).
    """
    import torch

    x = torch.randn(numel, device=device)
    y = torch.rand_like(x)
    s0, s1 = torch.cuda.Stream(), torch.cuda.Stream()
    s0.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s0):
        g.capture_begin()
        z = x + y
        if inside:
            with torch.cuda.stream(s1):
                s1.wait_stream(s0)
                w = z + y
            s0.wait_stream(s1)
            g.capture_end()
    if not inside:
        with torch.cuda.stream(s1):
            s1.wait_stream(s0)
            w = z + y
        s0.wait_stream(s1)
        with torch.cuda.stream(s0):
            g.capture_end()
    return s0, z, w


@claim("debug_dump writes a two-stream graph as a DOT file", {"a DOT file is written": True, "it holds a digraph": True})
def debug_dump_two_streams(device):
    """test_graph_debugdump"""
    import torch

    g = torch.cuda.CUDAGraph()
    g.enable_debug_mode()
    s0, *_outputs = _capture_fork_join(g, 1 << 16, device, inside=True)
    s0.synchronize()
    torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch announces the dump with warnings
        path = os.path.join(folder, "out_multi_stream.dot")
        g.debug_dump(path)
        text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    return {"a DOT file is written": bool(text), "it holds a digraph": text.startswith("digraph")}


@claim("events made with external=True and recorded in a capture time each replay", {
    "elapsed time between the events is positive": True})
def external_events_time_a_replay(device):
    """test_graph_timing"""
    import torch

    x = torch.randn(1 << 16, device=device)
    y = torch.rand_like(x)
    g = torch.cuda.CUDAGraph()
    start = torch.cuda.Event(enable_timing=True, external=True)
    end = torch.cuda.Event(enable_timing=True, external=True)
    with torch.cuda.graph(g):
        start.record()
        z = x + y
        end.record()
    torch.cuda.synchronize()
    g.replay()
    torch.cuda.synchronize()
    return {"elapsed time between the events is positive": start.elapsed_time(end) > 0}


@claim("capture, instantiate and replay can all run in a worker thread", {RAISED: None, "result correct": True})
def capture_in_a_worker_thread(device):
    """test_cuda_graph_error_options runs work in other threads; here the whole capture does"""
    import torch

    x = torch.randn(256, device=device)
    seen: dict = {}

    def work():
        try:
            g, out = capture(lambda: x * 2 + 1, warmup=1)
            g.replay()
            torch.cuda.synchronize()
            seen.update({RAISED: None, "result correct": close(out, x * 2 + 1)})
        except Exception as exc:  # noqa: BLE001 - the error is the outcome
            seen.update({RAISED: type(exc).__name__, "result correct": False})

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return seen


def _raw_malloc_in_a_thread(outcome: dict):
    """Another thread asks the caching allocator for memory on a stream of its own (a cudaMalloc)."""
    import torch

    def raw_malloc():
        try:
            with torch.cuda.stream(torch.cuda.Stream()):
                mem = torch.cuda.caching_allocator_alloc(1024)
            torch.cuda.caching_allocator_delete(mem)
            outcome["the other thread's allocation"] = "succeeded"
        except Exception as exc:  # noqa: BLE001 - the error is the outcome
            outcome["the other thread's allocation"] = type(exc).__name__

    thread = threading.Thread(target=raw_malloc)
    thread.start()
    thread.join()


def _capture_while_a_thread_allocates(device, mode: str) -> dict:
    import torch

    def fn():
        x = torch.zeros([2000], device=device)
        return x + x + x

    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    stream = _side_stream()
    with torch.cuda.stream(stream):
        fn()
    stream.synchronize()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    outcome: dict = {}
    try:
        with torch.cuda.graph(graph, stream=stream, capture_error_mode=mode):
            out = fn()
            _raw_malloc_in_a_thread(outcome)
        outcome["the capture raised"] = False
    except Exception:  # noqa: BLE001 - the error is the outcome
        outcome["the capture raised"] = True
    return outcome


@claim("in thread_local and relaxed modes another thread may allocate while a capture runs", {
    "thread_local: the capture raised": False, "relaxed: the capture raised": False,
    "thread_local: the other thread's allocation": "succeeded", "relaxed: the other thread's allocation": "succeeded"})
def other_threads_may_allocate(device):
    """test_cuda_graph_error_options"""
    out = {}
    for mode in ("thread_local", "relaxed"):
        for key, value in _capture_while_a_thread_allocates(device, mode).items():
            out[f"{mode}: {key}"] = value
    return out


@claim("in global mode another thread's allocation during a capture fails the capture", {
    "the capture raised": True}, isolated=True)
def global_mode_forbids_other_threads(device):
    """test_cuda_graph_error_options: the case PyTorch keeps out of its process ("would corrupt process")"""
    outcome = _capture_while_a_thread_allocates(device, "global")
    return {"the capture raised": outcome["the capture raised"]}


@claim("indexing with a device tensor inside a capture reads it on the host and fails the capture", {
    RAISED: "AcceleratorError", CUDA_ERROR: "cudaErrorStreamCaptureInvalidated",
    FIRST_ERROR: "cudaErrorStreamCaptureUnsupported"}, isolated=True)
def tensor_index_syncs(device):
    """test_cuda_graph_tensor_item_not_allowed"""
    import torch

    a = torch.rand(50, 50, device=device)
    b = torch.rand(50, 50, device=device)
    perm = torch.randint(0, 50, (50,), device=device)
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            idx = perm[0]
            a[0] *= b[idx]
        return {RAISED: None}
    except Exception as exc:  # noqa: BLE001 - the error is the outcome
        return error_verdicts(exc)


# -- memory ---------------------------------------------------------------------------------------
@claim("a capture that asks for more memory than the GPU has raises PyTorch's out-of-memory error", {
    RAISED: "OutOfMemoryError", "the message says out of memory": True})
def capture_out_of_memory(device):
    """test_graph_capture_oom"""
    import torch

    try:
        with _quiet():
            with torch.cuda.graph(torch.cuda.CUDAGraph()):
                torch.zeros(2 ** 40, device=device)
        return {RAISED: None}
    except Exception as exc:  # noqa: BLE001 - the error is the outcome
        return {RAISED: type(exc).__name__, "the message says out of memory": "out of memory" in str(exc)}


@claim("a hundred captures of a matrix product leave the device's free memory where it was", {
    "memory in use grew by more than 0.1 GB": False})
def repeated_captures_keep_memory_flat(device):
    """test_repeat_graph_capture_cublas_workspace_memory"""
    import torch

    a = torch.rand((1024, 512), device=device)
    b = torch.rand((512, 64), device=device)
    torch.mm(a, b)  # warm-up
    free_before, total = torch.cuda.mem_get_info()
    for _ in range(100):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            torch.mm(a, b)
        g.replay()
    free_after, _ = torch.cuda.mem_get_info()
    used_before, used_after = (total - free_before) / 1e9, (total - free_after) / 1e9
    return {"memory in use grew by more than 0.1 GB": used_before + 0.1 < used_after}


def _func_with_temps(t, val):
    x = t.clone() + val
    y = t.clone() + val
    return x + y


SHARE_MODES = ("don't share", "via pool()", "via graph_pool_handle()")


def _first_pool(mode):
    """The first graph's pool argument: a handle when sharing through graph_pool_handle()."""
    import torch

    return (torch.cuda.graph_pool_handle(),) if mode == "via graph_pool_handle()" else ()


def _next_pool(mode, first_graph, first_args):
    """The next graphs' pool argument: the first graph's pool when sharing through pool()."""
    return (first_graph.pool(),) if mode == "via pool()" else first_args


@claim("two graphs captured in a row give right results, and sharing a pool reserves a small segment less", {
    "b and c right in every mode": True, "reserved bytes saved by sharing (pool(), graph_pool_handle())": [2097152, 2097152]})
def two_graphs_share_a_pool(device):
    """test_graph_two_successive"""
    import torch

    size = 1000
    torch.cuda.empty_cache()
    s = torch.cuda.Stream()
    right, saved, reserved_alone = [], [], None
    for mode in SHARE_MODES:
        g0, g1 = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        a = torch.ones((size,), device=device)
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            g0_args = _first_pool(mode)
            g0.capture_begin(*g0_args)
            b = a.clone()
            for _ in range(5):
                b = _func_with_temps(b, 1)
            g0.capture_end()
            g1.capture_begin(*_next_pool(mode, g0, g0_args))
            for _ in range(5):
                b = _func_with_temps(b, 1)
            g1.capture_end()
        torch.cuda.current_stream().wait_stream(s)
        c = a.clone()
        for _ in range(2):
            c = _func_with_temps(c, 3)
        g0.replay()
        for _ in range(2):
            c = _func_with_temps(c, 3)
        g1.replay()
        for _ in range(2):
            c = _func_with_temps(c, 3)
        right.append(b.sum().item() == size * 3070 and c.sum().item() == size * 442)
        reserved = torch.cuda.memory_stats()["reserved_bytes.all.current"]
        if mode == "don't share":
            reserved_alone = reserved
        else:
            saved.append(reserved_alone - reserved)
        del a, b, c, g0, g1
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return {"b and c right in every mode": all(right), "reserved bytes saved by sharing (pool(), graph_pool_handle())": saved}


@claim("graphs that share a pool must replay in capture order: out of order, one reads another's output", {
    "capture order: e and f right (don't share, pool(), graph_pool_handle())": [True, True, True],
    "order g0, g2, g1: e holds f's values + 3 (don't share, pool(), graph_pool_handle())": [False, True, True],
    "order g0, g2, g1: f right": [True, True, True]})
def replay_order_with_a_shared_pool(device):
    """test_graph_three_successive"""
    import torch

    size = 1000
    torch.cuda.empty_cache()
    s = torch.cuda.Stream()
    in_order, corrupted, f_right = [], [], []
    for mode in SHARE_MODES:
        a = torch.ones((size,), device=device)
        g0, g1, g2 = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            g0_args = _first_pool(mode)
            g0.capture_begin(*g0_args)
            b = a.clone()
            c = b + 1
            d = b + 2
            g0.capture_end()
            args = _next_pool(mode, g0, g0_args)
            g1.capture_begin(*args)
            e = c + 3
            del c
            g1.capture_end()
            g2.capture_begin(*args)
            f = d + 4
            g2.capture_end()
        torch.cuda.current_stream().wait_stream(s)
        g0.replay()
        g1.replay()
        g2.replay()
        in_order.append(e.sum().item() == size * 5 and f.sum().item() == size * 7)
        g0.replay()
        g2.replay()
        g1.replay()
        corrupted.append(e.sum().item() == size * (7 + 3))
        f_right.append(f.sum().item() == size * 7)
        del a, b, d, e, f, g0, g1, g2
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return {"capture order: e and f right (don't share, pool(), graph_pool_handle())": in_order,
            "order g0, g2, g1: e holds f's values + 3 (don't share, pool(), graph_pool_handle())": corrupted,
            "order g0, g2, g1: f right": f_right}


# The cases of test_graph_memory_stats_and_use_result_after_destroy_graph: (elements, pool, new
# segments, new reserved bytes, reserved bytes left once the graph is deleted).
_SMALL_SIZE, _SMALL_BUFFER, _LARGE_BUFFER, _MIN_LARGE, _ROUND_LARGE = 1048576, 2097152, 20971520, 10485760, 2097152
_BIG = _ROUND_LARGE * ((_MIN_LARGE + 512 + _ROUND_LARGE - 1) // _ROUND_LARGE)
_STAT_CASES = (
    (512 // 4, "small_pool", 1, _SMALL_BUFFER, _SMALL_BUFFER),
    (_SMALL_SIZE // 4, "small_pool", 2, 2 * _SMALL_BUFFER, _SMALL_BUFFER),
    ((_SMALL_SIZE + 512) // 4, "large_pool", 1, _LARGE_BUFFER, _LARGE_BUFFER),
    ((_MIN_LARGE - 512) // 4, "large_pool", 2, 2 * _LARGE_BUFFER, _LARGE_BUFFER),
    ((_MIN_LARGE + 512) // 4, "large_pool", 3, 3 * _BIG, _BIG),
)
_STATS = ("segment.", "reserved_bytes.", "active.", "active_bytes.")


def _expected_stat_deltas():
    after_capture, after_delete = [], []
    for numel, pool, segments, reserved, reserved_left in _STAT_CASES:
        # the small pool also holds the seed and offset of the default generator's state (512 bytes each)
        blocks, nbytes = (3, numel * 4 + 1024) if pool == "small_pool" else (1, numel * 4)
        after_capture.append([segments, reserved, blocks, nbytes])
        after_delete.append([1, reserved_left, 1, numel * 4])
    return after_capture, after_delete


_AFTER_CAPTURE, _AFTER_DELETE = _expected_stat_deltas()


@claim("memory_stats follow a capture's private pool, and a graph's output outlives the graph", {
    "segments, reserved bytes, active blocks, active bytes added by the capture (5 sizes)": _AFTER_CAPTURE,
    "the same after a replay and empty_cache()": _AFTER_CAPTURE,
    "left once the graph is deleted (only its output)": _AFTER_DELETE,
    "output right after replays and after the graph is deleted": True})
def memory_stats_after_graph_destroyed(device):
    """test_graph_memory_stats_and_use_result_after_destroy_graph"""
    import torch

    torch.cuda.empty_cache()
    s = torch.cuda.Stream()
    captured, after_replay, deleted, right = [], [], [], True
    for numel, pool, *_ in _STAT_CASES:
        keys = [stat + pool + ".current" for stat in _STATS]
        g = torch.cuda.CUDAGraph()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            a = torch.ones((numel,), device=device)
            before = torch.cuda.memory_stats()
            g.capture_begin()
            b = a.clone()
            for _ in range(5):
                b = b.clone() + 1
            g.capture_end()
        torch.cuda.current_stream().wait_stream(s)
        post = torch.cuda.memory_stats()
        captured.append([post[k] - before[k] for k in keys])
        g.replay()
        right = right and b.sum().item() == 6 * numel
        torch.cuda.empty_cache()
        post = torch.cuda.memory_stats()
        after_replay.append([post[k] - before[k] for k in keys])
        g.replay()
        del g
        torch.cuda.empty_cache()
        post = torch.cuda.memory_stats()
        right = right and b.sum().item() == 6 * numel
        deleted.append([post[k] - before[k] for k in keys])
        del a, b
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return {"segments, reserved bytes, active blocks, active bytes added by the capture (5 sizes)": captured,
            "the same after a replay and empty_cache()": after_replay,
            "left once the graph is deleted (only its output)": deleted,
            "output right after replays and after the graph is deleted": right}


@claim("a side stream joined to a capture allocates from the graph's pool, in segments of its own", {
    "new segments of the graph's pool": 2})
def side_stream_allocations_use_the_graph_pool(device):
    """test_cuda_graph_allocator_propagates_stream"""
    import torch

    g = torch.cuda.CUDAGraph()
    _s0, *_outputs = _capture_fork_join(g, 1 << 20, device, inside=False)
    pool = tuple(g.pool())
    segments = [seg for seg in torch.cuda.memory_snapshot() if tuple(seg["segment_pool_id"]) == pool]
    return {"new segments of the graph's pool": len(segments)}


@claim("record_stream on a tensor during a capture is allowed, and memory is reused safely after it", {
    RAISED: None, "an allocation after the capture works": True})
def record_stream_during_capture(device):
    """test_graph_record_stream"""
    import torch

    torch.cuda.empty_cache()
    potential_problem = torch.zeros((3,), device=device)
    a = torch.zeros((3,), device=device)
    s0, s1, s2 = torch.cuda.Stream(), torch.cuda.Stream(), torch.cuda.Stream()
    g = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    try:
        with torch.cuda.stream(s0):
            potential_problem.record_stream(s0)
            potential_problem.fill_(1.0)
        del potential_problem
        with torch.cuda.stream(s1):
            g.capture_begin()
            b = a.clone()
            s2.wait_stream(s1)
            with torch.cuda.stream(s2):
                b.fill_(1.0)
                b.record_stream(s2)
                del b
            s1.wait_stream(s2)
            g.capture_end()
        torch.cuda.synchronize()
        after = torch.zeros((3,), device=device)
        return {RAISED: None, "an allocation after the capture works": after.sum().item() == 0.0}
    except Exception as exc:  # noqa: BLE001 - the error is the outcome
        return {RAISED: type(exc).__name__, "an allocation after the capture works": False}


# -- pinned host memory ------------------------------------------------------------------------------
def _pinned_pair(device, use: bool, delete: bool, shared: bool) -> bool:
    """test_two_graphs: is the second graph's pinned block the first one's?"""
    import torch

    pool = torch.cuda.graph_pool_handle() if shared else None
    graphs, pointers = [torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()], []
    with _quiet():
        for graph in graphs:  # the first graph's block, if kept, is alive while the second is captured
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                data = torch.randn(8).pin_memory()
                if use:
                    data_gpu = torch.randn(8, device=device)
                    data_gpu.copy_(data, non_blocking=True)
                pointers.append(data.data_ptr())
                if delete:
                    del data
    return pointers[1] == pointers[0]


@claim("pinned host memory in a capture: a block is reused only if it was freed and no captured copy used it", {
    "two live pinned tensors share a block": False, "freed, never copied: reused in the capture": True,
    "freed after a captured copy used it: reused": False,
    "two graphs sharing a pool, reused (used, deleted) = (yes,yes), (yes,no), (no,yes), (no,no)": [False, False, True, False]})
def pinned_blocks_in_a_capture(device):
    """TestCachingHostAllocatorCudaGraph: test_pin_memory_no_use, no_use2, use, test_two_graphs"""
    import torch

    out = {}
    with _quiet():
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            data = torch.empty(8, pin_memory=True)
            data2 = torch.empty(8, pin_memory=True)
            out["two live pinned tensors share a block"] = data.data_ptr() == data2.data_ptr()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            data = torch.randn(8).pin_memory()
            ptr = data.data_ptr()
            del data
            data2 = torch.randn(8).pin_memory()
            out["freed, never copied: reused in the capture"] = data2.data_ptr() == ptr
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            data = torch.randn(8).pin_memory()
            data_gpu = torch.randn(8, device=device)
            data_gpu.copy_(data, non_blocking=True)
            ptr = data.data_ptr()
            del data
            data2 = torch.randn(8).pin_memory()
            out["freed after a captured copy used it: reused"] = data2.data_ptr() == ptr
    key = "two graphs sharing a pool, reused (used, deleted) = (yes,yes), (yes,no), (no,yes), (no,no)"
    out[key] = [_pinned_pair(device, use, delete, shared=True) for use, delete in
                ((True, True), (True, False), (False, True), (False, False))]
    return out


@claim("a replay copies pinned host memory as it is then, both ways", {
    "the replay read the host buffer's new values": True, "the replay wrote its result into pinned memory": True})
def pinned_copies_in_a_graph(device):
    """the copies the TestCachingHostAllocatorCudaGraph tests capture, replayed"""
    import torch

    host_in = torch.ones(16, pin_memory=True)
    host_out = torch.zeros(16, pin_memory=True)
    static = torch.empty(16, device=device)
    static.copy_(host_in)
    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        y = static * 2
    torch.cuda.current_stream().wait_stream(warm)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static.copy_(host_in, non_blocking=True)
        y = static * 2
        host_out.copy_(y, non_blocking=True)
    host_in.fill_(3.0)  # host memory, written by the CPU between replays
    g.replay()
    torch.cuda.synchronize()
    return {"the replay read the host buffer's new values": bool((y == 6.0).all()),
            "the replay wrote its result into pinned memory": bool((host_out == 6.0).all())}


# -- random numbers -------------------------------------------------------------------------------
@claim("dropout and rrelu in a graph draw from the generator's sequence, and follow torch.cuda.manual_seed", {
    "dropout: graphed, eager, graphed equals six eager calls": True, "dropout: a new seed gives new numbers": True,
    "dropout: reseeded replays equal reseeded eager calls": True,
    "rrelu: graphed, eager, graphed equals six eager calls": True, "rrelu: a new seed gives new numbers": True,
    "rrelu: reseeded replays equal reseeded eager calls": True})
def rng_functional_ops_follow_the_seed(device):
    """test_graph_rng_functional"""
    import torch

    ops = (("dropout", torch.nn.functional.dropout, {"p": 0.1}), ("rrelu", torch.nn.functional.rrelu, {"training": True}))
    out = {}
    for name, op, kwargs in ops:
        a = torch.randn((10000,), device=device)
        torch.cuda.manual_seed(5)
        eager = a
        for _ in range(6):
            eager = op(eager, **kwargs)
        graph_in = a.clone()
        stream = _side_stream()
        with torch.cuda.stream(stream):
            torch.cuda.manual_seed(5)
            g = torch.cuda.CUDAGraph()
            torch.cuda.empty_cache()
            g.capture_begin()
            graph_out = graph_in
            for _ in range(2):
                graph_out = op(graph_out, **kwargs)
            g.capture_end()
        torch.cuda.current_stream().wait_stream(stream)
        g.replay()
        mid = op(op(graph_out, **kwargs), **kwargs)
        graph_in.copy_(mid)
        g.replay()
        out[f"{name}: graphed, eager, graphed equals six eager calls"] = torch.equal(eager, graph_out)
        differs, reseeded = True, True
        for seed in (6, 128, 9999):
            torch.cuda.manual_seed(seed)
            graph_in.copy_(a)
            for _ in range(3):
                g.replay()
            differs = differs and not torch.equal(eager, graph_out)
            torch.cuda.manual_seed(seed)
            for _ in range(3):
                eager.copy_(a)
                eager = op(op(eager, **kwargs), **kwargs)
            reseeded = reseeded and torch.equal(eager, graph_out)
        out[f"{name}: a new seed gives new numbers"] = differs
        out[f"{name}: reseeded replays equal reseeded eager calls"] = reseeded
        torch.cuda.synchronize()
    return out


@claim("every random distribution in a graph draws nothing at capture and replays the seeded eager draws", {
    "ops whose capture already filled the output": [], "ops whose replays differ from the seeded eager draws": []})
def rng_distributions_replay_seeded_draws(device):
    """test_graph_rng_distributions"""
    import torch

    size = 10000
    source = torch.rand((size,), device=device)
    alloc = torch.empty((size,), device=device)
    torch_ops = (
        ("bernoulli", (source.clone(),), {}),
        ("normal", (source.clone() + 1, 1.0), {}),
        ("poisson", (source.clone(),), {}),
        ("rand", (size,), {"device": device, "dtype": torch.float}),
        ("randint", (0, 3, (size,)), {"device": device, "dtype": torch.float}),
        ("randn", (size,), {"device": device, "dtype": torch.float}),
    )
    tensor_ops = (("bernoulli_", (source.clone(),)), ("cauchy_", ()), ("exponential_", ()), ("geometric_", (0.3,)),
                  ("log_normal_", ()), ("normal_", ()), ("random_", ()), ("uniform_", ()))
    filled, differs = [], []

    def draw(module, op, args, kwargs, target=None):
        if module == "torch":
            return getattr(torch, op)(*args, **kwargs)
        getattr(target, op)(*args)
        return target

    cases = [("torch", op, args, kwargs) for op, args, kwargs in torch_ops]
    cases += [("Tensor", op, args, {}) for op, args in tensor_ops]
    for module, op, args, kwargs in cases:
        torch.cuda.manual_seed(5)
        if module == "torch":
            dummy = draw(module, op, args, kwargs)
            control1, control2 = draw(module, op, args, kwargs), draw(module, op, args, kwargs)
        else:
            dummy, control1, control2 = alloc.clone(), alloc.clone(), alloc.clone()
            for t in (dummy, control1, control2):
                draw(module, op, args, kwargs, t)
        stream = _side_stream()
        with torch.cuda.stream(stream):
            torch.cuda.manual_seed(5)
            g = torch.cuda.CUDAGraph()
            torch.cuda.empty_cache()
            if module == "torch":
                g.capture_begin()
                t1, t2 = draw(module, op, args, kwargs), draw(module, op, args, kwargs)
                g.capture_end()
            else:
                t1, t2 = alloc.clone(), alloc.clone()
                g.capture_begin()
                draw(module, op, args, kwargs, t1)
                draw(module, op, args, kwargs, t2)
                g.capture_end()
        torch.cuda.current_stream().wait_stream(stream)
        name = f"{module}.{op}"
        if torch.equal(control1, t1) or torch.equal(control2, t2):
            filled.append(name)
        for seed in (6, 314, 271):
            torch.cuda.manual_seed(seed)
            if module == "torch":
                dummy = draw(module, op, args, kwargs)
                control1, control2 = draw(module, op, args, kwargs), draw(module, op, args, kwargs)
            else:
                for t in (dummy, control1, control2):
                    draw(module, op, args, kwargs, t)
            torch.cuda.manual_seed(seed)
            if module == "torch":
                dummy = draw(module, op, args, kwargs)
            else:
                draw(module, op, args, kwargs, dummy)
            t1.copy_(alloc)
            t2.copy_(alloc)
            g.replay()
            if not (torch.equal(control1, t1) and torch.equal(control2, t2)):
                differs.append(name)
                break
        torch.cuda.synchronize()
    return {"ops whose capture already filled the output": filled,
            "ops whose replays differ from the seeded eager draws": differs}


@claim("generator states registered with a graph advance on replay exactly as the same draws eagerly", {
    "offsets of the two states equal the eager generator's (3 replays)": [True, True, True],
    "replayed numbers equal the eager generator's (3 replays)": [True, True, True]})
def graphsafe_generator_states(device):
    """test_graphsafe_set_get_rng_state"""
    import torch

    def create_states(generator):
        torch.rand(1, device=device)
        generator.manual_seed(0)
        return generator, generator.graphsafe_get_state(), generator.clone_state()

    def steps(states):
        generator, old, new = states
        values = []
        generator.graphsafe_set_state(new)
        values.append(torch.rand(5, device=device, generator=generator))
        generator.graphsafe_set_state(old)
        values.extend(torch.rand(5, device=device, generator=generator) for _ in range(2))
        return values

    def offsets(states):
        return states[1].get_offset(), states[2].get_offset()

    eager_states = create_states(torch.Generator(device=device))
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    graph_states = create_states(torch.cuda.default_generators[0])
    g.register_generator_state(graph_states[1])
    g.register_generator_state(graph_states[2])
    with torch.cuda.stream(s):
        g.capture_begin()
        graphed = steps(graph_states)
        g.capture_end()
    torch.cuda.current_stream().wait_stream(s)
    same_offsets, same_values = [], []
    for _ in range(3):
        values = steps(eager_states)
        g.replay()
        same_offsets.append(offsets(eager_states) == offsets(graph_states))
        same_values.append(all(torch.equal(a, b) for a, b in zip(values, graphed)))
    # the default generator draws from its original state again
    torch.cuda.default_generators[0].graphsafe_set_state(graph_states[1])
    return {"offsets of the two states equal the eager generator's (3 replays)": same_offsets,
            "replayed numbers equal the eager generator's (3 replays)": same_values}


@claim("each generator state registered with live graphs keeps two 512-byte blocks, freed with the graphs", {
    "active blocks added (graphs, states) = (1, 1), (3, 2), (10, 20)": [2, 4, 40],
    "active bytes added": [1024, 2048, 20480],
    "back to the baseline once the graphs are deleted": [True, True, True]})
def registered_states_hold_two_blocks_each(device):
    """test_memory_stats_of_multiple_generators_and_graphs"""
    import torch

    def task(graph):
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            graph.capture_begin()
            torch.rand(1, device=device)
            graph.capture_end()
        torch.cuda.current_stream().wait_stream(s)
        graph.replay()

    def stats():
        st = torch.cuda.memory_stats()
        return st["active.all.current"], st["active_bytes.all.current"]

    blocks, nbytes, baseline_again = [], [], []
    for num_graphs, num_states in ((1, 1), (3, 2), (10, 20)):
        torch.cuda.empty_cache()
        base = stats()
        graphs = [torch.cuda.CUDAGraph() for _ in range(num_graphs)]
        default = torch.cuda.default_generators[0]
        states = [default.graphsafe_get_state()] + [default.clone_state() for _ in range(1, num_states)]
        for graph in graphs:
            for state in states:
                graph.register_generator_state(state)
            task(graph)
        now = stats()
        blocks.append(now[0] - base[0])
        nbytes.append(now[1] - base[1])
        while graphs:
            graph = graphs.pop()
            del graph
        torch.cuda.empty_cache()
        baseline_again.append(stats() == base)
    return {"active blocks added (graphs, states) = (1, 1), (3, 2), (10, 20)": blocks, "active bytes added": nbytes,
            "back to the baseline once the graphs are deleted": baseline_again}


@claim("a generator the graph does not know cannot draw during its capture", {
    RAISED: "RuntimeError", "the message says the generator is not in capture mode": True,
    "after register_generator_state the capture draws from it": True})
def unregistered_generator_refused(device):
    """the rule behind test_graphsafe_set_get_rng_state's registrations (and lesson 10's kata 10)"""
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(7)
    x = torch.zeros(64, device=device)
    out = {}
    g = torch.cuda.CUDAGraph()
    try:
        with _quiet():
            with torch.cuda.graph(g):
                y = x + torch.randn(64, device=device, generator=generator)
        out[RAISED] = None
    except RuntimeError as exc:
        out[RAISED] = "RuntimeError"
        out["the message says the generator is not in capture mode"] = "not in capture mode" in str(exc)
    g2 = torch.cuda.CUDAGraph()
    g2.register_generator_state(generator)
    with torch.cuda.graph(g2):
        y = x + torch.randn(64, device=device, generator=generator)
    g2.replay()
    first = y.clone()
    g2.replay()
    out["after register_generator_state the capture draws from it"] = not torch.equal(first, y)
    return out


@claim("torch.cuda.manual_seed with a new seed during a capture raises; the same seed does not", {
    RAISED: "RuntimeError", "the message names set_current_seed": True,
    "torch.manual_seed(1) during the capture raises": True, "the same seed again raises": False})
def seed_change_during_capture_raises(device):
    """test_graph_manual_seed_mismatch_raises"""
    import torch

    def capture_with(seed_fn) -> Exception | None:
        torch.cuda.manual_seed(0)
        g = torch.cuda.CUDAGraph()
        try:
            with _quiet():
                with torch.cuda.graph(g):
                    seed_fn()
            return None
        except RuntimeError as exc:
            return exc

    new_seed = capture_with(lambda: torch.cuda.manual_seed(1))
    out = {RAISED: type(new_seed).__name__ if new_seed else None,
           "the message names set_current_seed": "set_current_seed" in str(new_seed)}
    out["torch.manual_seed(1) during the capture raises"] = capture_with(lambda: torch.manual_seed(1)) is not None
    out["the same seed again raises"] = capture_with(lambda: torch.cuda.manual_seed(0)) is not None
    torch.manual_seed(0)
    return out


@claim("activation checkpointing inside a graph recomputes with the forward's random numbers", {
    "input gradient equal to eager, bit for bit": True})
def checkpoint_keeps_rng_in_a_graph(device):
    """test_graph_checkpoint_preserve_rng_state"""
    import torch
    import torch.utils.checkpoint

    torch.cuda.manual_seed(42)

    def fn(x):
        return x * torch.sigmoid(torch.randn(1, device=device))

    fn(torch.ones(1, device=device))
    torch.cuda.manual_seed(42)
    eager_in = torch.ones(1, device=device, requires_grad=True)
    eager_out = torch.utils.checkpoint.checkpoint(fn, eager_in, use_reentrant=False, preserve_rng_state=True)
    (eager_grad,) = torch.autograd.grad(eager_out, eager_in)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        graph_in = torch.ones(1, device=device, requires_grad=True)
        graph_out = torch.utils.checkpoint.checkpoint(fn, graph_in, use_reentrant=False, preserve_rng_state=True)
        (graph_grad,) = torch.autograd.grad(graph_out, graph_in)
    torch.cuda.manual_seed(42)
    g.replay()
    return {"input gradient equal to eager, bit for bit": torch.equal(eager_grad, graph_grad)}


@claim("an LSTM with dropout captures and replays", {RAISED: None, "replay output has the eager shape": True})
def lstm_dropout_capture(device):
    """test_graph_cudnn_dropout"""
    import torch

    torch.cuda.empty_cache()
    model = torch.nn.LSTM(32, 32, 2, dropout=0.5).to(device)
    x = torch.ones(10, 8, 32, device=device)
    eager, _ = model(x)
    g = torch.cuda.CUDAGraph()
    s = _side_stream()
    try:
        with torch.cuda.stream(s):
            g.capture_begin()
            out, _ = model(x)
            g.capture_end()
        torch.cuda.current_stream().wait_stream(s)
        g.replay()
        model(x)
        torch.cuda.synchronize()
        return {RAISED: None, "replay output has the eager shape": out.shape == eager.shape}
    except Exception as exc:  # noqa: BLE001 - the error is the outcome
        return {RAISED: type(exc).__name__, "replay output has the eager shape": False}


# -- raw graphs and executables ------------------------------------------------------------------------
def _captured_sum(device, keep_graph: bool):
    """The graph of PyTorch's raw-graph tests: ``z = x + y`` over 2,000 zeros and ones, relaxed mode.

    Returns the graph (made with ``keep_graph``) and z, its output.
    """
    import torch

    graph = torch.cuda.CUDAGraph(keep_graph=keep_graph)
    x = torch.zeros([2000], device=device)
    y = torch.ones([2000], device=device)
    with torch.cuda.graph(graph, capture_error_mode="relaxed"):
        z = x + y
    return graph, z


@claim("without keep_graph there is no cudaGraph_t to reach, and instantiate() is not for the learner", {
    "instantiate() raises": "RuntimeError", "its message names keep_graph": True,
    "raw_cuda_graph() raises": "RuntimeError", "its message names keep_graph=true": True})
def raw_graph_needs_keep_graph(device):
    """test_cuda_graph_raw_graph_keep_graph_false"""
    graph, _z = _captured_sum(device, keep_graph=False)
    return {**_refusal(graph.instantiate, "instantiate() raises", "its message names keep_graph", "keep_graph=true"),
            **_refusal(graph.raw_cuda_graph, "raw_cuda_graph() raises", "its message names keep_graph=true",
                       "keep_graph=true")}


@claim("the raw cudaGraph_t of a kept graph lists its nodes through cuda-python", {
    "nodes": 1, "every node's type read": True, "replay runs afterwards": True})
def raw_graph_nodes(device):
    """test_cuda_graph_raw_graph"""
    import torch

    from graphlab_utils import cudart

    graph, z = _captured_sum(device, keep_graph=True)
    raw = cudart.cudaGraph_t(init_value=graph.raw_cuda_graph())
    err, _, count = cudart.cudaGraphGetNodes(raw)
    err2, nodes, _ = cudart.cudaGraphGetNodes(raw, count)
    types_ok = int(err) == 0 and int(err2) == 0 and all(int(cudart.cudaGraphNodeGetType(n)[0]) == 0 for n in nodes)
    graph.replay()
    torch.cuda.synchronize()
    return {"nodes": int(count), "every node's type read": types_ok, "replay runs afterwards": bool((z == 1).all())}


@claim("the raw cudaGraphExec_t exists once the graph is instantiated, and its flags can be read", {
    "keep_graph=True: the exec before instantiate() raises": "RuntimeError",
    "keep_graph=True: cudaGraphExecGetFlags succeeds": True, "keep_graph=False: cudaGraphExecGetFlags succeeds": True})
def raw_graph_exec_flags(device):
    """test_cuda_graph_raw_graph_exec"""
    from graphlab_utils import cudart

    out = {}
    for keep in (True, False):
        graph, _z = _captured_sum(device, keep_graph=keep)
        if keep:
            try:
                graph.raw_cuda_graph_exec()
                out["keep_graph=True: the exec before instantiate() raises"] = None
            except RuntimeError:
                out["keep_graph=True: the exec before instantiate() raises"] = "RuntimeError"
            graph.instantiate()
        raw = cudart.cudaGraphExec_t(init_value=graph.raw_cuda_graph_exec())
        err, _flags = cudart.cudaGraphExecGetFlags(raw)
        out[f"keep_graph={keep}: cudaGraphExecGetFlags succeeds"] = int(err) == 0
        graph.replay()
    return out


@claim("a kept graph instantiates again on request, and a reset graph captures new addresses", {
    "x after each replay": [1.0, 2.0, 3.0, 2.0, 4.0, 6.0]})
def instantiate_twice_and_recapture(device):
    """test_cuda_graph_raw_graph_reset_and_recapture"""
    import torch

    seen = []

    def replay(graph, x):
        graph.replay()
        torch.cuda.synchronize()
        values = x.unique()
        seen.append(values.item() if values.numel() == 1 else None)

    graph = torch.cuda.CUDAGraph(keep_graph=True)
    for step in (1.0, 2.0):
        if step == 2.0:
            graph.reset()
        x = torch.zeros([2000], device=device)  # after reset(), a new address, so a new graph
        with torch.cuda.graph(graph, capture_error_mode="relaxed"):
            x += step
        graph.instantiate()
        replay(graph, x)
        graph.instantiate()  # instantiating again keeps x's value: it does not replay
        replay(graph, x)
        replay(graph, x)
    return {"x after each replay": seen}


# -- make_graphed_callables ------------------------------------------------------------------------------
class _ParameterlessModule:
    """test_graph_make_graphed_callables_parameterless_nograd_module's module (built as a torch.nn.Module)."""

    @staticmethod
    def build():
        import torch

        class ParameterlessModule(torch.nn.Module):
            def forward(self, input_dict: dict):
                x = input_dict["x"]
                idx = torch.arange(x.size(0), device=x.device).view(-1, 1).repeat(1, x.size(1))
                return {"output": torch.gather(x, 0, idx)}

        return ParameterlessModule()


def _graph_parameterless(device, with_amp: bool, cache_enabled: bool, allow_unused_input: bool):
    import torch

    torch.manual_seed(5)
    n, d_in, h = 64, 32, 16
    graphed, control = torch.nn.Sequential(_ParameterlessModule.build()), torch.nn.Sequential(_ParameterlessModule.build())
    x = torch.randn(n, d_in, device=device)
    unused = torch.randn(n, h, device=device)
    with torch.amp.autocast(device_type="cuda", enabled=with_amp, cache_enabled=cache_enabled):
        graphed[0] = torch.cuda.make_graphed_callables(graphed[0], ({"x": x, "unused_input": unused},),
                                                       allow_unused_input=allow_unused_input)
    inputs = [torch.rand_like(x, requires_grad=True) for _ in range(4)]
    outs = {}
    for name, model in (("graphed", graphed), ("control", control)):
        torch.manual_seed(5)
        outs[name] = []
        for data in inputs:
            with torch.amp.autocast(device_type="cuda", enabled=with_amp, cache_enabled=cache_enabled):
                outs[name].append(model({"x": data, "unused_input": unused})["output"].detach().clone())
    graphed.eval()
    control.eval()
    same = all(torch.equal(a, b) for a, b in zip(outs["graphed"], outs["control"]))
    return same and torch.equal(graphed({"x": inputs[0]})["output"], control({"x": inputs[0]})["output"])


_AUTOCAST_CACHE = "with AMP and autocast's cache: raises"
_ASKS_NO_CACHE = "the message asks for cache_enabled=False"


@claim("make_graphed_callables graphs a parameterless module with and without AMP, but not with autocast's cache", {
    "without AMP: graphed equals eager": True, "with AMP, cache disabled: graphed equals eager": True,
    "inputs without grad, unused inputs not allowed: graphed equals eager": True,
    "with AMP and autocast's cache: raises": "RuntimeError", "the message asks for cache_enabled=False": True})
def graphed_parameterless_module(device):
    """test_graph_make_graphed_callables_parameterless_nograd_module"""
    out = {"without AMP: graphed equals eager": _graph_parameterless(device, False, False, True),
           "with AMP, cache disabled: graphed equals eager": _graph_parameterless(device, True, False, True),
           "inputs without grad, unused inputs not allowed: graphed equals eager":
               _graph_parameterless(device, False, False, False)}
    return {**out, **_refusal(lambda: _graph_parameterless(device, True, True, True), _AUTOCAST_CACHE,
                              _ASKS_NO_CACHE, "cache_enabled=False")}


def _mlp_stack(device):
    import torch

    class MLP(torch.nn.Module):
        def __init__(self, d_in, h, d_out):
            super().__init__()
            self.net_1 = torch.nn.Sequential(torch.nn.Linear(d_in, h), torch.nn.Dropout(p=0.1))
            self.net_2 = torch.nn.Sequential(torch.nn.Linear(h, d_out), torch.nn.Dropout(p=0.2))

        def forward(self, input_dict: dict):
            return self.net_2(self.net_1(input_dict["x"]))

    class MLP2(MLP):
        def forward(self, x):
            return self.net_2(self.net_1(x))

    class Gather(torch.nn.Module):
        def forward(self, x):
            idx = torch.arange(x.size(0), device=x.device).view(-1, 1).repeat(1, x.size(1))
            return {"output": torch.gather(x, 0, idx)}

    return torch.nn.Sequential(MLP(64, 32, 32), MLP2(32, 32, 16), Gather()).to(device)


def _graph_training(device, with_amp: bool, cache_enabled: bool, allow_unused_input: bool):
    """test_graph_make_graphed_callables: two modules, a parameterless one and two functions, then training."""
    import torch

    torch.manual_seed(5)
    torch.cuda.manual_seed(5)
    n = 48
    graphed, control = _mlp_stack(device), _mlp_stack(device)
    graphed.load_state_dict(control.state_dict())
    opt_graphed = torch.optim.SGD(graphed.parameters(), lr=0.1)
    opt_control = torch.optim.SGD(control.parameters(), lr=0.1)
    x = torch.randn(n, 64, device=device)
    h = torch.randn(n, 32, device=device, requires_grad=True)
    h2 = torch.randn(n, 16, device=device, requires_grad=True)
    unused = torch.randn(n, 32, device=device, requires_grad=True)
    y_pred = torch.randn(n, 16, device=device, requires_grad=True)
    y = torch.randn(n, 16, device=device)
    loss_fn, relu = torch.nn.functional.mse_loss, torch.nn.functional.relu
    with torch.amp.autocast(device_type="cuda", enabled=with_amp, cache_enabled=cache_enabled):
        graphed[0], graphed[1], graphed[2], relu_g, loss_g = torch.cuda.make_graphed_callables(
            (graphed[0], graphed[1], graphed[2], relu, loss_fn),
            (({"x": x, "unused_input": unused},), (h,), (h2,), (y_pred,), (y_pred, y)),
            allow_unused_input=allow_unused_input)
    inputs = [torch.rand_like(x) for _ in range(4)]
    targets = [torch.rand_like(y) for _ in range(4)]
    for model, opt, rl, lf in ((graphed, opt_graphed, relu_g, loss_g), (control, opt_control, relu, loss_fn)):
        torch.manual_seed(5)
        torch.cuda.manual_seed(5)
        for data, target in zip(inputs, targets):
            opt.zero_grad(set_to_none=True)
            with torch.amp.autocast(device_type="cuda", enabled=with_amp, cache_enabled=cache_enabled):
                out = model({"x": data, "unused_input": unused})["output"]
                loss = lf(rl(out), target)
                loss.backward()
            opt.step()
    same = all(torch.allclose(p, pc, rtol=1.3e-6, atol=1e-5) for p, pc in zip(graphed.parameters(), control.parameters()))
    graphed.eval()
    control.eval()
    return same and close(graphed({"x": inputs[0]})["output"], control({"x": inputs[0]})["output"])


@claim("make_graphed_callables refuses autocast's cache, and an input that needs grad but is never used", {
    "with AMP and autocast's cache: raises": "RuntimeError", "the message asks for cache_enabled=False": True,
    "an unused input that needs grad, unused inputs not allowed: raises": "RuntimeError",
    "the message says a differentiated tensor was not used": True})
def graphed_callables_refusals(device):
    """test_graph_make_graphed_callables: its two cases PyTorch marks as expected failures"""
    return {**_refusal(lambda: _graph_training(device, True, True, True), _AUTOCAST_CACHE, _ASKS_NO_CACHE,
                       "cache_enabled=False"),
            **_refusal(lambda: _graph_training(device, False, False, False),
                       "an unused input that needs grad, unused inputs not allowed: raises",
                       "the message says a differentiated tensor was not used", "not have been used in the graph")}


@claim("modules and functions graphed by make_graphed_callables train like eager code, dropout included", {
    "parameters after 4 steps equal eager (no AMP)": True, "parameters after 4 steps equal eager (AMP, no cache)": True})
def graphed_callables_train_like_eager(device):
    """test_graph_make_graphed_callables, with unused inputs allowed"""
    return {"parameters after 4 steps equal eager (no AMP)": _graph_training(device, False, False, True),
            "parameters after 4 steps equal eager (AMP, no cache)": _graph_training(device, True, False, True)}


@claim("callables graphed into one shared pool give eager's outputs, losses and gradients", {
    "outputs equal eager": True, "losses equal eager": True, "parameters and gradients equal eager": True,
    "graphed copies own their parameters and gradients": True})
def graphed_callables_share_a_pool(device):
    """test_graph_make_graphed_callables_same_pool"""
    import torch

    torch.manual_seed(5)
    torch.cuda.manual_seed(5)
    models = [torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128)).to(device)
              for _ in range(3)]
    pool = torch.cuda.graph_pool_handle()
    graphed = []
    for model in models:
        x = torch.randn([64, 32], device=device)
        graphed.append(torch.cuda.make_graphed_callables(deepcopy(model), (x,), pool=pool))
    outs = losses = params = own = True
    for model, gmodel in zip(models, graphed):
        x = torch.randn([64, 32], device=device)
        y, yg = model(x), gmodel(x)
        loss, loss_g = y.norm(), yg.norm()
        loss.backward()
        loss_g.backward()
        outs = outs and close(y, yg)
        losses = losses and close(loss, loss_g)
        for p, pg in zip(model.parameters(), gmodel.parameters()):
            params = params and close(p, pg) and close(p.grad, pg.grad)
            own = own and p.data_ptr() != pg.data_ptr() and p.grad.data_ptr() != pg.grad.data_ptr()
    return {"outputs equal eager": outs, "losses equal eager": losses, "parameters and gradients equal eager": params,
            "graphed copies own their parameters and gradients": own}


@claim("autocast inside a capture records half-precision matrix products and a float32 loss", {
    "output dtype": "torch.float16", "loss dtype": "torch.float32", "replay equals eager autocast": True})
def autocast_inside_a_capture(device):
    """the autocast regions of test_graph_make_graphed_callables, captured directly"""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(32, 16).to(device)
    x = torch.randn(8, 32, device=device)
    target = torch.randn(8, 16, device=device)

    def step():
        with torch.autocast("cuda", cache_enabled=False):
            out = model(x)
            loss = torch.nn.functional.mse_loss(out, target)
        return out, loss

    eager_out, eager_loss = step()
    g, (out, loss) = capture(step, warmup=1)
    g.replay()
    torch.cuda.synchronize()
    return {"output dtype": str(out.dtype), "loss dtype": str(loss.dtype),
            "replay equals eager autocast": close(out, eager_out, rtol=1e-3, atol=1e-3) and close(loss, eager_loss, 1e-3, 1e-3)}


# -- optimizers ------------------------------------------------------------------------------------
def _optimizers():
    """The optimizers with a capturable argument (PyTorch's optim_db), with the arguments the test gives them."""
    import torch

    return (
        ("Adam", torch.optim.Adam, {"lr": 0.1, "betas": (0.9, 0.99)}),
        ("Adam amsgrad", torch.optim.Adam, {"lr": 0.1, "betas": (0.9, 0.99), "amsgrad": True}),
        ("AdamW", torch.optim.AdamW, {"lr": 0.1, "betas": (0.9, 0.99), "weight_decay": 0.1}),
        ("Adamax", torch.optim.Adamax, {"lr": 0.1}),
        ("NAdam", torch.optim.NAdam, {"lr": 0.1}),
        ("RAdam", torch.optim.RAdam, {"lr": 0.1}),
        ("ASGD", torch.optim.ASGD, {"lr": 0.1}),
        ("Adadelta", torch.optim.Adadelta, {"lr": 0.1}),
        ("RMSprop", torch.optim.RMSprop, {"lr": 0.1}),
        ("Rprop", torch.optim.Rprop, {"lr": 0.1}),
    )


def _graphed_optimizer_matches(device, ctor, kwargs, graphs: bool, steps_warmup=3, steps_train=2) -> bool:
    """_test_graphed_optimizer: capturable steps, captured (or run eagerly), against capturable=False."""
    import torch

    params = [torch.randn((i + 5, i + 5), device=device) for i in range(2)] + [torch.randn((), device=device)]
    control = [p.clone().requires_grad_() for p in params]
    graphed = [p.clone().requires_grad_() for p in params]
    grads = [[torch.randn_like(p) for p in params] for _ in range(steps_warmup + steps_train)]
    opt = ctor(control, **dict(kwargs, capturable=False))
    for i in range(steps_warmup + steps_train):
        for j, p in enumerate(control):
            p.grad = grads[i][j]
        opt.step()
    opt = ctor(graphed, **dict(kwargs, capturable=True))
    for i in range(steps_warmup):
        for j, p in enumerate(graphed):
            p.grad = grads[i][j]
        opt.step()
    if graphs:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            opt.step()
    for i in range(steps_train):
        if graphs:
            for j, p in enumerate(graphed):
                p.grad.copy_(grads[i + steps_warmup][j])
            g.replay()
        else:
            for j, p in enumerate(graphed):
                p.grad = grads[i + steps_warmup][j]
            opt.step()
    return all(torch.allclose(a, b, rtol=1.3e-6, atol=1e-5) for a, b in zip(control, graphed))


@claim("optimizers built with capturable=True give the same parameters captured in a graph as eagerly", {
    "optimizers whose graphed step differs (foreach=False)": [], "optimizers whose graphed step differs (foreach=True)": [],
    "optimizers whose capturable eager step differs": []})
def capturable_optimizers_match_eager(device):
    """test_graph_optims (TestCudaOptims), _test_graphed_optimizer"""
    graphed = {False: [], True: []}
    eager = []
    with _quiet():
        for name, ctor, kwargs in _optimizers():
            for foreach in (False, True):
                if not _graphed_optimizer_matches(device, ctor, dict(kwargs, foreach=foreach), graphs=True):
                    graphed[foreach].append(name)
            if not _graphed_optimizer_matches(device, ctor, kwargs, graphs=False):
                eager.append(name)
    return {"optimizers whose graphed step differs (foreach=False)": graphed[False],
            "optimizers whose graphed step differs (foreach=True)": graphed[True],
            "optimizers whose capturable eager step differs": eager}


@claim("a param group without capturable=True makes a captured step() raise; with both capturable it matches eager", {
    "optimizers that raise when the second group is not capturable": [name for name in (
        "Adam", "AdamW", "ASGD", "Adamax", "NAdam", "RAdam", "Adadelta", "RMSprop", "Rprop")],
    "the message says 'Attempting CUDA graph capture'": True,
    "optimizers whose two capturable groups differ from eager": []})
def capturable_param_groups(device):
    """test_graph_optims_with_explicitly_capturable_param_groups"""
    import torch

    n_warmup, n_replay = 3, 2
    names = ("Adam", "AdamW", "ASGD", "Adamax", "NAdam", "RAdam", "Adadelta", "RMSprop", "Rprop")
    raising, message, differ = [], True, []
    with _quiet():
        for name in names:
            ctor = getattr(torch.optim, name)
            for second_capturable in (True, False):
                ref_p1, param1 = (torch.nn.Parameter(torch.ones(1, device=device)) for _ in range(2))
                ref_p2, param2 = (torch.nn.Parameter(torch.ones(1, device=device)) for _ in range(2))
                grads1, grads2 = ([torch.randn_like(param1) for _ in range(n_warmup + n_replay)] for _ in range(2))
                opt = ctor([{"params": [param1], "capturable": True}, {"params": [param2], "capturable": second_capturable}])
                ref = ctor([{"params": [ref_p1], "capturable": False}, {"params": [ref_p2], "capturable": False}])
                for i in range(n_warmup + n_replay):
                    ref_p1.grad, ref_p2.grad = grads1[i].clone(), grads2[i].clone()
                    ref.step()
                for i in range(n_warmup):
                    param1.grad, param2.grad = grads1[i].clone(), grads2[i].clone()
                    opt.step()
                g = torch.cuda.CUDAGraph()
                if not second_capturable:
                    try:
                        with torch.cuda.graph(g):
                            opt.step()
                    except RuntimeError as exc:
                        raising.append(name)
                        message = message and "Attempting CUDA graph" in str(exc)
                    continue
                with torch.cuda.graph(g):
                    opt.step()
                for i in range(n_replay):
                    param1.grad.copy_(grads1[n_warmup + i])
                    param2.grad.copy_(grads2[n_warmup + i])
                    g.replay()
                if not (torch.allclose(ref_p1, param1, rtol=1.3e-6, atol=1e-5)
                        and torch.allclose(ref_p2, param2, rtol=1.3e-6, atol=1e-5)):
                    differ.append(name)
    return {"optimizers that raise when the second group is not capturable": raising,
            "the message says 'Attempting CUDA graph capture'": message,
            "optimizers whose two capturable groups differ from eager": differ}


@claim("a tensor learning rate is read at every replay; a float one is frozen into the graph", {
    "tensor lr set to 0 after capture: replay leaves the parameters": True,
    "tensor lr set back: replay moves them": True,
    "float lr set to 0 after capture: replay still moves them": True})
def tensor_lr_read_at_replay(device):
    """the tensor learning rates of test_graph_optims' inputs (optim_db), on a captured Adam step"""
    import torch

    out = {}
    with _quiet():
        for kind in ("tensor", "float"):
            param = torch.nn.Parameter(torch.randn(16, device=device))
            lr = torch.tensor(0.01, device=device) if kind == "tensor" else 0.01
            opt = torch.optim.Adam([param], lr=lr, capturable=True, foreach=False)
            param.grad = torch.randn_like(param)
            opt.step()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                opt.step()
            if kind == "tensor":
                opt.param_groups[0]["lr"].fill_(0.0)
            else:
                opt.param_groups[0]["lr"] = 0.0
            before = param.detach().clone()
            g.replay()
            moved = not torch.equal(before, param.detach())
            if kind == "tensor":
                out["tensor lr set to 0 after capture: replay leaves the parameters"] = not moved
                opt.param_groups[0]["lr"].fill_(0.01)
                before = param.detach().clone()
                g.replay()
                out["tensor lr set back: replay moves them"] = not torch.equal(before, param.detach())
            else:
                out["float lr set to 0 after capture: replay still moves them"] = moved
    return out


def _fmt(values):
    return ["inf" if v == float("inf") else v for v in values]


@claim("GradScaler with a captured backward: each replay's gradients follow the scale update() sets", {
    "gradient after each replay": [20.0, "inf", 10.0, "inf"], "scale after each update()": [4.0, 2.0, 2.0, 1.0],
    "growth tracker after each update()": [1, 0, 1, 0],
    "optimizer variants that differ from the above (Adam, AdamW, SGD; foreach, fused)": []})
def grad_scaler_with_a_captured_backward(device):
    """test_graph_grad_scaling (TestCudaOptims)"""
    import torch

    def run(ctor, foreach, fused):
        torch.cuda.empty_cache()
        scaler = torch.amp.GradScaler(device="cuda", init_scale=4.0)
        g = torch.cuda.CUDAGraph()
        weight = torch.ones((100,), device=device, requires_grad=True)
        opt = ctor([weight], lr=0.1, foreach=foreach, fused=fused)
        static_input = torch.ones_like(weight)
        s = _side_stream()
        with torch.cuda.stream(s):
            loss = (weight.half() * static_input).sum()
            scaler.scale(loss).backward()
        torch.cuda.current_stream().wait_stream(s)
        opt.zero_grad(set_to_none=True)
        with torch.cuda.stream(s):
            g.capture_begin()
            loss = (weight.half() * static_input).sum()
            scaler.scale(loss).backward()
            g.capture_end()
        grads, scales, trackers = [], [], []
        for data in (5, 20000, 5, 40000):
            static_input.fill_(data)
            g.replay()
            values = weight.grad.unique()
            grads.append(values.item() if values.numel() == 1 else None)
            scaler.step(opt)
            scaler.update()
            scales.append(scaler._scale.item())
            trackers.append(int(scaler._growth_tracker.item()))
        return _fmt(grads), scales, trackers

    first = run(torch.optim.SGD, False, False)
    differ = []
    for name in ("Adam", "AdamW", "SGD"):
        for foreach, fused in ((True, False), (False, True)):
            if run(getattr(torch.optim, name), foreach, fused) != first:
                differ.append(f"{name} {'fused' if fused else 'foreach'}")
    return {"gradient after each replay": first[0], "scale after each update()": first[1],
            "growth tracker after each update()": first[2],
            "optimizer variants that differ from the above (Adam, AdamW, SGD; foreach, fused)": differ}


@claim("GradScaler.step() and update() captured with fused optimizers give eager's parameters", {
    "fused optimizers whose graphed scaled steps differ from eager": []})
def grad_scaler_step_captured_with_fused_optimizers(device):
    """test_graph_scaling_fused_optimizers (TestCudaOptims)"""
    import torch

    steps_warmup, steps_train = 3, 2
    differ = []
    with _quiet():
        for name, ctor, capturable in (("Adam", torch.optim.Adam, True), ("AdamW", torch.optim.AdamW, True),
                                       ("SGD", torch.optim.SGD, False)):
            params = [torch.randn((i + 5, i + 5), device=device) for i in range(2)]
            control = [p.clone().requires_grad_() for p in params]
            graphed = [p.clone().requires_grad_() for p in params]
            grads = [[torch.randn_like(p) for p in params] for _ in range(steps_warmup + steps_train)]
            grads_control = [[g.clone() for g in gs] for gs in grads]
            grads_graphed = [[g.clone() for g in gs] for gs in grads]
            scaler_control = torch.amp.GradScaler("cuda", init_scale=128.0)
            scaler_control._lazy_init_scale_growth_tracker(device)
            scaler_graphed = torch.amp.GradScaler("cuda")
            scaler_graphed.load_state_dict(scaler_control.state_dict())
            scaler_graphed._lazy_init_scale_growth_tracker(device)
            kwargs = {"lr": 0.1, "fused": True}
            opt = ctor(control, **(dict(kwargs, capturable=False) if capturable else kwargs))
            for i in range(steps_warmup + steps_train):
                for j, p in enumerate(control):
                    p.grad = grads_control[i][j]
                scaler_control.step(opt)
                scaler_control.update()
            opt = ctor(graphed, **(dict(kwargs, capturable=True) if capturable else kwargs))
            for i in range(steps_warmup):
                for j, p in enumerate(graphed):
                    p.grad = grads_graphed[i][j]
                scaler_graphed.step(opt)
                scaler_graphed.update()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                scaler_graphed.step(opt)
                scaler_graphed.update()
            for i in range(steps_train):
                for j, p in enumerate(graphed):
                    p.grad.copy_(grads_graphed[i + steps_warmup][j])
                g.replay()
            if not all(torch.allclose(a, b, rtol=1.3e-6, atol=1e-5) for a, b in zip(control, graphed)):
                differ.append(name)
    return {"fused optimizers whose graphed scaled steps differ from eager": differ}
