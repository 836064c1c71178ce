"""How close is the simulator's modelled timing to a real GPU?

Run on a machine with an NVIDIA GPU, from the repository root::

    python benchmarks/sim_vs_real.py            # all standard workloads
    python benchmarks/sim_vs_real.py --quick    # a smoke test (two small workloads)
    python benchmarks/sim_vs_real.py --sim-only # the modelled half alone (any machine)

For each of the course's standard workloads (``graphlab_utils.workloads``: a chain of N
tiny elementwise kernels for N in 10, 30, 100, 300, 1000; a small MLP; one 4096x4096 fp32
matmul) it measures, on the real GPU: the eager time per pass, the graph replay time, the
capture time and the instantiate time, all through ``graphlab_utils.timing``; the time of a
``cudaGraphExecUpdate`` onto new buffers against a re-instantiate (lesson 06); per kernel,
the eager host cost and the replay cost of a node (from ``chain1000``); and lesson 05's
memory figure: what graphs of 6 bucket sizes reserve with one shared pool and with one pool
each (``buckets``). It then runs
the SAME code in a child process with ``GRAPHLAB_BACKEND=sim`` (the simulator on the CPU,
the GPU hidden) and reads the modelled figures. By default it first calibrates the cost
model on this GPU (``graphlab calibrate``, in the same process) and models with that
calibration, so the table shows the model's own error rather than the drift of host-side
figures between runs; ``--packaged-calibration`` models with the shipped file instead. It
writes the calibration it used next to the report, and
``reports/sim_vs_real/<date>-<gpu>.json`` and ``.md``: per workload and quantity the
measured and the modelled figure, their ratio and whether it is within 30%.

Needs only torch and numpy (no Jupyter).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUANTITIES = (  # (key, title, unit)
    ("eager_ms", "eager pass", "ms"),
    ("replay_ms", "graph replay", "ms"),
    ("speedup", "speed-up eager/replay", "x"),
    ("eager_us_per_kernel", "eager: host cost per kernel", "us"),
    ("replay_us_per_node", "replay: cost per graph node", "us"),
    ("capture_ms", "capture", "ms"),
    ("instantiate_ms", "instantiate", "ms"),
    ("exec_update_ms", "cudaGraphExecUpdate (same topology, new buffers)", "ms"),
    ("update_speedup", "re-instantiate / ExecUpdate", "x"),
    # the bucket runner of lesson 05: graphs of 6 batch sizes, activations of 1 MiB per row
    ("largest_alone_mib", "memory: largest bucket's graph alone", "MiB"),
    ("shared_pool_mib", "memory: 6 bucket graphs, one shared pool, largest first", "MiB"),
    ("pool_each_mib", "memory: 6 bucket graphs, one pool each", "MiB"),
)
PER_KERNEL_WORKLOAD = "chain1000"  # per-kernel costs: the longest chain, so fixed costs wash out
BUCKETS = (1, 2, 4, 8, 16, 32)
TOLERANCE = 0.30
QUICK_WORKLOADS = ("chain10", "chain100")
N_CAPTURES = 3


# -- the measurements: identical code on both backends ---------------------------------------


def _warm_up_on_side_stream(fn: Any, iters: int = 3) -> None:
    """PyTorch's recipe before a capture: a few eager passes on a side stream."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(iters):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()


def _capture(fn: Any) -> tuple[Any, Any]:
    import torch

    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(g):
        out = fn()
    return g, out


