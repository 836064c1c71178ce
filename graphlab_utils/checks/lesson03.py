"""Checks of lab 03, static control flow: make a data-dependent branch graph-safe.

The lab's function is one denoising update with classifier-free guidance (CFG) when the
guidance scale is above 1::

    def guided_step(latent, cond, uncond, scale):
        if scale > 1:                                # a Python `if` on a device tensor: a sync
            eps = uncond + scale * (cond - uncond)   # guided
        else:
            eps = cond                               # plain
        return latent - 0.1 * eps

* :func:`check_device_select`: the learner's version selects on the device (``torch.where``,
  a mask); the check captures it and replays it on inputs that take each branch.
* :func:`check_branch_graphs`: the learner captures one graph per branch and chooses on the
  CPU from the Python float ``scale`` the caller already knows.
* :func:`check_fresh_noise`: a noisy step whose noise must be new on every replay.

Every check compares with eager PyTorch. Before it captures learner code it runs that code
once eagerly and watches for host syncs (``if tensor``, ``.item()``, ``.cpu()``,
``.tolist()``, ``torch.cuda.synchronize()``): a sync during capture fails the capture and,
on a GPU, damages the process, so such code is reported without being captured.
"""
from __future__ import annotations

import math

from graphlab_utils import recipes
from graphlab_utils.errors import error_name_in
from graphlab_utils.watch import Words, watching

from .core import check, close, describe, device, fail, ok, ok_function, refuse_seen, refuse_syncs

__all__ = [
    "STEP",
    "SHAPE",
    "SIGMA",
    "guided_step_eager",
    "check_device_select",
    "check_branch_graphs",
    "check_fresh_noise",
]

STEP = 0.1  # the size of the lab's denoising update
SHAPE = (4, 256)  # the latent shape the checks use
SIGMA = 0.5  # the noise scale of check_fresh_noise
GUIDED_SCALES = (7.5, 3.0, 12.0)  # scale > 1: the guided branch
PLAIN_SCALES = (0.5, 1.0, 0.0)  # scale <= 1: the plain branch


# ---------------------------------------------------------------------------------------
# The reference and the inputs
# ---------------------------------------------------------------------------------------
def guided_step_eager(latent, cond, uncond, scale: float):
    """The lab's step in eager PyTorch, with the scale as a Python float."""
    if scale > 1.0:
        eps = uncond + scale * (cond - uncond)
    else:
        eps = cond
    return latent - STEP * eps


