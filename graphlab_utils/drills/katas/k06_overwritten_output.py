"""Kata 6: outputs overwritten by the next replay."""
from __future__ import annotations

from graphlab_utils.checks import core
from graphlab_utils.checks.core import close, describe, device, fail, ok
from graphlab_utils.recipes import capture, seeded_randn
from graphlab_utils.watch import watching

from . import fixed_function, register

SNIPPET = '''\
def generate(step, first, n_steps):
    """Call the captured decode step n_steps times; return every step's output, stacked."""
    outputs = []
    x = first
    for _ in range(n_steps):
        x = step(x)
        outputs.append(x)
    return torch.stack(outputs)
'''
# The fix, as lab 10's solution shows it: the snippet, keeping a copy of each output.
FIX = fixed_function(SNIPPET, "keep a copy of every step's output", replace={
    "outputs.append(x)": "outputs.append(x.clone())  # the next replay overwrites x's memory",
})
DIM, STEPS = 32, 5


def _weights():
    dev = device()
    return seeded_randn(701, DIM, DIM, device=dev) * 0.2, seeded_randn(702, DIM, device=dev) * 0.1


def _make_step():
    """A graph runner that returns its static output buffer, as production runners do."""
    import torch

    w, b = _weights()
    static_in = torch.zeros(2, DIM, device=device())
    graph, static_out = capture(lambda: torch.tanh(static_in @ w + b))

    def step(x):
        static_in.copy_(x)
        graph.replay()
        return static_out  # valid until the next replay

    step.keep_alive = (w, b, static_in)  # a graph does not keep the tensors it reads alive

    return step


def _run(generate) -> dict:
    import torch

    w, b = _weights()
    first = seeded_randn(703, 2, DIM, device=device())
    expect, x = [], first
    for _ in range(STEPS):
        x = torch.tanh(x @ w + b)
        expect.append(x)
    expect = torch.stack(expect)
    step = _make_step()
    with watching() as watch:
        out = generate(step, first.clone(), STEPS)
    shape_ok = isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(expect.shape)
    all_last = shape_ok and all(close(out[i], expect[-1]) for i in range(STEPS))
    return {"out": out, "expect": expect, "shape_ok": shape_ok, "correct": shape_ok and close(out, expect),
            "all_equal_last": all_last, "replays": watch.replays}


def _demo(generate) -> None:
    r = _run(generate)
    print(f"{STEPS} steps generated; the result matches eager:", r["correct"])
    print("every step's entry equals the last step's output:", r["all_equal_last"])


@core.check("kata 6 (overwritten-output)")
def check_generate(generate):
    """`generate(step, first, n_steps)` returns the n outputs of the graph runner `step`, stacked."""
    ok(callable(generate), "a function generate(step, first, n_steps)", type(generate).__name__,
       "pass the function itself")
    r = _run(generate)
    ok(r["shape_ok"], f"a tensor of shape {tuple(r['expect'].shape)} (steps, batch, dim)", describe(r["out"], dtype=True),
       "stack the n_steps outputs along a new first dimension")
    ok(r["replays"] == STEPS, f"{STEPS} calls of step (one replay each)", f"{r['replays']} replays",
       "call the captured step once per generated step")
    if r["all_equal_last"]:
        fail("step i's output in row i", f"all {STEPS} rows equal the last step's output",
             "step() returns the graph's static output buffer, and every replay writes into that same "
             "memory: the list holds one tensor five times. Keep a copy of each step's result "
             "(outputs.append(x.clone())) before the next replay.")
    ok(r["correct"], "the outputs of the eager loop", "some rows differ from eager",
       "each row must be the output of that step, kept before the next replay overwrites it")


KATA = register(
    "overwritten-output",
    snippet=SNIPPET,
    fix=FIX,
    entry="generate",
    fixed_name="generate_fixed",
    task="Write `generate_fixed(step, first, n_steps)`: the same loop, returning the output of every step "
         "(stacked), where `step` is a graph runner that returns its static output buffer.",
    hint="How many different tensors does `outputs` hold at the end? Each replay writes into the same buffer.",
    explanation=(
        "A graph writes its output into memory fixed at capture, and `step` returns that buffer itself "
        "(production runners do, to save a copy: the caller consumes the result before the next replay). "
        "The list therefore holds the same tensor `n_steps` times, and after the loop it shows the last "
        "step's values. Clone what you keep: `outputs.append(x.clone())` (or copy each step into a "
        "preallocated result). Feeding `x` back into `step` is fine: it is copied into the static input "
        "before the replay. Lesson 04 shows the overwrite, lesson 05 the runner that clones."),
    checker=check_generate,
    demo=_demo,
)
