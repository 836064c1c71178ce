"""Lesson 09 · diffusion warm-up: static buffers, device-side timesteps, graphed callables, the sampler loop."""
from __future__ import annotations

from graphlab_utils.claims import claim
from graphlab_utils.recipes import capture, close


@claim("a graph captured on dummy inputs in static buffers serves real inputs copied in", {
    "captured on an all-zero dummy input": True, "3 real requests match eager": True,
    "the input buffer's address never changed": True})
def dummy_then_real(device):
    import torch

    from graphlab_utils import workloads

    fn, (static_x,) = workloads.mlp(device)  # a small MLP reading the static input static_x
    static_x.zero_()  # the dummy input
    address = static_x.data_ptr()
    g, static_out = capture(fn)
    dummy = bool((static_x == 0).all())
    matched = True
    for _ in range(3):
        request = torch.randn_like(static_x)
        static_x.copy_(request)  # the real input goes into the captured buffer
        g.replay()
        with torch.no_grad():
            matched = matched and close(static_out, fn.model(request))
    return {"captured on an all-zero dummy input": dummy, "3 real requests match eager": matched,
            "the input buffer's address never changed": static_x.data_ptr() == address}


@claim("a Python float is baked into the graph; a device tensor is read at every replay", {
    "with a Python float: the replay uses the new timestep": False,
    "with a 0-dim device tensor: the replay uses the new timestep": True})
def baked_python_scalar(device):
    import torch

    x = torch.ones(1024, device=device)
    schedule = {"t": 0.5}  # the Python float the step reads
    t_dev = torch.full((), 0.5, device=device)  # the same timestep in a device tensor

    def step():
        return x * schedule["t"], x * t_dev

    g, (with_float, with_tensor) = capture(step)
    schedule["t"] = 0.25  # the sampler moves to the next timestep...
    t_dev.fill_(0.25)  # ...in both places
    g.replay()
    return {"with a Python float: the replay uses the new timestep": close(with_float, x * 0.25),
            "with a 0-dim device tensor: the replay uses the new timestep": close(with_tensor, x * 0.25)}


@claim("make_graphed_callables gives eager's outputs and gradients",
       {"outputs match eager": True, "gradients match eager": True})
def graphed_callables(device):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).to(device)
    eager = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).to(device)
    eager.load_state_dict(model.state_dict())
    sample = torch.randn(16, 32, device=device, requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(model, (sample,))
    x = torch.randn(16, 32, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    out = graphed(x)
    out.sum().backward()
    ref = eager(x2)
    ref.sum().backward()
    grads_ok = all(close(p.grad, q.grad) for p, q in zip(model.parameters(), eager.parameters()))
    return {"outputs match eager": close(out, ref), "gradients match eager": grads_ok and close(x.grad, x2.grad)}


@claim("a toy sampler loop (10 steps of a few small kernels) replayed as one graph", {
    "graphed loop matches eager": True, "graphed loop at least 3x faster than eager": True})
def denoise_loop_speedup(device):
    import torch

    from graphlab_utils import timing

    latents = torch.randn(4, 256, device=device)
    sigmas = torch.linspace(1.0, 0.1, 10, device=device)  # the schedule, on the device

    def sample():
        x = latents
        for i in range(10):  # each step: a tiny "UNet" of a few kernels
            eps = torch.tanh(x * 0.5) * 0.1
            x = (x - sigmas[i] * eps) * 0.99
        return x

    g, out = capture(sample)
    g.replay()
    matched = close(out, sample())
    speedup = timing.speedup(timing.measure(sample, repeat=5), timing.measure(g.replay, repeat=5))
    return {"graphed loop matches eager": matched, "graphed loop at least 3x faster than eager": speedup >= 3.0}