def _inputs(seed: int, shape=SHAPE):
    """latent, cond, uncond: the same numbers on both backends (drawn on the CPU, then moved)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    dev = device()
    return tuple(torch.randn(shape, generator=gen).to(dev) for _ in range(3))


def _scale_tensor(value: float):
    import torch

    return torch.tensor(float(value)).to(device())


def _branch(scale: float) -> str:
    return "guided" if scale > 1.0 else "plain"


def _is_tensor_like(out, like) -> bool:
    import torch

    return isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(like.shape) and out.is_floating_point()


# ---------------------------------------------------------------------------------------
# Watching learner code for host syncs and eager work, without capturing it
# ---------------------------------------------------------------------------------------
# How this lab's hints name a host sync.
_WORDS = Words(
    sync_op="{name} (a value read on the CPU, e.g. `if tensor:` or .item())",
    bool_index="x[mask] (a boolean index needs the count of True values on the CPU)",
    to_cpu="a copy to the CPU (.cpu(), .tolist(), .numpy(), .to('cpu'))",
)

_SYNC_IDEA = (
    "a Python `if` on a device tensor (and .item(), .cpu(), .tolist(), print) makes the CPU wait "
    "for a value the GPU has; during capture nothing runs, so the capture fails with "
    "cudaErrorStreamCaptureUnsupported and damages the process. Keep the decision on the device "
    "(torch.where, a mask) or take it on the CPU from a value the CPU already has. (This check "
    "ran your code eagerly and did not capture it, so your notebook is fine.)"
)


_UPLOAD_IDEA = (
    "during capture PyTorch refuses to copy CPU data to the device unless the CPU tensor is pinned "
    "(RuntimeError), and a pinned copy re-reads the same host buffer on every replay. Make the data on "
    "the device, inside the graph (torch.randn_like), or copy_ it into a static buffer before each replay."
)


def _capture(fn, args, what: str, pool=None):
    """Warm fn up on a side stream (PyTorch's recipe), capture it; hint on a failed capture."""
    recipes.warm_up(lambda: fn(*args), iters=2)
    try:
        return recipes.capture(lambda: fn(*args), pool, warmup=0)
    except Exception as exc:  # noqa: BLE001 - the failure becomes the hint
        fail(f"{what} to capture",
             f"the capture failed: {type(exc).__name__} ({error_name_in(str(exc)) or recipes.first_line(exc)})",
             "something in the function is forbidden during capture (a sync, a new stream, an allocation outside "
             "the graph's pool). A failed capture damages the process on a GPU: restart the kernel before the next try.")


# ---------------------------------------------------------------------------------------
# 1. Device-side selection
# ---------------------------------------------------------------------------------------
def _wrong_branch_note(out, latent, cond, uncond, scale: float) -> str:
    """Which branch a wrong eager result computed, if either."""
    if scale > 1.0 and close(out, latent - STEP * cond):
        return f"at scale {scale:g} (guided) your result is the plain branch's"
    if scale <= 1.0 and scale != 1.0 and close(out, latent - STEP * (uncond + scale * (cond - uncond))):
        return f"at scale {scale:g} (plain) your result is the guided branch's"
    return f"at scale {scale:g} ({_branch(scale)}) your result differs from eager"


@check("device-side selection")
def check_device_select(fn):
    """`fn(latent, cond, uncond, scale)`, `scale` a 0-d tensor on the device: the guided step,
    graph-safe. Compared with eager on both branches, eagerly and replayed in a graph."""
    import torch

    ok_function(fn, "a function fn(latent, cond, uncond, scale)")
    latent, cond, uncond = _inputs(31)
    # 1. eager, watched for syncs, on both branches
    for scale in GUIDED_SCALES + PLAIN_SCALES:
        args = (latent.clone(), cond.clone(), uncond.clone(), _scale_tensor(scale))
        with watching(words=_WORDS) as watch:
            out = fn(*args)
        refuse_syncs(watch, "a step", _SYNC_IDEA)
        ok(_is_tensor_like(out, latent), f"a tensor of shape {tuple(latent.shape)}", describe(out, dtype=True),
           "return latent - 0.1 * eps, the same shape as latent")
        ref = guided_step_eager(latent, cond, uncond, scale)
        ok(close(out, ref), "the eager step's result on both branches (guided when scale > 1, plain otherwise)",
           _wrong_branch_note(out, latent, cond, uncond, scale),
           "select per call on the device: torch.where(scale > 1, guided_eps, cond), or a 0/1 mask made from "
           "scale > 1; both branches are computed and the comparison picks one")
    # 2. in a graph, captured on one branch, replayed on both
    for capture_scale in (GUIDED_SCALES[0], PLAIN_SCALES[0]):
        s_latent, s_cond, s_uncond = (t.clone() for t in _inputs(5))
        s_scale = _scale_tensor(capture_scale)
        graph, out = _capture(fn, (s_latent, s_cond, s_uncond, s_scale), "a step")
        wrong, guided_like, plain_like = [], [], []
        for i, scale in enumerate((capture_scale,) + GUIDED_SCALES[1:] + PLAIN_SCALES[1:]):
            new = _inputs(100 + i)
            for static, value in zip((s_latent, s_cond, s_uncond), new):
                static.copy_(value)
            s_scale.fill_(scale)
            graph.replay()
            torch.cuda.synchronize()
            n_latent, n_cond, n_uncond = new
            guided_like.append(close(out, n_latent - STEP * (n_uncond + scale * (n_cond - n_uncond))))
            plain_like.append(close(out, n_latent - STEP * n_cond))
            if not close(out, guided_step_eager(*new, scale)):
                wrong.append(scale)
        frozen = "guided" if all(guided_like) else "plain" if all(plain_like) else None
        if wrong and frozen is not None:
            fail("replays that follow the scale you fill in: guided when scale > 1, plain otherwise",
                 f"captured at scale {capture_scale:g}, every replay gave the {frozen} branch's result, "
                 f"also at scale {', '.join(f'{s:g}' for s in wrong)}",
                 "your graph always computes the branch taken during capture: a Python decision ran once, while "
                 "recording. Make the choice a device op (torch.where, a mask) so every replay takes it again.")
        ok(not wrong, "replays equal to eager for every scale filled into the static scale tensor",
           f"captured at scale {capture_scale:g}, the replay differs from eager at scale "
           f"{', '.join(f'{s:g}' for s in wrong)}",
           "a replay reads only the static tensors captured: results must come from latent, cond, uncond and "
           "scale as passed in, with no Python value fixed at capture")


# ---------------------------------------------------------------------------------------
# 2. One graph per branch, chosen on the CPU
# ---------------------------------------------------------------------------------------
def _baked_scale(out, latent, cond, uncond):
    """The scale a guided result was computed with, if it is one for every element."""
    diff = cond - uncond
    keep = diff.abs() > 1e-2
    if int(keep.sum()) < 16:
        return None
    est = (((latent - out) / STEP - uncond)[keep] / diff[keep])
    value = float(est.median())
    if not math.isfinite(value):
        return None
    return value if close(out, latent - STEP * (uncond + value * diff)) else None


_FROZEN_IDEA = (
    "your graph always computes the branch taken during capture: one graph replayed for every call keeps "
    "the branch it recorded. Capture one graph per branch and choose on the CPU with `if scale > 1.0:` "
    "at replay time."
)


def _diagnose_runner(wrong) -> None:
    """Fail with the hint that explains the wrong results of run() (scale, out, latent, cond, uncond)."""
    bad = {_branch(s) for s, *_ in wrong}
    scales = ", ".join(f"{s:g}" for s, *_ in wrong)
    baked = [_baked_scale(o, la, co, un) for _s, o, la, co, un in wrong]
    if bad == {"plain"} and all(b is not None for b in baked):
        fail("the plain branch (latent - 0.1 * cond) for scale <= 1", f"a guided result at scale {scales}",
             _FROZEN_IDEA)
    if bad == {"guided"} and all(close(o, la - STEP * co) for _s, o, la, co, un in wrong):
        fail("the guided branch for scale > 1", f"the plain branch's result at scale {scales}", _FROZEN_IDEA)
    if all(b is not None for b in baked) and max(baked) - min(baked) < 1e-3:
        also = " (and for scale <= 1 it still guides: one graph per branch)" if "plain" in bad else ""
        fail("guided results that follow the scale passed to run()",
             f"at scale {scales} the graph computed with scale {baked[0]:.3g}{also}",
             "the scale is baked into the graph: a Python float used during capture becomes a constant "
             "kernel argument. Keep the scale in a static device tensor and fill_ it before each replay.")
    fail("run() equal to the eager step for every scale", f"it differs at scale {scales}",
         "copy_ every new input into the static buffer the graph was captured on (rebinding a name does "
         "nothing), fill_ the static scale, and replay the graph of the branch `scale > 1.0` names")


@check("one graph per branch")
def check_branch_graphs(make_runner):
    """`make_runner(latent, cond, uncond)` captures one graph per branch and returns
    `run(latent, cond, uncond, scale: float) -> Tensor`; compared with eager on both branches."""
    ok_function(make_runner, "a function make_runner(latent, cond, uncond)")
    examples = _inputs(7)
    run = make_runner(*(t.clone() for t in examples))
    ok(callable(run), "make_runner(...) returns a function run(latent, cond, uncond, scale)", describe(run, dtype=True),
       "return the inner function `run` at the end of make_runner")
    calls = [(s, _inputs(200 + i)) for i, s in enumerate(
        (GUIDED_SCALES[0], PLAIN_SCALES[0], GUIDED_SCALES[1], PLAIN_SCALES[1], GUIDED_SCALES[2], PLAIN_SCALES[2]))]
    kept = []
    wrong = []
    for scale, (latent, cond, uncond) in calls:
        with watching(words=_WORDS) as watch:
            out = run(latent.clone(), cond.clone(), uncond.clone(), float(scale))
        if watch.syncs:
            fail("a runner that chooses its graph from the Python float `scale`, with no sync",
                 "run() made a host sync: " + "; ".join(watch.syncs),
                 "the CPU already knows the scale (it is the request's setting): `if scale > 1.0:` on that float "
                 "picks the graph for free. Reading a device value to choose costs a sync on every call, and the "
                 "CPU can no longer run ahead of the GPU.")
        ok(watch.replays >= 1, "every call replays one of the captured graphs", "run() replayed no graph",
           "capture one graph per branch in make_runner (torch.cuda.graph), then in run(): copy_ the inputs into "
           "the static buffers, fill_ the static scale, replay the graph of the branch")
        compute = [n for n in dict.fromkeys(watch.compute)]
        ok(not compute, "run() that only fills static buffers, replays a graph and clones its output",
           "run() computed eagerly: " + ", ".join(compute[:6]),
           "the step's arithmetic belongs inside the captured graphs; around a replay, only copy_/fill_ inputs "
           "and clone the output")
        ok(_is_tensor_like(out, latent), f"a tensor of shape {tuple(latent.shape)}", describe(out, dtype=True),
           "run() returns the step's result (a clone of the graph's output)")
        ref = guided_step_eager(latent, cond, uncond, scale)
        kept.append((out, ref))
        if not close(out, ref):
            wrong.append((scale, out, latent, cond, uncond))
    if wrong:
        _diagnose_runner(wrong)
    first_out, first_ref = kept[0]
    ok(close(first_out, first_ref), "results you can keep: the first call's result unchanged after later calls",
       "the first call's result changed when run() was called again",
       "you return the graph's static output tensor, which the next replay overwrites: return out.clone()")


# ---------------------------------------------------------------------------------------
# 3. Fresh noise on every replay
# ---------------------------------------------------------------------------------------
@check("fresh noise per replay")
def check_fresh_noise(fn):
    """`fn(latent)` returns latent + 0.5 * noise, the noise standard normal and new on every replay."""
    import torch

    ok_function(fn, "a function fn(latent)")
    latent = _inputs(11, (64, 64))[0]
    with watching(words=_WORDS) as watch:
        out = fn(latent.clone())
    refuse_syncs(watch, "a step", _SYNC_IDEA)
    refuse_seen(watch.uploads, "a step that makes its data on the device", _UPLOAD_IDEA)
    ok(_is_tensor_like(out, latent), f"a tensor of shape {tuple(latent.shape)}", describe(out, dtype=True),
       "return latent + 0.5 * noise, the same shape as latent")
    static = latent.clone()
    graph, out = _capture(fn, (static,), "a noisy step")
    noises = []
    for i in range(4):
        new = _inputs(300 + i, (64, 64))[0]
        static.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        noises.append(((out - new) / SIGMA).clone())
    same = all(torch.allclose(noises[0], n, atol=1e-4) for n in noises[1:])
    ok(not same, "new noise on every replay", "the same noise on all 4 replays",
       "your noise is frozen: it was drawn on the CPU (random, NumPy) or before capture and baked into the "
       "graph. Draw it on the device inside the function (torch.randn_like(latent)): PyTorch advances the "
       "device generator on every replay.")
    for n in noises:
        std_elems = float(n.std())
        ok(std_elems > 0.5, "one independent draw per element (std about 1 across the tensor)",
           f"std {std_elems:.2f} across the elements of one replay",
           "one number shared by the whole tensor is not per-element noise: draw a tensor of latent's shape "
           "(torch.randn_like(latent))")
    allnoise = torch.stack(noises)
    mean, std = float(allnoise.mean()), float(allnoise.std())
    ok(abs(mean) < 0.1 and 0.85 < std < 1.15, "noise with mean 0 and std 1, scaled by 0.5",
       f"(out - latent) / 0.5 has mean {mean:.2f} and std {std:.2f}",
       "use standard normal noise (torch.randn_like), times 0.5, added to latent")
