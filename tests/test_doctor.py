"""graphlab doctor: the report for injected facts, and the exit codes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from graphlab_utils import doctor
from graphlab_utils.doctor import Facts, evaluate, format_report

HEALTHY_CPU = Facts(
    python="3.11.7",
    torch="2.13.0+cpu",
    torch_cuda=None,
    gpu_available=False,
    gpu_name=None,
    driver=None,
    cuda_bindings=None,
    jupyterlab="4.6.6",
    ipywidgets="8.1.9",
    jupyterlab_widgets="3.0.17",
    nbval="0.11.0",
    graphlab_backend=None,
)
HEALTHY_GPU = dataclasses.replace(
    HEALTHY_CPU,
    python="3.12.3",
    torch="2.11.0+cu130",
    torch_cuda="13.0",
    gpu_available=True,
    gpu_name="NVIDIA H100 80GB HBM3",
    driver="580.95.05",
    cuda_bindings="13.0.1",
)


def test_healthy_cpu_machine_uses_the_simulator():
    report = evaluate(HEALTHY_CPU)
    assert report.errors == [] and report.warnings == []
    assert report.exit_code == 0
    assert report.backend == "sim"
    text = format_report(report)
    assert "torch               2.13.0+cpu" in text
    assert "none (CPU build of PyTorch)" in text
    assert "GPU                 none visible to PyTorch" in text
    assert "jupyterlab_widgets  3.0.17" in text
    assert "nbval               0.11.0" in text
    assert text.endswith("ok: the notebooks will run on the simulator.")


def test_healthy_gpu_machine_uses_the_gpu():
    report = evaluate(HEALTHY_GPU)
    assert report.errors == [] and report.warnings == []
    assert report.backend == "real"
    text = format_report(report)
    for shown in ("NVIDIA H100 80GB HBM3", "580.95.05", "13.0.1", "2.11.0+cu130", "CUDA (torch build)  13.0"):
        assert shown in text
    assert text.endswith("ok: the notebooks will run on the real GPU.")


def test_torch_missing_is_an_error():
    report = evaluate(dataclasses.replace(HEALTHY_CPU, torch=None))
    assert report.exit_code == 1
    assert report.errors == [doctor.TORCH_MISSING]
    assert report.backend is None
    text = format_report(report)
    assert "torch               not installed" in text
    assert text.splitlines()[-1] == f"fix: {doctor.TORCH_MISSING}."
    assert "make lab" in doctor.TORCH_MISSING


def test_widgets_front_end_missing_is_an_error():
    report = evaluate(dataclasses.replace(HEALTHY_CPU, jupyterlab_widgets=None))
    assert report.exit_code == 1
    assert report.errors == [doctor.WIDGETS_FRONTEND_MISSING]
    assert "pip install jupyterlab_widgets" in format_report(report).splitlines()[-1]


def test_no_widgets_at_all_is_not_the_front_end_error():
    report = evaluate(dataclasses.replace(HEALTHY_CPU, ipywidgets=None, jupyterlab_widgets=None))
    assert doctor.WIDGETS_FRONTEND_MISSING not in report.errors


def test_real_backend_without_gpu_is_an_error():
    report = evaluate(dataclasses.replace(HEALTHY_CPU, graphlab_backend="real"))
    assert report.exit_code == 1
    assert report.errors == [
        "GRAPHLAB_BACKEND=real but PyTorch sees no CUDA GPU: unset it to use the simulator, "
        "or run on a machine with an NVIDIA GPU and a CUDA build of PyTorch"
    ]
    assert "GRAPHLAB_BACKEND=real" in format_report(report)


def test_invalid_backend_is_an_error():
    report = evaluate(dataclasses.replace(HEALTHY_GPU, graphlab_backend="cuda"))
    assert report.exit_code == 1
    assert "'cuda'" in report.errors[0] and "real, sim, auto" in report.errors[0]


def test_sim_requested_on_a_gpu_machine():
    report = evaluate(dataclasses.replace(HEALTHY_GPU, graphlab_backend="sim"))
    assert report.exit_code == 0
    assert report.backend == "sim"


def test_cuda_python_missing_on_a_gpu_is_a_warning():
    report = evaluate(dataclasses.replace(HEALTHY_GPU, cuda_bindings=None))
    assert report.exit_code == 0
    assert report.warnings == [doctor.CUDA_PYTHON_MISSING]
    assert "pip install -e .[gpu]" in doctor.CUDA_PYTHON_MISSING
    assert "06-08" in doctor.CUDA_PYTHON_MISSING
    assert f"warning: {doctor.CUDA_PYTHON_MISSING}." in format_report(report)


def test_cuda_python_missing_without_gpu_is_fine():
    assert evaluate(HEALTHY_CPU).warnings == []


def test_several_problems_are_all_named():
    facts = dataclasses.replace(HEALTHY_CPU, torch=None, jupyterlab_widgets=None)
    report = evaluate(facts)
    assert report.errors == [doctor.TORCH_MISSING, doctor.WIDGETS_FRONTEND_MISSING]


def test_print_report_returns_the_exit_code(capsys):
    assert doctor.print_report(HEALTHY_CPU) == 0
    assert doctor.print_report(dataclasses.replace(HEALTHY_CPU, torch=None)) == 1
    assert "fix: PyTorch is not installed" in capsys.readouterr().out


def test_gather_facts_on_this_machine(monkeypatch):
    monkeypatch.setenv("GRAPHLAB_BACKEND", "sim")
    facts = doctor.gather_facts()
    import torch

    assert facts.torch == torch.__version__
    assert facts.python == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    assert facts.nbval is not None
    assert facts.graphlab_backend == "sim"


@pytest.mark.parametrize(("value", "code"), [("sim", 0), ("bogus", 1)])
def test_graphlab_doctor_command_exit_code(value, code):
    env = dict(os.environ, GRAPHLAB_BACKEND=value)
    result = subprocess.run([sys.executable, "-m", "graphlab_utils", "doctor"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in result.stderr
    assert result.returncode == code, result.stdout + result.stderr
    assert "jupyterlab" in result.stdout


def test_graphlab_doctor_real_without_gpu_exit_code():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env = dict(os.environ, GRAPHLAB_BACKEND="real")
    result = subprocess.run([sys.executable, "-m", "graphlab_utils", "doctor"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert result.stdout.strip().splitlines()[-1].startswith("fix: GRAPHLAB_BACKEND=real but PyTorch")
