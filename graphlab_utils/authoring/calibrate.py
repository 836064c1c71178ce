"""``graphlab calibrate``: measure the cost model's constants on a real GPU.

Usage::

    graphlab calibrate                 # measure, print the calibration JSON
    graphlab calibrate --out FILE      # ... and write it to FILE
    graphlab calibrate --write         # ... and replace graphlab_utils/simulator/data/calibration.json
    python -m graphlab_utils.authoring.calibrate [same options]

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
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
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
    Solved by ``numpy.linalg.lstsq`` on the rows scaled by their weights.
    """
    import numpy as np

    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if x.shape != y.shape or x.size == 0:
        raise ValueError("fit_line needs as many y as x values, at least one")
    if relative and np.any(y == 0):
        raise ValueError("a relative fit needs non-zero y values")
    scale = 1.0 / np.abs(y) if relative else np.ones_like(y)
    if through_origin:
        if not np.any(x):
            return 0.0, 0.0
        (slope,), *_ = np.linalg.lstsq((x * scale)[:, None], y * scale, rcond=None)
        return 0.0, float(slope)
    if np.all(x == x[0]):  # no spread in x: the weighted mean, flat
        w = scale ** 2
        return float(np.sum(w * y) / np.sum(w)), 0.0
    design = np.stack([np.ones_like(x), x], axis=1) * scale[:, None]
    (intercept, slope), *_ = np.linalg.lstsq(design, y * scale, rcond=None)
    return float(intercept), float(slope)


def _fit_record(xs: list[float], ys: list[float], **how: bool) -> dict:
    b, a = fit_line(xs, ys, **how)
    return {
        "x": list(xs), "y": [round(y, 4) for y in ys], "intercept": round(b, 4), "slope": round(a, 5),
        **{k: v for k, v in how.items() if v},
    }


def _cudart() -> Any | None:
    """NVIDIA's runtime bindings (through graphlab_utils.cudart), or None when not installed."""
    from graphlab_utils import cudart

    try:
        return cudart.runtime()
    except ImportError:
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
    from graphlab_utils import graphinfo

    try:
        return graphinfo.node_count(graph)
    except Exception:
        return None


def _check_gpu() -> None:
    import torch

    from graphlab_utils import backend

    if backend.is_simulated():
        raise CalibrationUnavailable(
            "graphlab calibrate measures a real GPU, but the simulator is active in this process."
        )
    if not torch.cuda.is_available():
        raise CalibrationUnavailable(
            "graphlab calibrate needs an NVIDIA GPU with a CUDA build of PyTorch, and none is available here."
        )


# -- the measurements ------------------------------------------------------------------


def _capture(fn: Any, pool: Any = None) -> tuple[Any, Any]:
    """One capture of ``fn`` (already warmed up), keeping its cudaGraph_t for node counts."""
    from graphlab_utils import recipes

    return recipes.capture(fn, pool, warmup=0, keep_graph=True)


def _warm_side_stream(fn: Any, iters: int = 3) -> None:
    import torch

    from graphlab_utils import recipes

    recipes.warm_up(fn, iters)
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


@dataclass
class _Run:
    """What every measurement of one calibration run shares."""

    dev: Any
    cudart: Any
    repeat: int
    log: Any = None
    notes: list = field(default_factory=list)
    raw: dict = field(default_factory=dict)

    def say(self, msg: str) -> None:
        if self.log is not None:
            print(msg, file=self.log, flush=True)


def _table(d: dict, nd: int = 3) -> dict:
    return {str(k): (None if v is None else round(v, nd)) for k, v in d.items()}


def _prime(run: _Run) -> None:
    """The process's one-off costs (context, allocator, first capture) before anything is timed."""
    import torch

    from graphlab_utils import workloads

    fn, _ = workloads.chain(10, run.dev)
    _warm_side_stream(fn)
    g, _ = _capture(fn)
    g.instantiate()
    g.replay()
    torch.cuda.synchronize()
    del g


