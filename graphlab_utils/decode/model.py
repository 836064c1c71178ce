"""The capstone's language model: a small decoder-only transformer with a paged KV cache.

What a Llama-style model has, at a size the course can run: token embeddings, ``layers``
blocks of RMSNorm -> grouped-query attention with rotary position embeddings (RoPE) ->
RMSNorm -> SwiGLU MLP, a final RMSNorm and an output projection to the vocabulary. The
weights are random numbers drawn from a fixed seed (no download); greedy decoding picks the
most likely next token inside the step, so a decode step maps token ids to token ids.

Two entry points, both written in plain PyTorch ops:

* :meth:`DecoderLM.prefill`: one request's prompt, run eagerly. Its keys and values are
  written into the KV pool at the request's slots; causal attention runs over the prompt
  itself. Returns the first generated token.
* :meth:`DecoderLM.decode`: one new token for each of ``B`` running requests. Each row writes
  its key and value into the pool at ``out_slots`` and attends to its cache through its row
  of the slot table (``table``, ``seq_lens``): *paged attention* by ``index_select``. Every
  shape depends only on ``B`` and the table's width, so the step can be captured once per
  batch size.

``SIM_CONFIG`` is small enough for the simulator (every op pays Python overhead there);
``GPU_CONFIG`` (8 layers, hidden 512) is the size a GPU runs, launch-bound at batch 1.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DecodeConfig", "SIM_CONFIG", "GPU_CONFIG", "config_for", "DecoderLM", "build_model"]


@dataclass(frozen=True)
class DecodeConfig:
    """The model's sizes and the cache's shape."""

    vocab: int = 256
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2  # grouped-query attention: heads // kv_heads query heads share one K/V head
    ffn: int = 128  # SwiGLU's inner width
    max_context: int = 48  # tokens per request, prompt and output: the width of the slot table
    rope_theta: float = 10000.0
    eps: float = 1e-5
    seed: int = 0
    name: str = "sim"

    def __post_init__(self):
        if self.hidden % self.heads or self.heads % self.kv_heads or (self.hidden // self.heads) % 2:
            raise ValueError("hidden must split into heads of an even size, and heads into kv_heads groups")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def group(self) -> int:
        """Query heads per K/V head."""
        return self.heads // self.kv_heads

    def replace(self, **changes) -> "DecodeConfig":
        return dataclasses.replace(self, **changes)


SIM_CONFIG = DecodeConfig()
GPU_CONFIG = DecodeConfig(vocab=32000, hidden=512, layers=8, heads=8, kv_heads=2, ffn=1408, max_context=256,
                          name="gpu")


def config_for(session) -> DecodeConfig:
    """``GPU_CONFIG`` on a GPU, ``SIM_CONFIG`` on the simulator."""
    return GPU_CONFIG if session.is_real else SIM_CONFIG


def _rope_tables(cfg: DecodeConfig):
    half = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(half, dtype=torch.float64) / half))
    angles = torch.outer(torch.arange(cfg.max_context, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


class DecoderLM(torch.nn.Module):
    """The model (inference only). Build it with :func:`build_model`."""

    def __init__(self, cfg: DecodeConfig, device: Any = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        d, hd = cfg.hidden, cfg.head_dim

        def weight(*shape, std):
            return torch.nn.Parameter((torch.randn(*shape, generator=gen) * std).to(device=device, dtype=dtype),
                                      requires_grad=False)

        def ones(n):
            return torch.nn.Parameter(torch.ones(n, device=device, dtype=dtype), requires_grad=False)

        qkv_out = (cfg.heads + 2 * cfg.kv_heads) * hd
        self.embed = weight(cfg.vocab, d, std=1.0)
        self.blocks = torch.nn.ModuleList()
        for _ in range(cfg.layers):
            block = torch.nn.Module()
            block.attn_norm = ones(d)
            block.wqkv = weight(d, qkv_out, std=d ** -0.5)  # fused q, k, v projections
            block.wo = weight(cfg.heads * hd, d, std=(cfg.heads * hd) ** -0.5)
            block.mlp_norm = ones(d)
            block.w_gate_up = weight(d, 2 * cfg.ffn, std=d ** -0.5)  # SwiGLU: gate and up, fused
            block.w_down = weight(cfg.ffn, d, std=cfg.ffn ** -0.5)
            self.blocks.append(block)
        self.final_norm = ones(d)
        self.lm_head = weight(d, cfg.vocab, std=d ** -0.5)
        cos, sin = _rope_tables(cfg)
        self.register_buffer("rope_cos", cos.to(device=device, dtype=dtype))
        self.register_buffer("rope_sin", sin.to(device=device, dtype=dtype))
        self.register_buffer("context_index", torch.arange(cfg.max_context, device=device))
        self.eval()

    # -- pieces ----------------------------------------------------------------------------
    def _rms_norm(self, x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.eps) * weight

    def _rope(self, x, cos, sin):
        """Rotate ``x`` (N, heads, head_dim) by the angles of its rows' positions (cos, sin: (N, head_dim/2))."""
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def _qkv(self, block, h, cos, sin):
        cfg = self.config
        n, hd = h.shape[0], cfg.head_dim
        qkv = h @ block.wqkv
        q = qkv[:, : cfg.heads * hd].view(n, cfg.heads, hd)
        k = qkv[:, cfg.heads * hd: (cfg.heads + cfg.kv_heads) * hd].view(n, cfg.kv_heads, hd)
        v = qkv[:, (cfg.heads + cfg.kv_heads) * hd:].view(n, cfg.kv_heads, hd)
        return self._rope(q, cos, sin), self._rope(k, cos, sin), v

    def _attend(self, q, keys, values, bias):
        """Grouped-query attention. q: (B, heads, hd); keys, values: (B, T, kv_heads, hd); bias: (B, 1, 1, T)
        or (1, 1, B, T) for a prompt (0 where a key is visible, -inf where not). Returns (B, heads * hd)."""
        cfg = self.config
        b, t = q.shape[0], keys.shape[1]
        q = q.view(b, cfg.kv_heads, cfg.group, cfg.head_dim)  # (B, KVH, G, hd): no copy of K or V per group
        kt = keys.permute(0, 2, 3, 1)  # (B, KVH, hd, T)
        scores = (q @ kt) * (cfg.head_dim ** -0.5) + bias  # (B, KVH, G, T)
        out = torch.softmax(scores, dim=-1) @ values.permute(0, 2, 1, 3)  # (B, KVH, G, hd)
        return out.reshape(b, cfg.heads * cfg.head_dim)

    def _mlp(self, block, x):
        gate, up = (self._rms_norm(x, block.mlp_norm) @ block.w_gate_up).chunk(2, dim=-1)
        return x + (torch.nn.functional.silu(gate) * up) @ block.w_down

    def _logits_to_tokens(self, x):
        return torch.argmax(self._rms_norm(x, self.final_norm) @ self.lm_head, dim=-1)

    # -- the two entry points ------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, kv, tokens, slots):
        """Run one request's prompt (``tokens``, ``slots``: (P,) int64 on the device). Writes its keys and
        values into ``kv`` at ``slots`` and returns the first generated token, a (1,) int64 tensor."""
        p = tokens.shape[0]
        cos, sin = self.rope_cos[:p], self.rope_sin[:p]
        causal = torch.full((p, p), float("-inf"), device=tokens.device, dtype=self.embed.dtype).triu(1)
        x = self.embed.index_select(0, tokens)
        for i, block in enumerate(self.blocks):
            q, k, v = self._qkv(block, self._rms_norm(x, block.attn_norm), cos, sin)
            kv.k[i].index_copy_(0, slots, k)
            kv.v[i].index_copy_(0, slots, v)
            # one sequence of p tokens: attend as a "batch" of p queries over the same p keys
            attn = self._attend_prompt(q, k, v, causal)
            x = x + attn @ block.wo
            x = self._mlp(block, x)
        return self._logits_to_tokens(x[-1:])

    def _attend_prompt(self, q, k, v, causal):
        cfg = self.config
        p = q.shape[0]
        qg = q.view(p, cfg.kv_heads, cfg.group, cfg.head_dim).permute(1, 2, 0, 3)  # (KVH, G, P, hd)
        kt = k.permute(1, 2, 0).unsqueeze(1)  # (KVH, 1, hd, P)
        scores = (qg @ kt) * (cfg.head_dim ** -0.5) + causal  # (KVH, G, P, P)
        out = torch.softmax(scores, dim=-1) @ v.permute(1, 0, 2).unsqueeze(1)  # (KVH, G, P, hd)
        return out.permute(2, 0, 1, 3).reshape(p, cfg.heads * cfg.head_dim)

    @torch.no_grad()
    def decode(self, kv, batch):
        """One decode step for the rows of ``batch`` (a ``kvcache.DecodeBatch`` or the runner's static
        view: ``tokens``, ``positions``, ``seq_lens``, ``out_slots`` of shape (B,), ``table`` (B, W)).
        Returns the next token of every row, a (B,) int64 tensor. Only device ops: it can be captured."""
        b, w = batch.table.shape
        cfg = self.config
        cos, sin = self.rope_cos.index_select(0, batch.positions), self.rope_sin.index_select(0, batch.positions)
        visible = self.context_index[:w].unsqueeze(0) < batch.seq_lens.unsqueeze(1)  # (B, W): the attention metadata
        bias = torch.zeros(b, w, device=visible.device, dtype=self.embed.dtype).masked_fill(
            ~visible, float("-inf")).view(b, 1, 1, w)
        flat = batch.table.reshape(-1)
        x = self.embed.index_select(0, batch.tokens)
        for i, block in enumerate(self.blocks):
            q, k, v = self._qkv(block, self._rms_norm(x, block.attn_norm), cos, sin)
            kv.k[i].index_copy_(0, batch.out_slots, k)  # this token's key and value, into the pool
            kv.v[i].index_copy_(0, batch.out_slots, v)
            keys = kv.k[i].index_select(0, flat).view(b, w, cfg.kv_heads, cfg.head_dim)  # the cache, through the table
            values = kv.v[i].index_select(0, flat).view(b, w, cfg.kv_heads, cfg.head_dim)
            x = x + self._attend(q, keys, values, bias) @ block.wo
            x = self._mlp(block, x)
        return self._logits_to_tokens(x)

    def forward(self, kv, batch):  # so that torch.compile and hooks see the decode step
        return self.decode(kv, batch)


def build_model(cfg: DecodeConfig = SIM_CONFIG, device: Any = "cpu", dtype: torch.dtype = torch.float32) -> DecoderLM:
    """The model at ``cfg`` with its fixed random weights, on ``device``, for inference."""
    return DecoderLM(cfg, device, dtype)

