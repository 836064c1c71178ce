"""Lesson 02 · streams and capture: forks and joins, capture modes, and what a capture forbids."""
from __future__ import annotations

from graphlab_utils.claims import CUDA_ERROR, FIRST_ERROR, RAISED, claim, error_verdicts
from graphlab_utils.errors import RNG_POISONED, error_name_in
from graphlab_utils.recipes import close, warm_up

REPLAY_AFTER = "replaying the graph afterwards"
RANDN_AFTER = "the next torch.randn on the device"
OFFSET_INCREMENT = "Offset increment outside graph capture"


def _randn_after(device) -> str:
    """What the next draw of the device's random generator does after a failed capture."""
    import torch

    try:
        torch.randn(4, device=device)
        return "works"
    except Exception as exc:  # noqa: BLE001 - the error is the outcome
        return OFFSET_INCREMENT if RNG_POISONED in str(exc) else type(exc).__name__


def _failing_capture(device, action) -> dict:
    """Capture a sum, call ``action`` on it inside the capture, then try the graph and the RNG."""
    import torch

    x = torch.randn(64, device=device)
    warm_up(lambda: x.sum())
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            total = x.sum()
            action(total)
        outcome = {RAISED: None}
    except Exception as exc:  # noqa: BLE001 - the error is the outcome
        outcome = error_verdicts(exc)
    try:
        g.replay()
        outcome[REPLAY_AFTER] = "ran"
    except Exception as exc:  # noqa: BLE001
        outcome[REPLAY_AFTER] = type(exc).__name__
    outcome[RANDN_AFTER] = _randn_after(device)
    return outcome


# A sync during capture: CUDA refuses it, the capture is invalidated, and on a GPU the process
# is left with its random generator in capture state.
_SYNC_FAILS = {RAISED: "AcceleratorError", CUDA_ERROR: "cudaErrorStreamCaptureInvalidated",
               FIRST_ERROR: "cudaErrorStreamCaptureUnsupported", REPLAY_AFTER: "RuntimeError",
               RANDN_AFTER: OFFSET_INCREMENT}

# PyTorch refuses a copy to pageable host memory on a capturing stream before CUDA sees it:
# the error is PyTorch's own, and the capture (and the process) stay usable.
_HOST_COPY_REFUSED = {RAISED: "RuntimeError", CUDA_ERROR: None, FIRST_ERROR: None,
                      REPLAY_AFTER: "ran", RANDN_AFTER: "works"}


@claim("a forked and joined side stream becomes a parallel branch of the graph", {
    "nodes": 3, "root nodes (branches that start in parallel)": 2,
    "inputs of the join node": 2, "result correct": True})
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

    warm_up(two_branches)
    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g):
        out = two_branches()
    g.replay()
    torch.cuda.synchronize()
    st = graphinfo.structure(g)
    return {"nodes": len(st.nodes), "root nodes (branches that start in parallel)": len(st.roots),
            "inputs of the join node": st.max_in_degree, "result correct": close(out, x * 2 + x + 1)}


@claim("work on a stream never forked that needs new memory fails a global capture (its cudaMalloc is refused)", {
    RAISED: "AcceleratorError", CUDA_ERROR: "cudaErrorStreamCaptureInvalidated",
    FIRST_ERROR: "cudaErrorStreamCaptureUnsupported"}, isolated=True)
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
        return {RAISED: None}
    except Exception as exc:  # noqa: BLE001 - the error is the outcome
        return error_verdicts(exc)


@claim("work on a stream never forked, its output preallocated, runs once and is missing from the graph, even in global mode", {
    "the capture succeeded": True, "nodes in the graph": 1, "z computed during the capture": True,
    "y follows a new x after a replay": True, "z follows a new x after a replay": False})