def measure_workload(name: str, device: Any, repeat: int) -> dict:
    import torch

    from graphlab_utils import workloads
    from graphlab_utils.timing import measure, measure_host, speedup

    fn, _static = workloads.WORKLOADS[name](device)
    rep = repeat if name != "big_matmul" else max(3, repeat // 4)
    eager = measure(fn, warmup=3, repeat=rep)
    _warm_up_on_side_stream(fn)
    graphs: list = []
    capture = measure_host(lambda: graphs.append(_capture(fn)), repeat=N_CAPTURES)
    pending = iter(list(graphs))
    instantiate = measure_host(lambda: next(pending)[0].instantiate(), repeat=N_CAPTURES)
    g, out = graphs[0]
    replay = measure(g.replay, warmup=3, repeat=rep)
    torch.cuda.synchronize()
    same = bool(torch.allclose(out, fn(), rtol=1e-4, atol=1e-4))
    # lesson 06: move graph 0's executable onto graph 1's buffers (same topology) in place
    from graphlab_utils import cudart

    exec0, other = g.raw_cuda_graph_exec(), graphs[1][0].raw_cuda_graph()
    update = measure_host(lambda: cudart.check(cudart.cudaGraphExecUpdate(exec0, other)), repeat=N_CAPTURES, sync=False)
    result = {
        "eager_ms": eager.median_ms,
        "replay_ms": replay.median_ms,
        "speedup": speedup(eager, replay),
        "capture_ms": capture.median_ms,
        "instantiate_ms": instantiate.median_ms,
        "exec_update_ms": update.median_ms,
        "update_speedup": instantiate.median_ms / update.median_ms if update.median_ms > 0 else None,
        "graph_equals_eager": same,
        "modelled": eager.modelled,
        "device_name": eager.device_name,
    }
    if name == PER_KERNEL_WORKLOAD:
        kernels = workloads.kernels_per_pass("chain", int(name.removeprefix("chain")))
        result["eager_us_per_kernel"] = eager.median_ms * 1e3 / kernels
        result["replay_us_per_node"] = replay.median_ms * 1e3 / kernels
    del graphs, g, out, pending
    return result


def measure_bucket_memory(device: Any) -> dict:
    """Lesson 05's memory figures: growth of memory_reserved for graphs of 6 batch sizes.

    Each graph computes ``out[:bs] = tanh(x[:bs] * 2) + 1`` on rows of 1 MiB, so its
    activations (bs MiB each) come from the graph's pool; the static buffers exist before.
    """
    import torch

    row = 1 << 18  # float32 per row: 1 MiB
    x = torch.zeros(max(BUCKETS), row, device=device)
    out = torch.zeros(max(BUCKETS), row, device=device)

    def step(bs: int) -> None:
        out[:bs].copy_(torch.tanh(x[:bs] * 2.0) + 1.0)

    _warm_up_on_side_stream(lambda: step(max(BUCKETS)))

    def grown(order, shared: bool) -> float:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_reserved()
        pool = torch.cuda.graph_pool_handle() if shared else None
        graphs = []
        for bs in order:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                step(bs)
            graphs.append(graph)
        mib = (torch.cuda.memory_reserved() - before) / 2**20
        del graphs
        return mib

    largest_first = sorted(BUCKETS, reverse=True)
    return {
        "largest_alone_mib": grown([max(BUCKETS)], True),
        "shared_pool_mib": grown(largest_first, True),
        "pool_each_mib": grown(largest_first, False),
    }


def run_all(names: list[str], repeat: int, log: Any = sys.stderr) -> dict:
    """Set up the backend named by GRAPHLAB_BACKEND and measure every workload."""
    import torch

    import graphlab_utils
    from graphlab_utils import workloads

    session = graphlab_utils.setup(quiet=True)
    device = session.device
    # one throw-away capture: process-wide first-use costs stay out of the figures
    fn, _ = workloads.chain(10, device)
    _warm_up_on_side_stream(fn)
    g, _ = _capture(fn)
    g.instantiate()
    g.replay()
    torch.cuda.synchronize()
    del g
    results = {}
    for name in names:
        print(f"[{session.backend}] {name} ...", file=log, flush=True)
        results[name] = measure_workload(name, device, repeat)
    print(f"[{session.backend}] buckets ...", file=log, flush=True)
    results["buckets"] = measure_bucket_memory(device)
    return {
        "backend": session.backend,
        "gpu_name": session.gpu_name,
        "torch_version": torch.__version__,
        "label": session.timing_label,
        "results": results,
    }


# -- the child process (simulator) --------------------------------------------------------------


def run_sim_child(names: list[str], repeat: int, timeout: int, calibration: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sim.json"
        env = dict(os.environ)
        env["GRAPHLAB_BACKEND"] = "sim"
        if calibration is not None:
            env["GRAPHLAB_CALIBRATION"] = str(calibration)
        env["CUDA_VISIBLE_DEVICES"] = ""  # the simulator must not touch the GPU
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "--child", str(out),
            "--repeat", str(repeat), "--workloads", ",".join(names),
        ]
        try:
            proc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {"error": f"the simulator run took longer than {timeout} s"}
        sys.stderr.write(proc.stderr)
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"error": f"the simulator run failed (exit {proc.returncode}): {tail[0]}"}
        return json.loads(out.read_text())


# -- the report ---------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def compare(real: dict, sim: dict, names: list[str]) -> list[dict]:
    rows = []
    for name in [*names, "buckets"]:
        r = real.get("results", {}).get(name, {})
        s = sim.get("results", {}).get(name, {}) if "error" not in sim else {}
        for key, title, unit in QUANTITIES:
            measured, modelled = r.get(key), s.get(key)
            if measured is None and modelled is None:
                continue  # not a quantity of this workload
            ratio = None
            if measured and modelled is not None and measured > 0:
                ratio = modelled / measured
            rows.append(
                {
                    "workload": name,
                    "quantity": title,
                    "key": key,
                    "unit": unit,
                    "measured": measured,
                    "modelled": modelled,
                    "ratio": ratio,
                    "within_tolerance": None if ratio is None else abs(ratio - 1.0) <= TOLERANCE,
                }
            )
    return rows


def format_value(unit: str, v: Any) -> str:
    """A figure of the table in its unit: ms (auto-scaled), us, x or MiB."""
    from graphlab_utils.timing import format_ms, format_ratio

    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if unit == "x":
        return format_ratio(v)
    if unit == "us":
        return f"{v:.3g} us"
    if unit == "MiB":
        return f"{v:.1f} MiB"
    return format_ms(v)


