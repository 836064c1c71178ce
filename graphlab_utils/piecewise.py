"""Piecewise CUDA graphs: a small decoder split at its attention calls (lesson 12).

Serving engines (vLLM's ``PIECEWISE`` mode, SGLang's piecewise CUDA graphs) capture
everything of a forward pass *except* attention, and run attention eagerly between the
captured pieces. This module holds the model the lesson splits:

* :class:`TinyDecoder`: token embedding, ``layers`` transformer layers (RMSNorm, QKV
  projection, attention, output projection, residual, RMSNorm, a GELU MLP, residual), a final
  norm and the LM head; weights drawn from a fixed seed, the same on both backends;
* :class:`KVCache`: the keys and values of every layer, allocated once, one row per request
  slot plus a scratch slot that padding tokens write to;
* :class:`Batch`: what one forward pass serves: the tokens, and per token the slot of its
  request and its position, in device tensors; and ``kv_len``, a **host** integer (how many
  cache positions attention reads: the longest sequence of the batch, rounded up), the kind
  of metadata a real attention kernel is planned with on the CPU;
* :func:`attention`: writes the new keys and values into the cache, then each token attends
  to its request's cache up to its own position; it writes into ``out`` when given one;
* :meth:`TinyDecoder.forward`: eager PyTorch, the reference; :meth:`TinyDecoder.pieces`:
  the pieces between attention calls, for a runner to capture one by one.

Every op is shape-static for a given number of tokens and ``kv_len``, so a whole forward can
be captured too (a *full* graph); ``kv_len`` is then baked into the graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from graphlab_utils.recipes import plural, seeded_randn

__all__ = [
    "Config",
    "CONFIG",
    "TinyDecoder",
    "KVCache",
    "Batch",
    "attention",
    "make_batch",
    "decode_batch",
    "prefill_batch",
    "mixed_batch",
    "kv_len_for",
    "KV_ALIGN",
]

KV_ALIGN = 16  # kv_len is rounded up to a multiple of this (attention kernels tile the sequence)


@dataclass(frozen=True)
class Config:
    vocab: int = 256
    dim: int = 64
    heads: int = 4
    layers: int = 2
    mlp: int = 256
    slots: int = 8  # requests the KV cache holds (a scratch slot for padding comes on top)
    max_len: int = 128  # cache positions per slot

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


CONFIG = Config()


def kv_len_for(positions: Sequence[int], cfg: Config = CONFIG) -> int:
    """The cache positions attention must read for tokens at ``positions``: the longest, rounded up."""
    longest = max(positions) + 1 if len(positions) else 1
    return min(cfg.max_len, -(-longest // KV_ALIGN) * KV_ALIGN)


@dataclass
class Batch:
    """One forward pass: ``tokens``, ``slots``, ``positions`` (device tensors of one entry per
    token) and ``kv_len`` (a host int). ``requests`` says how many requests it serves,
    ``decode`` whether every request brings exactly one token (a uniform decode batch) and
    ``prefill`` whether every request brings more than one."""

    tokens: torch.Tensor
    slots: torch.Tensor
    positions: torch.Tensor
    kv_len: int
    requests: int
    decode: bool
    prefill: bool = False  # every request brings more than one token

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def describe(self) -> str:
        kind = "decode" if self.decode else "prefill" if self.prefill else "mixed"
        return f"{kind} batch: {plural(self.requests, 'request')}, {self.num_tokens} tokens, kv_len {self.kv_len}"


def make_batch(tokens: Sequence[int], slots: Sequence[int], positions: Sequence[int], device: Any,
               cfg: Config = CONFIG, kv_len: int | None = None) -> Batch:
    """A :class:`Batch` from Python lists (one entry per token)."""
    if not (len(tokens) == len(slots) == len(positions)):
        raise ValueError("tokens, slots and positions need one entry per token each")
    per_request: dict = {}
    for s in slots:
        per_request[s] = per_request.get(s, 0) + 1
    as_long = lambda values: torch.tensor(list(values), dtype=torch.long).to(device)  # noqa: E731
    return Batch(
        tokens=as_long(tokens), slots=as_long(slots), positions=as_long(positions),
        kv_len=kv_len if kv_len is not None else kv_len_for(positions, cfg),
        requests=len(per_request), decode=all(n == 1 for n in per_request.values()),
        prefill=all(n > 1 for n in per_request.values()),
    )


def _tokens(seed: int, n: int, cfg: Config) -> list:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab, (n,), generator=g).tolist()


def decode_batch(lengths: Sequence[int], device: Any, seed: int = 0, cfg: Config = CONFIG) -> Batch:
    """One new token for each of ``len(lengths)`` requests in slots 0, 1, ...; request ``i``
    already holds ``lengths[i]`` tokens, so its new token sits at position ``lengths[i]``."""
    return make_batch(_tokens(seed, len(lengths), cfg), range(len(lengths)), list(lengths), device, cfg)


def prefill_batch(prompt_lens: Sequence[int], device: Any, seed: int = 0, first_slot: int = 0,
                  cfg: Config = CONFIG) -> Batch:
    """Whole prompts: request ``i`` (slot ``first_slot + i``) brings ``prompt_lens[i]`` tokens at
    positions 0, 1, ..."""
    slots, positions = [], []
    for i, n in enumerate(prompt_lens):
        slots += [first_slot + i] * n
        positions += list(range(n))
    return make_batch(_tokens(seed, len(slots), cfg), slots, positions, device, cfg)


def mixed_batch(decode_lengths: Sequence[int], prompt_lens: Sequence[int], device: Any, seed: int = 0,
                cfg: Config = CONFIG) -> Batch:
    """Decode tokens for the first requests and whole prompts for the next ones, in one batch
    (what continuous batching with chunked prefill hands a forward pass)."""
    slots = list(range(len(decode_lengths)))
    positions = list(decode_lengths)
    for i, n in enumerate(prompt_lens):
        slots += [len(decode_lengths) + i] * n
        positions += list(range(n))
    return make_batch(_tokens(seed, len(slots), cfg), slots, positions, device, cfg)


class KVCache:
    """Keys and values of every layer: ``[layers, slots + 1, max_len, heads, head_dim]``,
    allocated once. Slot ``cfg.slots`` (the last) is scratch space for padding tokens."""

    def __init__(self, cfg: Config, device: Any):
        shape = (cfg.layers, cfg.slots + 1, cfg.max_len, cfg.heads, cfg.head_dim)
        self.cfg = cfg
        self.k = torch.zeros(shape, device=device)
        self.v = torch.zeros(shape, device=device)
        self.scratch_slot = cfg.slots

    def fill(self, seed: int = 1) -> None:
        """Give every position values (as if earlier steps had written them)."""
        self.k.copy_(seeded_randn(seed, *self.k.shape, device=self.k.device))
        self.v.copy_(seeded_randn(seed + 1, *self.v.shape, device=self.v.device))

    def clone(self) -> "KVCache":
        other = KVCache.__new__(KVCache)
        other.cfg, other.scratch_slot = self.cfg, self.scratch_slot
        other.k, other.v = self.k.clone(), self.v.clone()
        return other


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache, layer: int,
              slots: torch.Tensor, positions: torch.Tensor, kv_len: int,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of ``N`` tokens, each over its own request's cache.

    ``q``, ``k``, ``v``: ``[N, heads, head_dim]``. Writes ``k`` and ``v`` into the cache at
    (slot, position), then token ``n`` attends to positions ``0 .. positions[n]`` of slot
    ``slots[n]``, reading the first ``kv_len`` cache positions (a host int). Returns
    ``[N, heads * head_dim]``, written into ``out`` when it is given.
    """
    n, heads, head_dim = q.shape
    cache.k[layer].index_put_((slots, positions), k)
    cache.v[layer].index_put_((slots, positions), v)
    keys = cache.k[layer][slots, :kv_len]  # [N, kv_len, heads, head_dim]
    values = cache.v[layer][slots, :kv_len]
    scores = torch.einsum("nhd,nlhd->nhl", q, keys) / math.sqrt(head_dim)
    visible = torch.arange(kv_len, device=q.device)[None, :] <= positions[:, None]  # [N, kv_len]
    scores = scores.masked_fill(~visible[:, None, :], float("-inf"))
    result = torch.einsum("nhl,nlhd->nhd", torch.softmax(scores, dim=-1), values).reshape(n, heads * head_dim)
    if out is None:
        return result
    out.copy_(result)
    return out


