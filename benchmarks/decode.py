"""Lesson 11's benchmark: the decode step of a small LLM engine, eager, hand-graphed and through torch.compile.

On a machine with an NVIDIA GPU, from the repository root::

    python benchmarks/decode.py                       # batches 1..64, writes reports/decode/<date>-<gpu>/
    python benchmarks/decode.py --quick               # batches 1, 4, 16; fewer repeats (a few minutes)
    python benchmarks/decode.py --sim-only --out /tmp/decode   # the simulator (modelled timings; any machine)

The workload is lesson 11's engine (``graphlab_utils.decode``): a decoder-only transformer of
8 layers, hidden 512, 8 query heads sharing 2 key/value heads, SwiGLU, a vocabulary of 32000
(``decode.GPU_CONFIG``; the simulator runs ``decode.SIM_CONFIG``), fixed random weights; a KV pool
of slots allocated once; paged attention through a slot table 256 entries wide; greedy decoding
inside the step. Every request of a batch holds ``--context`` tokens of cache. For each batch size
(default 1, 2, 4, 8, 16, 32, 64), side by side in one run:

* ``eager``: the decode step in eager PyTorch, as the engine calls it;
* ``runner``: the hand-written graph runner (``decode.DecodeGraphRunner``), one graph per batch
  size captured at start-up largest first into one pool: a call copies the batch into the static
  inputs, replays and clones the tokens out; ``replay``: the bare replay of that graph;
* ``reduce_overhead_mutated``: ``torch.compile(mode="reduce-overhead")`` of the same step, the KV
  pool an ordinary input that the step writes in place (CUDA graph trees may skip graphing it:
  "skipping cudagraphs due to mutated inputs");
* ``reduce_overhead_static``: the same with the pool marked as static addresses
  (``torch._dynamo.mark_static_address``), which lets CUDA graph trees graph it;
* ``floor``: the GPU time of one decode step's kernels (the sum of the kernel durations that
  ``torch.profiler`` sees in one replay): what no graph can beat.

Timing: CUDA events around each call (``graphlab_utils.timing.measure``), median of ``--repeats``
after ``--warmup`` calls; time per output token (TPOT) is the step's time (each request gets one
token per step), tokens per second the batch over it. Every variant's tokens are compared with
eager's. Start-up: host time to build the runner (captures, warm-up, uploads) with and without the
garbage collector frozen, and the memory of all buckets' graphs against the largest bucket's alone.
Every timing is taken first; the profiler runs last (on a GPU, once it has run in a process, launches
stay slower). TF32 matmuls are on unless ``--no-tf32``.

Writes ``results.json``, ``results.md`` (the command, a table, the start-up figures and the
course's targets) and ``throughput.png`` to ``--out``, and prints a short table last. On the
simulator (``--sim-only``) timings are modelled, and the torch.compile variants are skipped with a
fixed message. Needs torch, numpy and matplotlib.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = (
    ("eager", "eager"),
    ("runner", "hand runner (a call)"),
    ("replay", "hand graph (bare replay)"),
    ("reduce_overhead_mutated", 'reduce-overhead, pool mutated'),
    ("reduce_overhead_static", 'reduce-overhead, pool static'),
)
COMPILE_VARIANTS = ("reduce_overhead_mutated", "reduce_overhead_static")
SEED = 0
TARGETS = {  # on an H100 (goals of the course, not tests)
    "runner_vs_eager_batch1": 7.0,
    "runner_vs_floor_batch1_to_8": 1.10,
    "bucket_memory_ratio": 1.5,
    "capture_all_s": 1.0,
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class _SkipLog(logging.Handler):
    """Keeps the messages in which CUDA graph trees say why they skipped graphing."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list = []

    def emit(self, record):
        text = record.getMessage()
        if "skipping cudagraphs" in text and text not in self.messages:
            self.messages.append(text.splitlines()[0])


# -- workload ------------------------------------------------------------------------------------


def steady_batch(decode, cfg, n: int, context: int, device):
    """``n`` running requests holding ``context`` tokens of cache each, in their own slots."""
    rows = [list(range(1 + i * context, 1 + (i + 1) * context)) for i in range(n)]
    return decode.make_batch([7 + i for i in range(n)], [context - 1] * n, [context] * n, [r[-1] for r in rows],
                             [r + [0] * (cfg.max_context - context) for r in rows], device)


def _row_ms(t) -> dict:
    return {"ms": t.median_ms, "samples_ms": t.samples_ms}


