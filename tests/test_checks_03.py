"""Lab 03's checks: each passes correct answers (not only the reference) and fails wrong ones
with the hint that names the idea behind the mistake."""
from __future__ import annotations

import random

import pytest

import graphlab_utils


@pytest.fixture(scope="module")
def L03():
    graphlab_utils.setup(backend="sim", quiet=True)
    from graphlab_utils.checks import lesson03

    yield lesson03
    from graphlab_utils import simulator

    simulator.uninstall()


def _capture(fn, pool=None):
    """The lab's helper: warm up on a side stream, then capture."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, pool=pool):
        out = fn()
    return g, out


# ---------------------------------------------------------------------------------------
# check_device_select
# ---------------------------------------------------------------------------------------
def select_reference(latent, cond, uncond, scale):
    import torch

    guided = uncond + scale * (cond - uncond)
    return latent - 0.1 * torch.where(scale > 1, guided, cond)


def select_mask(latent, cond, uncond, scale):
    """A different correct answer: a 0/1 mask and a clamped-free blend of the scale."""
    use = (scale > 1).to(latent.dtype)
    s = use * scale + (1 - use)  # scale where guided, 1 (= plain) otherwise
    return latent - 0.1 * (uncond + s * (cond - uncond))


def select_always_guided(latent, cond, uncond, scale):
    return latent - 0.1 * (uncond + scale * (cond - uncond))


def select_python_if(latent, cond, uncond, scale):
    if scale > 1:  # a sync
        return latent - 0.1 * (uncond + scale * (cond - uncond))
    return latent - 0.1 * cond


def select_item(latent, cond, uncond, scale):
    s = scale.item()  # a sync
    eps = uncond + s * (cond - uncond) if s > 1 else cond
    return latent - 0.1 * eps


def test_device_select_accepts_reference_and_mask(L03):
    assert L03.check_device_select(select_reference, quiet=True).passed
    assert L03.check_device_select(select_mask, quiet=True).passed


def test_device_select_wrong_branch(L03):
    r = L03.check_device_select(select_always_guided, quiet=True)
    assert not r.passed
    assert "guided branch's" in r.seen


def test_device_select_refuses_syncs_without_capturing(L03):
    import torch

    for fn in (select_python_if, select_item):
        r = L03.check_device_select(fn, quiet=True)
        assert not r.passed
        assert "host sync" in r.seen
        assert "did not capture" in r.idea
    torch.randn(4)  # the process is not poisoned: no capture failed


def test_device_select_frozen_branch_in_graph(L03):
    """Right eagerly, frozen in a graph: a branch decided by Python state set during capture."""
    import torch

    def frozen(latent, cond, uncond, scale):
        if torch.cuda.is_current_stream_capturing():  # decided once, while recording
            return latent - 0.1 * (uncond + scale * (cond - uncond))
        return select_reference(latent, cond, uncond, scale)

    r = L03.check_device_select(frozen, quiet=True)
    assert not r.passed
    assert "always computes the branch taken during capture" in r.idea


def test_device_select_stub_and_non_tensor(L03):
    def stub(latent, cond, uncond, scale):
        raise NotImplementedError("Exercise")

    assert not L03.check_device_select(stub, quiet=True).passed
    r = L03.check_device_select(lambda *a: 3.0, quiet=True)
    assert not r.passed and "float" in r.seen


# ---------------------------------------------------------------------------------------
# check_branch_graphs
# ---------------------------------------------------------------------------------------
def runner_reference(latent, cond, uncond):
    import torch

    s_latent, s_cond, s_uncond = latent.clone(), cond.clone(), uncond.clone()
    s_scale = torch.full((), 7.5, device=latent.device)
    pool = torch.cuda.graph_pool_handle()
    g_guided, out_guided = _capture(
        lambda: s_latent - 0.1 * (s_uncond + s_scale * (s_cond - s_uncond)), pool=pool)
    g_plain, out_plain = _capture(lambda: s_latent - 0.1 * s_cond, pool=pool)

    def run(latent, cond, uncond, scale):
        s_latent.copy_(latent)
        s_cond.copy_(cond)
        s_uncond.copy_(uncond)
        if scale > 1.0:
            s_scale.fill_(scale)
            g_guided.replay()
            return out_guided.clone()
        g_plain.replay()
        return out_plain.clone()

    return run


def runner_dict(latent, cond, uncond):
    """A different correct answer: graphs in a dict keyed by the branch, no shared pool,
    the scale copied from a tensor made on the CPU."""
    import torch

    static = {"latent": latent.clone(), "cond": cond.clone(), "uncond": uncond.clone(),
              "scale": torch.zeros((), device=latent.device)}

    def guided():
        eps = static["uncond"] + static["scale"] * (static["cond"] - static["uncond"])
        return static["latent"] - 0.1 * eps

    def plain():
        return static["latent"] - 0.1 * static["cond"]

    graphs = {True: _capture(guided), False: _capture(plain)}

    def run(latent, cond, uncond, scale):
        for k, v in (("latent", latent), ("cond", cond), ("uncond", uncond)):
            static[k].copy_(v)
        static["scale"].copy_(torch.tensor(scale))
        g, out = graphs[scale > 1.0]
        g.replay()
        return out.clone()

    return run


def runner_one_graph(latent, cond, uncond):
    """Wrong: one guided graph replayed for every scale."""
    import torch

    s = [latent.clone(), cond.clone(), uncond.clone(), torch.full((), 7.5, device=latent.device)]
    g, out = _capture(lambda: s[0] - 0.1 * (s[2] + s[3] * (s[1] - s[2])))

    def run(latent, cond, uncond, scale):
        for static, new in zip(s, (latent, cond, uncond)):
            static.copy_(new)
        s[3].fill_(scale)
        g.replay()
        return out.clone()

    return run


def runner_baked_scale(latent, cond, uncond):
    """Wrong: the guided graph captured with the scale as a Python float."""
    import torch

    s = [latent.clone(), cond.clone(), uncond.clone()]
    g_guided, out_guided = _capture(lambda: s[0] - 0.1 * (s[2] + 7.5 * (s[1] - s[2])))
    g_plain, out_plain = _capture(lambda: s[0] - 0.1 * s[1])

    def run(latent, cond, uncond, scale):
        for static, new in zip(s, (latent, cond, uncond)):
            static.copy_(new)
        g, out = (g_guided, out_guided) if scale > 1.0 else (g_plain, out_plain)
        g.replay()
        return out.clone()

    return run


def runner_reads_device(latent, cond, uncond):
    """Wrong: chooses the graph by reading the static scale back from the device."""
    inner = runner_reference(latent, cond, uncond)
    import torch

    flag = torch.zeros((), device=latent.device)

    def run(latent, cond, uncond, scale):
        flag.fill_(scale)
        return inner(latent, cond, uncond, float(flag.item()))

    return run


def runner_eager(latent, cond, uncond):
    """Wrong: no graph at all."""
    from graphlab_utils.checks.lesson03 import guided_step_eager

    return lambda latent, cond, uncond, scale: guided_step_eager(latent, cond, uncond, scale)


def runner_no_clone(latent, cond, uncond):
    """Wrong: returns the static output, which the next replay overwrites."""
    inner_state = {}
    import torch

    s = [latent.clone(), cond.clone(), uncond.clone(), torch.zeros((), device=latent.device)]
    g_guided, out_guided = _capture(lambda: s[0] - 0.1 * (s[2] + s[3] * (s[1] - s[2])))
    g_plain, out_plain = _capture(lambda: s[0] - 0.1 * s[1])
    inner_state["graphs"] = (g_guided, g_plain)

    def run(latent, cond, uncond, scale):
        for static, new in zip(s, (latent, cond, uncond)):
            static.copy_(new)
        s[3].fill_(scale)
        g, out = (g_guided, out_guided) if scale > 1.0 else (g_plain, out_plain)
        g.replay()
        return out

    return run


def test_branch_graphs_accepts_reference_and_dict(L03):
    assert L03.check_branch_graphs(runner_reference, quiet=True).passed
    assert L03.check_branch_graphs(runner_dict, quiet=True).passed


def test_branch_graphs_frozen_branch(L03):
    r = L03.check_branch_graphs(runner_one_graph, quiet=True)
    assert not r.passed
    assert "always computes the branch taken during capture" in r.idea


def test_branch_graphs_baked_scale(L03):
    r = L03.check_branch_graphs(runner_baked_scale, quiet=True)
    assert not r.passed
    assert "baked" in r.idea and "7.5" in r.seen


def test_branch_graphs_sync_to_choose(L03):
    r = L03.check_branch_graphs(runner_reads_device, quiet=True)
    assert not r.passed
    assert "host sync" in r.seen and "CPU already knows" in r.idea


def test_branch_graphs_eager_and_overwritten(L03):
    r = L03.check_branch_graphs(runner_eager, quiet=True)
    assert not r.passed and "replayed no graph" in r.seen
    r = L03.check_branch_graphs(runner_no_clone, quiet=True)
    assert not r.passed and "clone" in r.idea


# ---------------------------------------------------------------------------------------
# check_fresh_noise
# ---------------------------------------------------------------------------------------
def noise_reference(latent):
    import torch

    return latent + 0.5 * torch.randn_like(latent)


def noise_normal_(latent):
    """A different correct answer: an empty buffer filled in place on the device."""
    import torch

    noise = torch.empty(latent.shape, device=latent.device, dtype=latent.dtype).normal_()
    return latent + noise * 0.5


def test_fresh_noise_accepts_correct_answers(L03):
    assert L03.check_fresh_noise(noise_reference, quiet=True).passed
    assert L03.check_fresh_noise(noise_normal_, quiet=True).passed


def test_fresh_noise_frozen_predrawn(L03):
    import torch

    from graphlab_utils.checks.core import device

    predrawn = torch.randn(64, 64, device=device())  # drawn once, outside the graph
    r = L03.check_fresh_noise(lambda latent: latent + 0.5 * predrawn, quiet=True)
    assert not r.passed
    assert "frozen" in r.idea and "same noise" in r.seen


def test_fresh_noise_frozen_cpu_random(L03):
    rng = random.Random(0)
    r = L03.check_fresh_noise(lambda latent: latent + 0.5 * rng.gauss(0.0, 1.0), quiet=True)
    assert not r.passed
    assert "frozen" in r.idea


def test_fresh_noise_scalar_and_missing(L03):
    import torch

    r = L03.check_fresh_noise(lambda latent: latent + 0.5 * torch.randn((), device=latent.device), quiet=True)
    assert not r.passed and "per-element" in r.idea
    r = L03.check_fresh_noise(lambda latent: latent + 0.0, quiet=True)
    assert not r.passed
    r = L03.check_fresh_noise(lambda latent: latent + 2.0 * torch.randn_like(latent), quiet=True)
    assert not r.passed and "std" in r.seen


def test_checks_print_one_line_on_success(L03, capsys):
    L03.check_fresh_noise(noise_reference)
    assert capsys.readouterr().out == "[PASS] fresh noise per replay: check passed\n"


def test_printing_a_tensor_counts_as_a_sync(L03):
    def chatty(latent, cond, uncond, scale):
        print(scale)  # formatting copies the value to the CPU
        return select_reference(latent, cond, uncond, scale)

    r = L03.check_device_select(chatty, quiet=True)
    assert not r.passed and "printing a tensor" in r.seen