def _exec_update_us(run: _Run, n: int, g: Any) -> float | None:
    """Host time of cudaGraphExecUpdate between ``g`` and a graph of chain(n) on new buffers."""
    import torch

    from graphlab_utils import workloads
    from graphlab_utils.timing import measure_host

    cudart = run.cudart
    fn_b, (x_b,) = workloads.chain(n, run.dev)
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
        run.notes.append(f"cudaGraphExecUpdate failed for chain({n}): {codes[0]}")
        return None
    # the exec now runs g_b's graph (odd number of updates): check it computes on x_b
    if state["i"] % 2 == 0:
        do_update()
    g.replay()
    torch.cuda.synchronize()
    if not torch.allclose(out_b, x_b + n):
        run.notes.append(f"after cudaGraphExecUpdate, chain({n}) did not compute on the new buffers")
    do_update()  # back to g's own graph
    g.replay()
    torch.cuda.synchronize()
    return t_upd.median_ms * 1e3


def _chain_costs(run: _Run, ns: list[int]) -> dict:
    """Capture, instantiate, node count and ExecUpdate of chains of ``n`` tiny kernels."""
    import torch

    from graphlab_utils import workloads
    from graphlab_utils.timing import measure_host

    out: dict[str, dict] = {k: {} for k in ("chains", "kept", "capture", "instantiate", "update", "nodes")}
    n_capture = 3
    for n in ns:
        run.say(f"chain of {n} kernels: capture, instantiate, ExecUpdate ...")
        fn, _ = workloads.chain(n, run.dev)
        out["chains"][n] = fn
        _warm_side_stream(fn)
        graphs: list = []
        out["capture"][n] = measure_host(lambda: graphs.append(_capture(fn)), repeat=n_capture).median_ms * 1e3
        it = iter(list(graphs))
        out["instantiate"][n] = measure_host(lambda: next(it)[0].instantiate(), repeat=n_capture).median_ms * 1e3
        g, result = graphs[0]
        out["kept"][n] = (g, result)
        out["nodes"][n] = _count_nodes(run.cudart, g)
        g.replay()
        torch.cuda.synchronize()
        if not torch.allclose(result, fn()):
            run.notes.append(f"graph output of chain({n}) differs from eager")
        if run.cudart is not None:
            out["update"][n] = _exec_update_us(run, n, g)
        del graphs
        torch.cuda.synchronize()
    return out


def _eager_and_replay(run: _Run, ns: list[int], chains: dict, kept: dict) -> tuple[dict, dict, dict, dict]:
    """Eager passes and replays in interleaved rounds (a slow spell of the host does not fall
    on one size only; the median over rounds per size), and the host time of one replay()."""
    from graphlab_utils.timing import measure

    run.say("eager passes and replays ...")
    eager_r: dict[int, list] = {n: [] for n in ns}
    replay_r: dict[int, list] = {n: [] for n in ns}
    for _ in range(3):
        for n in ns:
            eager_r[n].append(measure(chains[n], warmup=2, repeat=run.repeat).median_ms * 1e3)
            replay_r[n].append(measure(kept[n][0].replay, warmup=2, repeat=run.repeat).median_ms * 1e3)
    eager = {n: statistics.median(v) for n, v in eager_r.items()}
    replay = {n: statistics.median(v) for n, v in replay_r.items()}
    host_launch = {n: _host_us_per_call(kept[n][0].replay, 20) for n in ns[:2]}
    return eager, eager_r, replay, host_launch


def _eager_op_costs(run: _Run) -> dict:
    """Host cost of other kinds of eager ops: views, matrix products, convolutions. Matrix
    products and convolutions are timed through nn.Linear / nn.Conv2d, as the course's models
    call them (the module's own Python work included); the Linear's transposed weight view is
    left to the view cost."""
    import torch

    run.say("eager views, matmuls, convolutions ...")
    xv = torch.zeros(1024, device=run.dev)

    def views(k: int = 100) -> None:
        y = xv
        for _ in range(k):
            y = y.view(-1)

    costs = {"view": _host_us_per_call(views, 10) / 100, "add": _host_us_per_call(lambda: xv + 1.0, 100)}
    with torch.no_grad():
        lin = torch.nn.Linear(256, 256).to(run.dev)
        ym = torch.randn(8, 256, device=run.dev)
        wm = torch.randn(256, 256, device=run.dev) / 16
        conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(run.dev)
        yc = torch.randn(1, 64, 32, 32, device=run.dev)
        lin(ym), ym @ wm, conv(yc)
        costs["mm"] = _host_us_per_call(lambda: ym @ wm, 100)
        costs["linear"] = _host_us_per_call(lambda: lin(ym), 100)
        costs["conv"] = _host_us_per_call(lambda: conv(yc), 100)
    run.raw["eager_host_us"] = {
        "view": round(costs["view"], 3), "add": round(costs["add"], 3), "mm_8x256x256": round(costs["mm"], 3),
        "nn_linear_8x256x256": round(costs["linear"], 3), "nn_conv2d_64ch_32x32_3x3": round(costs["conv"], 3),
    }
    return costs