def time_startup(decode, model, kv, buckets, log) -> dict:
    """Host time to build the runner (all buckets), GC frozen or not; memory of all buckets vs the largest."""
    import torch

    from graphlab_utils import timing
    from graphlab_utils.decode import runner as runner_mod

    out: dict = {}
    for freeze in (True, False):
        held: dict = {}
        t = timing.measure_host(lambda: held.setdefault("r", decode.DecodeGraphRunner(model, kv, buckets,
                                                                                      freeze_gc=freeze)))
        out["capture_all_s_gc_frozen" if freeze else "capture_all_s_gc_on"] = t.median_ms / 1e3
        del held
        torch.cuda.synchronize()
    out["graph_bytes_all"] = runner_mod.measure_graph_bytes(model, buckets)
    out["graph_bytes_largest"] = runner_mod.measure_graph_bytes(model, buckets[-1:])
    out["bucket_memory_ratio"] = out["graph_bytes_all"] / max(1, out["graph_bytes_largest"])
    log(f"start-up: {len(buckets)} buckets captured in {out['capture_all_s_gc_frozen']:.3f} s (GC frozen), "
        f"{out['capture_all_s_gc_on']:.3f} s (GC on); graphs {out['graph_bytes_all'] / 2**20:.1f} MiB, "
        f"largest alone {out['graph_bytes_largest'] / 2**20:.1f} MiB")
    return out


