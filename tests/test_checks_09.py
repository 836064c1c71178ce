"""The checks of lab 09 (the capstone's diffusion graph runner) on the simulator.

Each check gets the reference answer, at least one other correct answer written
differently, and at least two wrong answers; a wrong answer must fail with a hint (the
specific one where the check names the trap) and never raise out of the check.
"""
from __future__ import annotations

import collections

import pytest
import torch

import graphlab_utils
from graphlab_utils import recipes


from check_helpers import assert_hint, run

pytestmark = pytest.mark.usefixtures("sim")


@pytest.fixture(scope="module")
def lesson09(sim):
    from graphlab_utils.checks import lesson09

    return lesson09


def _capture(fn, pool=None):
    from graphlab_utils import capstone

    recipes.warm_up(fn, 2)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


# ---------------------------------------------------------------------------------------
# Exercise 1: capture one step
# ---------------------------------------------------------------------------------------
def capture_step(unet, sched, static, pool=None):
    from graphlab_utils import capstone

    return _capture(lambda: capstone.denoise_step(unet, sched, static.x, static.step, static.context, static.scale), pool)


def capture_step_by_hand(unet, sched, static, pool=None):
    """Correct, written differently: the step spelled out, capture_begin/capture_end on a side stream."""
    t = None

    def step():
        t = sched.timesteps.index_select(0, static.step)
        coef_x = sched.coef_x.index_select(0, static.step)
        coef_eps = sched.coef_eps.index_select(0, static.step)
        if static.scale is None:
            eps = unet(static.x, t.expand(static.x.shape[0]), static.context)
        else:
            both = unet(torch.cat([static.x, static.x]), t.expand(2 * static.x.shape[0]), static.context)
            uncond, cond = both.chunk(2)
            eps = uncond + static.scale * (cond - uncond)
        return coef_x * static.x + coef_eps * eps

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
        graph = torch.cuda.CUDAGraph()
        graph.capture_begin(pool=pool)
        out = step()
        graph.capture_end()
    torch.cuda.current_stream().wait_stream(side)
    del t
    return graph, out


def capture_step_baked_timestep(unet, sched, static, pool=None):
    from graphlab_utils import capstone

    scale = None if static.scale is None else float(static.scale)
    return _capture(lambda: capstone.denoise_step_baked(unet, sched, static.x, 0, static.context, scale), pool)


def capture_step_baked_scale(unet, sched, static, pool=None):
    from graphlab_utils import capstone

    scale = None if static.scale is None else 7.5
    return _capture(lambda: capstone.denoise_step(unet, sched, static.x, static.step, static.context, scale), pool)


def capture_step_on_temporaries(unet, sched, static, pool=None):
    from graphlab_utils import capstone

    x = torch.randn(static.x.shape)
    ctx = torch.randn(static.context.shape)
    keep = (x, ctx)
    graph, out = _capture(lambda: capstone.denoise_step(unet, sched, keep[0], static.step, keep[1], static.scale), pool)
    graph.keep = keep
    return graph, out


def capture_step_eager_output(unet, sched, static, pool=None):
    from graphlab_utils import capstone

    graph, _ = capture_step(unet, sched, static, pool)
    return graph, capstone.denoise_step(unet, sched, static.x, static.step, static.context, static.scale)


def capture_step_only_graph(unet, sched, static, pool=None):
    return capture_step(unet, sched, static, pool)[0]


def test_capture_step_passes(lesson09):
    assert run(lesson09.check_capture_step, capture_step).passed
    assert run(lesson09.check_capture_step, capture_step_by_hand).passed


def test_capture_step_timestep_trap(lesson09):
    assert_hint(run(lesson09.check_capture_step, capture_step_baked_timestep),
                "reuses the timestep from warm-up: feed it through a static tensor")


def test_capture_step_baked_scale(lesson09):
    assert_hint(run(lesson09.check_capture_step, capture_step_baked_scale), "reuses the guidance scale")


def test_capture_step_stale_inputs(lesson09):
    assert_hint(run(lesson09.check_capture_step, capture_step_on_temporaries), "dummy buffers")


def test_capture_step_wrong_shapes(lesson09):
    assert_hint(run(lesson09.check_capture_step, capture_step_eager_output))
    assert_hint(run(lesson09.check_capture_step, capture_step_only_graph), "pair (graph, out)")


def test_capture_step_stub(lesson09):
    def stub(unet, sched, static, pool=None):
        raise NotImplementedError("Exercise")

    assert_hint(run(lesson09.check_capture_step, stub), "NotImplementedError")