def _library_floors(run: _Run) -> dict:
    """Device floor of a tiny matmul / convolution: per-op time of replayed chains of 20 and 200."""
    import torch
    import torch.nn.functional as F

    from graphlab_utils.timing import measure

    run.say("smallest matmul and convolution ...")
    a8 = torch.randn(8, 64, device=run.dev)
    w64 = torch.randn(64, 64, device=run.dev) / 8
    c8 = torch.randn(1, 8, 8, 8, device=run.dev)
    wc8 = torch.randn(8, 8, 3, 3, device=run.dev) / 8

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
            per[k] = measure(gk.replay, warmup=3, repeat=run.repeat).median_ms * 1e3
            run.raw.setdefault("library_graph_nodes", {})[f"{label}{k}"] = _count_nodes(run.cudart, gk)
            del gk
        floors[label] = (per[200] - per[20]) / 180
        run.raw.setdefault("library_chain_replay_us", {}).update({f"{label}{k}": round(v, 3) for k, v in per.items()})
    return floors


def _kernel_min_us(run: _Run) -> float:
    """Per-node time of replayed graphs of 1-element kernels (1000 nodes against 100)."""
    from graphlab_utils import workloads
    from graphlab_utils.timing import measure

    run.say("smallest kernel ...")
    kmin = {}
    for n in (100, 1000):
        fn1, _ = workloads.chain(n, run.dev, numel=1)
        _warm_side_stream(fn1, 1)
        g1, _ = _capture(fn1)
        g1.instantiate()
        kmin[n] = measure(g1.replay, warmup=3, repeat=run.repeat).median_ms * 1e3
        del g1
    run.raw["tiny_kernel_graph_us"] = {str(k): round(v, 3) for k, v in kmin.items()}
    return (kmin[1000] - kmin[100]) / 900


def _bandwidth_gbs(run: _Run) -> float:
    """A device-to-device copy of 1 GiB: bytes read + written per second."""
    import torch

    from graphlab_utils.timing import measure

    run.say("bandwidth ...")
    nbytes = 1 << 30
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=run.dev).uniform_()
    dst = torch.empty_like(src)
    t_copy = measure(lambda: dst.copy_(src), warmup=3, repeat=10)
    run.raw["copy_1GiB_ms"] = round(t_copy.median_ms, 4)
    return 2 * nbytes / (t_copy.median_ms * 1e-3) / 1e9


def _matmul_tflops(run: _Run) -> float:
    """A 4096^3 fp32 matmul with TF32 off (the settings are restored afterwards)."""
    import torch

    from graphlab_utils.timing import measure

    run.say("matmul ...")
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    old_prec = torch.get_float32_matmul_precision()
    size = 4096
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        a = torch.randn(size, size, device=run.dev)
        b = torch.randn(size, size, device=run.dev)
        t_mm = measure(lambda: a @ b, warmup=3, repeat=10)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
        torch.set_float32_matmul_precision(old_prec)
    run.raw["matmul_4096_fp32_ms"] = round(t_mm.median_ms, 4)
    return 2 * size**3 / (t_mm.median_ms * 1e-3) / 1e12


def _sync_us(run: _Run) -> float:
    """``torch.cuda.synchronize()`` with an idle device."""
    import torch

    from graphlab_utils.timing import measure_host

    run.say("synchronize ...")
    torch.cuda.synchronize()
    return measure_host(torch.cuda.synchronize, warmup=10, repeat=200, sync=False).median_ms * 1e3


