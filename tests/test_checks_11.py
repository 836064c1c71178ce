"""The checks of lab 11 (the decode engine's graph runner) on the simulator.

Each check gets the reference answer, another correct answer written differently, and wrong
answers; a wrong answer must fail with the hint that names its mistake, and never raise out of
the check.
"""
from __future__ import annotations

import bisect

import pytest
import torch

from graphlab_utils import recipes

from check_helpers import assert_hint, run

pytestmark = pytest.mark.usefixtures("sim")


@pytest.fixture(scope="module")
def lesson11(sim):
    from graphlab_utils.checks import lesson11

    return lesson11


FIELDS = ("tokens", "positions", "seq_lens", "out_slots", "table")


# ---------------------------------------------------------------------------------------
# Exercise 1: safe padding
# ---------------------------------------------------------------------------------------
def pad_rows(static, start, stop):
    static.tokens[start:stop] = 0
    static.positions[start:stop] = 0
    static.seq_lens[start:stop] = 1
    static.out_slots[start:stop] = static.scratch_slot
    static.table[start:stop] = static.scratch_slot


def pad_rows_other_values(static, start, stop):
    """Correct, written differently: other valid tokens, positions and lengths, fill_ on narrowed views."""
    n = stop - start
    static.tokens.narrow(0, start, n).fill_(1)
    static.positions.narrow(0, start, n).fill_(3)
    static.seq_lens.narrow(0, start, n).fill_(2)
    static.out_slots.narrow(0, start, n).fill_(static.scratch_slot)
    static.table.narrow(0, start, n).fill_(static.scratch_slot)


def pad_nothing(static, start, stop):
    pass


def pad_with_zero_lengths(static, start, stop):
    for name in FIELDS:
        getattr(static, name)[start:stop].zero_()


def pad_with_minus_one(static, start, stop):  # vLLM's old pad slot id, for a kernel that skips it
    pad_rows(static, start, stop)
    static.out_slots[start:stop] = -1


def pad_by_rebinding(static, start, stop):
    out = static.out_slots.clone()
    out[start:stop] = static.scratch_slot
    static.out_slots = out
    pad_rows(static, start, stop)


def pad_from_zero(static, start, stop):
    pad_rows(static, 0, stop)


def pad_stub(static, start, stop):
    raise NotImplementedError("write pad_rows")


@pytest.mark.parametrize("answer", [pad_rows, pad_rows_other_values], ids=["reference", "other-values"])
def test_padding_passes_correct_answers(lesson11, answer):
    assert run(lesson11.check_padding, answer).passed


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (pad_nothing, ("scratch slot", "a live request's slot")),
        (pad_with_zero_lengths, ("seq_lens = 0", "NaN")),
        (pad_with_minus_one, ("slot -1",)),
        (pad_by_rebinding, ("another tensor",)),
        (pad_from_zero, ("real requests",)),
        (pad_stub, ("NotImplementedError",)),
    ],
    ids=["no-padding", "zero-lengths", "minus-one", "rebinding", "pads-real-rows", "stub"],
)
def test_padding_hints_wrong_answers(lesson11, answer, words):
    assert_hint(run(lesson11.check_padding, answer), *words)


# ---------------------------------------------------------------------------------------
# Exercise 2: the replay path
# ---------------------------------------------------------------------------------------
def replay(runner, batch):
    n = batch.size
    if not runner.can_run(n):
        runner.eager_calls += 1
        return runner.model.decode(runner.kv, batch)
    bucket = runner.buckets[bisect.bisect_left(runner.buckets, n)]
    for name in FIELDS:
        getattr(runner.static, name)[:n].copy_(getattr(batch, name))
    pad_rows(runner.static, n, bucket)
    runner.graphs[bucket].replay()
    runner.replays += 1
    return runner.outputs[bucket][:n].clone()


def replay_other_style(runner, batch):
    """Correct, written differently: bucket by search, slice assignment, the package's padding, a copy out."""
    from graphlab_utils.decode import runner as runner_mod

    n = len(batch)
    if n > max(runner.buckets):
        return runner.model.decode(runner.kv, batch)
    bucket = min(b for b in runner.buckets if b >= n)
    s = runner.static
    s.tokens[:n] = batch.tokens
    s.positions[:n] = batch.positions
    s.seq_lens[:n] = batch.seq_lens
    s.out_slots[:n] = batch.out_slots
    s.table[:n] = batch.table
    runner_mod.pad_rows(s, n, bucket)
    runner.graphs[bucket].replay()
    return torch.empty_like(runner.outputs[bucket][:n]).copy_(runner.outputs[bucket][:n])


def replay_rebinding(runner, batch):
    n = batch.size
    bucket = runner.bucket_for(n) if runner.can_run(n) else None
    if bucket is None:
        return runner.model.decode(runner.kv, batch)
    for name in FIELDS:
        setattr(runner.static, name, getattr(batch, name))
    runner.graphs[bucket].replay()
    return runner.outputs[bucket][:n].clone()


def replay_largest_bucket(runner, batch):
    n = batch.size
    if not runner.can_run(n):
        return runner.model.decode(runner.kv, batch)
    bucket = runner.buckets[-1]
    for name in FIELDS:
        getattr(runner.static, name)[:n].copy_(getattr(batch, name))
    pad_rows(runner.static, n, bucket)
    runner.graphs[bucket].replay()
    return runner.outputs[bucket][:n].clone()


