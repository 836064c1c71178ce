"""The backend switch and setup(): which backend runs, seeds, the one printed line."""

from __future__ import annotations

import random
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import graphlab_utils
from graphlab_utils import backend
from graphlab_utils.backend import BackendError, Session, choose_backend, setup

REAL_WITHOUT_GPU = (
    "GRAPHLAB_BACKEND=real but PyTorch sees no CUDA GPU: unset it to use the simulator, "
    "or run on a machine with an NVIDIA GPU and a CUDA build of PyTorch"
)


# --- choose_backend -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "gpu", "expected"),
    [
        (None, True, "real"),
        (None, False, "sim"),
        ("", True, "real"),
        ("", False, "sim"),
        ("auto", True, "real"),
        ("auto", False, "sim"),
        ("AUTO", False, "sim"),
        ("real", True, "real"),
        ("Real", True, "real"),
        (" real ", True, "real"),
        ("sim", True, "sim"),
        ("sim", False, "sim"),
        ("SIM", False, "sim"),
    ],
)
def test_choose_backend(requested, gpu, expected):
    assert choose_backend(requested, gpu) == expected


@pytest.mark.parametrize("requested", ["real", "REAL", " Real"])
def test_real_without_gpu_says_what_to_do(requested):
    with pytest.raises(BackendError) as err:
        choose_backend(requested, gpu_available=False)
    assert str(err.value) == REAL_WITHOUT_GPU


@pytest.mark.parametrize("requested", ["gpu", "cuda", "simulator", "1", "real sim"])
@pytest.mark.parametrize("gpu", [True, False])
def test_unknown_backend_names_the_allowed_values(requested, gpu):
    with pytest.raises(BackendError) as err:
        choose_backend(requested, gpu)
    message = str(err.value)
    assert repr(requested) in message
    for allowed in ("real", "sim", "auto"):
        assert allowed in message


def test_backend_error_is_a_runtime_error():
    assert issubclass(BackendError, RuntimeError)
    assert graphlab_utils.BackendError is BackendError
    assert graphlab_utils.Session is Session
    assert graphlab_utils.setup is setup


# --- setup() ------------------------------------------------------------------------


@pytest.fixture
def fake_simulator(monkeypatch):
    """A stand-in for graphlab_utils.simulator that records install() calls."""
    sim = types.ModuleType("graphlab_utils.simulator")
    sim.calls = []
    sim.installed = False

    def install():
        sim.calls.append("install")
        sim.installed = True

    def uninstall():
        sim.calls.append("uninstall")
        sim.installed = False

    sim.install, sim.uninstall = install, uninstall
    sim.is_installed = lambda: sim.installed
    monkeypatch.setitem(sys.modules, "graphlab_utils.simulator", sim)
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    monkeypatch.delenv("GRAPHLAB_BACKEND", raising=False)
    return sim


def test_setup_real_without_gpu_raises(monkeypatch):
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    with pytest.raises(BackendError, match="GRAPHLAB_BACKEND=real but PyTorch sees no CUDA GPU"):
        setup("real", quiet=True)


def test_setup_reads_graphlab_backend(monkeypatch):
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    monkeypatch.setenv("GRAPHLAB_BACKEND", "real")
    with pytest.raises(BackendError):
        setup(quiet=True)
    monkeypatch.setenv("GRAPHLAB_BACKEND", "bogus")
    with pytest.raises(BackendError, match="'bogus'"):
        setup(quiet=True)


def test_setup_sim_session_fields(fake_simulator, monkeypatch):
    monkeypatch.setattr(backend, "calibration_gpu_name", lambda: "NVIDIA H100 80GB HBM3")
    session = setup(quiet=True)
    assert session == Session(
        backend="sim",
        device=torch.device("cpu"),
        gpu_name="NVIDIA H100 80GB HBM3",
        torch_version=torch.__version__,
        timing_label="modelled (calibrated on NVIDIA H100 80GB HBM3)",
        cuda_version=None,
        seed=0,
    )
    assert session.is_sim and not session.is_real
    assert fake_simulator.calls == ["install"]
    with pytest.raises(Exception):
        session.backend = "real"  # frozen