def unforked_stream_silent(device):
    import torch

    from graphlab_utils import graphinfo

    x = torch.randn(1 << 16, device=device)
    z = torch.empty_like(x)  # allocated before the capture: the unforked work needs no new memory
    other = torch.cuda.Stream()
    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g):  # global mode, the default
        y = x * 2
        with torch.cuda.stream(other):  # never forked from the capturing stream
            torch.add(x, 1, out=z)
    torch.cuda.synchronize()
    computed = torch.equal(z, x + 1)
    x.fill_(0.0)
    g.replay()
    torch.cuda.synchronize()
    return {"the capture succeeded": True, "nodes in the graph": graphinfo.node_count(g),
            "z computed during the capture": computed,
            "y follows a new x after a replay": torch.equal(y, x * 2),
            "z follows a new x after a replay": torch.equal(z, x + 1)}


@claim("a forked stream never joined back fails the capture", {
    RAISED: "AcceleratorError", CUDA_ERROR: "cudaErrorStreamCaptureUnjoined"}, isolated=True)
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
        return {RAISED: None}
    except Exception as exc:  # noqa: BLE001 - the error is the outcome
        return {RAISED: type(exc).__name__, CUDA_ERROR: error_name_in(str(exc))}


@claim("`.item()` during capture fails the capture and damages the process", _SYNC_FAILS, isolated=True)
def item_during_capture(device):
    return _failing_capture(device, lambda t: t.item())


@claim("`torch.cuda.synchronize()` during capture fails the capture and damages the process",
       _SYNC_FAILS, isolated=True)
def synchronize_during_capture(device):
    import torch

    return _failing_capture(device, lambda t: torch.cuda.synchronize())


@claim("`.cpu()` during capture is refused by PyTorch; the capture and the process stay usable",
       _HOST_COPY_REFUSED, isolated=True)
def cpu_during_capture(device):
    return _failing_capture(device, lambda t: t.cpu())


@claim("`.tolist()` during capture is refused by PyTorch (a copy to unpinned host memory)",
       _HOST_COPY_REFUSED, isolated=True)
def tolist_during_capture(device):
    return _failing_capture(device, lambda t: t.tolist())


@claim("in relaxed mode an unforked stream's work runs once, outside the graph", {
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


@claim("a raw capture_begin on the default stream is refused, and leaves the random generator in capture state", {
    RAISED: "RuntimeError", "the message asks for a non-default stream": True, RANDN_AFTER: OFFSET_INCREMENT},
    isolated=True)
def capture_on_default_stream(device):
    import torch

    g = torch.cuda.CUDAGraph()
    try:
        g.capture_begin()
        return {RAISED: None}
    except RuntimeError as exc:
        outcome = {RAISED: "RuntimeError", "the message asks for a non-default stream": "non-default stream" in str(exc)}
    outcome[RANDN_AFTER] = _randn_after(device)
    return outcome


@claim("a capture must end on the stream it began on",
       {RAISED: "RuntimeError", "the message asks for the same stream": True}, isolated=True)
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
        return {RAISED: None}
    except RuntimeError as exc:
        return {RAISED: "RuntimeError", "the message asks for the same stream": "same stream" in str(exc)}


@claim("`torch.cuda.graph(g, stream=s)` records on the stream you give it; nothing runs until a replay", {
    "the block ran on the stream given": True, "that stream was capturing": True,
    "result ready before the first replay": False, "result ready after a replay on the default stream": True})
def capture_on_a_chosen_stream(device):
    import torch

    x = torch.randn(1024, device=device)
    side = torch.cuda.Stream()
    warm_up(lambda: x * 2)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=side):
        on_side = torch.cuda.current_stream() == side
        capturing = torch.cuda.is_current_stream_capturing()
        y = x * 2
    new = torch.randn(1024, device=device)
    x.copy_(new)  # a value no kernel has computed with yet
    torch.cuda.synchronize()
    before = close(y, new * 2)
    g.replay()  # after the block the current stream is the default stream again
    torch.cuda.synchronize()
    return {"the block ran on the stream given": on_side, "that stream was capturing": capturing,
            "result ready before the first replay": before,
            "result ready after a replay on the default stream": close(y, new * 2)}
