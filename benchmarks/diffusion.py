"""The capstone's benchmark: a small diffusion UNet sampled eagerly, with CUDA graphs and with torch.compile.

On a machine with an NVIDIA GPU, from the repository root::

    python benchmarks/diffusion.py --out reports/diffusion/run1       # about 4 minutes on an H100
    python benchmarks/diffusion.py --sizes 32 64 --out ...            # adds 64x64 latents (more compiling)
    python benchmarks/diffusion.py --sim-only --small --out /tmp/d    # the simulator, small sizes (any machine)

The workload is lesson 09's (``graphlab_utils.capstone``): a text-conditioned UNet of about 300
aten ops per call (64 channels), DDIM with classifier-free guidance run as one batch of 2B,
50 steps, 4-channel latents of 32x32 (and 64x64 with ``--sizes``), batch 1 and 4, fixed
random weights. Variants, measured side by side in one run on the same requests:

* ``eager``: the sampler in eager PyTorch (the reference);
* ``graphed_unet``: the UNet through ``torch.cuda.make_graphed_callables``, the loop eager;
* ``step_graph``: one CUDA graph of one denoising step, replayed once per step;
* ``loop_graph``: the whole 50-step loop captured as one CUDA graph;
* ``compile_reduce_overhead``: the step through ``torch.compile(mode="reduce-overhead")``
  (PyTorch's own CUDA graphs, "CUDA graph trees");
* ``compile_loop_graph``: the course's fastest: the step compiled in the default mode
  (fused kernels), warmed up, then the whole loop of compiled steps captured by hand as
  one CUDA graph.

For each variant and batch: latency per image (device time of one whole sampling from CUDA
events, median of ``--repeats`` after ``--warmup`` calls, divided by the batch), speed-up
over eager, the final latents' relative difference from eager (``max |a - b| / max |b|``),
the host time to build it (capture, instantiate, compile), and the GPU's busy share during
one call (``torch.profiler``: time the GPU runs kernels / time from the first kernel's
start to the last one's end). TF32 is off (``--tf32`` turns it on) so that the differences
from eager measure the variants, not TF32's rounding.

Writes ``results.json``, ``results.md`` (a table, the run's settings and the targets) and
``latency.png`` (a bar chart) to ``--out``, and prints a short table last. On the simulator
(``--sim-only``) timings are modelled and the torch.compile variants are skipped with a
fixed message. Needs torch, numpy and matplotlib.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = (
    ("eager", "eager"),
    ("graphed_unet", "make_graphed_callables(UNet), eager loop"),
    ("step_graph", "one CUDA graph per step"),
    ("loop_graph", "whole loop as one CUDA graph"),
    ("compile_reduce_overhead", 'torch.compile(mode="reduce-overhead")'),
    ("compile_loop_graph", "torch.compile (default) + whole loop captured by hand"),
)
COMPILE_VARIANTS = ("compile_reduce_overhead", "compile_loop_graph")
GRAPHED_VARIANTS = ("step_graph", "loop_graph", "compile_loop_graph")
SEED = 0
TARGETS = {  # on an H100 (goals of the course, not tests)
    "graphed_vs_eager_batch1": 6.0,
    "fastest_vs_reduce_overhead": 1.5,
    "loop_replay_busy_share": 0.90,
    "relative_error": 1e-3,
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- variants ----------------------------------------------------------------------------------


def _make_graphed_unet(unet, cfg, batch: int, size: int, guidance: bool):
    import torch

    rows = 2 * batch if guidance else batch
    param = next(unet.parameters())
    device, dtype = param.device, param.dtype  # the timesteps stay float32: the schedule's table
    sample_args = (torch.zeros(rows, cfg.latent_channels, size, size, device=device, dtype=dtype),
                   torch.zeros(rows, device=device),
                   torch.zeros(rows, cfg.context_len, cfg.context_dim, device=device, dtype=dtype))
    with torch.no_grad():
        return torch.cuda.make_graphed_callables(copy.deepcopy(unet), sample_args)


def build_variant(name: str, unet, sched, cfg, batch: int, size: int):
    """A callable ``fn(latents, prompt) -> final latents`` for the variant (compiles / captures now)."""
    import torch

    from graphlab_utils import capstone

    g = capstone.GUIDANCE
    if name == "eager":
        return lambda lat, pr: capstone.sample(unet, sched, lat, pr, g)
    if name == "graphed_unet":
        graphed = _make_graphed_unet(unet, cfg, batch, size, True)
        return lambda lat, pr: capstone.sample(graphed, sched, lat, pr, g)
    if name == "step_graph":
        sg = capstone.StepGraph(unet, sched, batch, size)
        return lambda lat, pr: sg(lat, pr, g)
    if name == "loop_graph":
        lg = capstone.LoopGraph(unet, sched, batch, size)
        fn = lambda lat, pr: lg(lat, pr, g)  # noqa: E731
        fn.replay = lg.graph.replay  # type: ignore[attr-defined]
        return fn
    if name in COMPILE_VARIANTS:
        if not capstone.compile_available():
            raise _Skipped(capstone.COMPILE_SKIPPED)
        torch._dynamo.reset()  # a fresh cache per variant: no stale entries, no cache-size limit
        if name == "compile_reduce_overhead":
            cs = capstone.CompiledSampler(unet, sched, mode="reduce-overhead")
            return lambda lat, pr: cs(lat, pr, g)
        step = capstone.compiled_step(unet, sched)  # default mode: fused kernels, no CUDA graphs
        lg = capstone.LoopGraph(unet, sched, batch, size, step_fn=step, warmup_iters=2)
        fn = lambda lat, pr: lg(lat, pr, g)  # noqa: E731
        fn.replay = lg.graph.replay  # type: ignore[attr-defined]
        return fn
    raise ValueError(f"unknown variant {name!r}")


class _Skipped(Exception):
    pass


# -- measuring --------------------------------------------------------------------------------


def _busy_share(fn) -> float | None:
    from graphlab_utils import profiling

    try:
        return float(profiling.profile(fn, warmup=0).summary()["busy_share"])
    except Exception as exc:  # noqa: BLE001 - a profiler problem must not lose the timings
        _log(f"  profiler failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return None


def run_case(unet, sched, cfg, size: int, batch: int, variants, warmup: int, repeats: int, log,
             to_profile: list) -> list:
    """Time every variant of one case; the GPU-busy profiles are left in ``to_profile``.

    Profiling waits until every case is timed (``profile_rows``): on a GPU, once
    torch.profiler has run in a process, its launches stay slower (an H100 measured a graph
    replay call at 6 us before and 50-90 us after), and timings taken after it would carry that.
    """
    import torch

    from graphlab_utils import capstone, timing

    param = next(unet.parameters())
    latents, prompt = capstone.make_request(SEED, batch, cfg, param.device, param.dtype, size=size)
    rows, reference, eager_ms = [], None, None
    for name in variants:
        row: dict[str, Any] = {"variant": name, "size": size, "batch": batch}
        t0 = time.perf_counter()
        try:
            fn = build_variant(name, unet, sched, cfg, batch, size)
            for _ in range(max(1, warmup)):  # the first calls compile / record; not timed
                out = fn(latents, prompt)
            torch.cuda.synchronize()
            row["setup_s"] = round(time.perf_counter() - t0, 3)
            t = timing.measure(lambda: fn(latents, prompt), warmup=0, repeat=repeats)
            if not timing.is_modelled():  # the simulator's own Python time says nothing about a GPU's host
                # CPU time of one call until it returns, the GPU idle at its start: below the call's GPU
                # time the CPU runs ahead, and removing more host work cannot make the variant faster
                row["host_ms_per_call"] = timing.measure_host(lambda: fn(latents, prompt), repeat=3,
                                                              sync="before").median_ms
            out = fn(latents, prompt)
            torch.cuda.synchronize()
            if name == "eager":
                reference, eager_ms = out.clone(), t.median_ms
            row.update(
                ms_per_call=t.median_ms,
                ms_per_image=t.median_ms / batch,
                samples_ms=t.samples_ms,
                timing=t.label,
                speedup=(eager_ms / t.median_ms) if eager_ms else None,
                relative_error=capstone.relative_error(out, reference) if reference is not None else None,
                finite=bool(torch.isfinite(out).all()),
            )
            to_profile.append((row, fn, latents, prompt))
            log(f"  {name:<26} {row['ms_per_image']:9.2f} ms/image  "
                f"{(row['speedup'] or 1.0):6.1f}x  rel.err {row['relative_error'] or 0.0:.1e}  "
                f"(setup {row['setup_s']:.1f} s)")
        except _Skipped as exc:
            row["skipped"] = str(exc)
            log(f"  {name:<26} skipped: {exc}")
        except Exception as exc:  # noqa: BLE001 - one variant failing must not lose the others
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            row["traceback"] = traceback.format_exc(limit=8)
            log(f"  {name:<26} FAILED: {row['error']}")
        rows.append(row)
        if name == "eager" and reference is None:
            log("  eager failed: no reference; stopping this case")
            break
    return rows


def profile_rows(pending: list, log) -> None:
    """The GPU's busy share of each timed variant (and of its replay alone, for a graph)."""
    for row, fn, latents, prompt in pending:
        row["busy_share"] = _busy_share(lambda: fn(latents, prompt))
        if hasattr(fn, "replay"):
            row["busy_share_replay"] = _busy_share(fn.replay)
        log(f"  {row['size']}x{row['size']}, batch {row['batch']}, {row['variant']:<26} "
            f"busy {(row['busy_share'] or 0.0):.0%}")


