"""The second capstone: a small LLM decode engine with a paged KV cache and a CUDA-graph runner.

* :mod:`.model`: a decoder-only transformer (RMSNorm, RoPE, grouped-query attention, SwiGLU),
  random weights from a fixed seed; ``prefill`` and a capturable ``decode`` step;
* :mod:`.kvcache`: the KV pool allocated once, the request-to-slots table, the decode batch,
  and the memory plan that sizes the pool;
* :mod:`.engine`: requests, eager prefill, continuous-batching decode, greedy tokens;
* :mod:`.runner`: the decode graph runner (buckets, static inputs, safe padding, warm-up).

Lesson 11 (``notebooks/11_decode_engine.ipynb``) builds and breaks them; ``benchmarks/decode.py``
times them.
"""
from __future__ import annotations

from .engine import Engine, Request, make_requests, start
from .kvcache import DecodeBatch, KVPool, MemoryPlan, SlotTable, make_batch, plan_memory
from .model import GPU_CONFIG, SIM_CONFIG, DecodeConfig, DecoderLM, build_model, config_for
from .runner import DEFAULT_BUCKETS, DecodeGraphRunner, StaticInputs, pad_rows

__all__ = [
    "DecodeConfig", "SIM_CONFIG", "GPU_CONFIG", "config_for", "DecoderLM", "build_model",
    "KVPool", "SlotTable", "DecodeBatch", "make_batch", "MemoryPlan", "plan_memory",
    "Engine", "Request", "make_requests", "start",
    "DEFAULT_BUCKETS", "DecodeGraphRunner", "StaticInputs", "pad_rows",
]
