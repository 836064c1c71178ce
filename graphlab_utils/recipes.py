"""PyTorch's recipes for a capture, written once: lesson 01 teaches them, everything after imports them.

* ``warm_up(fn)``: a few eager calls on a side stream, joined back to the current stream,
  before a capture (PyTorch's documented recipe: lazy initialisation such as cuBLAS handles,
  autotuning and allocator growth happens there, not inside the capture, and the side stream
  keeps that one-off work off the stream the graph is captured on);
* ``capture(fn)``: warm up, then record one call of ``fn`` into a new ``torch.cuda.CUDAGraph``;
  returns ``(graph, output)``;
* ``close(a, b)``: two tensors of the same shape, equal within the course's tolerances;
* ``seeded_randn(seed, *shape, device=...)``: the same numbers on both backends (drawn on the
  CPU with a private generator, then moved);
* ``first_line(exc)``, ``error_line(exc)``, ``plural(n, word)``, ``describe(value)``: the few words a hint quotes.

The module imports nothing of the course's package: the device is an argument. Learners use
the genuine ``torch.cuda`` names inside it, so it reads the same on a GPU and on the simulator.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["RTOL", "ATOL", "warm_up", "capture", "close", "seeded_randn", "first_line", "error_line", "plural", "describe"]

RTOL, ATOL = 1e-4, 1e-5


def warm_up(fn: Callable[[], Any], iters: int = 3) -> None:
    """Run ``fn()`` ``iters`` times on a side stream, then make the current stream wait for it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(iters):
            fn()
    torch.cuda.current_stream().wait_stream(side)


def capture(fn: Callable[[], Any], pool: Any = None, *, warmup: int = 3, keep_graph: bool = False,
            **graph_kwargs: Any) -> tuple[Any, Any]:
    """``warm_up(fn, warmup)`` (skipped when ``warmup`` is 0), then capture one call of ``fn``.

    Returns ``(graph, output)``: each ``graph.replay()`` runs ``fn``'s kernels again on the
    memory they used during capture and writes ``output`` in place. ``pool`` and the other
    keyword arguments go to ``torch.cuda.graph`` (``capture_error_mode=...``, ``stream=...``).
    ``keep_graph=True`` keeps the captured graph beside the executable (for ExecUpdate and DOT).
    """
    if warmup:
        warm_up(fn, warmup)
    graph = torch.cuda.CUDAGraph(keep_graph=keep_graph) if keep_graph else torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, **graph_kwargs):
        out = fn()
    return graph, out


def close(a: Any, b: Any, rtol: float = RTOL, atol: float = ATOL) -> bool:
    """Both tensors, of the same shape, equal within the tolerances (compared in float32)."""
    return (
        isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
        and bool(torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol))
    )


def seeded_randn(seed: int, *shape: int, device: Any) -> torch.Tensor:
    """Standard normal numbers that are the same on both backends (CPU generator, then moved)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message ('' when it has none)."""
    text = str(exc)
    return text.splitlines()[0] if text else ""


def error_line(exc: BaseException) -> str:
    """``'RuntimeError: <first line of the message>'``: how a hint quotes an exception."""
    return f"{type(exc).__name__}: {first_line(exc)}"


def plural(n: int, one: str, many: str | None = None) -> str:
    """``plural(1, "graph")`` -> '1 graph', ``plural(3, "graph")`` -> '3 graphs'."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def describe(value: Any, dtype: bool = False) -> str:
    """A few words on what a learner's function returned, for a hint.

    ``dtype=True`` names the tensor's dtype too and a non-tensor by its type alone.
    """
    if isinstance(value, torch.Tensor):
        if dtype:
            return f"a tensor of shape {tuple(value.shape)} and dtype {str(value.dtype).replace('torch.', '')}"
        return f"a tensor of shape {tuple(value.shape)}"
    if dtype:
        return type(value).__name__
    if value is None:
        return "None"
    return f"a {type(value).__name__}"