# -- reporting ---------------------------------------------------------------------------------


def _fmt(x, spec: str, empty: str = "") -> str:
    return empty if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _row_text(r: dict) -> tuple:
    if "skipped" in r:
        return ("skipped", "", "", "", "", "", "")
    if "error" in r:
        return ("failed: " + r["error"][:60], "", "", "", "", "", "")
    busy = r.get("busy_share_replay", r.get("busy_share"))
    return (
        _fmt(r["ms_per_image"], ".2f"),
        _fmt(r["speedup"], ".1f") + "x" if r.get("speedup") else "",
        _fmt(r["relative_error"], ".1e"),
        _fmt(busy, ".0%"),
        _fmt(r["host_ms_per_call"] / r["batch"], ".1f") if r.get("host_ms_per_call") is not None else "",
        _fmt(r.get("setup_s"), ".1f"),
        "yes" if r.get("finite") else "NO",
    )


def targets(rows: list) -> list:
    """(target, value, met) for the course's goals, where the run has the figures."""
    out = []
    ok_rows = [r for r in rows if "ms_per_image" in r]
    for size in sorted({r["size"] for r in ok_rows}):
        b1 = {r["variant"]: r for r in ok_rows if r["size"] == size and r["batch"] == 1}
        for v in GRAPHED_VARIANTS:
            if v in b1 and b1[v].get("speedup"):
                out.append((f"{size}x{size}, batch 1: {v} >= {TARGETS['graphed_vs_eager_batch1']:.0f}x eager",
                            f"{b1[v]['speedup']:.1f}x", b1[v]["speedup"] >= TARGETS["graphed_vs_eager_batch1"]))
        for batch in sorted({r["batch"] for r in ok_rows if r["size"] == size}):
            case = {r["variant"]: r for r in ok_rows if r["size"] == size and r["batch"] == batch}
            if "compile_reduce_overhead" in case and "compile_loop_graph" in case:
                ratio = case["compile_reduce_overhead"]["ms_per_image"] / case["compile_loop_graph"]["ms_per_image"]
                out.append((f"{size}x{size}, batch {batch}: fastest >= {TARGETS['fastest_vs_reduce_overhead']}x "
                            "reduce-overhead", f"{ratio:.2f}x", ratio >= TARGETS["fastest_vs_reduce_overhead"]))
            for v in ("loop_graph", "compile_loop_graph"):
                busy = case.get(v, {}).get("busy_share_replay")
                if busy is not None:
                    out.append((f"{size}x{size}, batch {batch}: GPU busy >= {TARGETS['loop_replay_busy_share']:.0%} "
                                f"during {v} replay", f"{busy:.0%}", busy >= TARGETS["loop_replay_busy_share"]))
    errs = [r["relative_error"] for r in ok_rows if r["variant"] != "eager" and r.get("relative_error") is not None]
    if errs:
        out.append((f"final latents within {TARGETS['relative_error']:g} relative of eager (worst variant)",
                    f"{max(errs):.1e}", max(errs) <= TARGETS["relative_error"]))
    return out


