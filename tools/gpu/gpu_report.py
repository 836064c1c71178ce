"""Merge the phase results of tools/gpu/test_gpu.py into reports/gpu/<date>-<gpu>.md and .json.

The lessons' figures that vary by machine (timings, memory) are printed only in ignored
cells and plotted; this report keeps them from a real GPU run: for every lesson executed on
the GPU it stores the plots as PNG files and the ignored cells' text, and links them.
"""
from __future__ import annotations

import base64
import sys
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
            merged.setdefault("_where", {})[path.stem] = Path(d)
        if (Path(d) / "notes.md").exists():  # how the run was split, anything a reader must know
            merged["_notes"] = (Path(d) / "notes.md").read_text().strip()
        if (Path(d) / "executed.tar.gz").exists():
            merged["_executed"] = Path(d) / "executed.tar.gz"
    return merged


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _benchmark(name: str):
    """A script of benchmarks/ as a module: its formatting is reused, not copied."""
    import importlib

    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    return importlib.import_module(name)


def _committed_stdout(rel_path: str) -> dict:
    """{(cell index, source): stdout} of the committed notebook: the simulator's figures."""
    import nbformat

    path = ROOT / rel_path
    if not path.exists():
        return {}
    found = {}
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type == "code":
            text = "".join(o.get("text", "") for o in cell.get("outputs", [])
                           if o.get("output_type") == "stream" and o.get("name") == "stdout").rstrip()
            if text:
                found[(index, cell.source)] = text
    return found


def _capstone(capstone: dict, where: Path, figdir: Path, rel: str) -> list:
    """The diffusion benchmark's tables (and charts) from the capstone phase."""
    import shutil

    lines = ["## Capstone: the diffusion sampler (lesson 09), every variant side by side", "",
             "Command: `python3 benchmarks/diffusion.py --repeats 5` (and `--dtype float16`); the full results, "
             "with the targets, are under [reports/diffusion](../diffusion/README.md).", ""]
    diffusion = _benchmark("diffusion")  # the benchmark's own table, so the two reports cannot disagree
    for name, run in sorted(capstone.get("runs", {}).items(), key=lambda kv: kv[0] != "float32"):
        data = run.get("data")
        if not data:
            lines += [f"### {name}: no results (exit {run.get('returncode')})", "", "```text", run.get("tail", ""), "```", ""]
            continue

        table = diffusion.markdown(data["meta"], data["rows"]).split("\n")
        start = next(i for i, line in enumerate(table) if line.startswith("| latents"))
        end = next(i for i in range(start, len(table)) if not table[i].startswith("|"))
        lines += [f"### {name}", "", table[2], ""] + table[start:end] + [""]
        chart = where / run.get("dir", "") / "latency.png"
        if chart.exists():
            shutil.copy(chart, figdir / f"capstone-{name}.png")
            lines += [f"![capstone {name}]({rel}/capstone-{name}.png)", ""]
    return lines


def _lesson_figures(archive: Path, figdir: Path, rel: str) -> list:
    """PNG plots and ignored-cell text of each executed lesson, as markdown lines."""
    import nbformat

    lines = []
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            nb = nbformat.reads(tar.extractfile(member).read().decode(), as_version=4)
            stem = Path(member.name).stem
            committed = _committed_stdout(member.name)
            lines += ["", f"### {stem}", ""]
            n_fig = 0
            for index, cell in enumerate(nb.cells):
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
                            lines += ["measured on the GPU:", "", "```text", text, "```", ""]
                            modelled = committed.get((index, cell.source))
                            if modelled and modelled != text:
                                lines += ["the simulator (modelled; the notebook's committed output):", "",
                                          "```text", modelled, "```", ""]
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
    if "_notes" in data:
        md += ["## About this run", "", data["_notes"], ""]
    if "unit" in data:
        u = data["unit"]
        verdicts["unit tests"] = u["returncode"] == 0
        md += ["## Unit tests", "", f"`pytest tests`: {u['counts']} in {u['seconds']} s", ""]
        if u.get("failures"):
            md += ["```text", *u["failures"], "```", ""]
        elif u["returncode"] != 0:
            md += ["```text", u.get("tail", "")[-3000:], "```", ""]
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
            result = "pass" if r["passed"] else "FAIL"
            if "shared_try" in r:
                result += " (alone; failed while sharing the GPU)"
            md.append(f"| {nb} | {result} | {r['counts']} | {r['seconds']} |")
        md.append("")
        if any("shared_try" in r for r in n["notebooks"].values()):
            md += [f"{n.get('jobs', 1)} notebooks ran at a time on the one GPU; a notebook that failed while "
                   "sharing it ran again alone, and the table shows that second run. What failed while sharing:", ""]
        for nb, r in n["notebooks"].items():
            if "shared_try" in r:
                md += [f"<details><summary>{nb}: while sharing the GPU</summary>", "", "```text",
                       r["shared_try"]["tail"], "```", "</details>", ""]
            if not r["passed"]:
                md += [f"<details><summary>{nb}: failure</summary>", "", "```text", r["tail"], "```", "</details>", ""]
    if "benchmark" in data and data["benchmark"].get("data"):
        b = data["benchmark"]["data"]
        md += ["## Headline figures: measured on this GPU, modelled by the simulator", "",
               "| workload | quantity | measured | modelled | modelled/measured | within 30%? |", "|---|---|---|---|---|---|"]
        format_value = _benchmark("sim_vs_real").format_value

        for row in b.get("rows", []):
            unit = row.get("unit", "x" if row["key"] == "speedup" else "ms")
            ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}"
            ok = {True: "yes", False: "**no**", None: "n/a"}[row["within_tolerance"]]
            md.append(f"| {row['workload']} | {row['quantity']} | {format_value(unit, row['measured'])} | "
                      f"{format_value(unit, row['modelled'])} | {ratio} | {ok} |")
        md.append("")
    if "capstone" in data:
        runs = data["capstone"].get("runs", {})
        verdicts["capstone benchmark"] = bool(runs) and all(r.get("returncode") == 0 for r in runs.values())
        md += _capstone(data["capstone"], data["_where"]["capstone"], figdir, base)
    if "_executed" in data:
        md += ["## Lesson figures from this GPU", "",
               "Each lesson executed on the GPU: its plots and the figures its ignored cells print.", ""]
        md += _lesson_figures(data["_executed"], figdir, base)
    md[5:5] = ["", "| part | result |", "|---|---|"] + [f"| {k} | {'pass' if v else 'FAIL'} |" for k, v in verdicts.items()] + [""]
    (REPORTS / f"{base}.md").write_text("\n".join(md) + "\n")
    clean = {k: v for k, v in data.items() if not k.startswith("_")}
    (REPORTS / f"{base}.json").write_text(json.dumps(clean, indent=1, sort_keys=True, default=str))
    return f"wrote reports/gpu/{base}.md and .json"
