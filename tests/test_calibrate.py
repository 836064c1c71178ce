"""Tests of graphlab_utils.authoring.calibrate and graphlab_utils.workloads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from graphlab_utils import workloads
from graphlab_utils.authoring import calibrate
from graphlab_utils.simulator import costmodel

ROOT = Path(__file__).resolve().parents[1]


def _has_gpu() -> bool:
    return torch.cuda.is_available()


def test_fit_line_recovers_a_line():
    xs = [10, 100, 400, 1000]
    ys = [3.0 + 12.8 * x for x in xs]
    b, a = calibrate.fit_line(xs, ys)
    assert a == pytest.approx(12.8) and b == pytest.approx(3.0)


def test_fit_line_least_squares_with_noise():
    xs = [0, 1, 2, 3]
    ys = [1.1, 2.9, 5.1, 6.9]
    b, a = calibrate.fit_line(xs, ys)
    assert a == pytest.approx(1.96) and b == pytest.approx(1.06)
    assert calibrate.fit_line([5, 5], [1.0, 3.0]) == (2.0, 0.0)
    with pytest.raises(ValueError):
        calibrate.fit_line([], [])


@pytest.mark.skipif(_has_gpu(), reason="checks the message shown where no GPU is present")
def test_calibrate_without_gpu_says_so_in_one_sentence(capsys):
    rc = calibrate.main(["--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert "GPU" in err and err.count("\n") == 0 and err.endswith(".")


def test_chain_workload_on_cpu():
    fn, (x,) = workloads.chain(30, "cpu")
    assert torch.allclose(fn(), x + 30.0)
    x.copy_(torch.zeros_like(x))  # new data goes through the static input
    assert torch.equal(fn(), torch.full_like(x, 30.0))
    with pytest.raises(ValueError):
        workloads.chain(0, "cpu")


def test_mlp_and_matmul_workloads_on_cpu():
    fn, (x,) = workloads.mlp("cpu")
    out = fn()
    assert out.shape == (8, 256) and (out >= 0).all() and not out.requires_grad
    fn2, _ = workloads.mlp("cpu")
    assert torch.equal(fn2(), out)  # deterministic weights and inputs
    fn3, (a, b) = workloads.big_matmul("cpu", size=64)
    assert torch.allclose(fn3(), a @ b)


def test_workload_registry():
    assert set(workloads.WORKLOADS) == {"chain10", "chain30", "chain100", "chain300", "chain1000", "mlp", "big_matmul"}
    fn, _ = workloads.WORKLOADS["chain10"]("cpu")
    assert fn().shape == (1024,)
    assert workloads.kernels_per_pass("chain", 300) == 300


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs an NVIDIA GPU")
def test_calibrate_quick_on_gpu(tmp_path):
    out = tmp_path / "calibration.json"
    env = dict(os.environ, GRAPHLAB_BACKEND="real", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "graphlab_utils.authoring.calibrate", "--quick", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data == json.loads(proc.stdout)
    assert data["gpu_name"] == torch.cuda.get_device_name()
    c = data["constants"]
    for k in ("eager_launch_us", "graph_node_us", "mem_bandwidth_gbs", "matmul_tflops"):
        assert c[k] > 0, k
    # what the course teaches must hold on the machine that calibrates
    assert c["eager_launch_us"] > c["graph_node_us"]
    assert data["raw"]["eager_pass_us"] and data["fits"]["replay"]["x"] == list(calibrate.QUICK_SIZES)
    if c["exec_update_per_node_us"] is not None:
        model = costmodel.model_from_dict(data)
        assert model.exec_update_us(100) < model.instantiate_us(100) * 10
    assert data["duration_s"] < 120


def test_fit_line_relative_and_through_origin():
    xs = [10, 100, 1000]
    ys = [10 * 9.0, 100 * 11.0, 1000 * 10.0]
    _, a = calibrate.fit_line(xs, ys, relative=True, through_origin=True)
    # each point weighs the same: the slope lands among the per-point ratios
    assert 9.0 < a < 11.0
    _, a_plain = calibrate.fit_line(xs, ys, through_origin=True)
    assert a_plain == pytest.approx(sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs))
    b, a = calibrate.fit_line([10, 100, 400], [50.0 + 2.5 * x for x in (10, 100, 400)], relative=True)
    assert b == pytest.approx(50.0) and a == pytest.approx(2.5)
    with pytest.raises(ValueError):
        calibrate.fit_line([1, 2], [0.0, 1.0], relative=True)


def _load_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sim_vs_real", ROOT / "benchmarks" / "sim_vs_real.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_report_table():
    bench = _load_benchmark()
    real = {"results": {"chain10": {"eager_ms": 0.10, "replay_ms": 0.02, "speedup": 5.0,
                                    "capture_ms": 0.3, "instantiate_ms": 0.05, "graph_equals_eager": True}}}
    sim = {"results": {"chain10": {"eager_ms": 0.12, "replay_ms": 0.03, "speedup": 4.0,
                                   "capture_ms": 0.3, "instantiate_ms": 0.05}}}
    rows = bench.compare(real, sim, ["chain10"])
    by_key = {r["key"]: r for r in rows}
    assert by_key["eager_ms"]["ratio"] == pytest.approx(1.2) and by_key["eager_ms"]["within_tolerance"]
    assert by_key["replay_ms"]["ratio"] == pytest.approx(1.5) and not by_key["replay_ms"]["within_tolerance"]
    report = {
        "gpu_name": "Test GPU", "date": "2026-01-01", "command": "python3 benchmarks/sim_vs_real.py",
        "torch_version": "2.x", "cuda_version": "13.0", "python_version": "3.12",
        "calibration": {"gpu_name": "Test GPU", "measured_on": "2026-01-01", "source": "test", "file": "x.json"},
        "real": real, "sim": sim, "rows": rows,
    }
    md = bench.render_markdown(report)
    assert "| chain10 | eager pass | 0.100 ms | 0.120 ms | 1.20 | yes |" in md
    assert "| chain10 | graph replay | 20.0 us | 30.0 us | 1.50 | **no** |" in md
    assert "4 of 5 figures within 30%." in md
    failed = bench.compare(real, {"error": "boom"}, ["chain10"])
    assert all(r["ratio"] is None for r in failed)


def test_benchmark_table_has_update_per_kernel_and_memory_rows():
    bench = _load_benchmark()
    figures = {"eager_ms": 11.0, "replay_ms": 1.2, "speedup": 9.2, "capture_ms": 6.0, "instantiate_ms": 3.0,
               "exec_update_ms": 0.5, "update_speedup": 6.0, "eager_us_per_kernel": 11.0, "replay_us_per_node": 1.2}
    real = {"results": {"chain1000": figures,
                        "buckets": {"largest_alone_mib": 64.0, "shared_pool_mib": 66.0, "pool_each_mib": 158.0}}}
    sim = {"results": {"chain1000": dict(figures, exec_update_ms=1.0, update_speedup=3.0),
                       "buckets": {"largest_alone_mib": 64.0, "shared_pool_mib": 66.0, "pool_each_mib": 158.0}}}
    rows = bench.compare(real, sim, ["chain1000"])
    by_key = {(r["workload"], r["key"]): r for r in rows}
    assert by_key[("chain1000", "update_speedup")]["ratio"] == pytest.approx(0.5)
    assert not by_key[("chain1000", "exec_update_ms")]["within_tolerance"]
    assert by_key[("buckets", "pool_each_mib")]["unit"] == "MiB"
    assert ("buckets", "eager_ms") not in by_key  # a workload lists only its own quantities
    assert bench.format_value("MiB", 158.0) == "158.0 MiB"
    assert bench.format_value("us", 1.16) == "1.16 us"
    assert bench.format_value("x", None) == "n/a"
