"""The course's standard workloads, written once so that the GPU, the simulator, the
calibration and the sim-vs-real benchmark all run identical code.

Each builder takes a ``device`` (``graphlab_utils.setup().device``: ``cuda`` on the real
backend, ``cpu`` on the simulator) and returns ``(fn, static_inputs)``: ``fn()`` is one
eager pass that reads the tensors of ``static_inputs`` and returns its output. Capturing
``fn`` in a CUDA graph bakes the addresses of ``static_inputs``; to feed new data, copy it
into them (``static_inputs[0].copy_(new)``).

* ``chain(n, device)``: ``n`` tiny elementwise kernels in a row (1024 floats each): the
  launch-bound case where graphs shine.
* ``mlp(device)``: a small MLP (3 Linear+ReLU layers, batch 8, width 256), inference.
* ``big_matmul(device)``: one 4096x4096 fp32 matmul: a single long kernel, where a graph
  has nothing to save. (fp32 with TF32 off is PyTorch's default for matmuls.)
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["chain", "mlp", "big_matmul", "WORKLOADS", "kernels_per_pass"]

Workload = tuple[Callable[[], torch.Tensor], tuple[torch.Tensor, ...]]


def chain(n: int, device: Any, numel: int = 1024) -> Workload:
    """``n`` elementwise additions on a 1024-float vector: ``n`` kernels per pass."""
    n = int(n)
    if n < 1:
        raise ValueError("chain needs at least one op")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(numel, generator=gen).to(device)

    def fn() -> torch.Tensor:
        y = x
        for _ in range(n):
            y = y + 1.0
        return y

    return fn, (x,)


def mlp(device: Any, batch: int = 8, width: int = 256, layers: int = 3) -> Workload:
    """``layers`` x (Linear + ReLU), batch ``batch``, width ``width``; forward only, no grad."""
    gen = torch.Generator().manual_seed(0)
    blocks: list[torch.nn.Module] = []
    for _ in range(layers):
        lin = torch.nn.Linear(width, width)
        with torch.no_grad():
            bound = 1.0 / width**0.5
            lin.weight.copy_(torch.empty(width, width).uniform_(-bound, bound, generator=gen))
            lin.bias.copy_(torch.empty(width).uniform_(-bound, bound, generator=gen))
        blocks += [lin, torch.nn.ReLU()]
    model = torch.nn.Sequential(*blocks).to(device).eval()
    x = torch.randn(batch, width, generator=gen).to(device)

    def fn() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    fn.model = model  # type: ignore[attr-defined]
    return fn, (x,)


def big_matmul(device: Any, size: int = 4096) -> Workload:
    """One ``size`` x ``size`` fp32 matmul."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device)
    b = torch.randn(size, size, generator=gen).to(device)

    def fn() -> torch.Tensor:
        return a @ b

    return fn, (a, b)


def kernels_per_pass(name: str, n: int | None = None) -> int:
    """Kernels one eager pass launches on a GPU (cuBLAS may fuse a Linear's bias)."""
    if name == "chain":
        return int(n or 0)
    if name == "mlp":
        return 6
    if name == "big_matmul":
        return 1
    raise KeyError(name)


# name -> builder(device); the chain sizes are the course's standard ones
WORKLOADS: dict[str, Callable[[Any], Workload]] = {
    **{f"chain{n}": (lambda device, n=n: chain(n, device)) for n in (10, 30, 100, 300, 1000)},
    "mlp": mlp,
    "big_matmul": big_matmul,
}
