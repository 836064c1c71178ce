"""Lab 12's checks, fed correct answers (the reference and others) and wrong ones."""
from __future__ import annotations

import pytest
import torch

from graphlab_utils import piecewise
from graphlab_utils.checks import lesson12
from graphlab_utils.recipes import warm_up

pytestmark = pytest.mark.usefixtures("sim")


def dev():
    return torch.device("cpu")


# -- exercise 1: keep every output ---------------------------------------------------------
def keep_by_clone(step, inputs):
    return [step(x).clone() for x in inputs]


def keep_into_buffer(step, inputs):
    out = torch.empty(len(inputs), *inputs[0].shape)
    for i, x in enumerate(inputs):
        out[i].copy_(step(x))
    return list(out)


def keep_with_mark_step_and_clone(step, inputs):
    kept = []
    for x in inputs:
        torch.compiler.cudagraph_mark_step_begin()
        kept.append(step(x).clone())
    return kept


@pytest.mark.parametrize("answer", [keep_by_clone, keep_into_buffer, keep_with_mark_step_and_clone])
def test_keep_outputs_passes(answer):
    assert lesson12.check_keep_outputs(answer, quiet=True).passed


def test_keep_outputs_without_clone_names_the_error():
    result = lesson12.check_keep_outputs(lambda step, inputs: [step(x) for x in inputs], quiet=True)
    assert not result.passed
    assert "overwritten by a subsequent run" in result.seen and "clone()" in result.idea


def test_keep_outputs_mark_step_alone_is_not_enough():
    def answer(step, inputs):
        kept = []
        for x in inputs:
            torch.compiler.cudagraph_mark_step_begin()
            kept.append(step(x))
        return kept

    result = lesson12.check_keep_outputs(answer, quiet=True)
    assert not result.passed and "output 1" in result.seen


def test_keep_outputs_replays_hold_the_last_result():
    def answer(step, inputs):  # clones the first two only: the replayed ones are one tensor
        return [step(x).clone() if i < 2 else step(x) for i, x in enumerate(inputs)]

    result = lesson12.check_keep_outputs(answer, quiet=True)
    assert not result.passed
    assert result.seen == "output 3 holds the result of call 6"


def test_keep_outputs_wrong_length_and_eager():
    result = lesson12.check_keep_outputs(lambda step, inputs: [step(inputs[-1]).clone()], quiet=True)
    assert not result.passed and "a list of 1" in result.seen
    result = lesson12.check_keep_outputs(lambda step, inputs: [lesson12.step_fn(x) for x in inputs], quiet=True)
    assert not result.passed and "0 replays" in result.seen


# -- exercise 2: a bucketed compiled step ----------------------------------------------------
def bucketed_reference(fn, buckets):
    compiled = torch.compile(fn, mode="reduce-overhead", dynamic=False)
    buckets = sorted(buckets)

    def serve(x):
        n = x.shape[0]
        b = next(k for k in buckets if k >= n)
        padded = torch.zeros(b, x.shape[1], device=x.device)
        padded[:n] = x
        return compiled(padded)[:n].clone()

    return serve


def bucketed_static_buffers(fn, buckets):
    compiled = torch.compile(fn, mode="reduce-overhead", dynamic=False)
    buffers = {b: torch.zeros(b, lesson12.STEP_WIDTH) for b in buckets}

    def serve(x):
        n = x.shape[0]
        b = min(k for k in buffers if k >= n)
        buffers[b][:n].copy_(x)
        return compiled(buffers[b])[:n]

    return serve


@pytest.mark.parametrize("answer", [bucketed_reference, bucketed_static_buffers])
def test_bucketed_passes(answer):
    assert lesson12.check_bucketed_compile(answer, quiet=True).passed


def test_bucketed_without_padding_names_the_shapes():
    result = lesson12.check_bucketed_compile(
        lambda fn, buckets: torch.compile(fn, mode="reduce-overhead", dynamic=False), quiet=True)
    assert not result.passed
    assert "shapes warmed up" in result.seen and "pad each batch" in result.idea


def test_bucketed_returning_padded_rows():
    def answer(fn, buckets):
        serve = bucketed_reference(fn, buckets)
        return lambda x: torch.cat([serve(x), torch.zeros(1, x.shape[1])])

    result = lesson12.check_bucketed_compile(answer, quiet=True)
    assert not result.passed and "a result of shape" in result.expected


def test_bucketed_wrong_rows():
    def answer(fn, buckets):
        compiled = torch.compile(fn, mode="reduce-overhead", dynamic=False)

        def serve(x):
            n = x.shape[0]
            b = next(k for k in sorted(buckets) if k >= n)
            padded = torch.zeros(b, x.shape[1])
            padded[b - n:] = x  # real rows at the end
            return compiled(padded)[:n].clone()

        return serve

    result = lesson12.check_bucketed_compile(answer, quiet=True)
    assert not result.passed and "equal to eager" in result.expected


def test_bucketed_not_a_function():
    result = lesson12.check_bucketed_compile(lambda fn, buckets: None, quiet=True)
    assert not result.passed and result.seen == "None"