# ---------------------------------------------------------------------------------------
# Exercise 2: serve one request
# ---------------------------------------------------------------------------------------
def sample_with_graph(graph, out, static, sched, latents, prompt, guidance=7.5):
    static.load(latents, prompt, guidance)
    for i in range(sched.steps):
        static.step.fill_(i)
        graph.replay()
        static.x.copy_(out)
    return static.x.clone()


def sample_with_graph_by_hand(graph, out, static, sched, latents, prompt, guidance=7.5):
    """Correct, written differently: copy_ by hand, the step index from the schedule's tensors."""
    from graphlab_utils import capstone

    static.x.copy_(latents)
    if guidance is None:
        static.context.copy_(prompt)
    else:
        static.context.copy_(capstone.guidance_context(prompt))
        static.scale.copy_(torch.tensor([guidance]))
    result = None
    for i in range(sched.steps):
        static.step.copy_(sched.step_tensors[i])
        graph.replay()
        if i + 1 < sched.steps:
            static.x.copy_(out)
        else:
            result = out.clone()
    return result


def sample_without_fill(graph, out, static, sched, latents, prompt, guidance=7.5):
    static.load(latents, prompt, guidance)
    for _ in range(sched.steps):
        graph.replay()
        static.x.copy_(out)
    return static.x.clone()


def sample_without_load(graph, out, static, sched, latents, prompt, guidance=7.5):
    x = latents  # rebinding: the graph never sees it
    for i in range(sched.steps):
        static.step.fill_(i)
        graph.replay()
        x = out
    return x.clone()


def sample_without_copy_back(graph, out, static, sched, latents, prompt, guidance=7.5):
    static.load(latents, prompt, guidance)
    for i in range(sched.steps):
        static.step.fill_(i)
        graph.replay()
    return out.clone()


def sample_without_clone(graph, out, static, sched, latents, prompt, guidance=7.5):
    static.load(latents, prompt, guidance)
    for i in range(sched.steps):
        static.step.fill_(i)
        graph.replay()
        static.x.copy_(out)
    return static.x


def sample_replaying_twice(graph, out, static, sched, latents, prompt, guidance=7.5):
    static.load(latents, prompt, guidance)
    for i in range(sched.steps):
        static.step.fill_(i)
        graph.replay()
        graph.replay()
        static.x.copy_(out)
    return static.x.clone()


def test_sample_with_graph_passes(lesson09):
    assert run(lesson09.check_sample_with_graph, sample_with_graph).passed
    assert run(lesson09.check_sample_with_graph, sample_with_graph_by_hand).passed


def test_sample_with_graph_traps(lesson09):
    assert_hint(run(lesson09.check_sample_with_graph, sample_without_fill),
                "reuses the timestep from warm-up: feed it through a static tensor", "static.step.fill_(i)")
    assert_hint(run(lesson09.check_sample_with_graph, sample_without_load), "dummy buffers")
    assert_hint(run(lesson09.check_sample_with_graph, sample_without_copy_back), "static.x.copy_(out)")
    assert_hint(run(lesson09.check_sample_with_graph, sample_without_clone), "clone")
    assert_hint(run(lesson09.check_sample_with_graph, sample_replaying_twice), "one replay per step")


# ---------------------------------------------------------------------------------------
# Exercise 3: the runner
# ---------------------------------------------------------------------------------------
class Runner:
    """The reference: refuse beyond max_graphs, largest signatures first, one shared pool."""

    def __init__(self, unet, sched, signatures, max_graphs=4):
        from graphlab_utils import capstone

        self.unet, self.sched = unet, sched
        self.graphs, self.misses = {}, 0
        self.pool = torch.cuda.graph_pool_handle()
        order = sorted(signatures, key=lambda s: s.batch * s.size ** 2 * (2 if s.guidance else 1), reverse=True)
        for sig in order[:max_graphs]:
            static = capstone.StaticBuffers.for_model(unet, sig.batch, sig.size, sig.guidance)
            graph, out = capture_step(unet, sched, static, self.pool)
            self.graphs[capstone.Signature(*sig)] = (graph, out, static)

    def __call__(self, latents, prompt, guidance=7.5):
        from graphlab_utils import capstone

        sig = capstone.signature_of(latents, guidance)
        if sig not in self.graphs:
            self.misses += 1
            return capstone.sample(self.unet, self.sched, latents, prompt, guidance)
        graph, out, static = self.graphs[sig]
        return sample_with_graph(graph, out, static, self.sched, latents, prompt, guidance)


