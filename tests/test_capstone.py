"""graphlab_utils.capstone: lesson 09's UNet, DDIM schedule and graphed samplers.

The eager parts run on plain PyTorch (CPU); the graphed samplers run on the simulator. A
tiny configuration keeps the suite quick; one test counts the ops of the lesson's GPU size.
"""
from __future__ import annotations

import math

import pytest
import torch

from graphlab_utils import capstone, recipes

TINY = capstone.UNetConfig(channels=16, context_dim=16, context_len=4, size=8, steps=3, heads=2, name="tiny")


@pytest.fixture(scope="module")
def tiny():
    unet = capstone.build_unet(TINY)
    sched = capstone.DDIMSchedule(TINY.steps)
    return unet, sched


@pytest.fixture
def sim():
    import graphlab_utils

    session = graphlab_utils.setup(backend="sim", quiet=True)
    yield session
    from graphlab_utils import simulator

    simulator.uninstall()


# -- sizes ---------------------------------------------------------------------------------
def test_config_for_backends():
    assert capstone.config_for("real") is capstone.GPU_CONFIG
    assert capstone.config_for("sim") is capstone.SIM_CONFIG
    gpu = capstone.GPU_CONFIG
    assert (gpu.channels, gpu.size, gpu.steps, gpu.latent_channels) == (64, 32, 50, 4)
    assert capstone.SIM_CONFIG.steps < gpu.steps and capstone.SIM_CONFIG.size < gpu.size
    with pytest.raises(ValueError):
        capstone.config_for("cuda")


def test_config_for_a_session():
    class FakeSession:
        backend = "sim"

    assert capstone.config_for(FakeSession()) is capstone.SIM_CONFIG


# -- the UNet ---------------------------------------------------------------------------
def test_unet_shapes_and_determinism(tiny):
    unet, _ = tiny
    x, prompt = capstone.make_request(0, 2, TINY)
    assert x.shape == (2, 4, 8, 8) and prompt.shape == (2, 4, 16)
    eps = unet(x, torch.tensor([10.0, 900.0]), prompt)
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    again = capstone.build_unet(TINY)(x, torch.tensor([10.0, 900.0]), prompt)
    assert torch.equal(eps, again)  # fixed seed: the same weights every time
    assert not any(p.requires_grad for p in unet.parameters())
    assert not unet.training


def test_unet_depends_on_timestep_and_prompt(tiny):
    unet, _ = tiny
    x, prompt = capstone.make_request(0, 1, TINY)
    base = unet(x, torch.tensor([500.0]), prompt)
    assert not torch.allclose(base, unet(x, torch.tensor([100.0]), prompt))
    assert not torch.allclose(base, unet(x, torch.tensor([500.0]), prompt * -1))


def test_build_unet_leaves_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    capstone.build_unet(TINY)
    assert torch.equal(torch.rand(3), expected)


def test_make_request_is_seeded():
    a = capstone.make_request(3, 1, TINY)
    b = capstone.make_request(3, 1, TINY)
    c = capstone.make_request(4, 1, TINY)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert capstone.make_request(3, 1, TINY, size=12)[0].shape == (1, 4, 12, 12)


def test_guidance_context_puts_the_unconditional_half_first():
    _, prompt = capstone.make_request(1, 3, TINY)
    ctx = capstone.guidance_context(prompt)
    assert ctx.shape == (6, 4, 16)
    assert torch.equal(ctx[3:], prompt)
    assert torch.equal(ctx[0], ctx[2])  # the same empty prompt for every row
    assert torch.equal(capstone.null_context(prompt), ctx[:3])


def test_gpu_size_has_hundreds_of_ops_per_call():
    cfg = capstone.GPU_CONFIG
    unet = capstone.build_unet(cfg)
    x, prompt = capstone.make_request(0, 1, cfg)
    ops = capstone.count_ops(unet, torch.cat([x, x]), torch.full((2,), 500.0), capstone.guidance_context(prompt))
    total = sum(ops.values())
    assert 250 <= total <= 350, ops
    for name in ("convolution", "native_group_norm", "addmm", "cat", "upsample_nearest2d"):
        assert ops.get(name, 0) > 0, name
    assert any("scaled_dot_product" in name for name in ops)


