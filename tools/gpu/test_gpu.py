"""The course verified on a real GPU: run phases, keep their results, write one report.

    python3 tools/gpu/test_gpu.py --out build/gpu-run                 # every phase, then the report
    python3 tools/gpu/test_gpu.py --out DIR --phases nbval             # one phase (to split a long run)
    python3 tools/gpu/test_gpu.py --report DIR [DIR ...]               # merge phase results into reports/gpu/

Phases (each writes DIR/<phase>.json):
  env          GPU, driver, CUDA, torch, Python
  unit         the unit tests (pytest tests), GPU-marked tests included
  conformance  every claim of graphlab_utils.claims on the real backend and on the simulator
  benchmark    modelled vs measured timings of the standard workloads (benchmarks/sim_vs_real.py)
  nbval        strict nbval of every lesson and solution, real backend; with --jobs N, N notebooks
               share the GPU, and a notebook that fails while sharing it is run again alone (its
               timing claims need the GPU to itself); the report shows both tries
  execute      every lesson executed on the GPU (nbclient, one process per notebook), kept as
               DIR/executed.tar.gz for figures
  capstone     lesson 09's diffusion benchmark (benchmarks/diffusion.py), float32 and float16
The report (reports/gpu/<date>-<gpu>.md and .json) gathers the phases found in the given
directories; `make test-gpu` runs everything and then the report.
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("env", "unit", "conformance", "benchmark", "nbval", "execute", "capstone")
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"


def jupyter_path_env() -> dict:
    """JUPYTER_PATH naming the ``share/jupyter`` folders found beside packages on sys.path.

    Jupyter looks for its data files (nbconvert's templates among them) under sys.prefix. A
    GPU machine without Jupyter gets it with ``pip install --target DIR`` and ``PYTHONPATH=DIR``,
    which puts those files in ``DIR/share/jupyter``, where Jupyter never looks: the slide
    export then fails with "No template sub-directory with name 'reveal' found"."""
    found = []
    for entry in sys.path:
        data = Path(entry or ".") / "share" / "jupyter"
        if entry and data.is_dir() and str(data) not in found:
            found.append(str(data))
    if not found:
        return {}
    current = os.environ.get("JUPYTER_PATH")
    return {"JUPYTER_PATH": os.pathsep.join(found + ([current] if current else []))}


def _run(cmd, timeout=900, env=None):
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **jupyter_path_env(), **(env or {})})
    return proc.returncode, proc.stdout + proc.stderr, round(time.time() - t0, 1)


def _pytest_counts(text: str) -> dict:
    counts = {}
    for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed)", text.splitlines()[-1] if text.strip() else ""):
        counts[word] = int(n)
    return counts


def phase_env(out: Path) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        info["nvidia_smi"] = smi
        info["driver"] = smi.split(",")[1].strip() if smi else None
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    try:
        from cuda import bindings

        info["cuda_python"] = bindings.__version__
    except ImportError:
        info["cuda_python"] = None
    return info


def phase_unit(out: Path) -> dict:
    # -p no:benchmark: pytest-benchmark, where installed, warns once per xdist worker and buries the summary
    cmd = [sys.executable, "-m", "pytest", "tests", "-q", "-rfEs", "--tb=short", "-p", "no:cacheprovider",
           "-p", "no:benchmark"]
    try:
        import xdist  # noqa: F401 - several workers when pytest-xdist is there

        cmd += ["-n", str(min(16, os.cpu_count() or 1))]
    except ImportError:
        pass
    rc, text, secs = _run(cmd, timeout=1200)
    failures = [line for line in text.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return {"returncode": rc, "seconds": secs, "counts": _pytest_counts(text), "failures": failures,
            "tail": text[-6000:]}


def phase_conformance(out: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from graphlab_utils.authoring import conformance

    return conformance.report({b: conformance.run(b) for b in ("real", "sim")})


def phase_benchmark(out: Path) -> dict:
    rc, text, secs = _run([sys.executable, "benchmarks/sim_vs_real.py", "--out-dir", str(out / "benchmark")], timeout=900)
    found = sorted(glob.glob(str(out / "benchmark" / "*.json")))
    data = json.loads(Path(found[-1]).read_text()) if found else None
    return {"returncode": rc, "seconds": secs, "data": data, "tail": text[-2000:]}


def _notebooks(pattern: str | None) -> list:
    paths = sorted(glob.glob(str(ROOT / "notebooks" / "*.ipynb")) + glob.glob(str(ROOT / "solutions" / "*.ipynb")))
    rel = [os.path.relpath(p, ROOT) for p in paths]
    return [p for p in rel if not pattern or re.search(pattern, p)]


def _nbval_one(nb: str) -> dict:
    rc, text, secs = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
                           "--nbval-current-env", "--nbval-sanitize-with", str(SANITIZE),
                           "--nbval-cell-timeout=600", nb], timeout=900, env={"GRAPHLAB_BACKEND": "real"})
    print(f"nbval {nb}: {'pass' if rc == 0 else 'FAIL'} in {secs} s", flush=True)
    return {"passed": rc == 0, "seconds": secs, "counts": _pytest_counts(text), "tail": "" if rc == 0 else text[-4000:]}


def phase_nbval(out: Path, pattern: str | None = None, jobs: int = 1) -> dict:
    """Strict nbval per notebook; `jobs` notebooks at a time share the GPU (each its own process).

    Lessons assert timing claims ("the replay is within 10% of eager"); another notebook's
    kernels on the same GPU can break them. So a notebook that failed while sharing the GPU
    is run once more alone, and both results are kept.
    """
    from concurrent.futures import ThreadPoolExecutor

    notebooks = _notebooks(pattern)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = dict(zip(notebooks, pool.map(_nbval_one, notebooks)))
    if jobs > 1:
        for nb, r in results.items():
            if not r["passed"]:
                print(f"nbval {nb}: failed while sharing the GPU with {jobs - 1} others; again, alone", flush=True)
                alone = _nbval_one(nb)
                results[nb] = dict(alone, shared_try={k: r[k] for k in ("passed", "seconds", "counts", "tail")})
    return {"notebooks": results, "all_passed": all(r["passed"] for r in results.values()), "jobs": jobs}


def execute_notebook(nb_path: str, dest: str) -> None:
    """Run one notebook top to bottom (nbclient) and write it, outputs and all, to `dest`."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / nb_path, as_version=4)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str((ROOT / nb_path).parent)}}).execute()
    finally:
        nbformat.write(nb, dest)  # what ran, even after an error


def _execute_one(nb_path: str):
    # One process per notebook: kernels driven from threads of one process have hung here.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "executed.ipynb"
        try:
            rc, text, secs = _run([sys.executable, str(Path(__file__).resolve()), "--execute-one", nb_path, str(dest)],
                                  timeout=480)
            status = {"ok": rc == 0}
            if rc != 0:
                status["error"] = text.strip().splitlines()[-1][:500] if text.strip() else f"exit {rc}"
        except subprocess.TimeoutExpired:
            status, secs = {"ok": False, "error": "timed out after 480 s"}, 480.0
        data = dest.read_bytes() if dest.exists() else (ROOT / nb_path).read_bytes()
    status["seconds"] = secs
    print(f"executed {nb_path}: {'ok' if status['ok'] else 'FAILED'} in {status['seconds']} s", flush=True)
    return nb_path, data, status


def phase_execute(out: Path, pattern: str | None = None, jobs: int = 1) -> dict:
    """Execute lessons on the GPU (several at a time) and keep them, outputs and all, for the report."""
    from concurrent.futures import ThreadPoolExecutor

    notebooks = _notebooks(pattern or r"^notebooks/")
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        done = list(pool.map(_execute_one, notebooks))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for nb_path, data, _status in done:
            info = tarfile.TarInfo(nb_path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (out / "executed.tar.gz").write_bytes(buf.getvalue())
    return {"notebooks": {nb_path: status for nb_path, _data, status in done}}


CAPSTONE_RUNS = (("float32", []), ("float16", ["--dtype", "float16"]))


def phase_capstone(out: Path) -> dict:
    """Lesson 09's benchmark, every variant side by side, in float32 (TF32 off) and in float16."""
    runs = {}
    for name, extra in CAPSTONE_RUNS:
        dest = out / f"capstone-{name}"
        rc, text, secs = _run([sys.executable, "benchmarks/diffusion.py", "--out", str(dest), "--repeats", "5", *extra],
                              timeout=900)
        print(f"capstone {name}: exit {rc} in {secs} s", flush=True)
        found = dest / "results.json"
        runs[name] = {"returncode": rc, "seconds": secs, "dir": dest.name,
                      "data": json.loads(found.read_text()) if found.exists() else None, "tail": text[-2000:]}
        # written after each run too: a call cut off at its time limit keeps the runs that finished
        (out / "capstone.json").write_text(json.dumps({"runs": runs}, indent=1, sort_keys=True, default=str))
    return {"runs": runs}


def run_phases(out: Path, phases, pattern, jobs: int = 1) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for phase in phases:
        fn = globals()[f"phase_{phase}"]
        print(f"=== {phase}", flush=True)
        if phase in ("nbval", "execute"):
            result = fn(out, pattern, jobs)
        else:
            result = fn(out)
        (out / f"{phase}.json").write_text(json.dumps(result, indent=1, sort_keys=True, default=str))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="directory for the phase results")
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of: " + ", ".join(PHASES))
    p.add_argument("--notebooks", help="regular expression: only notebooks whose path matches (nbval, execute)")
    p.add_argument("--jobs", type=int, default=1, help="notebooks run at a time by the nbval and execute phases (default 1)")
    p.add_argument("--report", nargs="*", type=Path, help="merge phase results from these directories into reports/gpu/")
    p.add_argument("--execute-one", nargs=2, metavar=("NOTEBOOK", "DEST"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.execute_one:
        execute_notebook(*a.execute_one)
        return 0
    if a.out:
        phases = [x for x in a.phases.split(",") if x]
        bad = [x for x in phases if x not in PHASES]
        if bad:
            p.error(f"unknown phase(s) {bad}; choose from {', '.join(PHASES)}")
        run_phases(a.out, phases, a.notebooks, a.jobs)
    if a.report is not None:
        sys.path.insert(0, str(ROOT / "tools" / "gpu"))
        from gpu_report import write_report

        dirs = a.report or ([a.out] if a.out else [])
        print(write_report(dirs))
    if not a.out and a.report is None:
        p.error("give --out DIR (run phases) and/or --report DIR ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
