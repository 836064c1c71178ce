"""The capstone's decode engine (graphlab_utils.decode) on the simulator.

The graphed engine must produce exactly the eager engine's tokens (greedy decoding) for a mixed
batch of requests that arrive and finish at different steps; each trap of lesson 11 must break
the way the lesson says, and each fix must repair it.
"""
from __future__ import annotations

import pytest
import torch

from graphlab_utils.claims.lesson11 import _defragment_at  # the claim's hook: compact the pool before a step

pytestmark = pytest.mark.usefixtures("sim")

BUCKETS = (1, 2, 4, 8)


@pytest.fixture(scope="module")
def dec(sim):
    from graphlab_utils import decode

    return decode


@pytest.fixture(scope="module")
def model(dec, sim):
    return dec.build_model(dec.SIM_CONFIG, sim.device)


@pytest.fixture(scope="module")
def requests(dec):
    return dec.make_requests(8, dec.SIM_CONFIG, seed=6)


@pytest.fixture(scope="module")
def reference(dec, model, requests, sim):
    """The eager engine's tokens for the mixed batch."""
    return dec.Engine(model, dec.KVPool(dec.SIM_CONFIG, 512, sim.device)).run(requests)


def differing(a: dict, b: dict) -> int:
    return sum(x != y for rid in a for x, y in zip(a[rid], b.get(rid, [])))


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------
def test_configs_have_the_promised_sizes(dec):
    gpu = dec.GPU_CONFIG
    assert 8 <= gpu.layers <= 12 and 512 <= gpu.hidden <= 1024
    assert gpu.heads > gpu.kv_heads  # grouped-query attention
    assert dec.SIM_CONFIG.layers < gpu.layers
    with pytest.raises(ValueError):
        dec.DecodeConfig(hidden=64, heads=3)


def test_weights_come_from_the_seed(dec, model, sim):
    again = dec.build_model(dec.SIM_CONFIG, sim.device)
    other = dec.build_model(dec.SIM_CONFIG.replace(seed=1), sim.device)
    assert torch.equal(again.lm_head, model.lm_head)
    assert not torch.equal(other.lm_head, model.lm_head)


def test_a_decode_step_through_the_table_matches_a_longer_prefill(dec, model, sim):
    """Paged attention over slots scattered in the pool gives the token a prefill of the whole sequence gives."""
    kv = dec.KVPool(dec.SIM_CONFIG, 64, sim.device)
    prompt = [5, 17, 99, 3, 250, 42]
    slots = [40, 3, 22, 9, 31, 12]  # anywhere in the pool, in any order
    first = int(model.prefill(kv, torch.tensor(prompt).to(sim.device), torch.tensor(slots).to(sim.device)).tolist()[0])
    row = slots + [50] + [0] * (dec.SIM_CONFIG.max_context - 7)
    batch = dec.make_batch([first], [6], [7], [50], [row], sim.device)
    step = int(model.decode(kv, batch).tolist()[0])
    fresh = dec.KVPool(dec.SIM_CONFIG, 64, sim.device)
    whole = prompt + [first]
    want = int(model.prefill(fresh, torch.tensor(whole).to(sim.device), torch.arange(1, 8).to(sim.device)).tolist()[0])
    assert step == want


# ---------------------------------------------------------------------------------------
# The memory
# ---------------------------------------------------------------------------------------
def test_pool_hands_out_slots_and_keeps_the_scratch_slot(dec, sim):
    kv = dec.KVPool(dec.SIM_CONFIG, 4, sim.device)
    assert kv.capacity == 4 and kv.scratch_slot == 0
    got = kv.allocate(3)
    assert got == [1, 2, 3]
    with pytest.raises(dec.kvcache.KVPoolFull, match="free slots"):
        kv.allocate(2)
    kv.release(got)
    assert kv.free_slots == 4
    plain = dec.KVPool(dec.SIM_CONFIG, 4, sim.device, reserve_scratch=False)
    assert plain.scratch_slot is None and plain.allocate(1) == [0]


