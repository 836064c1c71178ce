"""Kata 11: a Python counter frozen at capture."""
from __future__ import annotations

from graphlab_utils.checks import core
from graphlab_utils.checks.core import close, device, fail, ok
from graphlab_utils.recipes import seeded_randn, warm_up
from graphlab_utils.watch import Refused, watching

from . import capture_failed, refuse_host_data, refuse_syncs, register

SNIPPET = '''\
class RunningMean:
    """Stores one token vector per step and returns the mean of all tokens seen so far."""

    def __init__(self, slots, dim, device):
        self.cache = torch.zeros(slots, dim, device=device)
        self.pos = 0  # the next free slot

    def step(self, token):
        self.cache[self.pos].copy_(token)
        self.pos += 1
        return self.cache[: self.pos].mean(dim=0)
'''
# The fix, as lab 10's solution shows it; the lab replaces what the markers enclose with a stub.
FIX = '''\
class RunningMeanFixed(RunningMean):
    def __init__(self, slots, dim, device):
        super().__init__(slots, dim, device)
        ### BEGIN SOLUTION keep the position on the device
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.slot_ids = torch.arange(slots, device=device)
        ### END SOLUTION

    def step(self, token):
        ### BEGIN SOLUTION write, advance and average with kernels only
        self.cache.index_copy_(0, self.pos.view(1), token.view(1, -1))
        self.pos += 1  # a kernel: every replay advances the position
        seen = (self.slot_ids < self.pos).to(self.cache.dtype)
        return (self.cache * seen[:, None]).sum(dim=0) / self.pos
        ### END SOLUTION
'''
SLOTS, DIM, STEPS = 8, 16, 6


def _run(cls) -> dict:
    import torch

    dev = device()
    tokens = [seeded_randn(1300 + i, DIM, device=dev) for i in range(STEPS)]
    expect = [torch.stack(tokens[: i + 1]).mean(0) for i in range(STEPS)]
    eager = cls(SLOTS, DIM, dev)
    with watching() as watch:
        eager_outs = [eager.step(t.clone()) for t in tokens]
    eager_ok = all(close(o, e) for o, e in zip(eager_outs, expect))
    result = {"eager_correct": eager_ok, "eager_watch": watch}
    if watch.syncs or watch.host_data or not eager_ok:
        return result
    spare = cls(SLOTS, DIM, dev)  # warm-up on a spare instance: the captured one stays fresh
    warm_up(lambda: spare.step(tokens[0].clone()), iters=1)
    model = cls(SLOTS, DIM, dev)
    static_token = torch.zeros(DIM, device=dev)
    graph = torch.cuda.CUDAGraph()
    with watching():
        with torch.cuda.graph(graph):
            out = model.step(static_token)
    replayed = []
    for t in tokens:
        static_token.copy_(t)
        graph.replay()
        replayed.append(out.clone())
    result["replay_correct"] = [close(o, e) for o, e in zip(replayed, expect)]
    result["replay_is_latest_token"] = all(close(o, t) for o, t in zip(replayed, tokens))
    return result


def _demo(cls) -> None:
    r = _run(cls)
    print("eagerly, every step returns the running mean:", r["eager_correct"])
    print("replays that return the running mean:", sum(r["replay_correct"]), "of", STEPS)
    print("every replay returns just the latest token:", r["replay_is_latest_token"])


@core.check("kata 11 (python-counter)")
def check_running_mean(cls):
    """`cls(slots, dim, device).step(token)` returns the mean of the tokens so far, eagerly and when
    one call is captured and replayed once per token."""
    ok(isinstance(cls, type), "the fixed RunningMean class", type(cls).__name__, "pass the class itself")
    try:
        r = _run(cls)
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, Refused):
            capture_failed(exc, "a step")
        raise
    refuse_syncs(r["eager_watch"], "a step")
    refuse_host_data(r["eager_watch"], "a step")
    ok(r["eager_correct"], "eagerly, step i returns the mean of tokens 0..i", "an eager step differs",
       "write the token into the next slot, advance the position, average the slots written so far")
    if r["replay_is_latest_token"]:
        fail("replay i returns the mean of tokens 0..i", "every replay returns only the latest token",
             "self.pos is a Python int: it was read once, while recording, so the graph always writes slot 0 "
             "and averages one row, and `self.pos += 1` never runs again. Keep the position in a device "
             "tensor that the graph itself advances (self.pos += 1 on a tensor is a kernel), write with "
             "index_copy_, and average with a mask built from the position.")
    bad = [i for i, good in enumerate(r["replay_correct"]) if not good]
    ok(not bad, "replay i returns the mean of tokens 0..i", f"replays {bad} differ from eager",
       "everything a replay needs must be device state the graph reads and updates: position, mask, count")


KATA = register(
    "python-counter",
    snippet=SNIPPET,
    fix=FIX,
    entry="RunningMean",
    fixed_name="RunningMeanFixed",
    task="Write `RunningMeanFixed(slots, dim, device)`, whose `step(token)` gives the running mean both eagerly "
         "and when a single call is captured and the graph is replayed once per token.",
    hint="Which lines of `step` run on every replay, and which ran only once, in Python, while recording? "
         "Make the position a 0-d `torch.long` tensor on the device and let kernels use and advance it.",
    explanation=(
        "Capture records kernels, not Python. `self.cache[self.pos]` turned the Python int into a fixed "
        "address (slot 0), `self.cache[: self.pos]` into a fixed one-row view, and `self.pos += 1` ran once, "
        "while recording. So every replay writes slot 0 and returns that one row: the latest token. Keep the "
        "state the step updates on the device: `self.pos = torch.zeros((), dtype=torch.long, device=device)`, "
        "write with `self.cache.index_copy_(0, self.pos.view(1), token.view(1, -1))`, advance with "
        "`self.pos += 1` (a kernel, replayed every time), and average with a mask "
        "`slot_ids < self.pos` and a division by `self.pos`. This is how graph-captured decoders keep "
        "sequence lengths and write positions in device buffers."),
    checker=check_running_mean,
    demo=_demo,
)
