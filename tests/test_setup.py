"""What `make env` and `make lab` set up, read from their dry runs (`make -n`): which PyTorch
build pip is asked for, the PATH JupyterLab and its terminal get, and the course's JupyterLab
settings."""

import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ROOT / "tools" / "lab-settings"
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _fake_nvidia_smi(folder: Path, gpu: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    if gpu:
        body = 'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)"\n'
    else:  # what nvidia-smi prints on a machine whose driver sees no GPU
        body = 'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\nexit 9\n'
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)


def _local_torch_wheel(folder: Path, version: str = "2.13.0+cpu") -> None:
    """A minimal wheel named torch, as a machine with a CPU build of PyTorch on disk has one."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(folder / f"torch-{version}-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")


def _make_n(tmp_path: Path, target: str, *args: str, gpu: bool | None = None,
            find_links: Path | None = None, env_extra: dict | None = None) -> str:
    """`make -n target` in a fresh-clone state (no virtualenv yet), with pip seeing no
    configuration but `find_links`, and `nvidia-smi` faked (gpu True/False) on the PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "MAKE"))}
    env.pop("TORCH_SPEC", None)
    env.pop("TORCH_PIP_ARGS", None)
    env["PIP_CONFIG_FILE"] = os.devnull
    if find_links is not None:
        env["PIP_FIND_LINKS"] = str(find_links)
    if gpu is not None:
        fake = tmp_path / f"bin-gpu-{gpu}"
        _fake_nvidia_smi(fake, gpu)
        env["PATH"] = f"{fake}{os.pathsep}{env.get('PATH', '')}"
    env.update(env_extra or {})
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"VENV={tmp_path / 'venv'}",
         f"BASE_PYTHON={sys.executable}", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _torch_pip_args(dry_run: str) -> str:
    found = re.findall(r'torch_pip_args="([^"]*)"', dry_run)
    assert len(found) == 1, dry_run
    assert '-m pip install $torch_pip_args "' in dry_run
    return found[0]


def test_no_gpu_installs_pytorchs_cpu_build(tmp_path):
    assert _torch_pip_args(_make_n(tmp_path, "env", gpu=False)) == CPU_INDEX


def test_no_nvidia_smi_at_all_installs_the_cpu_build(tmp_path):
    env = {"PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                   if not (Path(p) / "nvidia-smi").exists())}
    assert _torch_pip_args(_make_n(tmp_path, "env", env_extra=env)) == CPU_INDEX


def test_a_gpu_installs_the_cuda_build_from_pypi(tmp_path):
    assert _torch_pip_args(_make_n(tmp_path, "env", gpu=True)) == ""


def test_a_cpu_build_on_disk_is_taken_as_it_is(tmp_path):
    # pip's find-links hold a CPU build of the default TORCH_SPEC (as on a machine with a
    # pre-seeded wheel and only PyPI on its network): no index change.
    wheels = tmp_path / "wheels"
    _local_torch_wheel(wheels)
    assert _torch_pip_args(_make_n(tmp_path, "env", gpu=False, find_links=wheels)) == ""
    # a file of another version does not satisfy the spec: the CPU index again
    other = tmp_path / "other"
    _local_torch_wheel(other, "2.9.1+cpu")
    assert _torch_pip_args(_make_n(tmp_path, "env", gpu=False, find_links=other)) == CPU_INDEX


def test_the_learners_choice_wins(tmp_path):
    spec = _make_n(tmp_path, "env", "TORCH_SPEC=torch==2.11.*", gpu=False)
    assert _torch_pip_args(spec) == ""
    assert '"torch==2.11.*"' in spec
    cu = "--index-url https://download.pytorch.org/whl/cu128"
    assert _torch_pip_args(_make_n(tmp_path, "env", f"TORCH_PIP_ARGS={cu}", gpu=False)) == cu
    assert _torch_pip_args(_make_n(tmp_path, "env", gpu=False, env_extra={"TORCH_PIP_ARGS": ""})) == ""


def _lab_command(tmp_path) -> str:
    dry_run = _make_n(tmp_path, "lab", gpu=False)
    return dry_run[dry_run.index("root_flag="):]


def test_lab_puts_the_environments_bin_first_on_the_path(tmp_path):
    lab = _lab_command(tmp_path)
    bin_dir = tmp_path / "venv" / "bin"
    assert f'PATH="{bin_dir}:$PATH" GRAPHLAB_BIN_DIR="{bin_dir}"' in lab
    assert lab.index("PATH=") < lab.index("-m jupyter lab")
    # and it tells how to call graphlab from any other shell
    assert f"{bin_dir}/graphlab" in lab


def test_lab_terminal_keeps_graphlab_on_the_path(tmp_path):
    # a learner's ~/.bashrc that rewrites PATH (as login profiles do) must not hide graphlab
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("PATH=/usr/bin:/bin\nexport PATH\n")
    bin_dir = tmp_path / "venv" / "bin"
    result = subprocess.run(
        ["bash", "--rcfile", str(SETTINGS / "bashrc"), "-i", "-c", 'echo "$PATH"'],
        env={"HOME": str(home), "PATH": "/usr/bin:/bin", "GRAPHLAB_BIN_DIR": str(bin_dir), "TERM": "dumb"},
        capture_output=True, text=True, timeout=30,
    )
    assert result.stdout.strip().split(":")[0] == str(bin_dir), result


class _Config:
    def __init__(self):
        self.LabApp = type("Section", (), {})()
        self.ServerApp = type("Section", (), {})()


def test_lab_passes_the_course_settings(tmp_path):
    lab = _lab_command(tmp_path)
    config_file = SETTINGS / "jupyter_lab_config.py"
    assert f'--config="{config_file}"' in lab
    c = _Config()
    runpy.run_path(str(config_file), init_globals={"get_config": lambda: c})
    overrides = json.loads((Path(c.LabApp.app_settings_dir) / "overrides.json").read_text())
    notification = overrides["@jupyterlab/apputils-extension:notification"]
    assert notification == {"fetchNews": "false", "checkForUpdates": False}
    assert overrides["@jupyterlab/notebook-extension:tracker"]["recordTiming"] is False
    shell = c.ServerApp.terminado_settings["shell_command"]
    assert shell[:3] == ["bash", "--rcfile", str(SETTINGS / "bashrc")]