def _rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight


class TinyDecoder:
    """A small decoder-only transformer for inference, split where attention runs."""

    def __init__(self, device: Any, cfg: Config = CONFIG, seed: int = 0):
        self.cfg, self.device = cfg, device
        d, m = cfg.dim, cfg.mlp
        draw = iter(range(seed * 1000, seed * 1000 + 1000))

        def w(*shape, scale):
            return seeded_randn(next(draw), *shape, device=device) * scale

        self.embedding = w(cfg.vocab, d, scale=1.0)
        self.layers = []
        for _ in range(cfg.layers):
            self.layers.append({
                "norm1": torch.ones(d, device=device),
                "qkv": w(d, 3 * d, scale=d ** -0.5),
                "proj": w(d, d, scale=d ** -0.5),
                "norm2": torch.ones(d, device=device),
                "up": w(d, m, scale=d ** -0.5),
                "down": w(m, d, scale=m ** -0.5),
            })
        self.final_norm = torch.ones(d, device=device)
        self.head = w(d, cfg.vocab, scale=d ** -0.5)

    # -- the parts between attention calls ------------------------------------------------
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding[tokens]

    def pre_attention(self, i: int, h: torch.Tensor):
        """Norm and QKV projection of layer ``i``: ``(q, k, v)``, each ``[N, heads, head_dim]``."""
        cfg, layer = self.cfg, self.layers[i]
        qkv = _rms_norm(h, layer["norm1"]) @ layer["qkv"]
        q, k, v = qkv.split(cfg.dim, dim=-1)
        shape = (h.shape[0], cfg.heads, cfg.head_dim)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def post_attention(self, i: int, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Output projection, residual and MLP of layer ``i``."""
        layer = self.layers[i]
        h = h + a @ layer["proj"]
        return h + torch.nn.functional.gelu(_rms_norm(h, layer["norm2"]) @ layer["up"]) @ layer["down"]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return _rms_norm(h, self.final_norm) @ self.head

    # -- whole passes ---------------------------------------------------------------------
    def forward(self, batch: Batch, cache: KVCache) -> torch.Tensor:
        """Eager PyTorch: the reference every runner is compared with. Returns ``[N, vocab]``."""
        return self.run(batch.tokens, batch.slots, batch.positions, batch.kv_len, cache)

    def run(self, tokens, slots, positions, kv_len: int, cache: KVCache,
            attention_fn: Callable = attention) -> torch.Tensor:
        """A forward pass on explicit tensors (what a full-graph capture records)."""
        h = self.embed(tokens)
        for i in range(self.cfg.layers):
            q, k, v = self.pre_attention(i, h)
            a = attention_fn(q, k, v, cache, i, slots, positions, kv_len)
            h = self.post_attention(i, h, a)
        return self.logits(h)

    def pieces(self) -> list:
        """The pieces between attention calls, in order, for a piecewise runner.

        Piece 0 takes ``(tokens,)`` and returns ``(h, q, k, v)`` of layer 0. Piece ``i`` for
        ``0 < i < layers`` takes ``(h, a)``, the residual stream and the attention output of
        layer ``i - 1``, and returns ``(h, q, k, v)`` of layer ``i``. The last piece takes
        ``(h, a)`` and returns the logits. Attention of layer ``i`` runs between piece ``i``
        and piece ``i + 1``.
        """
        def first(tokens):
            h = self.embed(tokens)
            return (h, *self.pre_attention(0, h))

        def middle(i):
            def piece(h, a):
                h = self.post_attention(i - 1, h, a)
                return (h, *self.pre_attention(i, h))
            return piece

        def last(h, a):
            return self.logits(self.post_attention(self.cfg.layers - 1, h, a))

        return [first] + [middle(i) for i in range(1, self.cfg.layers)] + [last]