def render_markdown(report: dict) -> str:
    lines = [
        f"# Simulator vs real GPU: {report['gpu_name']}",
        "",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        f"- GPU: {report['gpu_name']} (driver {report.get('driver_version') or 'unknown'}),"
        f" torch {report['torch_version']}, CUDA {report.get('cuda_version')}, Python {report['python_version']}",
        f"- cost model: calibrated on {report['calibration']['gpu_name']}"
        f" ({report['calibration']['measured_on']}; {report['calibration']['source']};"
        f" `{report['calibration']['file']}`)",
        f"- measured: CUDA events (device time per call) and `perf_counter` (host phases),"
        f" medians after warm-up; modelled: the same code under `GRAPHLAB_BACKEND=sim`",
        "",
    ]
    if report.get("sim_error"):
        lines += [f"**The simulator run did not complete:** {report['sim_error']}", ""]
    lines += [
        "| workload | quantity | measured | modelled | modelled/measured | within 30%? |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}"
        ok = {True: "yes", False: "**no**", None: "n/a"}[row["within_tolerance"]]
        lines.append(
            f"| {row['workload']} | {row['quantity']} | {format_value(row.get('unit', 'ms'), row['measured'])} |"
            f" {format_value(row.get('unit', 'ms'), row['modelled'])} | {ratio} | {ok} |"
        )
    checked = [r for r in report["rows"] if r["within_tolerance"] is not None]
    good = sum(1 for r in checked if r["within_tolerance"])
    lines += ["", f"{good} of {len(checked)} figures within 30%."]
    mismatched = [
        name for name, r in report["real"].get("results", {}).items() if not r.get("graph_equals_eager", True)
    ]
    if mismatched:
        lines += ["", f"Graph output differed from eager for: {', '.join(mismatched)}."]
    return "\n".join(lines) + "\n"


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip().splitlines()
        return out[0].strip() if out else None
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small workloads, fewer repeats")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per figure (default 20)")
    parser.add_argument("--workloads", help="comma-separated subset of: " + ", ".join(_workload_names()))
    parser.add_argument("--out-dir", type=Path, default=ROOT / "reports" / "sim_vs_real")
    parser.add_argument("--sim-only", action="store_true", help="run only the simulator half and print it")
    parser.add_argument(
        "--packaged-calibration", action="store_true",
        help="model with the packaged calibration file instead of a fresh calibration of this GPU"
        " taken just before the measurements",
    )
    parser.add_argument("--timeout", type=int, default=900, help="limit for the simulator run, seconds")
    parser.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    names = _select(args)
    repeat = 5 if args.quick and args.repeat == 20 else args.repeat

    if args.child:
        data = run_all(names, repeat)
        Path(args.child).write_text(json.dumps(data, indent=2))
        return 0
    if args.sim_only:
        sim = run_sim_child(names, repeat, args.timeout)
        print(json.dumps(sim, indent=2))
        return 0 if "error" not in sim else 1

    import torch

    from graphlab_utils.simulator import costmodel

    if not torch.cuda.is_available():
        print("error: this benchmark compares the simulator with a real GPU, and PyTorch sees none here"
              " (use --sim-only for the modelled half).", file=sys.stderr)
        return 2
    os.environ["GRAPHLAB_BACKEND"] = "real"
    date = _dt.date.today().isoformat()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cal_path = None
    if not args.packaged_calibration:
        # host-side figures drift from one minute to the next on the same machine: calibrate
        # right before measuring, so that the table shows the model's error, not the drift
        from graphlab_utils.authoring import calibrate

        print("calibrating ...", file=sys.stderr, flush=True)
        record = calibrate.measure_all(repeat=20)
        if any(v is None for v in record["constants"].values()):
            print("error: the calibration is incomplete: " + "; ".join(record["notes"]), file=sys.stderr)
            return 1
        cal_path = (args.out_dir / f"{date}-calibration.json").resolve()
        cal_path.write_text(json.dumps(record, indent=2) + "\n")
    real = run_all(names, repeat)
    sim = run_sim_child(names, repeat, args.timeout, cal_path)
    cal = costmodel.load(cal_path)
    report = {
        "date": date,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "gpu_name": real["gpu_name"],
        "driver_version": _driver_version(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "calibration": {
            "gpu_name": cal.gpu_name, "measured_on": cal.measured_on,
            "source": cal.source if cal_path is None else "graphlab calibrate, run by this benchmark just before",
            "file": str(cal_path.relative_to(ROOT) if cal_path and cal_path.is_relative_to(ROOT) else (cal_path or "packaged")),
        },
        "tolerance": TOLERANCE,
        "workloads": names,
        "real": real,
        "sim": sim,
        "sim_error": sim.get("error"),
        "rows": compare(real, sim, names),
    }
    stem = args.out_dir / f"{date}-{_slug(real['gpu_name'])}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    md = render_markdown(report)
    stem.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    return 0


def _workload_names() -> list[str]:
    from graphlab_utils import workloads

    return list(workloads.WORKLOADS)


def _select(args: argparse.Namespace) -> list[str]:
    known = _workload_names()
    if args.workloads:
        names = [n.strip() for n in args.workloads.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SystemExit(f"error: unknown workload(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return names
    return list(QUICK_WORKLOADS) if args.quick else known


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
