"""Kata 10: a request's own random generator, unknown to the graph."""
from __future__ import annotations

import warnings

from graphlab_utils.checks import core
from graphlab_utils.checks.core import close, describe, device, ok
from graphlab_utils.recipes import seeded_randn
from graphlab_utils.watch import Refused, watching

from . import capture_failed, fixed_function, register

SNIPPET = '''\
def make_noisy_step(latent, generator):
    """Capture latent + 0.5 * noise, the noise drawn from the request's own seeded generator."""
    static_latent = latent.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        noise = torch.randn(static_latent.shape, generator=generator, device=static_latent.device)
        out = static_latent + 0.5 * noise

    def step(latent):
        static_latent.copy_(latent)
        graph.replay()
        return out.clone()

    return step
'''
# The fix, as lab 10's solution shows it: the snippet with the generator registered before capture.
FIX = fixed_function(SNIPPET, "register the generator with the graph before capture", insert_after={
    "graph = torch.cuda.CUDAGraph()": "graph.register_generator_state(generator)  # replays advance this generator",
})
TRIGGER = '''\
generator = torch.Generator(device=DEVICE).manual_seed(1234)
step = make_noisy_step(torch.zeros(4, 8, device=DEVICE), generator)
print("captured")
'''
SHAPE = (16, 64)
DEMO_SKIP = (
    "on the simulator a replay draws new numbers from any torch.Generator, so the error a GPU raises here "
    "(RuntimeError: Attempt to increase offset for a CUDA generator not in capture mode.) cannot be shown; "
    "the check below enforces the same rule on both backends")


def _sequence(step, generator, seed: int, n: int = 3):
    generator.manual_seed(seed)
    latents = (seeded_randn(1200 + i, *SHAPE, device=device()) for i in range(n))
    return [((step(latent) - latent) / 0.5) for latent in latents]


@core.check("kata 10 (unregistered-generator)")
def check_noisy_step(make_noisy_step):
    """`make_noisy_step(latent, generator)` captures once; `step(latent)` adds 0.5 * noise drawn from
    `generator`: new noise every replay, the same sequence again after re-seeding the generator."""
    import torch

    ok(callable(make_noisy_step), "a function make_noisy_step(latent, generator)", type(make_noisy_step).__name__,
       "pass the function itself")
    generator = torch.Generator(device=device()).manual_seed(7)
    try:
        with watching(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The CUDA Graph is empty")  # after a refused draw
            step = make_noisy_step(torch.zeros(*SHAPE, device=device()), generator)
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, Refused):
            capture_failed(exc, "a noisy step")
        raise
    ok(callable(step), "make_noisy_step(...) returns a function step(latent)", describe(step, dtype=True),
       "return the inner function at the end")
    with watching() as watch:
        first = _sequence(step, generator, 7)
    ok(watch.replays >= 3, "every call of step replays the graph", f"{watch.replays} replays in 3 calls",
       "step must copy the latent in and replay the graph captured once")
    ok(all(isinstance(n, torch.Tensor) and tuple(n.shape) == SHAPE for n in first),
       f"tensors of shape {SHAPE}", describe(first[0], dtype=True), "return latent + 0.5 * noise, the latent's shape")
    ok(not close(first[0], first[1], rtol=1e-4, atol=1e-4), "new noise on every replay", "the same noise twice",
       "the noise must be drawn inside the graph, from the generator, so each replay draws anew")
    again = _sequence(step, generator, 7)
    ok(all(close(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(first, again)),
       "the same noise sequence after generator.manual_seed(7) again",
       "a different sequence: the noise does not follow the request's generator",
       "draw from the generator you were given (generator=generator), registered with the graph: a replay "
       "then continues that generator's sequence, so a request's seed reproduces its images")
    other = _sequence(step, generator, 8)
    ok(not close(first[0], other[0], rtol=1e-4, atol=1e-4), "different noise for a different seed",
       "the same noise for seeds 7 and 8",
       "the noise must come from the request's generator")
    allnoise = torch.stack(first)
    mean, std = float(allnoise.mean()), float(allnoise.std())
    ok(abs(mean) < 0.1 and 0.85 < std < 1.15, "standard normal noise, scaled by 0.5",
       f"(out - latent) / 0.5 has mean {mean:.2f} and std {std:.2f}", "use torch.randn, times 0.5")


KATA = register(
    "unregistered-generator",
    snippet=SNIPPET,
    fix=FIX,
    entry="make_noisy_step",
    fixed_name="make_noisy_step_fixed",
    task="Write `make_noisy_step_fixed(latent, generator)`: the same step, capturable, whose replays draw new "
         "noise from `generator` (so re-seeding the generator reproduces the sequence).",
    hint="PyTorch registers its default generator with every capture by itself. Any other "
         "`torch.Generator` must be registered with the graph before the capture begins: look at "
         "`torch.cuda.CUDAGraph`'s methods.",
    explanation=(
        "On a GPU, PyTorch draws random numbers in graphs with a seed and an offset that the graph reads at "
        "every replay, and it advances the offset of each generator *registered* with the graph. The default "
        "generator is registered by `capture_begin` itself; a `torch.Generator` you create is not, so the "
        "first draw from it during capture fails with \"Attempt to increase offset for a CUDA generator not "
        "in capture mode\". Call `graph.register_generator_state(generator)` before `torch.cuda.graph(graph)`: "
        "each replay then continues that generator's sequence, and `generator.manual_seed(s)` before a "
        "request reproduces it. (Falling back to the default generator captures, but mixes every request's "
        "randomness into one stream.) On the simulator every generator behaves as if registered, so the "
        "demo of the failure needs a GPU; the check enforces the rule on both."),
    checker=check_noisy_step,
    demo=None,
    isolated=True,
    trigger=TRIGGER,
    demo_needs_gpu=True,
    demo_skip=DEMO_SKIP,
)
