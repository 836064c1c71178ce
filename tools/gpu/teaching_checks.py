"""What lessons 01, 02, 04 and 07 teach about the GPU itself, checked on a real GPU.

Run from the repository root on a machine with an NVIDIA GPU (PyTorch is the only package
it needs; it calls the CUDA driver through ctypes):

    python3 tools/gpu/teaching_checks.py --out reports/gpu/teaching-checks

It writes ``report.md`` and ``report.json`` into the folder given by ``--out`` and takes
about two minutes. It changes no GPU setting (clocks, modes, limits). Every check runs in a
child process of its own, because several of them end their CUDA context on purpose.

The checks:

1. ``upload``: the first replay of a freshly instantiated graph against its steady replays
   (host time of the launch call, host time with the device drained, device time from CUDA
   events; medians over several fresh graphs, after warm-up), for chains of tiny kernels and
   for lesson 01's small MLP; then the three ways to move that first cost before traffic: a
   warm replay, ``cudaGraphUpload`` and instantiation with ``cudaGraphInstantiateFlagUpload``.
2. ``streams``: work on a stream never forked from the capturing stream, with its output
   preallocated and with a new output; work on the legacy default stream during a capture
   on PyTorch's (non-blocking) capture stream and on a blocking stream.
3. ``addresses``: a graph whose input's physical pages are replaced under the same virtual
   addresses (CUDA's virtual memory management, what expandable segments do); a replay after
   the input's memory went back to the driver (``empty_cache()``, and ``cuMemUnmap``).
4. ``rng_blocks``: lesson 07's workload: what stays reserved after ``g.reset()``, which
   blocks they are and who allocated them (``torch.cuda.memory._record_memory_history`` and
   a snapshot), and what ``del g`` gives back.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD_TIMEOUT_S = 150
MiB = 1 << 20

# -- the CUDA driver through ctypes -------------------------------------------------------

_CU = None


def cu():
    """libcuda, the driver API (always present where a GPU is; no Python package needed)."""
    global _CU
    if _CU is None:
        _CU = ctypes.CDLL("libcuda.so.1")
    return _CU


def cu_check(result: int, what: str) -> None:
    if result != 0:
        name = ctypes.c_char_p()
        cu().cuGetErrorName(result, ctypes.byref(name))
        raise RuntimeError(f"{what} failed with {name.value.decode() if name.value else result}")


class CUDA_GRAPH_INSTANTIATE_PARAMS(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("hUploadStream", ctypes.c_void_p),
                ("hErrNode_out", ctypes.c_void_p), ("result_out", ctypes.c_int)]


CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD = 2


class CUmemLocation(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class CUmemAllocFlags(ctypes.Structure):
    _fields_ = [("compressionType", ctypes.c_ubyte), ("gpuDirectRDMACapable", ctypes.c_ubyte),
                ("usage", ctypes.c_ushort), ("reserved", ctypes.c_ubyte * 4)]


class CUmemAllocationProp(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("requestedHandleTypes", ctypes.c_int), ("location", CUmemLocation),
                ("win32HandleMetaData", ctypes.c_void_p), ("allocFlags", CUmemAllocFlags)]


class CUmemAccessDesc(ctypes.Structure):
    _fields_ = [("location", CUmemLocation), ("flags", ctypes.c_int)]


class DeviceArray:
    """A float32 vector at a raw device address, for torch.as_tensor (``__cuda_array_interface__``)."""

    def __init__(self, ptr: int, n: int):
        self.__cuda_array_interface__ = {"shape": (n,), "typestr": "<f4", "data": (ptr, False), "strides": None, "version": 3}


# -- helpers used in the children ----------------------------------------------------------


def _sync():
    import torch

    torch.cuda.synchronize()


def _median(xs):
    return float(statistics.median(xs)) if xs else None


def time_call(fn):
    """One call of fn: host time until it returns (device idle before), host time with the device
    drained after, device time from CUDA events; all in microseconds."""
    import torch

    _sync()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    fn()
    end.record()
    t1 = time.perf_counter()
    _sync()
    t2 = time.perf_counter()
    return {"call_us": (t1 - t0) * 1e6, "wall_us": (t2 - t0) * 1e6, "device_us": start.elapsed_time(end) * 1e3}


def summarise(samples):
    return {k: _median([s[k] for s in samples]) for k in samples[0]} if samples else {}


def chain(n, x):
    def fn():
        y = x
        for _ in range(n):
            y = y + 1.0
        return y

    return fn


def warm(fn, iters=3):
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(iters):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    _sync()


def fresh_graph(fn):
    import torch

    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    _sync()
    return g, out


def first_and_steady(g, steady=20):
    first = time_call(g.replay)
    rest = [time_call(g.replay) for _ in range(steady)]
    return first, summarise(rest)


# -- check 1: the upload on first launch -------------------------------------------------------


def check_upload() -> dict:
    import torch

    x = torch.zeros(1024, device="cuda")
    out: dict = {"chains": {}, "graphs_per_size": 5}
    for n in (10, 100, 400):
        fn = chain(n, x)
        warm(fn)
        firsts, steadies = [], []
        for _ in range(out["graphs_per_size"]):
            g, _ = fresh_graph(fn)
            f, s = first_and_steady(g)
            firsts.append(f)
            steadies.append(s)
            del g
        out["chains"][n] = {"first": summarise(firsts), "steady": summarise(steadies)}

    # lesson 01's server model: 3 x (Linear + ReLU), batch 8, width 512
    torch.manual_seed(0)
    layers = []
    for _ in range(3):
        layers += [torch.nn.Linear(512, 512), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers).cuda().eval()
    static_x = torch.randn(8, 512, device="cuda")

    def forward():
        with torch.no_grad():
            return model(static_x)

    warm(forward)
    firsts, steadies = [], []
    for _ in range(out["graphs_per_size"]):
        g, _ = fresh_graph(forward)
        f, s = first_and_steady(g)
        firsts.append(f)
        steadies.append(s)
        del g
    out["mlp"] = {"first": summarise(firsts), "steady": summarise(steadies)}

    # three ways to pay the upload before traffic, on the 400-kernel chain
    fn = chain(400, x)
    stream = lambda: ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)  # noqa: E731
    ways = {}
    # (a) a warm replay at start-up: the request's replay is the second one
    samples = []
    for _ in range(3):
        g, _ = fresh_graph(fn)
        g.replay()
        _sync()
        samples.append(time_call(g.replay))
        del g
    ways["warm replay at start-up"] = summarise(samples)
    # (b) cudaGraphUpload (the driver's cuGraphUpload) right after instantiation
    samples, upload_calls = [], []
    for _ in range(3):
        g, _ = fresh_graph(fn)
        exe = ctypes.c_void_p(g.raw_cuda_graph_exec())
        upload_calls.append(time_call(lambda: cu_check(cu().cuGraphUpload(exe, stream()), "cuGraphUpload")))
        samples.append(time_call(g.replay))
        del g
    ways["cudaGraphUpload after instantiate"] = summarise(samples)
    out["upload_call"] = summarise(upload_calls)
    # (c) instantiate with the upload flag (cudaGraphInstantiateWithParams), against no flag
    for label, flags in (("instantiated with cudaGraphInstantiateFlagUpload", CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD),
                         ("instantiated without flags (first launch)", 0)):
        samples = []
        for _ in range(3):
            g = torch.cuda.CUDAGraph(keep_graph=True)
            with torch.cuda.graph(g):
                fn()
            _sync()
            exe = ctypes.c_void_p()
            params = CUDA_GRAPH_INSTANTIATE_PARAMS(flags=flags, hUploadStream=stream().value)
            cu_check(cu().cuGraphInstantiateWithParams(ctypes.byref(exe), ctypes.c_void_p(g.raw_cuda_graph()),
                                                       ctypes.byref(params)), "cuGraphInstantiateWithParams")
            _sync()
            samples.append(time_call(lambda: cu_check(cu().cuGraphLaunch(exe, stream()), "cuGraphLaunch")))
            cu_check(cu().cuGraphExecDestroy(exe), "cuGraphExecDestroy")
            del g
        ways[label] = summarise(samples)
    out["ways"] = ways
    out["chains"] = {str(k): v for k, v in out["chains"].items()}
    return out


# -- check 2: streams during a capture ---------------------------------------------------------

STREAM_CASES = {
    "unforked stream, output preallocated (global mode)": """
