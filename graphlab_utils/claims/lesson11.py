"""Lesson 11 · the decode engine: its graph runner, and the traps of section 6, on the real engine.

Every claim serves the lesson's traffic (8 requests of mixed prompt lengths that arrive and
finish at different steps) with the model of ``graphlab_utils.decode`` at the simulator's size,
on both backends: the verdicts do not depend on the model's size, and a GPU serves it in a
moment. Greedy decoding is deterministic, so "tokens right" means: exactly the eager engine's
tokens, request by request.
"""
from __future__ import annotations

from graphlab_utils.claims import claim

BUCKETS = (1, 2, 4, 8)  # the lesson's buckets; the traffic runs up to 5 requests at once
SLOTS = 512  # room for every request of the traffic at once
DEFRAGMENT_AT = 5  # the decode step before which the pool is compacted


def _lesson(device):
    """The model and the traffic of lesson 11, and the eager engine's tokens for it."""
    from graphlab_utils import decode

    cfg = decode.SIM_CONFIG
    model = decode.build_model(cfg, device)
    requests = decode.make_requests(8, cfg, seed=6)
    reference = decode.Engine(model, decode.KVPool(cfg, SLOTS, device)).run(requests)
    return decode, model, requests, reference


def _defragment_at(step, in_place, runner=None):
    """An ``on_step`` hook: compact the pool before decode step ``step``, then re-capture ``runner`` if given."""

    def hook(engine, now):
        if now == step:
            engine.kv.defragment(engine.table, in_place=in_place)
            if runner is not None:
                runner.recapture()

    return hook


@claim("the graphed decode engine's greedy tokens equal the eager engine's, every step a replay", {
    "the graphed engine's tokens equal the eager engine's": True, "decode steps that were not a replay": 0,
    "buckets in the order captured": [8, 4, 2, 1], "one memory pool for every graph": True})
def decode_graphed_equals_eager(device):
    decode, model, requests, reference = _lesson(device)
    kv = decode.KVPool(model.config, SLOTS, device)
    runner = decode.DecodeGraphRunner(model, kv, BUCKETS)
    engine = decode.Engine(model, kv, decode=runner)
    graphed = engine.run(requests)
    return {"the graphed engine's tokens equal the eager engine's": graphed == reference,
            "decode steps that were not a replay": engine.steps - runner.replays,
            "buckets in the order captured": list(runner.capture_order),
            "one memory pool for every graph": len({tuple(g.pool()) for g in runner.graphs.values()}) == 1}


@claim("the KV pool defragmented into new memory under the graphs gives wrong tokens; re-capture, or moving "
       "the slots in place, fixes it", {
           "eager engine, pool moved: tokens right": True, "graphed engine, pool moved: tokens right": False,
           "pool moved, then every graph re-captured: tokens right": True,
           "pool compacted in place (addresses kept): tokens right": True})
def decode_pool_moved_under_graphs(device):
    decode, model, requests, reference = _lesson(device)
    eager = decode.Engine(model, decode.KVPool(model.config, SLOTS, device))
    eager_right = eager.run(requests, on_step=_defragment_at(DEFRAGMENT_AT, in_place=False)) == reference
    kv = decode.KVPool(model.config, SLOTS, device)
    runner = decode.DecodeGraphRunner(model, kv, BUCKETS)
    engine = decode.Engine(model, kv, decode=runner)
    in_place = engine.run(requests, on_step=_defragment_at(DEFRAGMENT_AT, in_place=True)) == reference
    recaptured = engine.run(requests, on_step=_defragment_at(DEFRAGMENT_AT, False, runner)) == reference
    # last, because it leaves the graphs on the dropped tensors:
    moved = engine.run(requests, on_step=_defragment_at(DEFRAGMENT_AT, in_place=False)) == reference
    return {"eager engine, pool moved: tokens right": eager_right, "graphed engine, pool moved: tokens right": moved,
            "pool moved, then every graph re-captured: tokens right": recaptured,
            "pool compacted in place (addresses kept): tokens right": in_place}


@claim("a runner that rebinds its static inputs instead of copy_ decodes the warm-up's padding rows at every step", {
    "tokens right": False, "distinct tokens over every decode step": 1,
    "the static inputs the graphs read still hold padding rows": True})
def decode_rebinding_runner(device):
    from graphlab_utils.decode import traps

    decode, model, requests, reference = _lesson(device)
    kv = decode.KVPool(model.config, SLOTS, device)
    runner = traps.RebindingRunner(model, kv, BUCKETS)
    captured = runner.inputs[BUCKETS[-1]]  # the views the largest bucket's graph was captured on
    served = decode.Engine(model, kv, decode=runner).run(requests)
    decoded = {t for tokens in served.values() for t in tokens[1:]}  # the first token of each comes from prefill
    return {"tokens right": served == reference, "distinct tokens over every decode step": len(decoded),
            "the static inputs the graphs read still hold padding rows":
                captured.tokens.eq(0).all().item() and captured.out_slots.eq(kv.scratch_slot).all().item()}