# -- the schedule ------------------------------------------------------------------------
def test_schedule_tables():
    sched = capstone.DDIMSchedule(50)
    assert sched.timesteps_host[0] == 981.0 and sched.timesteps_host[-1] == 1.0
    assert sched.timesteps.shape == sched.coef_x.shape == sched.coef_eps.shape == (50,)
    assert sched.alphas_cumprod.shape == (capstone.TRAIN_STEPS,)
    ac = sched.alphas_cumprod.double()
    a0, a1 = ac[981], ac[961]
    assert math.isclose(sched.coef_x_host[0], float(torch.sqrt(a1 / a0)), rel_tol=1e-6)
    expected = float(torch.sqrt(1 - a1) - torch.sqrt(a1) * torch.sqrt(1 - a0) / torch.sqrt(a0))
    assert math.isclose(sched.coef_eps_host[0], expected, rel_tol=1e-5)
    assert torch.allclose(sched.coef_x, torch.tensor(sched.coef_x_host, dtype=torch.float32))
    assert [int(t) for t in sched.step_tensors] == list(range(50))
    assert len({t.data_ptr() for t in sched.step_tensors}) == 50  # separate tensors
    with pytest.raises(ValueError):
        capstone.DDIMSchedule(0)


def test_ddim_step_recovers_a_known_noise():
    """A model that predicts the true noise gets x0 back after the last step."""
    sched = capstone.DDIMSchedule(10)
    x0 = torch.randn(1, 4, 8, 8)
    noise = torch.randn(1, 4, 8, 8)
    a = sched.alphas_cumprod[int(sched.timesteps_host[0])]
    x = a.sqrt() * x0 + (1 - a).sqrt() * noise

    class Oracle(torch.nn.Module):
        def forward(self, x, t, context):
            return noise.expand_as(x)

    out = x
    for i in range(sched.steps):
        out = capstone.denoise_step(Oracle(), sched, out, sched.step_tensors[i], torch.zeros(1, 4, 16))
    assert torch.allclose(out, x0, atol=1e-4)


# -- sampling ----------------------------------------------------------------------------
def test_tensor_step_and_baked_step_agree_eagerly(tiny):
    unet, sched = tiny
    x, prompt = capstone.make_request(5, 1, TINY)
    ref = capstone.sample(unet, sched, x, prompt)
    assert torch.isfinite(ref).all() and ref.shape == x.shape
    assert capstone.relative_error(capstone.sample_baked(unet, sched, x, prompt), ref) < 1e-6
    unguided = capstone.sample(unet, sched, x, prompt, guidance=None)
    assert capstone.relative_error(capstone.sample_baked(unet, sched, x, prompt, guidance=None), unguided) < 1e-6
    assert capstone.relative_error(unguided, ref) > 1e-3  # guidance changes the image


def test_relative_error():
    b = torch.tensor([1.0, -2.0, 4.0])
    assert capstone.relative_error(b, b) == 0.0
    assert capstone.relative_error(b + 0.04, b) == pytest.approx(0.01)
    assert capstone.relative_error(b[:2], b) == math.inf
    assert capstone.relative_error(torch.ones(2), torch.zeros(2)) == 1.0


def test_signature_of():
    x = torch.zeros(3, 4, 16, 16)
    assert capstone.signature_of(x, 7.5) == capstone.Signature(3, 16, True, torch.float32)
    assert capstone.signature_of(x, None) == (3, 16, False, torch.float32)
    assert capstone.Signature(1, 8, True) == capstone.Signature(1, 8, True, torch.float32)