def test_defragment_in_place_keeps_addresses_and_moves_contents(dec, sim):
    kv = dec.KVPool(dec.SIM_CONFIG, 16, sim.device)
    table = dec.SlotTable(dec.SIM_CONFIG.max_context)
    table.add("a", [7, 3])
    table.add("b", [12])
    kv.allocate(16)
    for s in (7, 3, 12):
        kv.k[:, s] = float(s)
    ptr = kv.k.data_ptr()
    mapping = kv.defragment(table, in_place=True)
    assert mapping == {7: 1, 3: 2, 12: 3}
    assert kv.k.data_ptr() == ptr
    assert table.slots("a") == [1, 2] and table.slots("b") == [3]
    assert [float(kv.k[0, s, 0, 0]) for s in (1, 2, 3)] == [7.0, 3.0, 12.0]
    assert kv.free_slots == 13
    kv.defragment(table, in_place=False)
    assert kv.k.data_ptr() != ptr


def test_plan_sets_the_graphs_memory_aside(dec):
    cfg = dec.SIM_CONFIG
    per = dec.KVPool.bytes_per_slot(cfg)
    plan = dec.plan_memory(cfg, graph_bytes=1000 * per, free_bytes=3000 * per, fraction=0.5)
    assert plan.slots == 1000 and plan.limited_by == "free memory"
    capped = dec.plan_memory(cfg, graph_bytes=0, free_bytes=3000 * per, max_slots=10)
    assert capped.slots == 10 and capped.limited_by == "max_slots"
    with pytest.raises(dec.kvcache.KVPoolFull, match="no KV slot fits"):
        dec.plan_memory(cfg, graph_bytes=2000 * per, free_bytes=1000 * per)


# ---------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------
def test_engine_batches_continuously_and_frees_slots(dec, model, requests, reference, sim):
    kv = dec.KVPool(dec.SIM_CONFIG, 512, sim.device)
    engine = dec.Engine(model, kv)
    out = engine.run(requests)
    assert out == reference  # deterministic
    assert {rid: len(t) for rid, t in out.items()} == {r.rid: r.max_new_tokens for r in requests}
    sizes = engine.batch_sizes
    assert max(sizes) > 1 and len(set(sizes)) > 2  # requests joined and left between steps
    assert kv.free_slots == kv.capacity and engine.table.requests() == []


def test_engine_waits_for_room_in_the_pool(dec, model, requests, reference, sim):
    """A pool with room for few requests serves them all, a few at a time, with the same tokens."""
    kv = dec.KVPool(dec.SIM_CONFIG, 40, sim.device)
    engine = dec.Engine(model, kv)
    assert engine.run(requests) == reference
    assert max(engine.batch_sizes) <= 3


def test_engine_refuses_a_request_that_can_never_fit(dec, model, sim):
    kv = dec.KVPool(dec.SIM_CONFIG, 8, sim.device)
    with pytest.raises(ValueError, match="size the pool larger"):
        dec.Engine(model, kv).run([dec.Request(0, [1, 2, 3, 4, 5], 6)])


# ---------------------------------------------------------------------------------------
# The graph runner
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(dec, model, requests):
    """A graphed engine started the right way, and its tokens for the mixed batch."""
    engine = dec.start(model, BUCKETS, max_batch=16)
    return engine, engine.run(requests)


def test_graphed_engine_equals_eager_engine(served, reference):
    engine, out = served
    assert out == reference
    assert engine.runner.replays == engine.steps and engine.runner.eager_calls == 0


def test_start_captures_largest_first_into_one_pool(served):
    engine, _ = served
    runner = engine.runner
    assert runner.capture_order == [8, 4, 2, 1]
    assert len({tuple(g.pool()) for g in runner.graphs.values()}) == 1
    assert engine.plan.graph_bytes > 0 and engine.plan.slots == engine.kv.capacity


