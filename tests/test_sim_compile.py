"""The simulator's model of torch.compile(mode="reduce-overhead") (CUDAGraph Trees).

Each test pins down one thing lesson 12 shows a learner: the steps of a compiled function
(warm-up, record, replay), one recording per shape, generations and PyTorch's error for an
overwritten output, replays that return the same tensors, cudagraph_mark_step_begin(), the
skip reasons with PyTorch's messages, and that the model leaves torch.compile as it found it.
"""
from __future__ import annotations

import logging

import pytest
import torch

from graphlab_utils.checks import lesson12
from graphlab_utils.recipes import close, seeded_randn
from graphlab_utils.simulator import compile as simcompile

pytestmark = pytest.mark.usefixtures("sim")

W = seeded_randn(7, 16, 16, device="cpu")


def step(x):
    return torch.relu(x @ W) + 1


@pytest.fixture(autouse=True)
def fresh():
    torch.compiler.reset()
    yield
    torch.compiler.reset()


def labels(fn, inputs):
    with lesson12.watch_trees() as seen:
        outs = [seen.call(fn, *args) for args in inputs]
    return seen, outs


def test_install_replaces_torch_compile_and_reset():
    assert torch.compile is simcompile.compile
    assert torch.compiler.reset.__wrapped__ is not None


def test_warm_up_record_replay_and_results():
    f = torch.compile(step, mode="reduce-overhead")
    x = seeded_randn(1, 4, 16, device="cpu")
    seen, outs = labels(f, [(x,)] * 5)
    assert seen.labels == ["warm-up", "record", "replay", "replay", "replay"]
    assert close(outs[-1], step(x))
    assert str(seen) == "1 warm-up, 1 recording, 3 replays"


def test_replay_reads_new_inputs():
    f = torch.compile(step, mode="reduce-overhead")
    xs = [seeded_randn(i, 4, 16, device="cpu") for i in range(5)]
    for x in xs:
        assert close(f(x).clone(), step(x))


def test_modes_without_graphs_run_eagerly():
    for kwargs in ({}, {"mode": "max-autotune-no-cudagraphs"}, {"mode": "default"}):
        f = torch.compile(step, **kwargs)
        seen, outs = labels(f, [(seeded_randn(2, 4, 16, device="cpu"),)] * 3)
        assert seen.labels == ["eager"] * 3
    assert simcompile.uses_cudagraphs(backend="cudagraphs")
    assert simcompile.uses_cudagraphs(options={"triton.cudagraphs": True})
    assert not simcompile.uses_cudagraphs(mode=None)


def test_mode_and_options_together_are_refused_as_pytorch_does():
    with pytest.raises(RuntimeError, match="Either mode or options can be specified"):
        torch.compile(step, mode="reduce-overhead", options={"triton.cudagraphs": True})


def test_decorator_form_and_modules():
    @torch.compile(mode="reduce-overhead")
    def g(x):
        return x * 2

    seen, _ = labels(g, [(torch.ones(3),)] * 3)
    assert seen.labels == ["warm-up", "record", "replay"]
    lin = torch.nn.Linear(16, 16)
    m = torch.compile(lin, mode="reduce-overhead")
    assert m.weight is lin.weight  # attributes reach the module
    x = seeded_randn(3, 2, 16, device="cpu")
    seen, outs = labels(m, [(x,)] * 3)
    assert seen.labels == ["warm-up", "record", "replay"] and close(outs[-1], lin(x))


def test_one_recording_per_shape_with_dynamic_false():
    f = torch.compile(step, mode="reduce-overhead", dynamic=False)
    sizes = [4, 4, 4, 8, 8, 8, 4, 4]
    seen, _ = labels(f, [(torch.ones(n, 16),) for n in sizes])
    assert seen.labels == ["warm-up", "record", "replay", "warm-up", "record", "replay", "replay", "replay"]