def measure_all(sizes: tuple[int, ...] = SIZES, repeat: int = 20, log: Any = None) -> dict:
    """Run every measurement; return the calibration record (a JSON-ready dict)."""
    import torch

    _check_gpu()
    t_start = time.perf_counter()
    torch.cuda.init()
    run = _Run(dev=torch.device("cuda"), cudart=_cudart(), repeat=repeat, log=log)
    _prime(run)
    ns = list(sizes)
    costs = _chain_costs(run, ns)
    eager, eager_r, replay, host_launch = _eager_and_replay(run, ns, costs["chains"], costs["kept"])
    costs["kept"].clear()
    capture, inst, upd, nodes = costs["capture"], costs["instantiate"], costs["update"], costs["nodes"]

    # the model has no per-pass constant for eager work: a line through the origin; the
    # other fits weigh each size equally (least squares on the relative error)
    ne = [n for n in ns if n >= EAGER_MIN_N] or ns
    fit_eager = _fit_record(ne, [eager[n] for n in ne], relative=True, through_origin=True)
    fit_replay = _fit_record(ns, [replay[n] for n in ns])
    fit_capture = _fit_record(ns, [capture[n] for n in ns], relative=True)
    node_x = [nodes[n] if nodes[n] else n for n in ns]
    fit_inst = _fit_record(node_x, [inst[n] for n in ns], relative=True)
    run.raw.update(
        eager_pass_us=_table(eager),
        eager_pass_rounds_us={str(n): [round(v, 2) for v in eager_r[n]] for n in ns},
        replay_us=_table(replay),
        replay_host_us=_table(host_launch),
        capture_us=_table(capture, 2),
        instantiate_us=_table(inst, 2),
        graph_nodes={str(n): nodes[n] for n in ns},
    )
    fits = {"eager": fit_eager, "replay": fit_replay, "capture": fit_capture, "instantiate": fit_inst}
    fit_upd = None
    if run.cudart is not None and all(upd.get(n) is not None for n in ns):
        fit_upd = _fit_record(node_x, [upd[n] for n in ns], relative=True)
        fits["exec_update"] = fit_upd
        run.raw["exec_update_us"] = _table(upd, 2)
    elif run.cudart is None:
        run.notes.append("cuda.bindings is not installed: ExecUpdate costs and node counts not measured (null)")

    ops = _eager_op_costs(run)
    floors = _library_floors(run)
    kernel_min_us = _kernel_min_us(run)
    bandwidth = _bandwidth_gbs(run)
    tflops = _matmul_tflops(run)
    sync_us = _sync_us(run)

    def pos(v: float) -> float:
        return max(0.0, float(v))

    constants = {
        "eager_launch_us": round(pos(fit_eager["slope"]), 3),
        "kernel_min_us": round(pos(kernel_min_us), 3),
        "mem_bandwidth_gbs": round(bandwidth, 1),
        "matmul_tflops": round(tflops, 2),
        "graph_launch_us": round(pos(statistics.median(host_launch.values())), 3),
        "graph_node_us": round(pos(fit_replay["slope"]), 3),
        "capture_per_op_us": round(pos(fit_capture["slope"]), 3),
        "capture_base_us": round(pos(fit_capture["intercept"]), 2),
        "instantiate_base_us": round(pos(fit_inst["intercept"]), 2),
        "instantiate_per_node_us": round(pos(fit_inst["slope"]), 4),
        "exec_update_base_us": round(pos(fit_upd["intercept"]), 2) if fit_upd else None,
        "exec_update_per_node_us": round(pos(fit_upd["slope"]), 4) if fit_upd else None,
        "sync_us": round(sync_us, 3),
        # the eager cost of other ops: eager_launch_us plus what a matmul / convolution
        # costs the host beyond an elementwise add measured the same way
        "eager_view_us": round(pos(ops["view"]), 3),
        "eager_matmul_launch_us": round(pos(fit_eager["slope"] + ops["linear"] - ops["view"] - ops["add"]), 3),
        "eager_conv_launch_us": round(pos(fit_eager["slope"] + ops["conv"] - ops["add"]), 3),
        "matmul_min_us": round(pos(floors["matmul"]), 3),
        "conv_min_us": round(pos(floors["conv"]), 3),
    }
    props = torch.cuda.get_device_properties(run.dev)
    return {
        "format": 1,
        "source": "graphlab calibrate",
        "gpu_name": torch.cuda.get_device_name(run.dev),
        "measured_on": _dt.date.today().isoformat(),
        "torch_version": torch.__version__,
        "cuda_version": str(torch.version.cuda),
        "driver_version": _driver_version(run.cudart),
        "python_version": platform.python_version(),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "constants": constants,
        "fits": fits,
        "raw": run.raw,
        "notes": run.notes,
        "duration_s": round(time.perf_counter() - t_start, 1),
    }


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
