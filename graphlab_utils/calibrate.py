"""``graphlab calibrate``: measure the cost model's constants on a real GPU.

Usage::

    graphlab calibrate                 # measure, print the calibration JSON
    graphlab calibrate --out FILE      # ... and write it to FILE
    graphlab calibrate --write         # ... and replace graphlab_utils/simulator/data/calibration.json
    python -m graphlab_utils.calibrate [same options]

What is measured (after warm-up; medians; CUDA events for device time, ``perf_counter``
for host time, all through ``graphlab_utils.timing``):

* a chain of N tiny elementwise kernels (``workloads.chain``) for N in (1, 10, 100, 400,
  1000): eager pass (slope over N >= 10: ``eager_launch_us``), graph replay (slope: ``graph_node_us``), capture
  (intercept ``capture_base_us``, slope ``capture_per_op_us``), instantiate (intercept and
  slope: ``instantiate_base_us``, ``instantiate_per_node_us``), ``cudaGraphExecUpdate`` onto a
  graph captured on new buffers (``exec_update_*``), and the host time of one ``replay()``
  (``graph_launch_us``, on the two smallest graphs);
* the host cost of other eager ops: a view (``eager_view_us``), a small ``nn.Linear`` and a
  small ``nn.Conv2d`` (``eager_matmul_launch_us``, ``eager_conv_launch_us``:
  ``eager_launch_us`` plus their extra host time over an elementwise add timed the same
  way; the Linear's weight view is left to ``eager_view_us``);
* ``matmul_min_us``, ``conv_min_us``: per-op time of replayed chains of tiny matmuls and
  convolutions;
* ``kernel_min_us``: per-node time of a replayed graph of 1-element kernels;
* ``mem_bandwidth_gbs``: a 1 GiB device-to-device copy (bytes read + written);
* ``matmul_tflops``: a 4096^3 fp32 matmul with TF32 disabled;
* ``sync_us``: ``torch.cuda.synchronize()`` with an idle device.

The eager pass and replay of each chain are timed in interleaved rounds (median per size).
The fits are least squares lines: through the origin and on relative errors for the eager
pass (the model has no per-pass constant), on relative errors for capture, instantiate and
ExecUpdate (each size weighs the same), plain for replay; the raw points are kept in the
output under ``"raw"`` and the fits under ``"fits"``.
Runs in well under a minute on an H100. Needs only torch (and cuda.bindings for
ExecUpdate and node counts; without it those figures are null and the output says so).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIZES = (1, 10, 100, 400, 1000)
QUICK_SIZES = (1, 10, 100)
EAGER_MIN_N = 10  # the eager fit leaves out passes so short that their fixed costs dominate


class CalibrationUnavailable(RuntimeError):
    pass


# -- helpers ------------------------------------------------------------------------------


def fit_line(
    xs: list[float], ys: list[float], *, relative: bool = False, through_origin: bool = False
) -> tuple[float, float]:
    """Least squares ``y = intercept + slope * x``; returns ``(intercept, slope)``.

    ``relative=True`` minimises the relative errors ``(y - fit) / y`` (each point weighs
    the same whatever its size); ``through_origin=True`` fixes the intercept at 0.
    """
    n = len(xs)
    if n != len(ys) or n == 0:
        raise ValueError("fit_line needs as many y as x values, at least one")
    if relative and any(y == 0 for y in ys):
        raise ValueError("a relative fit needs non-zero y values")
    w = [1.0 / (y * y) for y in ys] if relative else [1.0] * n
    if through_origin:
        sxx = sum(wi * x * x for wi, x in zip(w, xs))
        if sxx == 0:
            return 0.0, 0.0
        return 0.0, sum(wi * x * y for wi, x, y in zip(w, xs, ys)) / sxx
    sw = sum(w)
    mx = sum(wi * x for wi, x in zip(w, xs)) / sw
    my = sum(wi * y for wi, y in zip(w, ys)) / sw
    sxx = sum(wi * (x - mx) ** 2 for wi, x in zip(w, xs))
    if sxx == 0:
        return my, 0.0
    slope = sum(wi * (x - mx) * (y - my) for wi, x, y in zip(w, xs, ys)) / sxx
    return my - slope * mx, slope


def _fit_record(xs: list[float], ys: list[float], **how: bool) -> dict:
    b, a = fit_line(xs, ys, **how)
    return {
        "x": list(xs), "y": [round(y, 4) for y in ys], "intercept": round(b, 4), "slope": round(a, 5),
        **{k: v for k, v in how.items() if v},
    }


def _cudart() -> Any | None:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6

        return cudart
    except Exception:
        pass
    try:
        from cuda import cudart  # older cuda-python

        return cudart
    except Exception:
        return None


def _err_ok(cudart: Any, err: Any) -> bool:
    try:
        return err == cudart.cudaError_t.cudaSuccess or int(err) == 0
    except Exception:
        return False


def _driver_version(cudart: Any | None) -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip().splitlines()
        if out:
            return out[0].strip()
    except Exception:
        pass
    if cudart is not None:
        try:
            err, v = cudart.cudaDriverGetVersion()
            if _err_ok(cudart, err):
                return f"CUDA driver API {v // 1000}.{(v % 1000) // 10}"
        except Exception:
            pass
    return None


def _count_nodes(cudart: Any | None, graph: Any) -> int | None:
    if cudart is None:
        return None
    try:
        res = cudart.cudaGraphGetNodes(graph.raw_cuda_graph(), 0)
        if not _err_ok(cudart, res[0]):
            return None
        return int(res[-1])
    except Exception:
        return None


def _check_gpu() -> None:
    import torch

    try:
        from graphlab_utils import simulator  # noqa: PLC0415

        sim_active = bool(simulator.is_installed())
    except Exception:
        sim_active = False
    if sim_active:
        raise CalibrationUnavailable(
            "graphlab calibrate measures a real GPU, but the simulator is active in this process."
        )
    if not torch.cuda.is_available():
        raise CalibrationUnavailable(
            "graphlab calibrate needs an NVIDIA GPU with a CUDA build of PyTorch, and none is available here."
        )


# -- the measurements ------------------------------------------------------------------


def _capture(fn: Any, pool: Any = None) -> tuple[Any, Any]:
    import torch

    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g, pool=pool):
        out = fn()
    return g, out


def _warm_side_stream(fn: Any, iters: int = 3) -> None:
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(iters):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()


def _host_us_per_call(fn: Any, calls: int, rounds: int = 7) -> float:
    """Host time of ``calls`` back-to-back calls of ``fn`` divided by ``calls`` (median over
    rounds); the device is idle at each round's start and is not waited for at its end."""
    import torch

    from graphlab_utils.timing import measure_host

    samples = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        t = measure_host(lambda: [fn() for _ in range(calls)], sync=False)
        samples.append(t.median_ms * 1e3 / calls)
    torch.cuda.synchronize()
    return statistics.median(samples)