def test_new_size_every_call_never_replays_and_warns_past_the_limit():
    f = torch.compile(step, mode="reduce-overhead")
    seen, _ = labels(f, [(torch.ones(n, 16),) for n in range(1, 13)])
    assert seen.labels == ["warm-up"] * 12
    assert any(m.startswith("CUDAGraph supports dynamic shapes by recording a new graph") for m in seen.logged)


def test_skip_dynamic_graphs_logs_pytorchs_reason():
    import torch._inductor.config as config

    config.triton.cudagraph_skip_dynamic_graphs = True
    try:
        f = torch.compile(step, mode="reduce-overhead")
        seen, _ = labels(f, [(torch.ones(n, 16),) for n in (4, 4, 4, 8, 8)])
    finally:
        config.triton.cudagraph_skip_dynamic_graphs = False
    assert seen.labels == ["warm-up", "record", "replay", "eager", "eager"]
    assert seen.skips == ["skipping cudagraphs due to graph with symbolic shapes inputs and "
                          "config.triton.cudagraph_skip_dynamic_graphs=True."]


def test_reading_a_freed_output_raises_pytorchs_error():
    f = torch.compile(step, mode="reduce-overhead")
    x = seeded_randn(4, 4, 16, device="cpu")
    y1 = f(x)
    view = y1[0]
    f(x)
    from torch._inductor.cudagraph_trees import CUDAGraphTreeManager

    expected = CUDAGraphTreeManager.format_dealloc_msg(None)
    for read in (lambda: y1 + 1, lambda: y1.sum(), lambda: print(y1), lambda: view * 2):
        with pytest.raises(RuntimeError) as info:
            read()
        assert str(info.value).splitlines()[0] == expected
    assert y1.shape == (4, 16)  # metadata stays readable, as on a GPU


def test_replays_return_the_same_tensor_overwritten_in_place():
    f = torch.compile(step, mode="reduce-overhead")
    x1, x2 = seeded_randn(5, 4, 16, device="cpu"), seeded_randn(6, 4, 16, device="cpu")
    for _ in range(3):
        f(x1)
    a = f(x1)
    b = f(x2)
    assert a is b and close(a, step(x2))
    kept = f(x1).clone()
    f(x2)
    assert close(kept, step(x1))


def test_outputs_aliasing_inputs_are_not_freed():
    f = torch.compile(lambda x: x, mode="reduce-overhead")
    x = torch.ones(3)
    for _ in range(4):
        f(x)
    assert float(x.sum()) == 3.0


def test_mark_step_begin_keeps_calls_of_one_step_and_records_a_child():
    f = torch.compile(step, mode="reduce-overhead")
    x1, x2 = seeded_randn(7, 4, 16, device="cpu"), seeded_randn(8, 4, 16, device="cpu")
    rows = []
    with lesson12.watch_trees() as seen:
        for _ in range(4):
            torch.compiler.cudagraph_mark_step_begin()
            a = seen.call(f, x1)
            b = seen.call(f, x2)
            rows.append(close(a, step(x1)) and close(b, step(x2)))
    assert seen.labels == ["warm-up", "eager", "record", "record", "replay", "replay", "replay", "replay"]
    assert all(rows)
    tree = simcompile.manager()
    (root,) = [n for nodes in tree.roots.values() for n in nodes]
    assert sum(len(c) for c in root.children.values()) == 1  # the second call's graph: a child


def test_reset_forgets_the_mark_step_counter():
    import torch._inductor.cudagraph_trees as trees

    torch.compiler.cudagraph_mark_step_begin()
    assert trees.MarkStepBox.mark_step_counter != 0
    torch.compiler.reset()
    assert trees.MarkStepBox.mark_step_counter == 0


def test_mutated_input_is_skipped_with_pytorchs_message_and_still_runs():
    def acc(total, x):
        total.add_(x)
        return total * 2

    f = torch.compile(acc, mode="reduce-overhead")
    total = torch.zeros(4)
    seen, _ = labels(f, [(total, torch.ones(4))] * 3)
    assert seen.labels == ["eager"] * 3
    assert seen.skips == ["skipping cudagraphs due to mutated inputs (1 instances)"]
    assert float(total[0]) == 3.0