# -- exercise 3: a piecewise runner ----------------------------------------------------------
class Runner:
    """The reference: pieces per bucket in one pool, attention eager into static buffers."""

    def __init__(self, model, cache, buckets, stale=False):
        self.model, self.cache, self.stale = model, cache, stale
        self.buckets = sorted(buckets)
        self.pieces = model.pieces()
        n = self.buckets[-1]
        self.tokens = torch.zeros(n, dtype=torch.long)
        self.attn = [torch.zeros(n, model.cfg.dim) for _ in range(model.cfg.layers)]
        self.pool = torch.cuda.graph_pool_handle()
        for bs in self.buckets:
            warm_up(lambda: self._pieces(bs))
        self.graphs = {bs: self._pieces(bs, capture=True) for bs in reversed(self.buckets)}

    def _pieces(self, bs, capture=False):
        args, graphs, outs = (self.tokens[:bs],), [], []
        for i, piece in enumerate(self.pieces):
            if capture:
                graphs.append(torch.cuda.CUDAGraph())
                with torch.cuda.graph(graphs[-1], pool=self.pool):
                    out = piece(*args)
            else:
                out = piece(*args)
            outs.append(out)
            if i < len(self.pieces) - 1:
                args = (out[0], self.attn[i][:bs])
        return graphs, outs

    def __call__(self, batch):
        n = batch.num_tokens
        graphs, outs = self.graphs[next(b for b in self.buckets if b >= n)]
        self.tokens[:n].copy_(batch.tokens)
        for i, graph in enumerate(graphs):
            graph.replay()
            if i < len(graphs) - 1:
                _, q, k, v = outs[i]
                target = None if self.stale else self.attn[i][:n]
                piecewise.attention(q[:n], k[:n], v[:n], self.cache, i, batch.slots, batch.positions,
                                    batch.kv_len, out=target)
        return outs[-1][:n]


class PaddedAttentionRunner(Runner):
    """Also correct: attention on every row of the bucket, padding rows sent to the scratch slot."""

    def __call__(self, batch):
        n = batch.num_tokens
        bs = next(b for b in self.buckets if b >= n)
        graphs, outs = self.graphs[bs]
        self.tokens[:n].copy_(batch.tokens)
        slots = torch.full((bs,), self.cache.scratch_slot, dtype=torch.long)
        positions = torch.zeros(bs, dtype=torch.long)
        slots[:n], positions[:n] = batch.slots, batch.positions
        for i, graph in enumerate(graphs):
            graph.replay()
            if i < len(graphs) - 1:
                _, q, k, v = outs[i]
                piecewise.attention(q, k, v, self.cache, i, slots, positions, batch.kv_len, out=self.attn[i][:bs])
        return outs[-1][:n]


class PaddingIntoSlotZero(PaddedAttentionRunner):
    """Wrong: padding rows write into request slot 0."""

    def __call__(self, batch):
        n = batch.num_tokens
        bs = next(b for b in self.buckets if b >= n)
        graphs, outs = self.graphs[bs]
        self.tokens[:n].copy_(batch.tokens)
        slots = torch.zeros(bs, dtype=torch.long)
        positions = torch.full((bs,), 3, dtype=torch.long)
        slots[:n], positions[:n] = batch.slots, batch.positions
        for i, graph in enumerate(graphs):
            graph.replay()
            if i < len(graphs) - 1:
                _, q, k, v = outs[i]
                piecewise.attention(q, k, v, self.cache, i, slots, positions, batch.kv_len, out=self.attn[i][:bs])
        return outs[-1][:n]


@pytest.mark.parametrize("answer", [Runner, PaddedAttentionRunner])
def test_piecewise_passes(answer):
    assert lesson12.check_piecewise_runner(answer, quiet=True).passed


def test_piecewise_stale_attention_output():
    result = lesson12.check_piecewise_runner(lambda m, c, b: Runner(m, c, b, stale=True), quiet=True)
    assert not result.passed
    assert result.seen == "different logits" and "out=" in result.idea


def test_piecewise_padding_writes_a_request_slot():
    result = lesson12.check_piecewise_runner(PaddingIntoSlotZero, quiet=True)
    assert not result.passed and "scratch" in result.idea


def test_piecewise_full_graph_is_not_piecewise():
    class Full:
        def __init__(self, model, cache, buckets):
            self.model, self.cache = model, cache

        def __call__(self, batch):
            return self.model.forward(batch, self.cache)

    result = lesson12.check_piecewise_runner(Full, quiet=True)
    assert not result.passed and result.seen == "0 captures"


def test_piecewise_returns_padding():
    class Padded(Runner):
        def __call__(self, batch):
            super().__call__(batch)
            _, outs = self.graphs[next(b for b in self.buckets if b >= batch.num_tokens)]
            return outs[-1]

    result = lesson12.check_piecewise_runner(Padded, quiet=True)
    assert not result.passed and "slice off the padding" in result.idea


def test_piecewise_stub():
    class Stub:
        def __init__(self, model, cache, buckets):
            raise NotImplementedError("Exercise 3")

    result = lesson12.check_piecewise_runner(Stub, quiet=True)
    assert not result.passed and "NotImplementedError" in result.seen


# -- the watcher -----------------------------------------------------------------------------
def test_reason_strips_the_stack_trace():
    message = 'skipping cudagraphs due to mutated inputs (1 instances). Found from : \n  File "x.py", line 3'
    assert lesson12.reason(message) == "skipping cudagraphs due to mutated inputs (1 instances)"
    assert lesson12.reason("skipping cudagraphs due to cpu device (arange)") == \
        "skipping cudagraphs due to cpu device (arange)"


def test_watch_trees_puts_the_manager_back_after_an_error():
    from graphlab_utils.simulator import compile as simcompile

    before = simcompile.TreeManager.__dict__["execute_node"]
    with pytest.raises(ValueError):
        with lesson12.watch_trees():
            raise ValueError("boom")
    assert simcompile.TreeManager.__dict__["execute_node"] is before