def markdown(meta: dict, rows: list) -> str:
    lines = [
        f"# Diffusion benchmark: {meta['device']}",
        "",
        f"{meta['date']}; torch {meta['torch']}" + (f", CUDA {meta['cuda']}" if meta.get("cuda") else "")
        + f"; timings {meta['timing']}.",
        f"UNet: {meta['channels']} channels, ~{meta['ops_per_unet_call']} aten ops per call; DDIM, "
        f"{meta['steps']} steps, classifier-free guidance (scale {meta['guidance']}) as one batch of 2B; "
        f"{meta.get('dtype', 'float32')}, TF32 {'on' if meta['tf32'] else 'off'}, cuDNN autotuning "
        f"{'on' if meta.get('cudnn_benchmark') else 'off'}; median of {meta['repeats']} after {meta['warmup']} warm-up calls.",
        "",
        "| latents | batch | variant | ms per image | vs eager | rel. diff. from eager | GPU busy | CPU ms per image "
        "| setup (s) | finite |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    titles = dict(VARIANTS)
    for r in rows:
        lines.append(f"| {r['size']}x{r['size']} | {r['batch']} | {titles[r['variant']]} | " + " | ".join(_row_text(r)) + " |")
    lines += [
        "",
        "*GPU busy*: the GPU's busy share during one call from `torch.profiler` (kernel time over the time from the "
        "first kernel's start to the last one's end); for the loop graphs, during one replay. *CPU ms per image*: the CPU "
        "time of one call until it returns, before waiting for the GPU (median of 3), divided by the batch: below the "
        "GPU time, the GPU never waits for the CPU. *setup*: host time to "
        "build the variant and run its warm-up calls (capture, instantiate, compile).",
        "",
        "## Targets (goals of the course on an H100, not tests)",
        "",
        "| target | value | met |",
        "|---|---|---|",
    ]
    for name, value, met in targets(rows):
        lines.append(f"| {name} | {value} | {'yes' if met else 'no'} |")
    skipped = sorted({r["skipped"] for r in rows if "skipped" in r})
    failed = [r for r in rows if "error" in r]
    if skipped:
        lines += ["", *[f"* {s}" for s in skipped]]
    if failed:
        lines += ["", "## Failures", ""]
        for r in failed:
            lines += [f"* {r['size']}x{r['size']}, batch {r['batch']}, {r['variant']}: `{r['error']}`"]
    lines += ["", "![latency per image](latency.png)", ""]
    return "\n".join(lines)


def plot(meta: dict, rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["size"], r["batch"]) for r in rows})
    names = [v for v, _ in VARIANTS if any(r["variant"] == v and "ms_per_image" in r for r in rows)]
    fig, axes = plt.subplots(1, len(cases), figsize=(2.2 + 2.6 * len(cases), 3.6), squeeze=False, sharey=True)
    colours = {"eager": "tab:gray", "graphed_unet": "tab:purple", "step_graph": "tab:blue", "loop_graph": "tab:green",
               "compile_reduce_overhead": "tab:orange", "compile_loop_graph": "tab:red"}
    titles = dict(VARIANTS)
    for ax, (size, batch) in zip(axes[0], cases):
        case = {r["variant"]: r for r in rows if r["size"] == size and r["batch"] == batch and "ms_per_image" in r}
        present = [n for n in names if n in case]
        pos = [names.index(n) for n in present]
        values = [case[n]["ms_per_image"] for n in present]
        bars = ax.barh(pos, values, color=[colours[n] for n in present])
        for bar, n in zip(bars, present):
            sp = case[n].get("speedup")
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {sp:.1f}x" if sp else "",
                    va="center", fontsize=7)
        ax.set_xlabel("ms per image")
        ax.set_title(f"latents {size}x{size}, batch {batch}", fontsize=9)
        ax.set_xlim(0, max(values or [1]) * 1.3)
    axes[0][0].set_yticks(range(len(names)), [titles[n] for n in names], fontsize=7)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"{meta['steps']}-step DDIM with guidance, {meta['channels']}-channel UNet, "
                 f"{meta.get('dtype', 'float32')}; {meta['timing']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def short_table(rows: list) -> str:
    out = [f"{'latents':>7} {'batch':>5}  {'variant':<26} {'ms/image':>9} {'vs eager':>8} {'rel.diff':>8} {'busy':>5} {'CPU ms':>7}"]
    for r in rows:
        if "ms_per_image" not in r:
            out.append(f"{r['size']:>5}^2 {r['batch']:>5}  {r['variant']:<26} "
                       + ("skipped" if "skipped" in r else "FAILED: " + r.get("error", "")[:50]))
            continue
        busy = r.get("busy_share_replay", r.get("busy_share"))
        out.append(f"{r['size']:>5}^2 {r['batch']:>5}  {r['variant']:<26} {r['ms_per_image']:9.2f} "
                   f"{(r['speedup'] or 1):7.1f}x {r['relative_error'] or 0:8.1e} {_fmt(busy, '.0%'):>5} "
                   f"{_fmt((r.get('host_ms_per_call') or 0) / r['batch'], '.1f'):>7}")
    return "\n".join(out)