@claim("padding rows that write slot 0 of a pool without a scratch slot corrupt the request that owns it", {
    "eager engine on a pool without a scratch slot: tokens right": True,
    "graphs padding into slot 0 of that pool: tokens right": False,
    "slot 0 belonged to a running request at a padded step": True,
    "DecodeGraphRunner on a pool without a scratch slot": "ValueError"})
def decode_padding_into_live_slot(device):
    from graphlab_utils.decode import traps

    decode, model, requests, reference = _lesson(device)
    kv = decode.KVPool(model.config, SLOTS, device, reserve_scratch=False)
    eager_right = decode.Engine(model, kv).run(requests) == reference  # eagerly there is no padding
    runner = traps.UnreservedPaddingRunner(model, kv, BUCKETS)
    owned_at_padded_step = []

    def watch_slot_0(engine, step):
        running = engine.table.requests()
        if runner.bucket_for(len(running)) > len(running):
            owned_at_padded_step.append(any(0 in engine.table.slots(rid) for rid in running))

    served = decode.Engine(model, kv, decode=runner).run(requests, on_step=watch_slot_0)
    try:
        decode.DecodeGraphRunner(model, kv, BUCKETS)
        refused = "no error"
    except ValueError:
        refused = "ValueError"
    return {"eager engine on a pool without a scratch slot: tokens right": eager_right,
            "graphs padding into slot 0 of that pool: tokens right": served == reference,
            "slot 0 belonged to a running request at a padded step": any(owned_at_padded_step),
            "DecodeGraphRunner on a pool without a scratch slot": refused}


@claim("graphs captured on a provisional pool keep reading it after the real pool is allocated; "
       "measure first, then size, allocate and capture", {
           "graphs captured before the real pool was allocated: tokens right": False,
           "decode.start (measure, size, allocate, then capture): tokens right": True,
           "decode.start set the graphs' memory aside before sizing the pool": True})
def decode_graphs_before_pool_sized(device):
    decode, model, requests, reference = _lesson(device)
    provisional = decode.KVPool(model.config, SLOTS, device)
    early = decode.DecodeGraphRunner(model, provisional, BUCKETS)
    sized = decode.KVPool(model.config, SLOTS, device)  # allocated after the capture
    wrong_pool = decode.Engine(model, sized, decode=early).run(requests) == reference
    engine = decode.start(model, BUCKETS, max_slots=SLOTS)
    return {"graphs captured before the real pool was allocated: tokens right": wrong_pool,
            "decode.start (measure, size, allocate, then capture): tokens right": engine.run(requests) == reference,
            "decode.start set the graphs' memory aside before sizing the pool": engine.plan.graph_bytes > 0}


@claim("a step's tokens kept as a view of the graph's output change at the next replay; a clone does not", {
    "step 2's tokens differ from step 1's": True,
    "a view of the output, read after step 2: still step 1's tokens": False,
    "a clone, read after step 2: still step 1's tokens": True})
def decode_output_after_next_replay(device):
    from graphlab_utils import decode
    from graphlab_utils.decode import traps

    cfg = decode.SIM_CONFIG
    model = decode.build_model(cfg, device)
    kv = decode.KVPool(cfg, 64, device)
    w = cfg.max_context

    def one_token_batch(tokens, slots):  # requests that each hold one token of cache, at `slots`
        n = len(tokens)
        return decode.make_batch(tokens, [1] * n, [2] * n, [s + 1 for s in slots],
                                 [[s, s + 1] + [0] * (w - 2) for s in slots], device)

    first, second = one_token_batch([11, 12], [1, 3]), one_token_batch([200, 201], [5, 7])
    kept = {}
    for name, cls in (("view", traps.NoCloneRunner), ("clone", decode.DecodeGraphRunner)):
        runner = cls(model, kv, (2,))
        step_1 = runner(first)
        want = step_1.tolist()  # read at once: step 1's tokens
        step_2 = runner(second).tolist()
        kept[name] = (step_1.tolist() == want, step_2 != want)
    return {"step 2's tokens differ from step 1's": kept["clone"][1],
            "a view of the output, read after step 2: still step 1's tokens": kept["view"][0],
            "a clone, read after step 2: still step 1's tokens": kept["clone"][0]}


@claim("graphs whose static inputs were freed and reallocated serve wrong tokens, or a gather out of bounds", {
    "buckets captured on the freed static inputs: tokens right": False}, isolated=True)
def decode_freed_static_inputs(device):
    from graphlab_utils.decode import traps
    from graphlab_utils.recipes import error_line

    decode, model, requests, reference = _lesson(device)
    kv = decode.KVPool(model.config, SLOTS, device)
    runner = traps.GrowingRunner(model, kv, (1, 2, 4))
    runner.add_bucket(8)  # new static inputs; the graphs of buckets 1, 2 and 4 still read the freed ones
    try:
        served = decode.Engine(model, kv, decode=runner).run(requests)
        right, seen = served == reference, "wrong tokens" if served != reference else "the right tokens"
    except (IndexError, RuntimeError) as exc:  # a GPU reports the gather's device-side assert at the next sync
        right, seen = False, error_line(exc)
    return {"buckets captured on the freed static inputs: tokens right": right, "_what happened": seen}
