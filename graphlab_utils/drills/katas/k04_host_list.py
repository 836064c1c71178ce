"""Kata 4: a tensor built from a Python list inside the captured function."""
from __future__ import annotations

from graphlab_utils.checks import core
from graphlab_utils.checks.core import close, describe, device, ok
from graphlab_utils.recipes import capture, seeded_randn
from graphlab_utils.watch import watching

from . import capture_failed, refuse_host_data, refuse_syncs, register

SNIPPET = '''\
CHANNEL_GAINS = [1.0, 0.5, 0.25, 2.0]  # from the model's config file


def apply_gains(x):
    """Scale each of x's 4 channels (its last dimension) by its gain from the config."""
    gains = torch.tensor(CHANNEL_GAINS, device=x.device)
    return x * gains
'''
# The fix, as lab 10's solution shows it; the lab replaces what the markers enclose with a stub.
FIX = '''\
# the gains as a device tensor, made once, before any capture
GAINS = torch.tensor(CHANNEL_GAINS, device=DEVICE)  # SOLUTION


def apply_gains_fixed(x):
    ### BEGIN SOLUTION read the device tensor made above
    return x * GAINS
    ### END SOLUTION
'''
TRIGGER = '''\
x = torch.randn(3, 4, device=DEVICE)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    y = apply_gains(x)
'''
GAINS = (1.0, 0.5, 0.25, 2.0)


@core.check("kata 4 (host-list)")
def check_host_list(fn):
    """`fn(x)` = x * gains per channel, with no tensor built from Python data inside it; checked
    eagerly, then captured once and replayed for new inputs."""
    import torch

    ok(callable(fn), "a function fn(x)", type(fn).__name__, "pass the function itself")
    gains = torch.tensor(GAINS).to(device())
    for seed in (501, 502):
        x = seeded_randn(seed, 3, 4, device=device())
        with watching() as watch:
            out = fn(x.clone())
        refuse_syncs(watch, "a function")
        refuse_host_data(watch, "a function")
        ok(close(out, x * gains), f"x scaled per channel by {list(GAINS)}", describe(out, dtype=True) if not
           isinstance(out, torch.Tensor) or out.shape != x.shape else "different values",
           "multiply the last dimension by the config's gains, in their order")
    static_x = seeded_randn(503, 3, 4, device=device())
    try:
        with watching():
            graph, out = capture(lambda: fn(static_x))
    except Exception as exc:  # noqa: BLE001
        capture_failed(exc, "a function")
    for seed in (504, 505):
        x = seeded_randn(seed, 3, 4, device=device())
        static_x.copy_(x)
        graph.replay()
        ok(close(out, x * gains), "replays equal to eager for new inputs", "a replay differs from eager",
           "the gains tensor must live on the device before capture, and the graph must read static_x")


KATA = register(
    "host-list",
    snippet=SNIPPET,
    fix=FIX,
    entry="apply_gains",
    fixed_name="apply_gains_fixed",
    task="Write `apply_gains_fixed(x)`: the same result as `apply_gains`, capturable, with the gains made into "
         "a device tensor once, outside the function.",
    hint="`torch.tensor(list, device=...)` is a copy from host memory to the device. Do that copy once, "
         "before any capture, and let the function read the device tensor it made.",
    explanation=(
        "`torch.tensor(CHANNEL_GAINS, device=x.device)` first builds the tensor in pageable host memory and "
        "then copies it to the device. During capture that copy would become a graph node reading a host "
        "buffer that is freed right after the call, so PyTorch refuses it with \"Cannot copy between CPU and "
        "CUDA tensors during CUDA graph capture unless the CPU tensor is pinned\" (a PyTorch check: the "
        "capture itself stays valid). Constants belong on the device before capture: build "
        "`GAINS = torch.tensor(CHANNEL_GAINS, device=DEVICE)` once (a module buffer in a real model) and "
        "multiply by it; per-request values go into static device tensors with `copy_` before each replay "
        "(lesson 04)."),
    checker=check_host_list,
    demo=None,
    isolated=True,
    trigger=TRIGGER,
)
