"""Lesson 13's helpers: ranks as processes, a tensor-parallel block, a toy custom all-reduce.

* ``launch(fn, *args, world_size=None, timeout=60)``: run ``fn`` on every rank (one process
  each, NCCL on GPUs, gloo and the simulator otherwise) and return a :class:`Launch`: each
  rank's value, error or death, and whether the run hung (bounded by ``timeout``);
* ``device()``, ``default_world_size()``, ``ranks_backend()``;
* ``tp``: the tensor-parallel MLP block (column then row parallel, one all-reduce);
* ``capture_in_step(fn)``: the capture recipe for code with collectives, run on every rank:
  warm up on one side stream (the first collective creates NCCL's communicator there), wait
  for the device, barrier, capture on that same stream;
* ``CustomAllReduce``: registered buffers read by peers, registered after capture.
"""
from __future__ import annotations

from typing import Any, Callable

from . import tp
from .custom_ar import CustomAllReduce, symmetric_memory
from .launch import Launch, LaunchError, RankError, default_world_size, device, launch, ranks_backend

__all__ = ["Launch", "LaunchError", "RankError", "launch", "default_world_size", "ranks_backend", "device", "tp",
           "CustomAllReduce", "symmetric_memory", "capture_in_step"]


def capture_in_step(fn: Callable[[], Any], *, warmup: int = 3, pool: Any = None, keep_graph: bool = False,
                    group: Any = None) -> tuple:
    """Warm up, synchronize, barrier, capture: ``(graph, output)``, on every rank together.

    The warm-up runs ``fn`` eagerly on a side stream (its first collective creates the process
    group's NCCL communicator, which a capture cannot do); the barrier makes every rank finish
    its warm-up before any rank starts capturing; the capture uses the warm-up's stream, so
    what the warm-up set up for that stream serves the graph too (vLLM does the same).
    """
    import torch
    import torch.distributed as dist

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(int(warmup)):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    dist.barrier(group=group)
    graph = torch.cuda.CUDAGraph(keep_graph=keep_graph) if keep_graph else torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream):
        out = fn()
    return graph, out
