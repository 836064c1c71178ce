"""Which backend runs the notebooks, and the one setup call every notebook starts with.

Two backends run the same learner code:

* ``real``: PyTorch sees an NVIDIA GPU; tensors live on ``torch.device("cuda")`` and
  every ``torch.cuda`` name is PyTorch's own. Timings are CUDA-event measurements.
* ``sim``: no GPU. Tensors live on ``torch.device("cpu")`` and
  ``graphlab_utils.simulator.install()`` stands in for PyTorch's CUDA graph API.
  Timings are modelled from a cost model calibrated on a real GPU.

``GRAPHLAB_BACKEND=real|sim|auto`` (case-insensitive, default ``auto``) overrides the
choice. ``setup()`` picks the backend, fixes seeds and print options, installs the
simulator when needed and prints one line that names the backend.

PyTorch is imported inside the functions, so ``import graphlab_utils`` stays cheap and
``graphlab doctor`` can report a missing PyTorch instead of crashing on it.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

from .errors import GraphlabError

__all__ = [
    "BACKENDS",
    "BackendError",
    "ENV_VAR",
    "Session",
    "calibration_gpu_name",
    "choose_backend",
    "current",
    "device",
    "gpu_available",
    "gpu_name",
    "is_simulated",
    "setup",
]

ENV_VAR = "GRAPHLAB_BACKEND"
BACKENDS = ("real", "sim", "auto")

REAL_WITHOUT_GPU = (
    "GRAPHLAB_BACKEND=real but PyTorch sees no CUDA GPU: unset it to use the simulator, "
    "or run on a machine with an NVIDIA GPU and a CUDA build of PyTorch"
)
SIMULATOR_MISSING = "the simulator is not available in this version of graphlab_utils"
FALLBACK_CALIBRATION_GPU = "a real GPU"


class BackendError(GraphlabError, RuntimeError):
    """The requested backend cannot run here; the message says what to do."""


@dataclass(frozen=True)
class Session:
    """What ``setup()`` chose; notebooks keep it as ``S`` and use ``S.device``."""

    backend: str  # "real" or "sim"
    device: Any  # torch.device("cuda") on real, torch.device("cpu") on sim
    gpu_name: str  # the GPU, or the GPU the simulator's cost model was calibrated on
    torch_version: str
    timing_label: str  # "measured on <GPU>" or "modelled (calibrated on <GPU>)"
    cuda_version: str | None = None  # torch.version.cuda on real, None on sim
    seed: int = 0

    @property
    def is_real(self) -> bool:
        return self.backend == "real"

    @property
    def is_sim(self) -> bool:
        return self.backend == "sim"


def choose_backend(requested: str | None, gpu_available: bool) -> str:
    """Return ``"real"`` or ``"sim"`` for a ``GRAPHLAB_BACKEND`` value and the hardware.

    ``requested`` is ``real``, ``sim`` or ``auto`` (any case, surrounding blanks ignored);
    ``None`` or an empty string means ``auto``. ``real`` without a GPU and any other
    value raise :class:`BackendError`.
    """
    value = (requested or "").strip().lower() or "auto"
    if value not in BACKENDS:
        raise BackendError(
            f"GRAPHLAB_BACKEND={requested.strip()!r} is not a backend: use one of "
            f"{', '.join(BACKENDS)} (or leave it unset for auto)"
        )
    if value == "real":
        if not gpu_available:
            raise BackendError(REAL_WITHOUT_GPU)
        return "real"
    if value == "sim":
        return "sim"
    return "real" if gpu_available else "sim"


def gpu_available() -> bool:
    """Whether PyTorch can use an NVIDIA GPU (a CUDA build and at least one device).

    Asks the CUDA runtime through PyTorch's own binding rather than
    ``torch.cuda.is_available``, so the answer stays true to the hardware after the
    simulator has taken over the ``torch.cuda`` names.
    """
    import torch

    if not torch.backends.cuda.is_built():
        return False
    count = getattr(torch._C, "_cuda_getDeviceCount", None)
    if count is not None:
        try:
            return int(count()) > 0
        except Exception:  # a driver problem: PyTorch itself would report no GPU
            return False
    return bool(torch.cuda.is_available())


def calibration_gpu_name() -> str:
    """The GPU the simulator's cost model was calibrated on, or a generic phrase."""
    try:
        import importlib

        name = importlib.import_module("graphlab_utils.simulator.costmodel").load().gpu_name
    except Exception:
        return FALLBACK_CALIBRATION_GPU
    return str(name) if name else FALLBACK_CALIBRATION_GPU


