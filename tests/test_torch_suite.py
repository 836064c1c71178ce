"""PyTorch's own CUDA-graph tests, ported as claims (graphlab_utils/claims/torch_suite.py), on the
simulator: each must give the outcome PyTorch's test requires of a GPU. What the simulator does
not model raises one sentence that names it, never an internal error."""
from __future__ import annotations

import json

import pytest
import torch

from graphlab_utils import claims

SUITE = [name for name, c in claims.CLAIMS.items() if c.lesson == claims.SUITE]


@pytest.fixture(scope="module")
def sim():
    import graphlab_utils
    from graphlab_utils import simulator

    session = graphlab_utils.setup(backend="sim", quiet=True)
    yield session
    simulator.uninstall()


def test_the_suite_is_registered_with_the_course_claims():
    assert len(SUITE) >= 40
    for name in SUITE:
        assert claims.get(name).fn.__doc__.strip(), f"{name} names the PyTorch test it ports"


@pytest.mark.parametrize("name", SUITE)
def test_the_simulator_gives_the_gpu_outcome(sim, name):
    result = claims.run(name)  # a claim marked isolated runs in a fresh process of its own
    assert result.error is None, result.error
    assert result.observed == result.expected, json.dumps(result.observed, ensure_ascii=False)


# -- what the simulator does not model: one sentence, never an AttributeError ----------------------
def _not_simulated(call):
    from graphlab_utils.simulator.errors import NotSimulatedError

    with pytest.raises(NotSimulatedError) as info:
        call()
    message = str(info.value)
    assert "is not simulated" in message and "\n" not in message
    return message


def test_what_is_not_modelled_says_so(sim):
    assert "torch.cuda._sleep" in _not_simulated(lambda: torch.cuda._sleep(1000))
    assert "torch.accelerator.Graph" in _not_simulated(lambda: torch.accelerator.Graph())
    assert "allocator's settings" in _not_simulated(
        lambda: torch.cuda.memory._set_allocator_settings("graph_capture_record_stream_reuse:True"))
    generator = torch.Generator(device=sim.device)
    assert "set_offset" in _not_simulated(lambda: generator.set_offset(generator.get_offset() + 4))

    from graphlab_utils import cudart

    with pytest.raises(AttributeError, match="cudart.cudaStreamBeginCapture is not simulated"):
        cudart.cudaStreamBeginCapture


def test_a_replay_inside_a_capture_and_a_foreign_rng_state_say_so(sim):
    x = torch.ones(4, device=sim.device)
    inner = torch.cuda.CUDAGraph()
    with torch.cuda.graph(inner):
        y = x + 1
    outer = torch.cuda.CUDAGraph()
    state = torch.get_rng_state()
    with pytest.warns(UserWarning, match="The CUDA Graph is empty"):
        with torch.cuda.graph(outer):
            assert "child graph" in _not_simulated(inner.replay)
            assert "was not read" in _not_simulated(lambda: torch.set_rng_state(state))


def test_memory_stats_name_what_they_model(sim):
    stats = torch.cuda.memory_stats()
    assert stats["allocated_bytes.all.current"] == torch.cuda.memory_allocated()
    with pytest.raises(KeyError, match="models allocation, segment, active"):
        stats["inactive_split.all.peak"]


# -- the simulated device behaves as a GPU where PyTorch refuses a CPU tensor -----------------------
def test_capturable_optimizers_and_grad_scaler_work_on_the_simulated_device(sim):
    param = torch.nn.Parameter(torch.randn(8, device=sim.device))
    opt = torch.optim.Adam([param], lr=0.1, capturable=True)
    param.grad = torch.randn_like(param)
    before = param.detach().clone()
    opt.step()  # PyTorch refuses capturable=True for CPU tensors; the simulated device is a GPU
    assert not torch.equal(before, param.detach())
    assert torch.amp.GradScaler("cuda").is_enabled()
    with torch.autocast("cuda"):
        assert torch.is_autocast_enabled()
        assert torch.mm(param[None], param[:, None]).dtype == torch.float16  # CUDA's lower-precision list
        assert param.half().sum().dtype == torch.float32  # CUDA runs sum in float32; CPU autocast would not
    assert torch.mm(param[None], param[:, None]).dtype == torch.float32


def test_pinned_memory_is_host_memory_the_device_copies(sim):
    host = torch.ones(8, pin_memory=True)
    assert host.is_pinned() and torch.randn(8).pin_memory().is_pinned()
    assert not torch.ones(8, device=sim.device).is_pinned()


def test_uninstall_gives_pytorch_its_names_back(sim):
    from graphlab_utils import simulator
    from torch.optim.optimizer import Optimizer

    simulated = (torch.Generator, torch.cuda.manual_seed, torch.get_rng_state, Optimizer._accelerator_graph_capture_health_check)
    simulator.uninstall()
    try:
        assert torch.Generator is torch._C.Generator
        assert torch.cuda.default_generators == ()
        originals = (torch.Generator, torch.cuda.manual_seed, torch.get_rng_state, Optimizer._accelerator_graph_capture_health_check)
        assert all(a is not b for a, b in zip(simulated, originals))
        assert not torch.amp.GradScaler("cuda", enabled=False).is_enabled()
    finally:
        simulator.install()
    assert torch.Generator is simulated[0]


def test_eager_random_numbers_are_the_cpu_generators_own(sim):
    """The device generator's first state draws with torch.default_generator: seeded lessons print the same numbers."""
    from graphlab_utils import simulator

    torch.manual_seed(3)
    simulated = (torch.randn(5, device=sim.device), torch.nn.functional.dropout(torch.ones(8), 0.5))
    simulator.uninstall()
    try:
        torch.manual_seed(3)
        plain = (torch.randn(5), torch.nn.functional.dropout(torch.ones(8), 0.5))
    finally:
        simulator.install()
    assert all(torch.equal(a, b) for a, b in zip(simulated, plain))


def test_a_worker_thread_captures_like_the_main_one(sim):
    import threading

    seen = {}

    def work():
        x = torch.ones(4, device=sim.device)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = x * 2
        x.fill_(3.0)
        g.replay()
        seen.update(nodes=len(g.sim_nodes()), result=y.tolist())

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == {"nodes": 1, "result": [6.0] * 4}