def run(a, session, log) -> tuple:
    import torch

    from graphlab_utils import decode, profiling, timing

    cfg = decode.GPU_CONFIG if session.is_real else decode.SIM_CONFIG
    if a.context >= cfg.max_context:
        raise SystemExit(f"--context must be below the table's width, {cfg.max_context}")
    batches = sorted(set(a.batches))
    model = decode.build_model(cfg, session.device)
    slots = max(batches) * a.context + 8
    kv = decode.KVPool(cfg, slots, session.device)
    startup = time_startup(decode, model, decode.KVPool(cfg, slots, session.device), tuple(batches), log)
    runner = decode.DecodeGraphRunner(model, kv, tuple(batches))
    rows: dict = {n: {"batch": n} for n in batches}
    data = {n: steady_batch(decode, cfg, n, a.context, session.device) for n in batches}

    # -- eager and the hand runner -------------------------------------------------------------
    for n in batches:
        b, row = data[n], rows[n]
        want = model.decode(kv, b).tolist()
        row["eager"] = _row_ms(timing.measure(lambda: model.decode(kv, b), warmup=a.warmup, repeat=a.repeats))
        row["runner"] = _row_ms(timing.measure(lambda: runner(b), warmup=a.warmup, repeat=a.repeats))
        row["runner"]["tokens_equal"] = runner(b).tolist() == want
        graph = runner.graphs[n]
        row["replay"] = _row_ms(timing.measure(graph.replay, warmup=a.warmup, repeat=a.repeats))
        row["want"] = want
        log(f"batch {n:>3}: eager {row['eager']['ms']:.3f} ms, runner {row['runner']['ms']:.3f} ms, "
            f"replay {row['replay']['ms']:.3f} ms, tokens equal: {row['runner']['tokens_equal']}")

    # -- torch.compile(mode="reduce-overhead") -------------------------------------------------
    skips: dict = {}
    if session.is_sim or a.no_compile:
        reason = decode.runner.COMPILE_SKIPPED if session.is_sim else "torch.compile variants: skipped (--no-compile)"
        for n in batches:
            for v in COMPILE_VARIANTS:
                rows[n][v] = {"skipped": reason}
        log(reason)
    else:
        import torch._dynamo

        handler = _SkipLog()
        for name in ("torch._inductor", "torch._dynamo", "torch"):
            logging.getLogger(name).addHandler(handler)
        try:
            torch._logging.set_logs(perf_hints=True)
        except Exception:  # noqa: BLE001 - an older logging API: the counter still tells
            pass
        torch._dynamo.config.cache_size_limit = max(64, 4 * len(batches))
        for v in COMPILE_VARIANTS:
            torch._dynamo.reset()
            pool = decode.KVPool(cfg, slots, session.device)
            pool.k.copy_(kv.k)
            pool.v.copy_(kv.v)
            before, seen = decode.runner.cudagraph_skips(), len(handler.messages)
            t0 = time.perf_counter()
            try:
                fn = decode.runner.compiled_decode(model, pool, static_pool=(v == "reduce_overhead_static"))
                for n in batches:
                    b, row = data[n], rows[n]
                    for _ in range(3):  # the first calls compile and record
                        out = fn(b)
                    torch.cuda.synchronize()
                    row[v] = _row_ms(timing.measure(lambda: fn(b), warmup=a.warmup, repeat=a.repeats))
                    row[v]["tokens_equal"] = fn(b).tolist() == row["want"]
                    log(f"batch {n:>3}: {v} {row[v]['ms']:.3f} ms, tokens equal: {row[v]['tokens_equal']}")
                skips[v] = {"cudagraph_skips": decode.runner.cudagraph_skips() - before,
                            "messages": handler.messages[seen:], "setup_s": round(time.perf_counter() - t0, 1)}
            except Exception as exc:  # noqa: BLE001 - one variant failing must not lose the others
                err = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                for n in batches:
                    rows[n].setdefault(v, {"error": err, "traceback": traceback.format_exc(limit=8)})
                skips[v] = {"error": err}
                log(f"{v} FAILED: {err}")
            log(f"{v}: CUDA graph trees skipped graphing {skips[v].get('cudagraph_skips', '?')} time(s) "
                f"{skips[v].get('messages', '')}")

    # -- the floor, profiled last --------------------------------------------------------------
    log("GPU floor: one replay per batch size under the profiler (after every timing)")
    for n in batches:
        try:
            trace = profiling.profile(runner.graphs[n].replay, warmup=1, title=f"replay, batch {n}")
            kernel_us = sum(s.duration_us for s in trace.device if s.kind == "kernel")
            rows[n]["floor"] = {"ms": kernel_us / 1e3, "kernels": trace.kernels}
            eager_trace = profiling.profile(lambda: model.decode(kv, data[n]), warmup=1)
            rows[n]["eager"]["kernel_launches"] = eager_trace.kernel_launches
        except Exception as exc:  # noqa: BLE001 - a profiler problem must not lose the timings
            rows[n]["floor"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    for n in batches:
        rows[n].pop("want", None)
    return cfg, [rows[n] for n in batches], startup, skips


# -- reporting --------------------------------------------------------------------------------------


def _ms(row, v):
    x = row.get(v, {})
    return x.get("ms") if isinstance(x, dict) else None


def targets(rows: list, startup: dict, skips: dict) -> list:
    """(target, value, met) for the course's goals, where the run has the figures."""
    out = []
    by = {r["batch"]: r for r in rows}
    if 1 in by and _ms(by[1], "runner") and _ms(by[1], "eager"):
        ratio = _ms(by[1], "eager") / _ms(by[1], "runner")
        out.append((f"batch 1: hand runner >= {TARGETS['runner_vs_eager_batch1']:.0f}x eager tokens/s",
                    f"{ratio:.2f}x", ratio >= TARGETS["runner_vs_eager_batch1"]))
    for n in sorted(by):
        if n <= 8 and _ms(by[n], "runner") and _ms(by[n], "floor"):
            ratio = _ms(by[n], "runner") / _ms(by[n], "floor")
            out.append((f"batch {n}: hand runner within {TARGETS['runner_vs_floor_batch1_to_8'] - 1:.0%} of the "
                        "GPU floor", f"{ratio:.2f}x the floor", ratio <= TARGETS["runner_vs_floor_batch1_to_8"]))
    if "bucket_memory_ratio" in startup:
        r = startup["bucket_memory_ratio"]
        out.append((f"all buckets' graphs <= {TARGETS['bucket_memory_ratio']}x the memory of the largest alone",
                    f"{r:.2f}x", r <= TARGETS["bucket_memory_ratio"]))
    if "capture_all_s_gc_frozen" in startup:
        s = startup["capture_all_s_gc_frozen"]
        out.append((f"capture of all buckets at start-up < {TARGETS['capture_all_s']:.0f} s", f"{s:.3f} s",
                    s < TARGETS["capture_all_s"]))
    for v, info in skips.items():
        if "cudagraph_skips" in info:
            graphed = info["cudagraph_skips"] == 0
            out.append((f"{dict(VARIANTS)[v]}: graphed by CUDA graph trees", "yes" if graphed else
                        f"no ({info['cudagraph_skips']} skip(s))", graphed == (v == "reduce_overhead_static")))
    return out


def _cell(row, v) -> str:
    x = row.get(v)
    if not isinstance(x, dict):
        return ""
    if "skipped" in x:
        return "skipped"
    if "error" in x:
        return "failed"
    n = row["batch"]
    eq = "" if x.get("tokens_equal", True) else " (tokens differ)"
    return f"{x['ms']:.3f} ms, {n / x['ms'] * 1e3:,.0f} tok/s{eq}"


def markdown(meta: dict, rows: list, startup: dict, skips: dict) -> str:
    lines = [
        f"# Decode benchmark: {meta['device']}",
        "",
        f"{meta['date']}; torch {meta['torch']}" + (f", CUDA {meta['cuda']}" if meta.get("cuda") else "")
        + f"; timings {meta['timing']}.",
        "",
        f"Command: `{meta['command']}` (the quick run: `python benchmarks/decode.py --quick`).",
        "",
        f"Model: {meta['layers']} layers, hidden {meta['hidden']}, {meta['heads']} query heads sharing "
        f"{meta['kv_heads']} K/V heads, vocabulary {meta['vocab']}, float32, TF32 matmuls "
        f"{'on' if meta['tf32'] else 'off'}; paged attention through a slot table {meta['table_width']} entries wide; "
        f"each request holds {meta['context']} tokens of cache; median of {meta['repeats']} calls after "
        f"{meta['warmup']} warm-up calls, CUDA events. TPOT (time per output token) = the step's time; "
        "tokens/s = batch / TPOT.",
        "",
        "| batch | " + " | ".join(t for _, t in VARIANTS) + " | GPU floor | runner / floor | runner vs eager |",
        "|---|" + "---|" * (len(VARIANTS) + 3),
    ]
    for r in rows:
        floor, runner, eager = _ms(r, "floor"), _ms(r, "runner"), _ms(r, "eager")
        lines.append(
            f"| {r['batch']} | " + " | ".join(_cell(r, v) for v, _ in VARIANTS)
            + f" | {f'{floor:.3f} ms' if floor else ''} | {f'{runner / floor:.2f}x' if floor and runner else ''} "
            f"| {f'{eager / runner:.1f}x' if eager and runner else ''} |")
    mib = 2 ** 20
    lines += [
        "",
        "*hand runner (a call)*: the batch copied into the static inputs, padding, replay, tokens cloned out; "
        "*bare replay*: `graph.replay()` alone. *GPU floor*: the sum of the kernel times of one replay "
        "(torch.profiler, run after every timing).",
        "",
        "## Start-up",
        "",
        f"* capture of {len(meta['batches'])} buckets ({', '.join(map(str, meta['batches']))}), largest first, "
        f"warm-up and uploads included: {startup.get('capture_all_s_gc_frozen', float('nan')):.3f} s with the "
        f"garbage collector frozen, {startup.get('capture_all_s_gc_on', float('nan')):.3f} s without;",
        f"* memory of the runner (graphs' pool and static inputs): all buckets "
        f"{startup.get('graph_bytes_all', 0) / mib:.1f} MiB, the largest alone "
        f"{startup.get('graph_bytes_largest', 0) / mib:.1f} MiB ({startup.get('bucket_memory_ratio', float('nan')):.2f}x).",
    ]
    if skips:
        lines += ["", "## torch.compile(mode=\"reduce-overhead\")", ""]
        for v, info in skips.items():
            if "error" in info:
                lines.append(f"* {dict(VARIANTS)[v]}: failed: `{info['error']}`")
                continue
            said = "; ".join(f"`{m}`" for m in info["messages"]) or "no message seen"
            lines.append(f"* {dict(VARIANTS)[v]}: CUDA graph trees skipped graphing {info['cudagraph_skips']} "
                         f"time(s) ({said}); compile and record took {info['setup_s']} s.")
    lines += ["", "## Targets (goals of the course on an H100, not tests)", "", "| target | value | met |",
              "|---|---|---|"]
    for name, value, met in targets(rows, startup, skips):
        lines.append(f"| {name} | {value} | {'yes' if met else 'no'} |")
    skipped = sorted({r[v]["skipped"] for r in rows for v in COMPILE_VARIANTS if "skipped" in r.get(v, {})})
    if skipped:
        lines += ["", *[f"* {s}" for s in skipped]]
    lines += ["", "![tokens per second](throughput.png)", ""]
    return "\n".join(lines)


def plot(meta: dict, rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"eager": "tab:gray", "runner": "tab:blue", "replay": "tab:cyan",
               "reduce_overhead_mutated": "tab:orange", "reduce_overhead_static": "tab:red"}
    fig, ax = plt.subplots(figsize=(7, 4))
    for v, title in VARIANTS:
        pts = [(r["batch"], r["batch"] / _ms(r, v) * 1e3) for r in rows if _ms(r, v)]
        if pts:
            ax.plot(*zip(*pts), "o-", color=colours[v], label=title)
    floor = [(r["batch"], r["batch"] / _ms(r, "floor") * 1e3) for r in rows if _ms(r, "floor")]
    if floor:
        ax.plot(*zip(*floor), "k--", label="GPU floor (kernel time)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch (running requests)")
    ax.set_ylabel("tokens per second")
    ax.set_title(f"decode step, {meta['layers']} layers, hidden {meta['hidden']}; {meta['timing']}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def short_table(rows: list) -> str:
    out = [f"{'batch':>5}  " + "  ".join(f"{v[:14]:>14}" for v, _ in VARIANTS) + f"  {'floor':>8}"]
    for r in rows:
        cells = []
        for v, _ in VARIANTS:
            ms = _ms(r, v)
            cells.append(f"{ms:11.3f} ms" if ms else f"{'-':>14}")
        floor = _ms(r, "floor")
        out.append(f"{r['batch']:>5}  " + "  ".join(cells) + (f"  {floor:5.3f} ms" if floor else ""))
    return "\n".join(out)


# -- main --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/decode.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="output directory (default: reports/decode/<date>-<device>)")
    p.add_argument("--sim-only", action="store_true", help="run on the simulator (modelled timings; no GPU needed)")
    p.add_argument("--quick", action="store_true", help="batches 1, 4, 16 and fewer repeats")
    p.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1 2 4 8 16 32 64; 1 2 4 8 on the simulator)")
    p.add_argument("--context", type=int, default=None, help="tokens of cache per request (default 128; 16 on the simulator)")
    p.add_argument("--repeats", type=int, help="timed calls per variant (default 50, 20 with --quick; 1 on the simulator)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before timing (default 5)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--no-tf32", action="store_true", help="full float32 matmuls (default: TF32 on)")
    a = p.parse_args(argv)
    command = "python benchmarks/decode.py" + ("" if not (argv or sys.argv[1:]) else " " + shlex.join(argv or sys.argv[1:]))

    import torch

    import graphlab_utils as gl
    from graphlab_utils import decode, timing

    session = gl.setup(backend="sim" if a.sim_only else None)
    if session.is_real:
        torch.backends.cuda.matmul.allow_tf32 = not a.no_tf32
    if a.batches is None:
        a.batches = [1, 4, 16] if a.quick else ([1, 2, 4, 8] if session.is_sim else [1, 2, 4, 8, 16, 32, 64])
    if a.context is None:
        a.context = 16 if session.is_sim else 128
    if a.repeats is None:
        a.repeats = 1 if session.is_sim else (20 if a.quick else 50)
    if min(a.batches) < 1:
        p.error("batch sizes must be positive")
    date = _dt.date.today().isoformat()
    device = session.gpu_name if session.is_real else f"simulator (modelled, calibrated on {session.gpu_name})"
    slug = "".join(ch if ch.isalnum() else "-" for ch in (session.gpu_name if session.is_real else "sim")).strip("-").lower()
    out_dir = Path(a.out) if a.out else ROOT / "reports" / "decode" / f"{date}-{slug}"
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = decode.GPU_CONFIG if session.is_real else decode.SIM_CONFIG
    meta = {
        "date": date, "device": device, "backend": session.backend, "torch": torch.__version__,
        "cuda": torch.version.cuda if session.is_real else None, "python": platform.python_version(),
        "timing": timing.label(), "command": command, "layers": cfg.layers, "hidden": cfg.hidden,
        "heads": cfg.heads, "kv_heads": cfg.kv_heads, "vocab": cfg.vocab, "table_width": cfg.max_context,
        "context": a.context, "batches": sorted(set(a.batches)), "repeats": a.repeats, "warmup": a.warmup,
        "tf32": bool(session.is_real and not a.no_tf32),
    }
    _log(f"{device}: {cfg.layers} layers, hidden {cfg.hidden}; batches {meta['batches']}; writing to {out_dir}")
    started = time.perf_counter()
    cfg, rows, startup, skips = run(a, session, _log)
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    result = {"meta": meta, "rows": rows, "startup": startup, "compile": skips,
              "targets": [{"target": t, "value": v, "met": m} for t, v, m in targets(rows, startup, skips)]}
    (out_dir / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out_dir / "results.md").write_text(markdown(meta, rows, startup, skips))
    try:
        plot(meta, rows, out_dir / "throughput.png")
    except Exception as exc:  # noqa: BLE001 - the figures are in the JSON and the table anyway
        _log(f"plot failed: {type(exc).__name__}: {exc}")
    _log(f"done in {meta['wall_s']:.0f} s: {out_dir / 'results.json'}, results.md, throughput.png")
    print()
    print(f"{device}; timings {meta['timing']}; command: {command}")
    print(short_table(rows))
    for name, value, met in targets(rows, startup, skips):
        print(f"target: {name}: {value} ({'met' if met else 'NOT met'})")
    failed = any("error" in r.get(v, {}) for r in rows for v, _ in VARIANTS if isinstance(r.get(v), dict))
    return 1 if failed or not all(r.get("runner", {}).get("tokens_equal", True) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