class LruRunner:
    """Correct, written differently: capstone.StepGraph, an LRU cache that captures on a miss (after serving it)."""

    def __init__(self, unet, sched, signatures, max_graphs=4):
        self.unet, self.sched, self.max_graphs = unet, sched, max_graphs
        self.graphs = collections.OrderedDict()
        self.misses = 0
        for sig in signatures:
            self._capture(sig)

    def _capture(self, sig):
        from graphlab_utils import capstone

        if len(self.graphs) >= self.max_graphs:
            _, old = self.graphs.popitem(last=False)
            old.graph.reset()
        self.graphs[tuple(sig)] = capstone.StepGraph(self.unet, self.sched, sig[0], sig[1], sig[2])

    def __call__(self, latents, prompt, guidance=7.5):
        from graphlab_utils import capstone

        sig = capstone.signature_of(latents, guidance)
        if sig in self.graphs:
            self.graphs.move_to_end(sig)
            return self.graphs[sig](latents, prompt, guidance)
        self.misses += 1
        result = capstone.sample(self.unet, self.sched, latents, prompt, guidance)
        if sig.size == self.unet.config.size:  # only the sizes it expects; others stay misses
            self._capture(sig)
        return result


class EagerRunner(Runner):
    """Wrong: captures, but serves every request eagerly."""

    def __call__(self, latents, prompt, guidance=7.5):
        from graphlab_utils import capstone

        return capstone.sample(self.unet, self.sched, latents, prompt, guidance)


class UncountedRunner(Runner):
    """Wrong: misses fall back to eager but are not counted."""

    def __call__(self, latents, prompt, guidance=7.5):
        misses = self.misses
        out = super().__call__(latents, prompt, guidance)
        self.misses = misses
        return out


class UnboundedRunner(Runner):
    def __init__(self, unet, sched, signatures, max_graphs=4):
        super().__init__(unet, sched, signatures, max_graphs=len(signatures))


class NoCloneRunner(Runner):
    def __call__(self, latents, prompt, guidance=7.5):
        from graphlab_utils import capstone

        sig = capstone.signature_of(latents, guidance)
        if sig not in self.graphs:
            self.misses += 1
            return capstone.sample(self.unet, self.sched, latents, prompt, guidance)
        graph, out, static = self.graphs[sig]
        return sample_without_clone(graph, out, static, self.sched, latents, prompt, guidance)


class BakedRunner(Runner):
    def __init__(self, unet, sched, signatures, max_graphs=4):
        from graphlab_utils import capstone

        self.unet, self.sched = unet, sched
        self.graphs, self.misses = {}, 0
        for sig in list(signatures)[:max_graphs]:
            static = capstone.StaticBuffers.for_model(unet, sig.batch, sig.size, sig.guidance)
            self.graphs[capstone.Signature(*sig)] = (*capture_step_baked_timestep(unet, sched, static), static)


class SlowRunner(Runner):
    """Wrong for the timing check: captures a new graph for every request."""

    def __call__(self, latents, prompt, guidance=7.5):
        from graphlab_utils import capstone

        sig = capstone.signature_of(latents, guidance)
        static = capstone.StaticBuffers.for_model(self.unet, sig.batch, sig.size, sig.guidance)
        graph, out = capture_step(self.unet, self.sched, static)
        return sample_with_graph(graph, out, static, self.sched, latents, prompt, guidance)


def test_runner_passes(lesson09):
    assert run(lesson09.check_runner, Runner).passed
    assert run(lesson09.check_runner, LruRunner).passed


def test_runner_wrong_answers(lesson09):
    assert_hint(run(lesson09.check_runner, EagerRunner), "without running the UNet eagerly")
    assert_hint(run(lesson09.check_runner, UncountedRunner), "runner.misses grows by 1")
    assert_hint(run(lesson09.check_runner, UnboundedRunner), "max_graphs=2")
    assert_hint(run(lesson09.check_runner, NoCloneRunner), "clone")
    assert_hint(run(lesson09.check_runner, BakedRunner), "reuses the timestep from warm-up")


def test_runner_speed(lesson09):
    assert run(lesson09.check_runner_speed, Runner).passed
    assert_hint(run(lesson09.check_runner_speed, EagerRunner), "faster than eager", "modelled")
    assert_hint(run(lesson09.check_runner_speed, SlowRunner), "faster than eager")


def test_lab_config_is_small(lesson09):
    cfg = lesson09.LAB_CONFIG
    assert cfg.size == 8 and cfg.steps == 4 and cfg.channels == 16
    unet, sched = lesson09.lab_model()
    assert unet.config == cfg and sched.steps == cfg.steps
