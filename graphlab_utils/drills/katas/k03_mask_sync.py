"""Kata 3: a boolean index inside the captured function."""
from __future__ import annotations

from graphlab_utils.checks import core
from graphlab_utils.checks.core import close, describe, device, fail, ok
from graphlab_utils.recipes import capture, seeded_randn
from graphlab_utils.watch import watching

from . import capture_failed, refuse_syncs, register

SNIPPET = '''\
def masked_mean(hidden, mask):
    """Mean of the rows of a padded batch that hold real tokens (mask is True there)."""
    return hidden[mask].mean(dim=0)
'''
# The fix, as lab 10's solution shows it; the lab replaces what the markers enclose with a stub.
FIX = '''\
def masked_mean_fixed(hidden, mask):
    ### BEGIN SOLUTION weight the rows by the mask instead of selecting them
    m = mask.to(hidden.dtype)
    return (hidden * m[:, None]).sum(dim=0) / m.sum()
    ### END SOLUTION
'''
TRIGGER = '''\
hidden = torch.randn(8, 16, device=DEVICE)
mask = torch.arange(8, device=DEVICE) < 5  # 5 real tokens, 3 padding rows
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    pooled = masked_mean(hidden, mask)
'''
ROWS, DIM = 8, 16


def _mask(n_real: int, order_seed: int):
    import torch

    order = torch.randperm(ROWS, generator=torch.Generator().manual_seed(order_seed))
    mask = torch.zeros(ROWS, dtype=torch.bool)
    mask[order[:n_real]] = True
    return mask.to(device())


def _reference(hidden, mask):
    m = mask.to(hidden.dtype)
    return (hidden * m[:, None]).sum(0) / m.sum()


@core.check("kata 3 (mask-sync)")
def check_masked_mean(fn):
    """`fn(hidden, mask)` = mean of the rows where mask is True, with no host sync; checked eagerly,
    then captured once and replayed for new rows and masks."""
    import torch

    ok(callable(fn), "a function fn(hidden, mask)", type(fn).__name__, "pass the function itself")
    dev = device()
    cases = [(seeded_randn(300 + n, ROWS, DIM, device=dev), _mask(n, 40 + n)) for n in (5, 1, 8, 3)]
    for hidden, mask in cases:
        with watching() as watch:
            out = fn(hidden.clone(), mask.clone())
        refuse_syncs(watch, "a masked mean")
        ok(isinstance(out, torch.Tensor) and tuple(out.shape) == (DIM,), f"a tensor of shape ({DIM},)",
           describe(out, dtype=True), "return the mean over the real rows: one vector of the hidden size")
        n = int(mask.sum())
        if not close(out, _reference(hidden, mask)):
            if n < ROWS and close(out, hidden.mean(0)):
                fail("the mean over the rows where mask is True",
                     f"with {n} real rows of {ROWS}, the mean of all rows",
                     "the padding rows must not count: weight each row by the mask (0 or 1) and divide by the "
                     "number of real rows, mask.sum()")
            fail("the mean over the rows where mask is True", f"with {n} real rows of {ROWS}, a different vector",
                 "sum hidden * mask[:, None] over the rows and divide by mask.sum()")
    static_h, static_m = cases[0][0].clone(), cases[0][1].clone()
    try:
        with watching():
            graph, out = capture(lambda: fn(static_h, static_m))
    except Exception as exc:  # noqa: BLE001 - a failed capture becomes the hint
        capture_failed(exc, "a masked mean")
    for i, n in enumerate((2, 7, 4)):
        hidden, mask = seeded_randn(400 + i, ROWS, DIM, device=dev), _mask(n, 60 + i)
        static_h.copy_(hidden)
        static_m.copy_(mask)
        graph.replay()
        ok(close(out, _reference(hidden, mask)), "replays equal to eager for every new mask",
           f"captured with 5 real rows, the replay with {n} real rows differs",
           "a replay reads only the static tensors: the count of real rows must come from the mask on the "
           "device (mask.sum()), not from a Python number fixed at capture")


KATA = register(
    "mask-sync",
    snippet=SNIPPET,
    fix=FIX,
    entry="masked_mean",
    fixed_name="masked_mean_fixed",
    task="Write `masked_mean_fixed(hidden, mask)`: the same result as `masked_mean` for every mask with at "
         "least one True, with no host sync, so that one graph captured once serves every mask.",
    hint="`hidden[mask]` has as many rows as `mask` has True values: who needs to know that number? Weight "
         "the rows by the mask instead of selecting them.",
    explanation=(
        "`hidden[mask]` returns a tensor whose size is the number of True values; PyTorch has to copy that "
        "count to the CPU to allocate the result (a `nonzero` and a sync). During capture nothing has run, "
        "so CUDA refuses the sync (`cudaErrorStreamCaptureUnsupported`), the capture is invalidated "
        "(`cudaErrorStreamCaptureInvalidated` on exit) and the process is left damaged. A fixed-shape "
        "formulation keeps everything on the device: `m = mask.to(hidden.dtype)`, "
        "`(hidden * m[:, None]).sum(0) / m.sum()` (or `torch.where`). The graph then computes the right "
        "mean for any mask copied into its static input. Lesson 02 lists what a capture forbids; lesson 08 "
        "shows how to find the line that synced."),
    checker=check_masked_mean,
    demo=None,
    isolated=True,
    trigger=TRIGGER,
)