def measure_all(sizes: tuple[int, ...] = SIZES, repeat: int = 20, log: Any = None) -> dict:
    """Run every measurement; return the calibration record (a JSON-ready dict)."""
    import torch
    import torch.nn.functional as F

    from graphlab_utils import workloads
    from graphlab_utils.timing import measure, measure_host

    def say(msg: str) -> None:
        if log is not None:
            print(msg, file=log, flush=True)

    _check_gpu()
    t_start = time.perf_counter()
    cudart = _cudart()
    dev = torch.device("cuda")
    torch.cuda.init()
    notes: list[str] = []
    raw: dict[str, Any] = {}

    # global warm-up: context, allocator, first capture
    fn, _ = workloads.chain(10, dev)
    _warm_side_stream(fn)
    g, _ = _capture(fn)
    g.instantiate()
    g.replay()
    torch.cuda.synchronize()
    del g

    ns = list(sizes)
    chains, kept = {}, {}
    host_launch, capture, inst, upd, nodes = {}, {}, {}, {}, {}
    n_capture = 3
    for n in ns:
        say(f"chain of {n} kernels: capture, instantiate, ExecUpdate ...")
        fn, (x,) = workloads.chain(n, dev)
        chains[n] = fn
        _warm_side_stream(fn)

        graphs: list = []
        t_cap = measure_host(lambda: graphs.append(_capture(fn)), repeat=n_capture)
        capture[n] = t_cap.median_ms * 1e3
        it = iter(list(graphs))
        t_inst = measure_host(lambda: next(it)[0].instantiate(), repeat=n_capture)
        inst[n] = t_inst.median_ms * 1e3
        g, out = graphs[0]
        kept[n] = (g, out)
        nodes[n] = _count_nodes(cudart, g)
        g.replay()
        torch.cuda.synchronize()
        if not torch.allclose(out, fn()):
            notes.append(f"graph output of chain({n}) differs from eager")

        # cudaGraphExecUpdate onto a graph captured on new buffers, same topology
        if cudart is not None:
            fn_b, (x_b,) = workloads.chain(n, dev)
            x_b.fill_(7.0)
            _warm_side_stream(fn_b, 1)
            g_b, out_b = _capture(fn_b, pool=g.pool())
            raws = [g_b.raw_cuda_graph(), g.raw_cuda_graph()]
            codes: list[str] = []
            state = {"i": 0}

            def do_update() -> None:
                src = raws[state["i"] % 2]
                state["i"] += 1
                res = cudart.cudaGraphExecUpdate(g.raw_cuda_graph_exec(), src)
                err = res[0] if isinstance(res, tuple) else res
                if not _err_ok(cudart, err):
                    codes.append(str(err))

            t_upd = measure_host(do_update, warmup=0, repeat=7)
            if codes:
                notes.append(f"cudaGraphExecUpdate failed for chain({n}): {codes[0]}")
                upd[n] = None
            else:
                upd[n] = t_upd.median_ms * 1e3
                # the exec now runs g_b's graph (odd number of updates): check it computes on x_b
                if state["i"] % 2 == 0:
                    do_update()
                g.replay()
                torch.cuda.synchronize()
                if not torch.allclose(out_b, x_b + n):
                    notes.append(f"after cudaGraphExecUpdate, chain({n}) did not compute on the new buffers")
                do_update()  # back to g's own graph
                g.replay()
                torch.cuda.synchronize()
            del g_b, out_b
        del graphs
        torch.cuda.synchronize()

    # eager passes and replays: interleaved rounds, so that a slow spell of the host
    # does not fall on one size only; the median over rounds per size
    say("eager passes and replays ...")
    rounds = 3
    eager_r: dict[int, list] = {n: [] for n in ns}
    replay_r: dict[int, list] = {n: [] for n in ns}
    for _ in range(rounds):
        for n in ns:
            eager_r[n].append(measure(chains[n], warmup=2, repeat=repeat).median_ms * 1e3)
            replay_r[n].append(measure(kept[n][0].replay, warmup=2, repeat=repeat).median_ms * 1e3)
    eager = {n: statistics.median(v) for n, v in eager_r.items()}
    replay = {n: statistics.median(v) for n, v in replay_r.items()}
    # host time of one replay(): back-to-back launches of the smallest graphs
    host_launch = {n: _host_us_per_call(kept[n][0].replay, 20) for n in ns[:2]}
    graph_launch_us = statistics.median(host_launch.values())
    del kept

    def table(d: dict, nd: int = 3) -> dict:
        return {str(k): (None if v is None else round(v, nd)) for k, v in d.items()}

    # the model has no per-pass constant for eager work: a line through the origin; the
    # other fits weigh each size equally (least squares on the relative error)
    ne = [n for n in ns if n >= EAGER_MIN_N] or ns
    fit_eager = _fit_record(ne, [eager[n] for n in ne], relative=True, through_origin=True)
    fit_replay = _fit_record(ns, [replay[n] for n in ns])
    fit_capture = _fit_record(ns, [capture[n] for n in ns], relative=True)
    node_x = [nodes[n] if nodes[n] else n for n in ns]
    fit_inst = _fit_record(node_x, [inst[n] for n in ns], relative=True)
    raw.update(
        eager_pass_us=table(eager),
        eager_pass_rounds_us={str(n): [round(v, 2) for v in eager_r[n]] for n in ns},
        replay_us=table(replay),
        replay_host_us=table(host_launch),
        capture_us=table(capture, 2),
        instantiate_us=table(inst, 2),
        graph_nodes={str(n): nodes[n] for n in ns},
    )
    fits = {"eager": fit_eager, "replay": fit_replay, "capture": fit_capture, "instantiate": fit_inst}
    if cudart is not None and all(upd[n] is not None for n in ns):
        fit_upd = _fit_record(node_x, [upd[n] for n in ns], relative=True)
        fits["exec_update"] = fit_upd
        raw["exec_update_us"] = table(upd, 2)
    else:
        fit_upd = None
        if cudart is None:
            notes.append("cuda.bindings is not installed: ExecUpdate costs and node counts not measured (null)")

    # host cost of other kinds of eager ops: views, matrix products, convolutions. Matrix
    # products and convolutions are timed through nn.Linear / nn.Conv2d, as the course's
    # models call them (the module's own Python work included); the Linear's transposed
    # weight view is left to eager_view_us.
    say("eager views, matmuls, convolutions ...")
    xv = torch.zeros(1024, device=dev)

    def views(k: int = 100) -> None:
        y = xv
        for _ in range(k):
            y = y.view(-1)

    view_us = _host_us_per_call(views, 10) / 100
    add_us = _host_us_per_call(lambda: xv + 1.0, 100)
    with torch.no_grad():
        lin = torch.nn.Linear(256, 256).to(dev)
        ym = torch.randn(8, 256, device=dev)
        wm = torch.randn(256, 256, device=dev) / 16
        conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(dev)
        yc = torch.randn(1, 64, 32, 32, device=dev)
        lin(ym), ym @ wm, conv(yc)
        mm_us = _host_us_per_call(lambda: ym @ wm, 100)
        linear_us = _host_us_per_call(lambda: lin(ym), 100)
        conv_us = _host_us_per_call(lambda: conv(yc), 100)
    raw["eager_host_us"] = {
        "view": round(view_us, 3), "add": round(add_us, 3), "mm_8x256x256": round(mm_us, 3),
        "nn_linear_8x256x256": round(linear_us, 3), "nn_conv2d_64ch_32x32_3x3": round(conv_us, 3),
    }

    # device floor of a tiny matmul / convolution: per-op time of replayed chains
    say("smallest matmul and convolution ...")
    a8 = torch.randn(8, 64, device=dev)
    w64 = torch.randn(64, 64, device=dev) / 8
    c8 = torch.randn(1, 8, 8, 8, device=dev)
    wc8 = torch.randn(8, 8, 3, 3, device=dev) / 8

    def mm_chain(k: int) -> Any:
        def f() -> Any:
            y = a8
            for _ in range(k):
                y = y @ w64
            return y
        return f

    def conv_chain(k: int) -> Any:
        def f() -> Any:
            y = c8
            for _ in range(k):
                y = F.conv2d(y, wc8, padding=1)
            return y
        return f

    floors: dict[str, float] = {}
    for label, make in (("matmul", mm_chain), ("conv", conv_chain)):
        per = {}
        for k in (20, 200):
            f = make(k)
            _warm_side_stream(f, 2)
            gk, _ = _capture(f)
            gk.instantiate()
            per[k] = measure(gk.replay, warmup=3, repeat=repeat).median_ms * 1e3
            raw.setdefault("library_graph_nodes", {})[f"{label}{k}"] = _count_nodes(cudart, gk)
            del gk
        floors[label] = (per[200] - per[20]) / 180
        raw.setdefault("library_chain_replay_us", {}).update({f"{label}{k}": round(v, 3) for k, v in per.items()})
    del lin, ym, wm, conv, yc, a8, w64, c8, wc8, xv

    # kernel_min: a graph of 1-element kernels
    say("smallest kernel ...")
    kmin = {}
    for n in (100, 1000):
        fn1, _ = workloads.chain(n, dev, numel=1)
        _warm_side_stream(fn1, 1)
        g1, _ = _capture(fn1)
        g1.instantiate()
        kmin[n] = measure(g1.replay, warmup=3, repeat=repeat).median_ms * 1e3
        del g1
    kernel_min_us = (kmin[1000] - kmin[100]) / 900
    raw["tiny_kernel_graph_us"] = {str(k): round(v, 3) for k, v in kmin.items()}

    # bandwidth: device-to-device copy of 1 GiB
    say("bandwidth ...")
    nbytes = 1 << 30
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    t_copy = measure(lambda: dst.copy_(src), warmup=3, repeat=10)
    bandwidth = 2 * nbytes / (t_copy.median_ms * 1e-3) / 1e9
    raw["copy_1GiB_ms"] = round(t_copy.median_ms, 4)
    del src, dst

    # fp32 matmul, TF32 off
    say("matmul ...")
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    old_prec = torch.get_float32_matmul_precision()
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        size = 4096
        a = torch.randn(size, size, device=dev)
        b = torch.randn(size, size, device=dev)
        t_mm = measure(lambda: a @ b, warmup=3, repeat=10)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
        torch.set_float32_matmul_precision(old_prec)
    tflops = 2 * size**3 / (t_mm.median_ms * 1e-3) / 1e12
    raw["matmul_4096_fp32_ms"] = round(t_mm.median_ms, 4)
    del a, b

    # synchronize with an idle device
    say("synchronize ...")
    torch.cuda.synchronize()
    t_sync = measure_host(torch.cuda.synchronize, warmup=10, repeat=200, sync=False)

    def pos(v: float) -> float:
        return max(0.0, float(v))

    constants = {
        "eager_launch_us": round(pos(fit_eager["slope"]), 3),
        "kernel_min_us": round(pos(kernel_min_us), 3),
        "mem_bandwidth_gbs": round(bandwidth, 1),
        "matmul_tflops": round(tflops, 2),
        "graph_launch_us": round(pos(graph_launch_us), 3),
        "graph_node_us": round(pos(fit_replay["slope"]), 3),
        "capture_per_op_us": round(pos(fit_capture["slope"]), 3),
        "capture_base_us": round(pos(fit_capture["intercept"]), 2),
        "instantiate_base_us": round(pos(fit_inst["intercept"]), 2),
        "instantiate_per_node_us": round(pos(fit_inst["slope"]), 4),
        "exec_update_base_us": round(pos(fit_upd["intercept"]), 2) if fit_upd else None,
        "exec_update_per_node_us": round(pos(fit_upd["slope"]), 4) if fit_upd else None,
        "sync_us": round(t_sync.median_ms * 1e3, 3),
        # the eager cost of other ops: eager_launch_us plus what a matmul / convolution
        # costs the host beyond an elementwise add measured the same way
        "eager_view_us": round(pos(view_us), 3),
        "eager_matmul_launch_us": round(pos(fit_eager["slope"] + linear_us - view_us - add_us), 3),
        "eager_conv_launch_us": round(pos(fit_eager["slope"] + conv_us - add_us), 3),
        "matmul_min_us": round(pos(floors["matmul"]), 3),
        "conv_min_us": round(pos(floors["conv"]), 3),
    }
    props = torch.cuda.get_device_properties(dev)
    record = {
        "format": 1,
        "source": "graphlab calibrate",
        "gpu_name": torch.cuda.get_device_name(dev),
        "measured_on": _dt.date.today().isoformat(),
        "torch_version": torch.__version__,
        "cuda_version": str(torch.version.cuda),
        "driver_version": _driver_version(cudart),
        "python_version": platform.python_version(),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "constants": constants,
        "fits": fits,
        "raw": raw,
        "notes": notes,
        "duration_s": round(time.perf_counter() - t_start, 1),
    }
    return record