x = torch.randn(1 << 16, device="cuda"); z = torch.empty_like(x); other = torch.cuda.Stream()
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    y = x * 2
    with torch.cuda.stream(other):
        torch.add(x, 1, out=z)
""",
    "unforked stream, new output (global mode)": """
x = torch.randn(1 << 16, device="cuda"); other = torch.cuda.Stream()
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    y = x * 2
    with torch.cuda.stream(other):
        z = x + 1
""",
    "legacy default stream, output preallocated, PyTorch's capture stream": """
x = torch.randn(1 << 16, device="cuda"); z = torch.empty_like(x)
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    y = x * 2
    with torch.cuda.stream(torch.cuda.default_stream()):
        torch.add(x, 1, out=z)
""",
    "legacy default stream, output preallocated, a blocking capture stream": """
handle = ctypes.c_void_p()
cu_check(cu().cuStreamCreate(ctypes.byref(handle), 0), "cuStreamCreate")   # flags 0: a blocking stream
capture_stream = torch.cuda.ExternalStream(handle.value)
x = torch.randn(1 << 16, device="cuda"); z = torch.empty_like(x)
capture_stream.wait_stream(torch.cuda.current_stream()); torch.cuda.synchronize()
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g, stream=capture_stream):
    y = x * 2
    with torch.cuda.stream(torch.cuda.default_stream()):
        torch.add(x, 1, out=z)