# -- main --------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/diffusion.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="output directory (default: reports/diffusion/<date>-<device>)")
    p.add_argument("--sim-only", action="store_true", help="run on the simulator (modelled timings; no GPU needed)")
    p.add_argument("--small", action="store_true", help="small sizes (32 channels, 16x16, 10 steps, batch 1 and 2)")
    p.add_argument("--sizes", type=int, nargs="+", help="latent sizes (default 32; 16 with --small)")
    p.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1 4; 1 2 with --small)")
    p.add_argument("--steps", type=int, help="denoising steps (default 50; 10 with --small)")
    p.add_argument("--repeats", type=int, help="timed calls per variant (default 10; 1 on the simulator)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per variant before timing (default 2)")
    p.add_argument("--variants", nargs="+", choices=[v for v, _ in VARIANTS], help="a subset of the variants")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in matmuls and convolutions (default: off)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="weights and latents (default float32)")
    p.add_argument("--channels", type=int, help="UNet width (default 64; 32 with --small)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms (default: off)")
    a = p.parse_args(argv)

    import torch

    import graphlab_utils as gl
    from graphlab_utils import capstone, timing

    session = gl.setup(backend="sim" if a.sim_only else None)
    if session.is_real:
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
        torch.backends.cudnn.benchmark = a.cudnn_benchmark
    dtype = getattr(torch, a.dtype)
    base = capstone.SIM_CONFIG if a.small else capstone.GPU_CONFIG
    steps = a.steps or base.steps
    sizes = a.sizes or [base.size]
    batches = a.batches or ([1, 2] if a.small else [1, 4])
    repeats = a.repeats or (1 if session.is_sim else 10)
    variants = [v for v, _ in VARIANTS if (a.variants is None or v in a.variants)
                and not (a.no_compile and v in COMPILE_VARIANTS)]
    if "eager" not in variants:
        variants.insert(0, "eager")  # the reference
    date = _dt.date.today().isoformat()
    device = session.gpu_name if session.is_real else f"simulator (modelled, calibrated on {session.gpu_name})"
    slug = "".join(ch if ch.isalnum() else "-" for ch in (session.gpu_name if session.is_real else "sim")).strip("-").lower()
    out_dir = Path(a.out) if a.out else ROOT / "reports" / "diffusion" / f"{date}-{slug}"
    out_dir.mkdir(parents=True, exist_ok=True)

    cfg0 = dataclasses.replace(base, steps=steps)
    if a.channels:
        cfg0 = dataclasses.replace(cfg0, channels=a.channels, context_dim=a.channels)
    probe = capstone.build_unet(cfg0, session.device, dtype)
    x, pr = capstone.make_request(SEED, 1, cfg0, session.device, dtype)
    ops = sum(capstone.count_ops(probe, torch.cat([x, x]), torch.full((2,), 500.0, device=session.device, dtype=dtype),
                               capstone.guidance_context(pr)).values())
    del probe
    meta = {
        "date": date, "device": device, "backend": session.backend, "torch": torch.__version__,
        "cuda": torch.version.cuda if session.is_real else None, "python": platform.python_version(),
        "timing": timing.label(), "channels": cfg0.channels, "steps": steps, "sizes": sizes, "batches": batches,
        "guidance": capstone.GUIDANCE, "repeats": repeats, "warmup": a.warmup, "tf32": bool(a.tf32 and session.is_real), "dtype": a.dtype,
        "cudnn_benchmark": bool(a.cudnn_benchmark and session.is_real),
        "ops_per_unet_call": ops, "variants": variants,
    }
    _log(f"{device}: {cfg0.channels} channels, ~{ops} aten ops per UNet call, {steps} steps, sizes {sizes}, "
         f"batches {batches}; writing to {out_dir}")
    started = time.perf_counter()
    rows, to_profile = [], []
    for size in sizes:
        cfg = dataclasses.replace(cfg0, size=size)
        unet = capstone.build_unet(cfg, session.device, dtype)
        sched = capstone.DDIMSchedule(steps, session.device)
        for batch in batches:
            _log(f"latents {size}x{size}, batch {batch}")
            rows += run_case(unet, sched, cfg, size, batch, variants, a.warmup, repeats, _log, to_profile)
    _log("GPU busy share of each variant (profiled after every timing)")
    profile_rows(to_profile, _log)
    del to_profile
    meta["wall_s"] = round(time.perf_counter() - started, 1)

    (out_dir / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "targets": [
        {"target": t, "value": v, "met": m} for t, v, m in targets(rows)]}, indent=1, default=str))
    (out_dir / "results.md").write_text(markdown(meta, rows))
    try:
        plot(meta, rows, out_dir / "latency.png")
    except Exception as exc:  # noqa: BLE001 - the figures are in the JSON and the table anyway
        _log(f"plot failed: {type(exc).__name__}: {exc}")
    _log(f"done in {meta['wall_s']:.0f} s: {out_dir / 'results.json'}, results.md, latency.png")
    print()
    print(f"{device}; {steps} steps; timings {meta['timing']}")
    print(short_table(rows))
    for name, value, met in targets(rows):
        print(f"target: {name}: {value} ({'met' if met else 'NOT met'})")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
