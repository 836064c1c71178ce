"""The GPU report (tools/gpu/gpu_report.py) from fake phase results: no GPU needed."""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def report_module(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools" / "gpu"))
    module = importlib.import_module("gpu_report")
    monkeypatch.setattr(module, "REPORTS", tmp_path / "reports")
    return module


@pytest.fixture()
def runner_module(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools" / "gpu"))
    return importlib.import_module("test_gpu")


def _capstone_results() -> dict:
    meta = {"device": "Test GPU", "date": "2026-01-01", "torch": "2.x", "cuda": "13.0", "timing": "measured on Test GPU",
            "channels": 64, "ops_per_unet_call": 258, "steps": 50, "guidance": 7.5, "tf32": False, "repeats": 5,
            "warmup": 2, "dtype": "float32"}
    rows = [{"size": 32, "batch": 1, "variant": "eager", "ms_per_image": 480.0, "speedup": 1.0, "relative_error": 0.0,
             "busy_share": 0.15, "host_ms_per_call": 470.0, "setup_s": 1.0, "finite": True},
            {"size": 32, "batch": 1, "variant": "step_graph", "ms_per_image": 150.0, "speedup": 3.2,
             "relative_error": 0.0, "busy_share": 0.93, "host_ms_per_call": 15.0, "setup_s": 0.4, "finite": True}]
    return {"meta": meta, "rows": rows}


def test_report_shows_retries_alone_and_the_capstone_table(report_module, tmp_path):
    run = tmp_path / "run"
    (run / "capstone-float32").mkdir(parents=True)
    (run / "capstone-float32" / "results.json").write_text(json.dumps(_capstone_results()))
    (run / "env.json").write_text(json.dumps({"gpu": "Test GPU", "torch": "2.x", "cuda": "13.0", "python": "3.12"}))
    tail = "FAILED notebooks/01_x.ipynb::Cell 20 - outputs differ"
    (run / "nbval.json").write_text(json.dumps({"jobs": 6, "all_passed": True, "notebooks": {
        "notebooks/00_welcome.ipynb": {"passed": True, "seconds": 9.0, "counts": {"passed": 4}, "tail": ""},
        "notebooks/01_x.ipynb": {"passed": True, "seconds": 30.0, "counts": {"passed": 21}, "tail": "",
                                 "shared_try": {"passed": False, "seconds": 31.0, "counts": {"failed": 1}, "tail": tail}},
    }}))
    (run / "capstone.json").write_text(json.dumps({"runs": {"float32": {
        "returncode": 0, "seconds": 200.0, "dir": "capstone-float32", "data": _capstone_results(), "tail": ""}}}))
    message = report_module.write_report([run])
    assert "test-gpu" in message
    md = next((tmp_path / "reports").glob("*.md")).read_text()
    assert "| notebooks/01_x.ipynb | pass (alone; failed while sharing the GPU) |" in md
    assert tail in md  # what failed while sharing is kept, not hidden
    assert "| capstone benchmark | pass |" in md
    assert "| 32x32 | 1 | one CUDA graph per step | 150.00 | 3.2x |" in md


def test_test_gpu_knows_the_capstone_phase(runner_module):
    test_gpu = runner_module
    assert "capstone" in test_gpu.PHASES
    assert [name for name, _ in test_gpu.CAPSTONE_RUNS] == ["float32", "float16"]


def test_diffusion_benchmark_runs_on_the_simulator(tmp_path):
    import subprocess

    out = tmp_path / "diffusion"
    proc = subprocess.run([sys.executable, "benchmarks/diffusion.py", "--sim-only", "--small", "--steps", "2",
                           "--batches", "1", "--repeats", "1", "--warmup", "1", "--variants", "step_graph", "loop_graph",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((out / "results.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"eager", "step_graph", "loop_graph"}
    assert rows["step_graph"]["relative_error"] == 0.0 and rows["step_graph"]["finite"]
    assert "host_ms_per_call" not in rows["eager"]  # the simulator's Python time is not a GPU host's
    assert "float32, TF32 off" in (out / "results.md").read_text()


def test_step_floor_needs_a_gpu_and_renders_its_table(tmp_path):
    import importlib.util
    import subprocess

    proc = subprocess.run([sys.executable, "benchmarks/diffusion_floor.py", "--out", str(tmp_path / "floor")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and "measures a real GPU" in proc.stderr
    spec = importlib.util.spec_from_file_location("diffusion_floor", ROOT / "benchmarks" / "diffusion_floor.py")
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    row = {"setting": "fp32", "eager_ms_per_step": 8.35, "graph_ms_per_step": 3.079, "bound": 2.71,
           "kernels_per_step": 462, "mean_kernel_us": 6.5, "kernel_us_per_step": 2990.0, "graph_equals_eager": True,
           "top_kernels": [{"name": "conv", "count": 32, "total_us": 819.0, "mean_us": 25.6}]}
    meta = {"device": "Test GPU", "date": "2026-01-01", "torch": "2.x", "cuda": "13.0", "size": 32,
            "command": "python3 benchmarks/diffusion_floor.py --out x"}
    md = floor.markdown(meta, [row, {"setting": "bf16", "error": "RuntimeError: boom"}])
    assert "| fp32 | 8.35 | 3.079 | 2.7x | 462 | 6.5 us | 2.99 ms | yes |" in md
    assert "| bf16 | failed: RuntimeError: boom |" in md


def test_jupyter_path_names_data_installed_beside_packages(runner_module, tmp_path, monkeypatch):
    # pip install --target DIR keeps nbconvert's templates in DIR/share/jupyter, where Jupyter
    # never looks: the GPU runner must name that folder for the tests it starts
    test_gpu = runner_module
    target, plain = tmp_path / "site", tmp_path / "plain"
    (target / "share" / "jupyter" / "nbconvert" / "templates").mkdir(parents=True)
    plain.mkdir()
    monkeypatch.setattr(sys, "path", [str(plain), str(target), str(target)])
    monkeypatch.setenv("JUPYTER_PATH", "/already/set")
    env = test_gpu.jupyter_path_env()
    assert env["JUPYTER_PATH"].split(os.pathsep) == [str(target / "share" / "jupyter"), "/already/set"]
    monkeypatch.setattr(sys, "path", [str(plain)])
    assert test_gpu.jupyter_path_env() == {}
