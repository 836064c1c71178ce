"""The capstone's serving loop: requests in, greedy tokens out, with continuous batching.

* :class:`Request`: a prompt (token ids), how many tokens to generate, and the engine step
  at which it arrives; :func:`make_requests` draws a seeded mix of them.
* :func:`start`: the start-up of a graphed engine, in the order that keeps every address still.
* :class:`Engine`: the scheduler. At every step it admits the requests that have arrived
  while the batch and the KV pool have room, and prefills each one eagerly (its prompt's
  keys and values go into its slots; prefill gives its first token). Then one **decode
  step** runs every running request together: one new slot each, one new token each.
  Requests join and leave between steps (continuous batching); a finished request frees its
  slots and its table row at once.

The decode step is a callable ``decode(batch) -> tokens``. By default the engine runs the
model eagerly; a graph runner (``decode.runner.DecodeGraphRunner``) takes its place without
changing anything else, so the two engines can be compared token for token.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .kvcache import KVPool, SlotTable, make_batch, plan_memory
from .runner import DEFAULT_BUCKETS, DecodeGraphRunner, measure_graph_bytes

__all__ = ["Request", "make_requests", "Engine", "start"]


@dataclass
class Request:
    """A generation request: greedy decoding of ``max_new_tokens`` tokens after ``prompt``."""

    rid: int
    prompt: list
    max_new_tokens: int
    arrival: int = 0  # the engine step at which the request arrives


@dataclass
class _Running:
    request: Request
    output: list = field(default_factory=list)

    @property
    def done(self) -> bool:
        return len(self.output) >= self.request.max_new_tokens


def make_requests(n: int, cfg, seed: int = 0, prompt_lens=(2, 12), new_tokens=(3, 10), arrivals=(0, 6)) -> list:
    """``n`` requests with seeded prompts of ``prompt_lens`` tokens (inclusive range), ``new_tokens`` tokens
    to generate and arrival steps in ``arrivals``: the same on every machine (Python's own generator)."""
    shapes, words = random.Random(seed), random.Random(seed + 10_000)  # the traffic's shape does not depend on the vocabulary
    out = []
    for rid in range(n):
        p, new, arrival = shapes.randint(*prompt_lens), shapes.randint(*new_tokens), shapes.randint(*arrivals)
        out.append(Request(rid, [words.randrange(cfg.vocab) for _ in range(p)], new, arrival))
    return out


class Engine:
    """A small LLM serving engine: eager prefill, continuous-batching decode, greedy tokens.

    ``decode``: the decode step, ``decode(batch) -> (B,) tokens``; default: the model, eagerly, on
    ``self.kv`` as it is at call time. ``max_batch``: the most requests decoded together.
    """

    def __init__(self, model, kv: KVPool, decode: Callable | None = None, max_batch: int = 64):
        self.model, self.kv = model, kv
        self.config = model.config
        self.max_batch = max_batch
        self.decode = decode if decode is not None else (lambda batch: self.model.decode(self.kv, batch))
        self.table = SlotTable(self.config.max_context, kv.scratch_slot)
        self.device = kv.device
        self.batch_sizes: list = []  # the size of every decode step, in order
        self.steps = 0

    # -- the pieces -------------------------------------------------------------------------
    def _fits(self, r: Request, reserved: int) -> bool:
        need = len(r.prompt) + r.max_new_tokens
        return need <= self.config.max_context and need <= self.kv.free_slots - reserved

    def _prefill(self, r: Request) -> int:
        slots = self.kv.allocate(len(r.prompt))
        self.table.add(r.rid, slots)
        tokens = torch.tensor(r.prompt, dtype=torch.int64).to(self.device)
        where = torch.tensor(slots, dtype=torch.int64).to(self.device)
        return int(self.model.prefill(self.kv, tokens, where).tolist()[0])

    def _finish(self, r: Request) -> None:
        self.kv.release(self.table.remove(r.rid))

    def _step(self, running: list) -> None:
        tokens, positions, seq_lens, out_slots, rows = [], [], [], [], []
        for run in running:
            rid = run.request.rid
            position = len(self.table.slots(rid))  # the new token's position: the cache's length
            slot = self.kv.allocate(1)[0]
            self.table.append(rid, slot)
            tokens.append(run.output[-1])
            positions.append(position)
            seq_lens.append(position + 1)
            out_slots.append(slot)
            rows.append(self.table.row(rid))
        batch = make_batch(tokens, positions, seq_lens, out_slots, rows, self.device)
        new = self.decode(batch).tolist()
        self.batch_sizes.append(len(running))
        for run, token in zip(running, new):
            run.output.append(int(token))

    # -- the loop ------------------------------------------------------------------------------
    def run(self, requests: list, on_step: Callable[[Any, int], None] | None = None) -> dict:
        """Serve ``requests`` to the end; returns ``{rid: generated tokens}``.

        ``on_step(engine, step)`` runs before every decode step (the lesson defragments the pool there).
        """
        waiting = sorted(requests, key=lambda r: (r.arrival, r.rid))
        running: list = []
        results: dict = {}
        step = 0
        while waiting or running:
            for run in [x for x in running if x.done]:  # finished requests leave and free their slots
                running.remove(run)
                results[run.request.rid] = run.output
                self._finish(run.request)
            reserved = sum(r.request.max_new_tokens - len(r.output) for r in running)
            while (waiting and waiting[0].arrival <= step and len(running) < self.max_batch
                   and self._fits(waiting[0], reserved)):  # arrived requests join while there is room
                r = waiting.pop(0)
                run = _Running(r, [self._prefill(r)])
                reserved += r.max_new_tokens - 1
                running.append(run)
            if any(x.done for x in running):  # done at prefill (one token asked for)
                continue
            if running:
                if on_step is not None:
                    on_step(self, step)
                self._step(running)
                self.steps += 1
            elif waiting and waiting[0].arrival > step:
                pass  # idle until the next arrival
            elif waiting:
                r = waiting[0]
                raise ValueError(f"request {r.rid} needs {len(r.prompt) + r.max_new_tokens} tokens of cache and "
                                 f"the pool has {self.kv.capacity} slots (max_context {self.config.max_context}): "
                                 "give it fewer tokens or size the pool larger")
            step += 1
        return {rid: results[rid] for rid in sorted(results)}


def start(model, buckets=DEFAULT_BUCKETS, *, free_bytes: int | None = None, fraction: float = 0.9,
          max_slots: int | None = None, max_batch: int = 64, freeze_gc: bool = True) -> Engine:
    """Start a graphed engine: measure the graphs' memory (on a probe pool), size the KV pool from the free
    memory that leaves (``kvcache.plan_memory``), allocate it once, then capture the buckets on it.

    ``max_slots`` defaults to ``max_batch`` requests of ``max_context`` tokens each. The engine keeps the
    runner as ``engine.runner`` and the plan as ``engine.plan``.
    """
    cfg = model.config
    device, dtype = model.embed.device, model.embed.dtype
    graph_bytes = measure_graph_bytes(model, buckets, freeze_gc=freeze_gc)
    plan = plan_memory(cfg, graph_bytes, free_bytes, fraction,
                       max_batch * cfg.max_context if max_slots is None else max_slots, dtype)
    kv = KVPool(cfg, plan.slots, device, dtype)
    runner = DecodeGraphRunner(model, kv, buckets, freeze_gc=freeze_gc)
    engine = Engine(model, kv, decode=runner, max_batch=max_batch)
    engine.runner, engine.plan = runner, plan
    return engine