""",
}

STREAM_EPILOGUE = """
torch.cuda.synchronize()
result["captured"] = True
result["z computed during the capture"] = bool(torch.equal(z, x + 1))
x.fill_(0.0)
g.replay()
torch.cuda.synchronize()
result["after a replay on a new x: y follows"] = bool(torch.equal(y, x * 2))
result["after a replay on a new x: z follows"] = bool(torch.equal(z, x + 1))
"""


def check_stream_case(name: str) -> dict:
    import torch  # noqa: F401  (the snippets use it)

    result: dict = {"captured": False}
    scope = {"torch": torch, "ctypes": ctypes, "cu": cu, "cu_check": cu_check, "result": result}
    try:
        exec(STREAM_CASES[name] + STREAM_EPILOGUE, scope)
    except Exception as exc:  # the outcome is the finding
        result["error"] = describe_error(exc)
    return result


def describe_error(exc: BaseException) -> dict:
    chain_ = []
    seen = exc
    while seen is not None and len(chain_) < 4:
        chain_.append(f"{type(seen).__name__}: {str(seen).strip().splitlines()[0] if str(seen).strip() else ''}")
        seen = seen.__context__
    return {"chain": chain_}


# -- check 3: virtual addresses ---------------------------------------------------------------


def _vmm_setup(nbytes: int):
    import torch

    torch.cuda.init()
    torch.zeros(1, device="cuda")  # the primary context is current
    dev = torch.cuda.current_device()
    prop = CUmemAllocationProp(type=1, requestedHandleTypes=0, location=CUmemLocation(type=1, id=dev))
    gran = ctypes.c_size_t()
    cu_check(cu().cuMemGetAllocationGranularity(ctypes.byref(gran), ctypes.byref(prop), 0), "cuMemGetAllocationGranularity")
    size = -(-nbytes // gran.value) * gran.value
    va = ctypes.c_uint64()
    cu_check(cu().cuMemAddressReserve(ctypes.byref(va), ctypes.c_size_t(size), ctypes.c_size_t(0), ctypes.c_uint64(0),
                                      ctypes.c_uint64(0)), "cuMemAddressReserve")
    access = CUmemAccessDesc(location=CUmemLocation(type=1, id=dev), flags=3)  # read-write

    def physical():
        h = ctypes.c_uint64()
        cu_check(cu().cuMemCreate(ctypes.byref(h), ctypes.c_size_t(size), ctypes.byref(prop), ctypes.c_uint64(0)), "cuMemCreate")
        return h

    def map_(h):
        cu_check(cu().cuMemMap(va, ctypes.c_size_t(size), ctypes.c_size_t(0), h, ctypes.c_uint64(0)), "cuMemMap")
        cu_check(cu().cuMemSetAccess(va, ctypes.c_size_t(size), ctypes.byref(access), ctypes.c_size_t(1)), "cuMemSetAccess")

    def unmap():
        cu_check(cu().cuMemUnmap(va, ctypes.c_size_t(size)), "cuMemUnmap")

    return va, size, physical, map_, unmap


def check_vmm_remap() -> dict:
    """Replace the input's physical pages under the same virtual addresses: the graph stays right."""
    import torch

    n = 1 << 20
    va, size, physical, map_, unmap = _vmm_setup(n * 4)
    page_a = physical()
    map_(page_a)
    t = torch.as_tensor(DeviceArray(va.value, n), device="cuda")
    t.copy_(torch.arange(n, device="cuda", dtype=torch.float32))
    fn = lambda: t * 2 + 1  # noqa: E731
    warm(fn)
    g, out = fresh_graph(fn)
    g.replay()
    _sync()
    result = {"replay before the move is right": bool(torch.equal(out, t * 2 + 1))}
    # the "defragmenter": new physical pages (allocated while the old ones still exist, so they differ),
    # the bytes copied over, then the same virtual range mapped onto them
    saved = t.clone()
    page_b = physical()
    _sync()
    unmap()
    cu_check(cu().cuMemRelease(page_a), "cuMemRelease")
    map_(page_b)
    t.copy_(saved)
    result["virtual address unchanged"] = t.data_ptr() == va.value
    t.add_(1000.0)  # new content after the move: the graph must see it
    g.replay()
    _sync()
    result["replay after the move reads the new pages"] = bool(torch.equal(out, t * 2 + 1))
    return result