def test_setup_prints_exactly_one_line(fake_simulator, monkeypatch, capsys):
    monkeypatch.setattr(backend, "calibration_gpu_name", lambda: "NVIDIA H100 80GB HBM3")
    setup()
    assert capsys.readouterr().out == (
        "graphlab: simulator backend (no NVIDIA GPU): torch.cuda graph API simulated on the "
        "CPU; timings modelled (calibrated on NVIDIA H100 80GB HBM3)\n"
    )
    setup(quiet=True)
    assert capsys.readouterr().out == ""


def test_setup_sim_requested_on_a_gpu_machine_says_why(fake_simulator, monkeypatch, capsys):
    monkeypatch.setattr(backend, "gpu_available", lambda: True)
    session = setup("sim")
    assert session.backend == "sim"
    assert "simulator backend (GRAPHLAB_BACKEND=sim)" in capsys.readouterr().out


def test_setup_twice_is_harmless_and_fixes_seeds(fake_simulator):
    first = setup(quiet=True)
    a = (torch.rand(4), random.random(), np.random.rand())
    second = setup(quiet=True)
    b = (torch.rand(4), random.random(), np.random.rand())
    assert first == second
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert fake_simulator.calls == ["install"]  # not installed twice
    setup(seed=1, quiet=True)
    assert not torch.equal(torch.rand(4), a[0])


def test_setup_sets_print_options(fake_simulator):
    torch.set_printoptions(precision=8, sci_mode=True)
    setup(quiet=True)
    assert str(torch.tensor([1 / 3, 1e-6])) == "tensor([0.3333, 0.0000])"
    torch.set_printoptions(profile="default")


def test_setup_without_simulator_module_raises(monkeypatch):
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    monkeypatch.setitem(sys.modules, "graphlab_utils.simulator", None)  # import fails
    with pytest.raises(BackendError, match="the simulator is not available in this version of graphlab_utils"):
        setup("sim", quiet=True)


def test_calibration_gpu_name_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "graphlab_utils.simulator.costmodel", None)
    assert backend.calibration_gpu_name() == "a real GPU"


def test_gpu_available_matches_this_machine():
    assert backend.gpu_available() == torch.cuda.is_available()


@pytest.mark.gpu
def test_setup_real_on_a_gpu(monkeypatch, capsys):
    monkeypatch.delenv("GRAPHLAB_BACKEND", raising=False)
    session = setup("real")
    assert session.backend == "real"
    assert session.device == torch.device("cuda")
    assert session.gpu_name == torch.cuda.get_device_name(0)
    assert session.timing_label == f"measured on {session.gpu_name}"
    line = capsys.readouterr().out
    assert line.startswith(f"graphlab: real backend on {session.gpu_name} (torch {torch.__version__}, CUDA ")
    assert line.endswith("timings measured with CUDA events\n")
    a = torch.rand(3, device=session.device)
    setup("real", quiet=True)
    assert torch.equal(a, torch.rand(3, device=session.device))


def test_setup_with_the_real_simulator():
    """When the package ships its simulator, setup('sim') installs it and says so."""
    try:
        import graphlab_utils.simulator as simulator
    except ImportError:
        pytest.skip("graphlab_utils.simulator is not in this version")
    was_installed = simulator.is_installed()
    try:
        session = setup("sim", quiet=True)
        assert simulator.is_installed()
        assert session.device == torch.device("cpu")
        assert session.timing_label.startswith("modelled (calibrated on ")
    finally:
        if not was_installed:
            simulator.uninstall()


def test_import_is_light():
    code = (
        "import sys, graphlab_utils\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('matplotlib', 'jupyterlab', 'jupyter_server', 'notebook', 'ipywidgets', 'nbformat')]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
