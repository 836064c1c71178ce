"""Where one denoising step's GPU time goes: the floor under every graphed variant.

A CUDA graph removes the CPU's launch work, so a graphed step can be no faster than the
GPU time of its kernels. This script measures, for several settings of lesson 09's model
(width, dtype, TF32, cuDNN autotuning), one guided DDIM step:

* ``eager ms/step``: the step run eagerly (CUDA events, median of 30 after warm-up);
* ``graph ms/step``: the same step captured once and replayed (median of 30);
* ``bound``: eager / graph, the most any graphed variant of the sampler can gain;
* ``kernels``: kernels per step on the GPU, and their mean duration, from ``torch.profiler``;
* the kernels that take the most GPU time, by name (``--top``).

On a machine with an NVIDIA GPU, from the repository root::

    python benchmarks/diffusion_floor.py --out reports/diffusion/floor

Writes ``floor.json`` and ``floor.md`` to ``--out`` and prints a short table last.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# name: (channels, dtype, tf32, cudnn.benchmark)
SETTINGS = {
    "fp32": (64, "float32", False, False),
    "fp32+autotune": (64, "float32", False, True),
    "tf32": (64, "float32", True, False),
    "tf32+autotune": (64, "float32", True, True),
    "bf16": (64, "bfloat16", False, False),
    "fp16": (64, "float16", False, False),
    "fp32, 32 ch": (32, "float32", False, False),
    "tf32, 32 ch": (32, "float32", True, False),
    "bf16, 32 ch": (32, "bfloat16", False, False),
}


def _median_ms(fn, iters: int = 30, warmup: int = 5) -> float:
    from graphlab_utils import timing  # CUDA events around each call, synchronised, median

    return timing.measure(fn, warmup=warmup, repeat=iters).median_ms


def _kernels(fn) -> list:
    """(name, duration in us) of every kernel one call of ``fn`` runs, from torch.profiler."""
    from graphlab_utils import profiling

    return [(s.name, s.duration_us) for s in profiling.profile(fn, warmup=1).device if s.kind == "kernel"]


def measure(name: str, steps: int, size: int, top: int) -> dict:
    import torch

    from graphlab_utils import capstone, recipes

    channels, dtype_name, tf32, autotune = SETTINGS[name]
    dtype = getattr(torch, dtype_name)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = autotune
    cfg = dataclasses.replace(capstone.GPU_CONFIG, channels=channels, context_dim=channels, size=size, steps=steps)
    unet = capstone.build_unet(cfg, "cuda", dtype)
    sched = capstone.DDIMSchedule(steps, "cuda")
    latents, prompt = capstone.make_request(0, 1, cfg, "cuda", dtype)
    st = capstone.StaticBuffers.for_model(unet, 1, size, True)
    st.load(latents, prompt)
    st.step.fill_(steps // 2)

    def step():
        return capstone.denoise_step(unet, sched, st.x, st.step, st.context, st.scale)

    with torch.no_grad():
        eager_ms = _median_ms(step)
        graph, out = recipes.capture(step, warmup=2)
        graph_ms = _median_ms(graph.replay)
        eager_out = step()
        graph.replay()
        torch.cuda.synchronize()
        same = bool(torch.equal(out, eager_out))
        kernels = _kernels(graph.replay)
        eager_kernels = len(_kernels(step))
    by_name: dict = {}
    for k, us in kernels:
        n, total = by_name.get(k, (0, 0.0))
        by_name[k] = (n + 1, total + us)
    kernel_us = sum(us for _, us in kernels)
    rows = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "setting": name, "channels": channels, "dtype": dtype_name, "tf32": tf32, "cudnn_benchmark": autotune,
        "size": size, "eager_ms_per_step": eager_ms, "graph_ms_per_step": graph_ms,
        "bound": eager_ms / graph_ms, "kernels_per_step": len(kernels), "eager_kernels_per_step": eager_kernels,
        "kernel_us_per_step": kernel_us, "mean_kernel_us": kernel_us / max(1, len(kernels)),
        "graph_equals_eager": same,
        "top_kernels": [{"name": k, "count": n, "total_us": t, "mean_us": t / n} for k, (n, t) in rows],
    }


def _measure_in_child(name: str, size: int, top: int) -> dict:
    """One setting in a process of its own: once torch.profiler has run in a process, its
    launches stay slower (an H100 measured a graph replay call at 6 us before, 50-90 us
    after), so a setting timed after another one's profile would carry that."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", ".", "--one", name, "--size", str(size),
           "--top", str(top)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return {"setting": name, "error": last[:300]}
    return json.loads(lines[-1])


def markdown(meta: dict, rows: list) -> str:
    lines = [
        f"# One guided DDIM step of lesson 09's UNet: {meta['device']}",
        "",
        f"{meta['date']}; torch {meta['torch']}, CUDA {meta['cuda']}; latents {meta['size']}x{meta['size']}, batch 1 "
        "(a batch of 2 through the UNet: guidance); CUDA events, median of 30 after 5 warm-up calls; kernels from "
        "`torch.profiler` over one replay.",
        f"Command: `{meta['command']}`",
        "",
        "| setting | eager ms/step | graph ms/step | bound (eager / graph) | kernels/step | mean kernel | "
        "kernel time/step | graph == eager |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['setting']} | failed: {r['error'][:80]} | | | | | | |")
            continue
        lines.append(
            f"| {r['setting']} | {r['eager_ms_per_step']:.2f} | {r['graph_ms_per_step']:.3f} | {r['bound']:.1f}x | "
            f"{r['kernels_per_step']} | {r['mean_kernel_us']:.1f} us | {r['kernel_us_per_step'] / 1000:.2f} ms | "
            f"{'yes' if r['graph_equals_eager'] else 'no'} |")
    for r in rows:
        if "error" in r:
            continue
        lines += ["", f"## {r['setting']}: the kernels with the most GPU time", "",
                  "| kernel | count | total us | mean us |", "|---|---|---|---|"]
        for k in r["top_kernels"]:
            lines.append(f"| `{k['name'][:110]}` | {k['count']} | {k['total_us']:.0f} | {k['mean_us']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/diffusion_floor.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--size", type=int, default=32, help="latent height = width (default 32)")
    p.add_argument("--top", type=int, default=8, help="kernels listed per setting (default 8)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # measure one setting, print its row as JSON
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(measure(a.one, 50, a.size, a.top)))
        return 0

    import torch

    if not torch.cuda.is_available():
        print("benchmarks/diffusion_floor.py measures a real GPU; none is visible here.", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "size": a.size,
            "command": "python3 benchmarks/diffusion_floor.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    rows = []
    for name in a.settings:
        rows.append(_measure_in_child(name, a.size, a.top))
        r = rows[-1]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: " + (r.get("error") or
              f"eager {r['eager_ms_per_step']:.2f} ms, graph {r['graph_ms_per_step']:.3f} ms, "
              f"{r['kernels_per_step']} kernels, mean {r['mean_kernel_us']:.1f} us"), flush=True)
    (out / "floor.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "floor.md").write_text(markdown(meta, rows))
    print(f"\n{meta['device']}: one guided step, latents {a.size}x{a.size}, batch 1")
    print(f"{'setting':<16} {'eager ms':>8} {'graph ms':>8} {'bound':>6} {'kernels':>7} {'mean us':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['setting']:<16} failed: {r['error'][:60]}")
        else:
            print(f"{r['setting']:<16} {r['eager_ms_per_step']:8.2f} {r['graph_ms_per_step']:8.3f} "
                  f"{r['bound']:5.1f}x {r['kernels_per_step']:7d} {r['mean_kernel_us']:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