def test_buffer_updates_are_allowed():
    class Acc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("total", torch.zeros(4))

        def forward(self, x):
            self.total.add_(x)
            return self.total * 2

    m = Acc()
    f = torch.compile(m, mode="reduce-overhead")
    seen, _ = labels(f, [(torch.ones(4),)] * 4)
    assert seen.labels == ["warm-up", "record", "replay", "replay"] and not seen.skips
    assert float(m.total[0]) == 4.0


def test_copy_to_the_cpu_is_skipped_but_cpu_made_tensors_are_not():
    def sample(x):
        return step(x).argmax(dim=-1).cpu()

    def rope(x):
        return x * torch.arange(x.shape[-1]).to(x.device)

    seen, _ = labels(torch.compile(sample, mode="reduce-overhead"), [(torch.ones(2, 16),)] * 3)
    assert seen.labels == ["eager"] * 3
    assert seen.skips == ["skipping cudagraphs due to cpu device (_to_copy)"]
    seen, _ = labels(torch.compile(rope, mode="reduce-overhead"), [(torch.ones(2, 16),)] * 3)
    assert seen.labels == ["warm-up", "record", "replay"] and not seen.skips


def test_cudagraph_or_error_turns_a_skip_into_an_error():
    import torch._inductor.config as config

    def acc(total, x):
        total.add_(x)
        return total

    config.triton.cudagraph_or_error = True
    try:
        with pytest.raises(RuntimeError, match="skipping cudagraphs due to mutated inputs"):
            with lesson12.watch_trees():
                torch.compile(acc, mode="reduce-overhead")(torch.zeros(2), torch.ones(2))
    finally:
        config.triton.cudagraph_or_error = False


def test_graph_break_runs_without_graphs_and_says_so():
    def branchy(x):
        return x + 1 if x.sum() > 0 else x - 1

    f = torch.compile(branchy, mode="reduce-overhead")
    with pytest.warns(UserWarning, match="does not model graph breaks"):
        out = f(torch.ones(2))
    assert float(out[0]) == 2.0
    assert float(f(-torch.ones(2))[0]) == -2.0


def test_watch_trees_collects_instead_of_printing(caplog):
    def acc(total, x):
        total.add_(x)
        return total

    with caplog.at_level(logging.WARNING):
        with lesson12.watch_trees() as seen:
            torch.compile(acc, mode="reduce-overhead")(torch.zeros(2), torch.ones(2))
    assert seen.skips and not [r for r in caplog.records if "skipping cudagraphs" in r.getMessage()]
    logger = logging.getLogger("torch._inductor.cudagraph_utils.__cudagraphs")
    assert logger.propagate  # put back


def test_graphs_share_the_trees_pool():
    f = torch.compile(step, mode="reduce-overhead", dynamic=False)
    for n in (4, 4, 8, 8):
        f(torch.ones(n, 16))
    tree = simcompile.manager()
    pools = {node.graph.pool() for nodes in tree.roots.values() for node in nodes}
    assert pools == {tree.cuda_graphs_thread_pool} and tree.recordings == 2


def test_nested_compiled_call_is_traced_into_the_outer_one():
    inner = torch.compile(step, mode="reduce-overhead")
    outer = torch.compile(lambda x: inner(x) * 2, mode="reduce-overhead")
    x = seeded_randn(9, 2, 16, device="cpu")
    seen, outs = labels(outer, [(x,)] * 3)
    assert seen.labels == ["warm-up", "record", "replay"] and close(outs[-1], step(x) * 2)


def test_uninstall_gives_torch_compile_back():
    from graphlab_utils import simulator

    original = simcompile._state["saved"][0]
    simulator.uninstall()
    try:
        assert torch.compile is original
        assert not hasattr(torch.compiler.reset, "__wrapped__") or torch.compiler.reset.__wrapped__ is None
    finally:
        import graphlab_utils

        graphlab_utils.setup(backend="sim", quiet=True)
    assert torch.compile is simcompile.compile