def _simulator_module():
    import importlib  # through sys.modules, so a test can stand in a module of its own

    try:
        return importlib.import_module("graphlab_utils.simulator")
    except ImportError as exc:
        raise BackendError(f"{SIMULATOR_MISSING} ({exc})") from exc


def _simulator_if_loaded():
    """The simulator module if something already imported it, without importing it."""
    import sys

    return sys.modules.get("graphlab_utils.simulator")


def _is_installed(simulator) -> bool:
    check = getattr(simulator, "is_installed", None)
    return bool(check()) if callable(check) else False


# -- the one answer to "which backend runs in this process" ---------------------------------
_CURRENT: list = []  # the Session setup() made in this process (children inherit GRAPHLAB_BACKEND)

NOT_SET_UP = (
    "graphlab_utils.setup() has not run in this process and it has no GPU: run the notebook's "
    "setup cell at the top first (it installs the simulator when no GPU is present)"
)


def is_simulated() -> bool:
    """True while the simulator stands in for torch.cuda (timings are modelled)."""
    simulator = _simulator_if_loaded()
    return simulator is not None and _is_installed(simulator)


def current() -> Session:
    """The backend of this process: the Session ``setup()`` made, else what is in place now.

    Code that runs without ``setup()`` (a test that installed the simulator, a script on a GPU
    machine) gets a Session that describes the state it finds: the simulator when it is
    installed, the GPU when PyTorch sees one. With neither, :class:`BackendError` says to run
    the setup cell first.
    """
    simulated = is_simulated()
    if _CURRENT and _CURRENT[-1].is_sim == simulated:
        return _CURRENT[-1]
    import torch

    if simulated:
        return _sim_session(torch, seed=0)
    if gpu_available():
        return _real_session(torch, seed=0)
    raise BackendError(NOT_SET_UP)


def device():
    """The device this process's tensors live on: ``cuda`` on a GPU, ``cpu`` under the simulator."""
    return current().device


def gpu_name() -> str:
    """The GPU the figures come from: the real one, or the one the cost model was calibrated on."""
    return current().gpu_name


def _sim_session(torch, seed: int) -> Session:
    name = calibration_gpu_name()
    return Session(backend="sim", device=torch.device("cpu"), gpu_name=name, torch_version=torch.__version__,
                   timing_label=f"modelled (calibrated on {name})", cuda_version=None, seed=seed)


def _real_session(torch, seed: int) -> Session:
    name = torch.cuda.get_device_name(0)
    return Session(backend="real", device=torch.device("cuda"), gpu_name=name, torch_version=torch.__version__,
                   timing_label=f"measured on {name}", cuda_version=torch.version.cuda, seed=seed)


def _fix_seeds(seed: int, real: bool) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if real:
        torch.cuda.manual_seed_all(seed)


def setup(backend: str | None = None, seed: int = 0, quiet: bool = False) -> Session:
    """Pick the backend, fix seeds and print options, and say in one line what runs.

    ``backend`` overrides ``GRAPHLAB_BACKEND`` (``real``, ``sim`` or ``auto``). Calling
    ``setup()`` again is harmless: it re-seeds and keeps (or switches) the backend.
    """
    import torch

    requested = backend if backend is not None else os.environ.get(ENV_VAR)
    has_gpu = gpu_available()
    chosen = choose_backend(requested, has_gpu)

    if chosen == "sim":
        simulator = _simulator_module()
        if not _is_installed(simulator):
            simulator.install()
        # Simulated tensors are small and every op pays Python overhead: one CPU thread is
        # faster than a thread pool, and keeps parallel test runs from oversubscribing cores.
        torch.set_num_threads(1)
        session = _sim_session(torch, seed)
        reason = "GRAPHLAB_BACKEND=sim" if has_gpu else "no NVIDIA GPU"
        line = (
            f"graphlab: simulator backend ({reason}): torch.cuda graph API simulated on "
            f"the CPU; timings {session.timing_label}"
        )
    else:
        simulator = _simulator_if_loaded()
        if simulator is not None and _is_installed(simulator):
            simulator.uninstall()
        session = _real_session(torch, seed)
        line = (
            f"graphlab: real backend on {session.gpu_name} (torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}); timings measured with CUDA events"
        )
    _CURRENT[:] = [session]  # current() answers from here; child processes get it through isolation

    _fix_seeds(seed, real=chosen == "real")
    torch.set_printoptions(precision=4, sci_mode=False)
    from graphlab_utils import isolation

    isolation.register_magic()  # %%run_isolated, for captures that are meant to fail
    if not quiet:
        print(line)
    return session