def check_released_vmm() -> dict:
    """Unmap the input's pages (memory back to the driver), then replay."""
    import torch

    n = 1 << 20
    va, size, physical, map_, unmap = _vmm_setup(n * 4)
    page = physical()
    map_(page)
    t = torch.as_tensor(DeviceArray(va.value, n), device="cuda")
    t.fill_(1.0)
    fn = lambda: t * 2 + 1  # noqa: E731
    warm(fn)
    g, out = fresh_graph(fn)
    g.replay()
    _sync()
    unmap()
    cu_check(cu().cuMemRelease(page), "cuMemRelease")
    return _replay_then_next_call(g)


def _replay_then_next_call(g) -> dict:
    """What a replay of ``g`` over released memory does, and whether the next CUDA call still works."""
    import torch

    result = {}
    try:
        g.replay()
        _sync()
        result["replay"] = "no error"
    except Exception as exc:
        result["replay"] = describe_error(exc)
    try:
        torch.zeros(4, device="cuda").sum().item()
        result["next CUDA call"] = "no error"
    except Exception as exc:
        result["next CUDA call"] = describe_error(exc)
    return result


def check_released_empty_cache() -> dict:
    """The input freed and its segment returned with empty_cache() (cudaFree), then replay."""
    import torch

    held = [torch.ones(16 * MiB // 4, device="cuda")]  # 16 MiB: a segment of its own
    fn = lambda: held[0] * 2 + 1  # noqa: E731
    warm(fn)
    g, out = fresh_graph(fn)
    g.replay()
    _sync()
    before = torch.cuda.memory_reserved()
    held.clear()  # the last reference to the input
    torch.cuda.empty_cache()
    given_back = before - torch.cuda.memory_reserved()
    return {"reserved bytes given back by empty_cache": given_back, **_replay_then_next_call(g)}


# -- check 4: what survives reset() in lesson 07 ------------------------------------------------


def check_rng_blocks(stacks: str = "python") -> dict:
    import torch

    H = 65536
    w = torch.randn(H, device="cuda")
    bias = torch.randn(H, device="cuda")

    def step(x, layers=4):
        h = x
        for _ in range(layers):
            h = torch.tanh(h * w) + bias
        return h

    x = torch.randn(8, H, device="cuda")
    warm(lambda: step(x))
    torch.cuda.empty_cache()
    _sync()
    torch.cuda.memory._record_memory_history(max_entries=100000, stacks=stacks)
    before_blocks = _active_blocks(torch.cuda.memory._snapshot())
    base = torch.cuda.memory_reserved()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = step(x)
    _sync()
    result = {"stacks": stacks, "reserved by the capture (MiB)": (torch.cuda.memory_reserved() - base) / MiB}
    g.reset()
    del out
    torch.cuda.empty_cache()
    result["reserved after reset(), output dropped, empty_cache() (MiB)"] = (torch.cuda.memory_reserved() - base) / MiB
    snap = torch.cuda.memory._snapshot()
    survivors = []
    for seg, block in _active_blocks(snap).values():
        if (seg["address"], block["address"]) in {(s["address"], b["address"]) for s, b in before_blocks.values()}:
            continue
        frames = block.get("frames") or []
        survivors.append({
            "block bytes": block["size"], "requested bytes": block.get("requested_size"),
            "segment bytes": seg["total_size"], "segment pool": str(tuple(seg.get("segment_pool_id", ()))),
            "frames": [f"{f.get('name')} ({Path(str(f.get('filename'))).name}:{f.get('line')})" for f in frames][:40],
        })
    result["blocks allocated since the baseline and still alive after reset()"] = survivors
    del g
    torch.cuda.empty_cache()
    result["reserved after del g, empty_cache() (MiB)"] = (torch.cuda.memory_reserved() - base) / MiB
    torch.cuda.memory._record_memory_history(enabled=None)
    return result


def _active_blocks(snap) -> dict:
    found = {}
    for seg in snap["segments"]:
        for block in seg["blocks"]:
            if block["state"] == "active_allocated":
                found[(seg["address"], block["address"])] = (seg, block)
    return found


# -- driver: children, report -----------------------------------------------------------------

CHECKS = {
    "upload": (check_upload, ()),
    **{f"streams: {name}": (check_stream_case, (name,)) for name in STREAM_CASES},
    "addresses: physical pages replaced under the same virtual addresses": (check_vmm_remap, ()),
    "addresses: replay after cuMemUnmap (pages back to the driver)": (check_released_vmm, ()),
    "addresses: replay after del input + empty_cache() (cudaFree)": (check_released_empty_cache, ()),
    "rng_blocks: python stacks": (check_rng_blocks, ("python",)),
    "rng_blocks: C++ stacks": (check_rng_blocks, ("all",)),
}


def run_child(name: str) -> dict:
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {CHILD_TIMEOUT_S} s", "seconds": round(time.time() - t0, 1)}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-8:]
        return {"status": f"child exited with {proc.returncode} and no result", "output": tail,
                "seconds": round(time.time() - t0, 1)}
    data = json.loads(lines[-1][len("RESULT "):])
    data["seconds"] = round(time.time() - t0, 1)
    return data


def child(name: str) -> None:
    fn, args = CHECKS[name]
    try:
        result = {"status": "ran", "result": fn(*args)}
    except Exception as exc:
        result = {"status": "failed", "error": describe_error(exc)}
    print("RESULT " + json.dumps(result, default=str), flush=True)
    os._exit(0)  # a context ended on purpose must not hang the interpreter's exit


def environment() -> dict:
    import torch

    env = {"date": dt.date.today().isoformat(), "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0)}
    try:
        drv = ctypes.c_int()
        cu().cuDriverGetVersion(ctypes.byref(drv))
        env["driver CUDA version"] = f"{drv.value // 1000}.{drv.value % 1000 // 10}"
    except OSError:
        pass
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,compute_mode", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        env["nvidia-smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return env


def us(v) -> str:
    if v is None:
        return "-"
    return f"{v / 1e3:.3g} ms" if v >= 1000 else f"{v:.3g} us"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# Teaching checks on {env.get('gpu')}", "",
             f"- date: {env.get('date')}; torch {env.get('torch')}, CUDA {env.get('cuda')}, Python {env.get('python')}",
             f"- command: `{report['command']}`; {report['seconds']} s", "",
             "Each check ran in a child process of its own. Times are medians; `call` is the host time until",
             "the launch call returns (device idle before it), `wall` the host time until the device has",
             "finished, `device` the time between two CUDA events around the call.", ""]
    up = report["checks"].get("upload", {})
    lines += ["## 1. The first launch of a fresh graph (lessons 01 and 09)", ""]
    if up.get("status") == "ran":
        r = up["result"]
        lines += [f"Each row: {r['graphs_per_size']} freshly captured and instantiated graphs; the first replay of each, "
                  "against the median of its next 20.", "",
                  "| graph | first: call | first: wall | first: device | steady: call | steady: wall | steady: device | wall first/steady |",
                  "|---|---|---|---|---|---|---|---|"]
        rows = [(f"chain of {n} tiny kernels", v) for n, v in r["chains"].items()] + [("lesson 01's MLP", r["mlp"])]
        for label, v in rows:
            f, s = v["first"], v["steady"]
            lines.append(f"| {label} | {us(f['call_us'])} | {us(f['wall_us'])} | {us(f['device_us'])} | "
                         f"{us(s['call_us'])} | {us(s['wall_us'])} | {us(s['device_us'])} | "
                         f"{f['wall_us'] / s['wall_us']:.1f}x |")
        lines += ["", "The first replay seen by a request, chain of 400 kernels, when start-up did:", "",
                  "| start-up | call | wall | device |", "|---|---|---|---|"]
        for label, v in r["ways"].items():
            lines.append(f"| {label} | {us(v['call_us'])} | {us(v['wall_us'])} | {us(v['device_us'])} |")
        u = r["upload_call"]
        lines += ["", f"`cuGraphUpload` itself (400 nodes): call {us(u['call_us'])}, wall {us(u['wall_us'])}.", ""]
    else:
        lines += [f"did not run: {up}", ""]
    lines += ["## 2. Streams during a capture (lesson 02)", ""]
    for name, res in report["checks"].items():
        if name.startswith("streams: "):
            lines += [f"**{name[len('streams: '):]}**", "", "```text", json.dumps(res.get("result", res), indent=1), "```", ""]
    lines += ["## 3. Virtual addresses (lesson 04)", ""]
    for name, res in report["checks"].items():
        if name.startswith("addresses: "):
            lines += [f"**{name[len('addresses: '):]}**", "", "```text", json.dumps(res.get("result", res), indent=1), "```", ""]
    lines += ["## 4. What survives `reset()` (lesson 07)", ""]
    for name, res in report["checks"].items():
        if name.startswith("rng_blocks: "):
            lines += [f"**{name[len('rng_blocks: '):]}**", "", "```text", json.dumps(res.get("result", res), indent=1), "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for report.md and report.json")
    ap.add_argument("--only", help="run only the checks whose name starts with this")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    if not args.out:
        ap.error("--out FOLDER is required: the folder for report.md and report.json")
    try:
        import torch
    except ImportError:
        print("teaching_checks needs PyTorch with CUDA: install it, then run this again.")
        return 2
    if not torch.cuda.is_available():
        print("teaching_checks needs an NVIDIA GPU: run it on a machine where torch.cuda.is_available() is True.")
        return 2
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment(), "checks": {},
              "command": "python3 tools/gpu/teaching_checks.py --out " + str(args.out)}
    for name in CHECKS:
        if args.only and not name.startswith(args.only):
            continue
        print(f"{name} ...", flush=True)
        report["checks"][name] = run_child(name)
        print(f"  {report['checks'][name].get('status')} ({report['checks'][name].get('seconds')} s)", flush=True)
    report["seconds"] = round(time.time() - t0, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "report.md").write_text(markdown(report) + "\n")
    print(f"wrote {out / 'report.md'} and {out / 'report.json'} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