def test_static_buffers_load():
    st = capstone.StaticBuffers(TINY, batch=2)
    x, prompt = capstone.make_request(2, 2, TINY)
    addresses = (st.x.data_ptr(), st.context.data_ptr(), st.scale.data_ptr())
    st.load(x, prompt, 3.0)
    assert (st.x.data_ptr(), st.context.data_ptr(), st.scale.data_ptr()) == addresses
    assert torch.equal(st.x, x) and torch.equal(st.context[2:], prompt) and float(st.scale) == 3.0
    with pytest.raises(ValueError):
        st.load(x, prompt, None)
    plain = capstone.StaticBuffers(TINY, batch=2, guidance=False)
    assert plain.scale is None and plain.context.shape[0] == 2
    plain.load(x, prompt, None)
    assert torch.equal(plain.context, prompt)


def test_count_ops_skips_views():
    ops = capstone.count_ops(lambda t: (t.view(4) * 2).t() if t.dim() == 2 else t, torch.ones(2, 2))
    assert ops == {"mul": 1}


# -- graphed samplers on the simulator -------------------------------------------------------
def test_step_and_loop_graphs_equal_eager(sim):
    unet = capstone.build_unet(TINY, sim.device)
    sched = capstone.DDIMSchedule(TINY.steps, sim.device)
    step_graph = capstone.StepGraph(unet, sched, batch=1)
    loop_graph = capstone.LoopGraph(unet, sched, batch=1)
    for seed, guidance in ((1, 7.5), (2, 3.0)):
        x, prompt = capstone.make_request(seed, 1, TINY, sim.device)
        ref = capstone.sample(unet, sched, x, prompt, guidance)
        assert capstone.relative_error(step_graph(x, prompt, guidance), ref) < 1e-5
        assert capstone.relative_error(loop_graph(x, prompt, guidance), ref) < 1e-5


def test_unguided_step_graph(sim):
    unet = capstone.build_unet(TINY, sim.device)
    sched = capstone.DDIMSchedule(TINY.steps, sim.device)
    graph = capstone.StepGraph(unet, sched, batch=2, guidance=False)
    x, prompt = capstone.make_request(3, 2, TINY, sim.device)
    ref = capstone.sample(unet, sched, x, prompt, None)
    assert capstone.relative_error(graph(x, prompt, None), ref) < 1e-5


def test_baked_step_is_frozen_in_a_graph(sim):
    unet = capstone.build_unet(TINY, sim.device)
    sched = capstone.DDIMSchedule(TINY.steps, sim.device)
    st = capstone.StaticBuffers.for_model(unet)
    recipes.warm_up(lambda: capstone.denoise_step_baked(unet, sched, st.x, 0, st.context, 7.5), 2)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = capstone.denoise_step_baked(unet, sched, st.x, 0, st.context, 7.5)
    x, prompt = capstone.make_request(4, 1, TINY, sim.device)
    st.load(x, prompt)
    for _ in range(sched.steps):
        graph.replay()
        st.x.copy_(out)
    assert capstone.relative_error(st.x, capstone.sample(unet, sched, x, prompt)) > 1e-2


def test_make_graphed_callables_on_the_unet(sim):
    import copy

    unet = capstone.build_unet(TINY, sim.device)
    sched = capstone.DDIMSchedule(TINY.steps, sim.device)
    sample_args = (torch.zeros(2, 4, 8, 8), torch.zeros(2), torch.zeros(2, 4, 16))
    with torch.no_grad():
        graphed = torch.cuda.make_graphed_callables(copy.deepcopy(unet), sample_args)
    x, prompt = capstone.make_request(6, 1, TINY, sim.device)
    assert capstone.relative_error(capstone.sample(graphed, sched, x, prompt), capstone.sample(unet, sched, x, prompt)) < 1e-5


def test_compile_is_skipped_on_the_simulator(sim, tiny):
    unet, sched = tiny
    assert not capstone.compile_available()
    with pytest.raises(RuntimeError, match="skipped on the simulator"):
        capstone.compiled_step(unet, sched)
    with pytest.raises(RuntimeError, match="skipped on the simulator"):
        capstone.CompiledSampler(unet, sched)
