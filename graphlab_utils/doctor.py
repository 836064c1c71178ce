"""``graphlab doctor``: what this environment has, and the one sentence that says what to fix.

The report is built in two steps that tests can drive separately:

* :func:`gather_facts` looks at the machine (versions, GPU, driver, ``GRAPHLAB_BACKEND``)
  and returns a :class:`Facts`;
* :func:`evaluate` turns any :class:`Facts` into a :class:`Report`: the lines to print,
  the errors (each one sentence saying what to fix) and the warnings.

``main`` prints the report and exits 1 when there is an error, 0 otherwise.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata

from .backend import ENV_VAR, BackendError, choose_backend

__all__ = ["Facts", "Report", "evaluate", "format_report", "gather_facts", "main", "print_report"]

TORCH_MISSING = (
    "PyTorch is not installed: run `make lab` (it installs it), or "
    "`pip install torch` followed by `pip install -e .` in the course folder"
)
WIDGETS_FRONTEND_MISSING = (
    "ipywidgets is installed but its JupyterLab front-end (jupyterlab_widgets) is "
    "missing, so widgets will not display: run `pip install jupyterlab_widgets` and "
    "restart JupyterLab"
)
CUDA_PYTHON_MISSING = (
    "cuda-python (cuda-bindings) is not installed: lessons 06-08 call CUDA's graph API "
    "through it on a GPU; run `pip install -e .[gpu]`"
)
JUPYTERLAB_MISSING = "JupyterLab is not installed: run `make lab` or `pip install -e .`"


@dataclass(frozen=True)
class Facts:
    """What the doctor looks at; ``None`` means "not installed" or "not found"."""

    python: str
    torch: str | None = None
    torch_cuda: str | None = None  # torch.version.cuda (None on a CPU build)
    gpu_available: bool = False
    gpu_name: str | None = None
    driver: str | None = None
    cuda_bindings: str | None = None
    jupyterlab: str | None = None
    ipywidgets: str | None = None
    jupyterlab_widgets: str | None = None
    nbval: str | None = None
    graphlab_backend: str | None = None  # the value of GRAPHLAB_BACKEND, if set


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    backend: str | None = None  # "real", "sim", or None when it cannot be decided

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cuda_bindings_version() -> str | None:
    try:
        import cuda.bindings as bindings  # NVIDIA's cuda-python runtime bindings
    except Exception:
        return None
    return getattr(bindings, "__version__", None) or _version("cuda-bindings") or "installed"


def _nvidia_smi() -> tuple[str | None, str | None]:
    """(GPU name, driver version) from nvidia-smi, or (None, None) without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    first = out.strip().splitlines()[0] if out.strip() else ""
    if "," not in first:
        return None, None
    name, driver = (part.strip() for part in first.rsplit(",", 1))
    return name or None, driver or None


def gather_facts() -> Facts:
    """Look at this machine."""
    torch_version = torch_cuda = gpu_name = None
    has_gpu = False
    try:
        import torch
    except Exception:
        torch = None
    if torch is not None:
        from .backend import gpu_available

        torch_version = torch.__version__
        torch_cuda = torch.version.cuda
        has_gpu = gpu_available()
        if has_gpu:
            try:
                gpu_name = torch.cuda.get_device_name(0)
            except Exception:
                gpu_name = None
    smi_name, driver = _nvidia_smi()
    return Facts(
        python=platform.python_version(),
        torch=torch_version,
        torch_cuda=torch_cuda,
        gpu_available=has_gpu,
        gpu_name=gpu_name or smi_name,
        driver=driver,
        cuda_bindings=_cuda_bindings_version(),
        jupyterlab=_version("jupyterlab"),
        ipywidgets=_version("ipywidgets"),
        jupyterlab_widgets=_version("jupyterlab_widgets"),
        nbval=_version("nbval"),
        graphlab_backend=os.environ.get(ENV_VAR),
    )


def _show(value: str | None, missing: str = "not installed") -> str:
    return value if value else missing


def evaluate(facts: Facts) -> Report:
    """The report for ``facts``: what to print, and what to fix."""
    report = Report()
    add = report.lines.append
    add(f"Python              {facts.python}")
    add(f"torch               {_show(facts.torch)}")
    if facts.torch is not None:
        add(f"CUDA (torch build)  {_show(facts.torch_cuda, 'none (CPU build of PyTorch)')}")
    gpu = facts.gpu_name if facts.gpu_available else None
    add(f"GPU                 {_show(gpu, 'none visible to PyTorch')}")
    add(f"NVIDIA driver       {_show(facts.driver, 'not found (no nvidia-smi)')}")
    add(f"cuda-python         {_show(facts.cuda_bindings)}")
    add(f"jupyterlab          {_show(facts.jupyterlab)}")
    add(f"ipywidgets          {_show(facts.ipywidgets)}")
    add(f"jupyterlab_widgets  {_show(facts.jupyterlab_widgets)}")
    add(f"nbval               {_show(facts.nbval)}")

    requested = facts.graphlab_backend
    shown = f"GRAPHLAB_BACKEND={requested}" if requested else "GRAPHLAB_BACKEND unset: auto"
    if facts.torch is None:
        report.errors.append(TORCH_MISSING)
        add(f"backend             unknown until PyTorch is installed ({shown})")
    else:
        try:
            report.backend = choose_backend(requested, facts.gpu_available)
        except BackendError as exc:
            report.errors.append(str(exc))
            add(f"backend             none ({shown})")
        else:
            what = {
                "real": "real: the GPU, timings measured with CUDA events",
                "sim": "simulator: the CPU stands in for the GPU, timings modelled",
            }[report.backend]
            add(f"backend             {what} ({shown})")

    if facts.ipywidgets is not None and facts.jupyterlab_widgets is None:
        report.errors.append(WIDGETS_FRONTEND_MISSING)
    if facts.jupyterlab is None:
        report.warnings.append(JUPYTERLAB_MISSING)
    if facts.gpu_available and facts.cuda_bindings is None:
        report.warnings.append(CUDA_PYTHON_MISSING)
    return report


def format_report(report: Report) -> str:
    out = ["graphlab doctor", ""]
    out += [f"  {line}" for line in report.lines]
    out.append("")
    out += [f"warning: {w}." for w in report.warnings]
    out += [f"fix: {e}." for e in report.errors]
    if not report.errors:
        notebooks = {"real": "the real GPU", "sim": "the simulator"}[report.backend or "sim"]
        out.append(f"ok: the notebooks will run on {notebooks}.")
    return "\n".join(out)


def print_report(facts: Facts | None = None) -> int:
    """Print the report (for this machine unless ``facts`` is given); return the exit code."""
    report = evaluate(facts if facts is not None else gather_facts())
    print(format_report(report))
    return report.exit_code


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="graphlab doctor",
        description="Report the course's environment and say what to fix.",
    )
    parser.parse_args(argv)
    return print_report()