def test_runner_pads_to_the_bucket_and_falls_back_above_the_largest(dec, model, requests, reference, sim):
    kv = dec.KVPool(dec.SIM_CONFIG, 512, sim.device)
    runner = dec.DecodeGraphRunner(model, kv, (2, 3))
    assert [runner.bucket_for(n) for n in (1, 2, 3)] == [2, 2, 3] and not runner.can_run(4)
    engine = dec.Engine(model, kv, decode=runner)
    assert engine.run(requests) == reference
    assert runner.eager_calls == sum(1 for n in engine.batch_sizes if n > 3) > 0


def test_padding_rows_write_only_the_scratch_slot(dec, model, sim):
    kv = dec.KVPool(dec.SIM_CONFIG, 64, sim.device)
    runner = dec.DecodeGraphRunner(model, kv, (4,))
    kv.allocate(64)
    kv.k.normal_()
    before = kv.k.clone()
    row = [5, 6] + [0] * (dec.SIM_CONFIG.max_context - 2)
    runner(dec.make_batch([3], [2], [3], [7], [row], sim.device))  # one real row, three padding rows
    changed = sorted({int(s) for s in (kv.k != before).any(dim=(0, 2, 3)).nonzero().flatten().tolist()})
    assert changed == [0, 7]
    assert bool(torch.isfinite(kv.k[:, 0]).all())


def test_measured_graph_memory_is_given_back(dec, model):
    from graphlab_utils.decode import runner as runner_mod

    before = runner_mod.memory_reserved()
    used = runner_mod.measure_graph_bytes(model, BUCKETS)
    assert used > 0
    assert runner_mod.memory_reserved() <= before + used


# ---------------------------------------------------------------------------------------
# The traps, as lesson 11 teaches them
# ---------------------------------------------------------------------------------------
def test_rebinding_instead_of_copy_gives_wrong_tokens(dec, model, requests, reference, sim):
    from graphlab_utils.decode import traps

    kv = dec.KVPool(dec.SIM_CONFIG, 512, sim.device)
    runner = traps.RebindingRunner(model, kv, BUCKETS)
    assert differing(reference, dec.Engine(model, kv, decode=runner).run(requests)) > 0


def test_padding_into_a_live_slot_corrupts_that_request(dec, model, requests, sim):
    from graphlab_utils.decode import traps

    kv = dec.KVPool(dec.SIM_CONFIG, 512, sim.device, reserve_scratch=False)
    eager = dec.Engine(model, kv).run(requests)
    runner = traps.UnreservedPaddingRunner(model, kv, BUCKETS)
    assert differing(eager, dec.Engine(model, kv, decode=runner).run(requests)) > 0
    with pytest.raises(ValueError, match="reserve_scratch=True"):
        dec.DecodeGraphRunner(model, kv, BUCKETS)


def test_defragmenting_the_pool_under_the_graphs(dec, model, requests, reference, sim):
    kv = dec.KVPool(dec.SIM_CONFIG, 512, sim.device)
    assert dec.Engine(model, kv).run(requests, on_step=_defragment_at(5, False)) == reference  # eager reads the new pool
    kv = dec.KVPool(dec.SIM_CONFIG, 512, sim.device)
    runner = dec.DecodeGraphRunner(model, kv, BUCKETS)
    engine = dec.Engine(model, kv, decode=runner)
    assert engine.run(requests, on_step=_defragment_at(5, True)) == reference  # address-stable: fine
    assert differing(reference, engine.run(requests, on_step=_defragment_at(5, False))) > 0  # moved: wrong tokens
    kv = dec.KVPool(dec.SIM_CONFIG, 512, sim.device)
    runner = dec.DecodeGraphRunner(model, kv, BUCKETS)
    engine = dec.Engine(model, kv, decode=runner)
    assert engine.run(requests, on_step=_defragment_at(5, False, runner)) == reference  # re-captured: fine


