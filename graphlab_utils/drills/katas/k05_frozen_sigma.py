"""Kata 5: a scheduler coefficient frozen into the graph."""
from __future__ import annotations

from graphlab_utils.checks import core
from graphlab_utils.checks.core import close, describe, device, fail, ok
from graphlab_utils.recipes import seeded_randn
from graphlab_utils.watch import Refused, watching

from . import capture_failed, fixed_function, register

SNIPPET = '''\
def make_euler_step(latent, eps, sigmas):
    """Capture one Euler update, x + (sigma[i+1] - sigma[i]) * eps, and replay it at every step i."""
    static_latent, static_eps = latent.clone(), eps.clone()
    dt = sigmas[1] - sigmas[0]  # a Python float
    graph, out = capture(lambda: static_latent + dt * static_eps)

    def step(latent, eps, i):
        static_latent.copy_(latent)
        static_eps.copy_(eps)
        graph.replay()
        return out.clone()

    return step
'''
# The fix, as lab 10's solution shows it: the snippet with the coefficient in a static tensor, filled per step.
FIX = fixed_function(SNIPPET, "keep the coefficient in a static device tensor", replace={
    "dt = sigmas[1] - sigmas[0]  # a Python float":
        "static_dt = torch.zeros((), device=latent.device)  # read by the graph at every replay",
    "graph, out = capture(lambda: static_latent + dt * static_eps)":
        "graph, out = capture(lambda: static_latent + static_dt * static_eps)",
}, insert_after={
    "static_eps.copy_(eps)": "static_dt.fill_(sigmas[i + 1] - sigmas[i])",
})
SIGMAS = [14.6, 7.0, 3.2, 1.4, 0.55, 0.18, 0.0]
SHAPE = (4, 64)


def _run(make_euler_step) -> dict:
    import torch

    dev = device()
    latent0, eps0 = seeded_randn(601, *SHAPE, device=dev), seeded_randn(602, *SHAPE, device=dev)
    with watching():
        step = make_euler_step(latent0.clone(), eps0.clone(), list(SIGMAS))
    ok(callable(step), "make_euler_step(...) returns a function step(latent, eps, i)", describe(step, dtype=True),
       "return the inner function at the end")
    results = []
    for i in range(len(SIGMAS) - 1):
        latent, eps = seeded_randn(610 + i, *SHAPE, device=dev), seeded_randn(620 + i, *SHAPE, device=dev)
        with watching() as watch:
            out = step(latent.clone(), eps.clone(), i)
        dt = SIGMAS[i + 1] - SIGMAS[i]
        used = None
        if isinstance(out, torch.Tensor) and out.shape == latent.shape:
            used = float(((out - latent) / eps).median())
        results.append({"i": i, "dt": dt, "out": out, "correct": close(out, latent + dt * eps, rtol=1e-4, atol=1e-4),
                        "used_dt": used, "watch": watch})
    return {"steps": results}


def _demo(make_euler_step) -> None:
    steps = _run(make_euler_step)["steps"]
    for s in steps:
        print(f"step {s['i']}: sigma step {s['dt']:+.2f}, the graph applied {s['used_dt']:+.2f}, "
              f"matches eager: {s['correct']}")


@core.check("kata 5 (frozen-sigma)")
def check_euler_step(make_euler_step):
    """`make_euler_step(latent, eps, sigmas)` captures once; `step(latent, eps, i)` replays with
    sigma[i+1] - sigma[i] for every i, compared with eager."""
    ok(callable(make_euler_step), "a function make_euler_step(latent, eps, sigmas)",
       type(make_euler_step).__name__, "pass the function itself")
    try:
        steps = _run(make_euler_step)["steps"]
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, Refused):
            capture_failed(exc, "an Euler step")
        raise
    for s in steps:
        w = s["watch"]
        ok(w.captures == 0, "step() that replays the graph captured once in make_euler_step",
           f"step {s['i']} captured {w.captures} new graph(s)",
           "capturing on every call costs a capture and an instantiate per step, more than the graph saves: "
           "capture once, then fill a static tensor before each replay")
        ok(w.replays >= 1, "every step replays the captured graph", f"step {s['i']} replayed no graph",
           "copy the inputs into the static tensors, fill the coefficient, then graph.replay()")
        compute = list(dict.fromkeys(w.compute))
        ok(not compute, "step() that only fills static tensors, replays and clones",
           f"step {s['i']} computed eagerly: " + ", ".join(compute[:5]),
           "the update belongs in the graph; around a replay only copy_/fill_ inputs and clone the output")
    wrong = [s for s in steps if not s["correct"]]
    if wrong:
        baked = steps[0]["dt"]
        if all(s["used_dt"] is not None and abs(s["used_dt"] - baked) < 1e-3 for s in wrong):
            fail("each step applies its own sigma[i+1] - sigma[i]",
                 f"every step applied {baked:+.2f}, the value of step 0",
                 "a Python float used during capture becomes a constant kernel argument: the graph replays it "
                 "forever. Keep the coefficient in a static 0-d device tensor and fill_() it before each replay.")
        s = wrong[0]
        fail("each step equal to the eager Euler update", f"step {s['i']} differs from eager",
             "out = latent + (sigmas[i+1] - sigmas[i]) * eps, with the coefficient filled into the graph's "
             "static tensor before the replay")


KATA = register(
    "frozen-sigma",
    snippet=SNIPPET,
    fix=FIX,
    entry="make_euler_step",
    fixed_name="make_euler_step_fixed",
    task="Write `make_euler_step_fixed(latent, eps, sigmas)`: capture once, and return `step(latent, eps, i)` "
         "that applies `sigmas[i + 1] - sigmas[i]` at step `i` by replaying that graph.",
    hint="What is `dt` to the graph: a value read at every replay, or a number written into a kernel once? "
         "Give the graph a 0-d device tensor to read, and `fill_()` it in `step` before each replay.",
    explanation=(
        "During capture, `dt * static_eps` launches a multiply whose scalar argument is the Python float `dt`; "
        "the kernel's arguments are recorded by value, so every replay multiplies by step 0's coefficient "
        "(the timestep trap of lesson 09). Tensors are read through their address at every replay, Python "
        "numbers are not. Keep the coefficient in a static device tensor, `static_dt = torch.zeros((), "
        "device=latent.device)`, capture `static_latent + static_dt * static_eps`, and call "
        "`static_dt.fill_(sigmas[i + 1] - sigmas[i])` before each replay. The same holds for timesteps, "
        "guidance scales and any other per-step scalar."),
    checker=check_euler_step,
    demo=_demo,
)