# -- command line ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="graphlab calibrate",
        description="Measure the cost-model constants on this machine's GPU.",
    )
    parser.add_argument("--out", type=Path, help="also write the calibration JSON to this file")
    parser.add_argument(
        "--write", action="store_true",
        help="replace the packaged calibration file (graphlab_utils/simulator/data/calibration.json)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a smoke test)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)

    sizes = QUICK_SIZES if args.quick else SIZES
    repeat = 5 if args.quick else 20
    try:
        record = measure_all(sizes=sizes, repeat=repeat, log=None if args.quiet else sys.stderr)
    except CalibrationUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.quick:
        record["source"] = "graphlab calibrate --quick"
    text = json.dumps(record, indent=2) + "\n"
    print(text, end="")
    from graphlab_utils.simulator import costmodel

    usable = all(v is not None for k, v in record["constants"].items())
    targets = []
    if args.out:
        targets.append(args.out)
    if args.write:
        if not usable:
            print(
                "error: not writing the packaged calibration file: some constants could not be measured"
                " (see notes).",
                file=sys.stderr,
            )
            return 1
        targets.append(costmodel.DEFAULT_PATH)
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    costmodel.load.cache_clear()
    if usable:
        costmodel.model_from_dict(record, where="the new calibration")  # validates the record
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