def replay_no_clone(runner, batch):
    return _replay_without(runner, batch, clone=False)


def replay_no_padding(runner, batch):
    return _replay_without(runner, batch, pad=False)


def replay_no_fallback(runner, batch):
    return _replay_without(runner, batch, fallback=False)


def replay_without_metadata(runner, batch):
    return _replay_without(runner, batch, fields=("tokens", "positions", "out_slots"))


def _replay_without(runner, batch, clone=True, pad=True, fallback=True, fields=FIELDS):
    n = batch.size
    if fallback and not runner.can_run(n):
        return runner.model.decode(runner.kv, batch)
    bucket = runner.buckets[bisect.bisect_left(runner.buckets, n)]
    for name in fields:
        getattr(runner.static, name)[:n].copy_(getattr(batch, name))
    if pad:
        pad_rows(runner.static, n, bucket)
    runner.graphs[bucket].replay()
    out = runner.outputs[bucket][:n]
    return out.clone() if clone else out


def replay_calls_the_runner(runner, batch):
    return runner(batch)


def replay_eagerly(runner, batch):
    return runner.model.decode(runner.kv, batch)


@pytest.mark.parametrize("answer", [replay, replay_other_style], ids=["reference", "other-style"])
def test_replay_passes_correct_answers(lesson11, answer):
    assert run(lesson11.check_replay, answer).passed


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (replay_rebinding, ("another tensor", "copy_")),
        (replay_largest_bucket, ("the smallest that holds", "bucket 8 replayed")),
        (replay_no_clone, ("clone",)),
        (replay_no_padding, ("padded", "pad_rows")),
        (replay_no_fallback, ("eagerly",)),
        (replay_without_metadata, ("eager step's tokens", "metadata")),
        (replay_calls_the_runner, ("runner(batch)",)),
    ],
    ids=["rebinding", "largest-bucket", "no-clone", "no-padding", "no-fallback", "no-metadata", "calls-runner"],
)
def test_replay_hints_wrong_answers(lesson11, answer, words):
    assert_hint(run(lesson11.check_replay, answer), *words)


def test_replay_speed_passes_the_reference(lesson11):
    assert run(lesson11.check_replay_speed, replay).passed


def test_replay_speed_hints_an_eager_replay(lesson11):
    assert_hint(run(lesson11.check_replay_speed, replay_eagerly), "faster", "modelled")


# ---------------------------------------------------------------------------------------
# Exercise 3: the warm-up
# ---------------------------------------------------------------------------------------
def warm_up(runner):
    runner.pool = torch.cuda.graph_pool_handle()
    for n in sorted(runner.buckets, reverse=True):
        runner.graphs[n], runner.outputs[n] = recipes.capture(lambda: runner.step(n), pool=runner.pool)
    for n in runner.buckets:
        runner.graphs[n].replay()
    torch.cuda.synchronize()


def warm_up_by_hand(runner):
    """Correct, written differently: PyTorch's recipe spelled out, the pool taken from the first graph."""
    for n in sorted(runner.buckets)[::-1]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            runner.step(n)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=runner.pool):
            runner.outputs[n] = runner.step(n)
        runner.graphs[n] = graph
        if runner.pool is None:
            runner.pool = graph.pool()
        graph.replay()


def warm_up_smallest_first(runner):
    runner.pool = torch.cuda.graph_pool_handle()
    for n in sorted(runner.buckets):
        runner.graphs[n], runner.outputs[n] = recipes.capture(lambda: runner.step(n), pool=runner.pool)
    for g in runner.graphs.values():
        g.replay()


def warm_up_own_pools(runner):
    for n in sorted(runner.buckets, reverse=True):
        runner.graphs[n], runner.outputs[n] = recipes.capture(lambda: runner.step(n))
    runner.pool = runner.graphs[max(runner.buckets)].pool()
    for g in runner.graphs.values():
        g.replay()


def warm_up_without_upload(runner):
    runner.pool = torch.cuda.graph_pool_handle()
    for n in sorted(runner.buckets, reverse=True):
        runner.graphs[n], runner.outputs[n] = recipes.capture(lambda: runner.step(n), pool=runner.pool)


def warm_up_on_made_up_requests(runner):
    runner.static.out_slots.fill_(5)  # "dummy requests" that point at a slot of the pool
    runner.static.seq_lens.fill_(2)
    warm_up(runner)


@pytest.mark.parametrize("answer", [warm_up, warm_up_by_hand], ids=["reference", "by-hand"])
def test_warm_up_passes_correct_answers(lesson11, answer):
    assert run(lesson11.check_warm_up, answer).passed


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (warm_up_smallest_first, ("largest bucket down",)),
        (warm_up_own_pools, ("one shared memory pool",)),
        (warm_up_without_upload, ("uploads",)),
        (warm_up_on_made_up_requests, ("scratch slot", "slots [5]")),
    ],
    ids=["smallest-first", "own-pools", "no-upload", "made-up-requests"],
)
def test_warm_up_hints_wrong_answers(lesson11, answer, words):
    assert_hint(run(lesson11.check_warm_up, answer), *words)


def test_lab_runner_leaves_the_call_path_to_the_learner(lesson11):
    runner = lesson11.lab_runner(capture=False)
    assert runner.graphs == {} and runner.buckets == lesson11.LAB_BUCKETS
    with pytest.raises(Exception, match="runner"):
        runner(None)