def test_graphs_captured_before_the_pool_was_sized(dec, model, requests, reference, sim):
    provisional = dec.KVPool(dec.SIM_CONFIG, 512, sim.device)
    runner = dec.DecodeGraphRunner(model, provisional, BUCKETS)
    sized = dec.KVPool(dec.SIM_CONFIG, 512, sim.device)
    assert differing(reference, dec.Engine(model, sized, decode=runner).run(requests)) > 0


def test_output_read_after_the_next_replay_has_changed(dec, model, sim):
    from graphlab_utils.decode import traps

    kv = dec.KVPool(dec.SIM_CONFIG, 64, sim.device)
    w = dec.SIM_CONFIG.max_context
    first = dec.make_batch([11, 12], [0, 0], [1, 1], [1, 2], [[1] + [0] * (w - 1), [2] + [0] * (w - 1)], sim.device)
    second = dec.make_batch([200, 201], [0, 0], [1, 1], [3, 4], [[3] + [0] * (w - 1), [4] + [0] * (w - 1)], sim.device)
    for cls, kept in ((traps.NoCloneRunner, False), (dec.DecodeGraphRunner, True)):
        runner = cls(model, kv, (2,))
        a = runner(first)
        want = a.tolist()
        b = runner(second)
        assert (a.tolist() == want) is kept
        assert b.tolist() != want


def test_freed_static_inputs_give_wrong_tokens_or_an_error(dec, model, requests, reference, sim):
    from graphlab_utils.decode import traps

    kv = dec.KVPool(dec.SIM_CONFIG, 512, sim.device)
    runner = traps.GrowingRunner(model, kv, (1, 2, 4))
    runner.add_bucket(8)
    try:
        out = dec.Engine(model, kv, decode=runner).run(requests)
    except (IndexError, RuntimeError):
        return
    assert differing(reference, out) > 0


# ---------------------------------------------------------------------------------------
# The benchmark, on the simulator
# ---------------------------------------------------------------------------------------
def test_benchmark_runs_on_the_simulator_and_writes_its_report(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("decode_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "decode.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--sim-only", "--out", str(tmp_path), "--batches", "1", "2", "--warmup", "1"]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    rows = {r["batch"]: r for r in result["rows"]}
    assert set(rows) == {1, 2}
    assert all(r["runner"]["tokens_equal"] for r in rows.values())
    assert rows[1]["runner"]["ms"] < rows[1]["eager"]["ms"] and rows[1]["floor"]["ms"] > 0
    assert "skipped on the simulator" in rows[1]["reduce_overhead_static"]["skipped"]
    text = (tmp_path / "results.md").read_text()
    assert "Command: `python benchmarks/decode.py --sim-only" in text and "modelled" in text
    assert (tmp_path / "throughput.png").stat().st_size > 0


def test_reduce_overhead_skips_a_mutated_pool_and_graphs_a_static_one(dec, model, sim):
    """CUDA graph trees (the simulator's model of them) refuse a step that writes the pool in place,
    unless the pool's tensors are marked as static addresses."""
    kv = dec.KVPool(dec.SIM_CONFIG, 64, sim.device)
    w = dec.SIM_CONFIG.max_context
    batch = dec.make_batch([3, 4], [2, 2], [3, 3], [3, 6], [[1, 2, 3] + [0] * (w - 3), [4, 5, 6] + [0] * (w - 3)],
                           sim.device)
    want = model.decode(kv, batch).tolist()
    for static_pool, graphed in ((False, False), (True, True)):
        torch._dynamo.reset()
        before = dec.runner.cudagraph_skips()
        compiled = dec.runner.compiled_decode(model, kv, static_pool=static_pool)
        for _ in range(3):
            out = compiled(batch)
        assert (dec.runner.cudagraph_skips() == before) is graphed
        assert out.tolist() == want
