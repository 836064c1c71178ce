"""Kata 9: warm-up that captured shapes serving never uses."""
from __future__ import annotations

from graphlab_utils.checks import core
from graphlab_utils.checks.core import close, device, fail, ok
from graphlab_utils.recipes import capture, seeded_randn
from graphlab_utils.watch import watching

from . import fixed_function, register

SNIPPET = '''\
def warm_up(runner, batch_sizes, channels, guidance, dtype):
    """Capture a graph for every batch size the server will see, before traffic arrives."""
    for bs in batch_sizes:
        dummy = torch.zeros(bs, channels, device=DEVICE)
        runner.capture(dummy)
'''
# The fix, as lab 10's solution shows it: the snippet, building its inputs as serving does.
FIX = fixed_function(SNIPPET, "build the warm-up inputs the way serving does", replace={
    "dummy = torch.zeros(bs, channels, device=DEVICE)": "latents = torch.zeros(bs, channels, device=DEVICE, dtype=dtype)",
    "runner.capture(dummy)": "runner.capture(cfg_batch(latents, guidance))  # serving's own (batch, dtype)",
})
CHANNELS = 64
BATCHES = (1, 2, 4)
TRAFFIC = (1, 2, 4, 2, 1)


def cfg_batch(latents, guidance):
    """What serving feeds the denoiser: with classifier-free guidance (guidance > 1) the batch is doubled
    (a conditional and an unconditional copy of every latent)."""
    import torch

    return torch.cat([latents, latents]) if guidance > 1 else latents


class _Denoiser:
    """A small denoiser that runs in the pipeline's dtype (it casts its input, as diffusers models do)."""

    def __init__(self, channels: int = CHANNELS, dtype=None, seed: int = 1001):
        import torch

        self.dtype = dtype or torch.bfloat16
        gen = torch.Generator().manual_seed(seed)
        self.w1 = (torch.randn(channels, 4 * channels, generator=gen) / 8).to(device(), self.dtype)
        self.w2 = (torch.randn(4 * channels, channels, generator=gen) / 16).to(device(), self.dtype)

    def __call__(self, x):
        import torch

        x = x.to(self.dtype)
        return torch.nn.functional.gelu(x @ self.w1) @ self.w2


class DenoiserRunner:
    """Graphs keyed by (batch, dtype) of the denoiser's input; a miss runs the model eagerly."""

    def __init__(self, model):
        self.model, self.graphs = model, {}
        self.replays = self.fallbacks = 0

    @staticmethod
    def key(x):
        return (x.shape[0], x.dtype)

    def capture(self, example):
        static_x = example.clone()
        graph, out = capture(lambda: self.model(static_x))
        self.graphs[self.key(example)] = (graph, static_x, out)

    def __call__(self, x):
        entry = self.graphs.get(self.key(x))
        if entry is None:
            self.fallbacks += 1  # silent: the request still gets an answer
            return self.model(x)
        graph, static_x, out = entry
        static_x.copy_(x)
        graph.replay()
        self.replays += 1
        return out.clone()


def serve(runner, latents, guidance):
    """One denoiser call of a request: the pipeline's latents (in its dtype), guidance applied."""
    return runner(cfg_batch(latents, guidance))


def _run(warm_up, guidance: float) -> dict:
    model = _Denoiser()
    runner = DenoiserRunner(model)
    with watching() as watch:
        warm_up(runner, BATCHES, CHANNELS, guidance, model.dtype)
    captured = sorted((bs, str(dtype).replace("torch.", "")) for bs, dtype in runner.graphs)
    correct, missed = True, []
    for i, bs in enumerate(TRAFFIC):
        latents = seeded_randn(1100 + i, bs, CHANNELS, device=device()).to(model.dtype)
        before = runner.fallbacks
        out = serve(runner, latents, guidance)
        if runner.fallbacks > before:
            missed.append(cfg_batch(latents, guidance).shape[0])
        correct = correct and close(out, model(cfg_batch(latents, guidance)), rtol=2e-2, atol=2e-2)
    return {"captured": captured, "replays": runner.replays, "fallbacks": runner.fallbacks,
            "missed_batches": sorted(set(missed)), "correct": correct, "warmup_captures": watch.captures,
            "served_dtype": str(model.dtype).replace("torch.", "")}


def _demo(warm_up) -> None:
    r = _run(warm_up, guidance=7.5)
    print("warm-up captured graphs for (batch, dtype):", r["captured"])
    print(f"{len(TRAFFIC)} requests with guidance 7.5 ({r['served_dtype']} latents): "
          f"{r['replays']} replayed, {r['fallbacks']} ran eagerly")


@core.check("kata 9 (warmup-mismatch)")
def check_warm_up(warm_up):
    """`warm_up(runner, batch_sizes, channels, guidance, dtype)` must capture what serving looks up:
    every request afterwards is a replay (with guidance 7.5 and with guidance 1.0)."""
    ok(callable(warm_up), "a function warm_up(runner, batch_sizes, channels, guidance, dtype)",
       type(warm_up).__name__, "pass the function itself")
    for guidance in (7.5, 1.0):
        r = _run(warm_up, guidance)
        ok(r["warmup_captures"] >= 1, "warm-up that captures graphs", "warm-up captured no graph",
           "call runner.capture(example) with an input shaped and typed like serving's")
        if r["fallbacks"]:
            fail(f"every request replayed a graph (guidance {guidance:g}, {r['served_dtype']} latents)",
                 f"{r['fallbacks']} of {len(TRAFFIC)} requests ran eagerly; serving looked up batch "
                 f"{r['missed_batches']} in {r['served_dtype']}, warm-up captured {r['captured']}",
                 "the runner finds a graph by the exact (batch, dtype) of the denoiser's input. Build the "
                 "warm-up inputs the way serving builds them: latents in the pipeline's dtype, passed through "
                 "cfg_batch(latents, guidance), which doubles the batch when guidance > 1.")
        ok(r["replays"] == len(TRAFFIC), f"{len(TRAFFIC)} replays", f"{r['replays']} replays",
           "every request should be served by a graph captured at warm-up")
        ok(r["correct"], "replayed results equal to the eager denoiser", "a result differs from eager",
           "capture the runner with runner.capture(example) and leave the runner itself unchanged")


KATA = register(
    "warmup-mismatch",
    snippet=SNIPPET,
    fix=FIX,
    entry="warm_up",
    fixed_name="warm_up_fixed",
    task="Write `warm_up_fixed(runner, batch_sizes, channels, guidance, dtype)` so that afterwards every "
         "request served with `serve(runner, latents, guidance)` (latents of a batch size from `batch_sizes`, "
         "in `dtype`) replays a graph.",
    hint="Print `runner.key(...)` of a warm-up input and of what `serve` passes to the runner. Two things "
         "differ. `katas.cfg_batch` is what serving uses.",
    explanation=(
        "The runner looks graphs up by the exact (batch, dtype) of the denoiser's input. Warm-up built its "
        "dummies as float32 tensors of the request batch size, but serving passes latents in the pipeline's "
        "dtype (bfloat16) and, with classifier-free guidance, doubles the batch (a conditional and an "
        "unconditional copy). No key matches, every request takes the silent eager fallback, and the "
        "captured graphs only cost start-up time and memory. Build warm-up inputs with the serving code "
        "itself: `runner.capture(cfg_batch(torch.zeros(bs, channels, dtype=dtype, device=DEVICE), guidance))`; "
        "and count fallbacks in production (log them), so a mismatch is seen rather than felt. Lesson 09 "
        "builds a runner keyed by (batch, resolution) with an eager fallback."),
    checker=check_warm_up,
    demo=_demo,
)
