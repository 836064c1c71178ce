"""Merge the phase results of tools/gpu/test_gpu.py into reports/gpu/<date>-<gpu>.md and .json.

The lessons' figures that vary by machine (timings, memory) are printed only in ignored
cells and plotted; this report keeps them from a real GPU run: for every lesson executed on
the GPU it stores the plots as PNG files and the ignored cells' text, and links them.
"""
from __future__ import annotations

import base64
import datetime as dt
import io
import json
import re
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "reports" / "gpu"


def _load(dirs) -> dict:
    merged: dict = {}
    for d in dirs:
        for path in sorted(Path(d).glob("*.json")):
            merged[path.stem] = json.loads(path.read_text())
        if (Path(d) / "executed.tar.gz").exists():
            merged["_executed"] = Path(d) / "executed.tar.gz"
    return merged


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _lesson_figures(archive: Path, figdir: Path, rel: str) -> list:
    """PNG plots and ignored-cell text of each executed lesson, as markdown lines."""
    import nbformat

    lines = []
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            nb = nbformat.reads(tar.extractfile(member).read().decode(), as_version=4)
            stem = Path(member.name).stem
            lines += ["", f"### {stem}", ""]
            n_fig = 0
            for cell in nb.cells:
                if cell.cell_type != "code":
                    continue
                ignored = cell.source.lstrip().startswith("# NBVAL_IGNORE_OUTPUT")
                for out in cell.get("outputs", []):
                    data = out.get("data", {})
                    if "image/png" in data:
                        n_fig += 1
                        name = f"{stem}-{n_fig}.png"
                        (figdir / name).write_bytes(base64.b64decode(data["image/png"]))
                        lines.append(f"![{stem} figure {n_fig}]({rel}/{name})")
                        lines.append("")
                    elif ignored and out.get("output_type") == "stream" and out.get("name") == "stdout":
                        text = out["text"].rstrip()
                        if text:
                            lines += ["```text", text, "```", ""]
    return lines


def write_report(dirs) -> str:
    data = _load(dirs)
    env = data.get("env", {})
    gpu = env.get("gpu") or "unknown GPU"
    date = dt.date.today().isoformat()
    base = f"{date}-{_slug(gpu)}"
    REPORTS.mkdir(parents=True, exist_ok=True)
    figdir = REPORTS / base
    figdir.mkdir(exist_ok=True)
    md = [f"# CUDA Graph Lab on a real GPU: {gpu}", "",
          f"- date: {date}",
          f"- GPU: {gpu} (driver {env.get('driver')}), torch {env.get('torch')}, CUDA {env.get('cuda')}, "
          f"Python {env.get('python')}, cuda-python {env.get('cuda_python')}",
          "- command: `make test-gpu` (phases of `python3 tools/gpu/test_gpu.py`, see that file)", ""]
    verdicts = {}
    if "unit" in data:
        u = data["unit"]
        verdicts["unit tests"] = u["returncode"] == 0
        md += ["## Unit tests", "", f"`pytest tests`: {u['counts']} in {u['seconds']} s", ""]
    if "conformance" in data:
        c = data["conformance"]
        verdicts["conformance"] = c["all_expected"] and c["backends_agree"]
        md += ["## Simulator conformance (real GPU vs simulator)", "", c["table"], "",
               f"all as expected: {c['all_expected']}; backends agree: {c['backends_agree']}", ""]
    if "nbval" in data:
        n = data["nbval"]
        verdicts["notebooks (strict nbval, real backend)"] = n["all_passed"]
        md += ["## Notebooks under strict nbval on the GPU", "", "| notebook | result | cells | seconds |", "|---|---|---|---|"]
        for nb, r in n["notebooks"].items():
            md.append(f"| {nb} | {'pass' if r['passed'] else 'FAIL'} | {r['counts']} | {r['seconds']} |")
        md.append("")
        for nb, r in n["notebooks"].items():
            if not r["passed"]:
                md += [f"<details><summary>{nb}: failure</summary>", "", "```text", r["tail"], "```", "</details>", ""]
    if "benchmark" in data and data["benchmark"].get("data"):
        b = data["benchmark"]["data"]
        md += ["## Headline figures: measured on this GPU, modelled by the simulator", "",
               "| workload | quantity | measured | modelled | modelled/measured | within 30%? |", "|---|---|---|---|---|---|"]
        for row in b.get("rows", []):
            unit = "x" if row["key"] == "speedup" else "ms"
            fmt = (lambda v: f"{v:.3g}{unit}") if unit == "x" else (lambda v: f"{v:.3g} ms")
            md.append(f"| {row['workload']} | {row['quantity']} | {fmt(row['measured'])} | {fmt(row['modelled'])} | "
                      f"{row['ratio']:.2f} | {'yes' if row['within_tolerance'] else '**no**'} |")
        md.append("")
    if "_executed" in data:
        md += ["## Lesson figures from this GPU", "",
               "Each lesson executed on the GPU: its plots and the figures its ignored cells print.", ""]
        md += _lesson_figures(data["_executed"], figdir, base)
    md[5:5] = ["", "| part | result |", "|---|---|"] + [f"| {k} | {'pass' if v else 'FAIL'} |" for k, v in verdicts.items()] + [""]
    (REPORTS / f"{base}.md").write_text("\n".join(md) + "\n")
    clean = {k: v for k, v in data.items() if not k.startswith("_")}
    (REPORTS / f"{base}.json").write_text(json.dumps(clean, indent=1, sort_keys=True, default=str))
    return f"wrote reports/gpu/{base}.md and .json"
