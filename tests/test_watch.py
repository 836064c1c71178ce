"""graphlab_utils.watch: the one watcher of learner code. What it sees (syncs, host data, eager
compute, captures, replays, registered generators), how a check names it, what the guard refuses
inside a capture, and that everything patched is put back. Runs on the simulator."""
from __future__ import annotations

import warnings

import pytest
import torch

from graphlab_utils import watch
from graphlab_utils.watch import GENERATOR_REFUSED, Refused, Watch, Words, watching

pytestmark = pytest.mark.usefixtures("sim")

PATCHED = ((torch.Tensor, "cpu"), (torch.Tensor, "tolist"), (torch.Tensor, "numpy"), (torch.Tensor, "__repr__"),
           (torch.Tensor, "__format__"))


def _patched_state():
    cls = torch.cuda.CUDAGraph
    owners = list(PATCHED) + [(torch.cuda, "synchronize")] + [
        (cls, name) for name in ("capture_begin", "replay", "register_generator_state")]
    return [owner.__dict__.get(name) for owner, name in owners]


def _graph(fn):
    from graphlab_utils.recipes import capture

    return capture(fn, warmup=1)


# ---------------------------------------------------------------------------------------
# What it sees
# ---------------------------------------------------------------------------------------
def test_host_syncs_each_named_once_in_order():
    x = torch.randn(8)
    with watching() as seen:
        if x.sum() > 0:  # the value of a device tensor, read on the CPU
            pass
        x.sum().item()  # the same kind of sync: named once
        x[x > 0].sum()  # a boolean index
        x.tolist()
        text = f"{x.sum()}"  # formatting copies the values to the CPU
        torch.cuda.synchronize()
    assert text
    assert seen.syncs == [
        "_local_scalar_dense (a device value read on the CPU: .item(), `if tensor:`, a data-dependent size)",
        "x[mask] (a boolean index: the CPU needs the number of True values to size the result)",
        "a copy to the CPU (.cpu(), .tolist(), .numpy())",
        "printing a tensor (its values are copied to the CPU)",
        "torch.cuda.synchronize()",
    ]
    assert seen.refused == []


def test_a_check_names_syncs_in_its_own_words():
    words = Words(sync_op="{name}: read on the CPU", to_cpu="tensor.{name}()")
    x = torch.randn(4)
    with watching(words=words) as seen:
        x.sum().item()
        x.numpy()
    assert seen.syncs == ["_local_scalar_dense: read on the CPU", "tensor.numpy()"]


def test_host_data_and_eager_compute_and_ops():
    x = torch.randn(4, 4)
    with watching() as seen:
        y = x * torch.tensor([1.0, 2.0, 3.0, 4.0])  # a tensor from Python data, then a kernel
        z = y.view(16).clone()  # a view (no op counted), then data movement (not compute)
        z.add_(1)
        z.unsqueeze_(0)  # an in-place view: the shape changes, not the bytes
        z.tanh()
    assert seen.host_data == ["a tensor made from Python data (torch.tensor(list), .new_tensor, as_tensor)"]
    assert seen.compute == ["mul", "add_", "tanh"]
    assert "view" not in seen.ops and seen.ops["clone"] == 1 and seen.ops["mul"] == 1
    assert seen.syncs == []


def test_captures_replays_and_registered_generators_are_counted():
    static = torch.randn(4)
    gen = torch.Generator().manual_seed(3)
    with watching() as seen:
        g, out = _graph(lambda: static * 2)
        g.replay()
        g.replay()
        other = torch.cuda.CUDAGraph()
        other.register_generator_state(gen)
    assert (seen.captures, seen.replays) == (1, 2)
    assert gen._cdata in seen.registered  # (capture_begin registers the default generator too, as on a GPU)
    assert str(seen) == "1 capture, 2 replays"


def test_str_names_host_syncs_when_there_were_any():
    with watching() as seen:
        torch.ones(2).sum().item()
    assert str(seen) == "0 captures, 0 replays, 1 host sync"


# ---------------------------------------------------------------------------------------
# The guard: refused inside a capture, before PyTorch sees it
# ---------------------------------------------------------------------------------------
def test_a_sync_inside_a_capture_is_refused_and_the_process_stays_usable():
    static = torch.randn(4)
    with pytest.raises(Refused, match="a host sync during capture: _local_scalar_dense .*refused by the check"):
        with watching() as seen:
            _graph(lambda: static * static.sum().item())
    assert seen.refused and seen.refused[0].startswith("_local_scalar_dense")
    assert float(torch.ones(3).sum()) == 3.0  # nothing failed a capture in this process


@pytest.mark.parametrize("call, message", [
    (lambda s: s.cpu(), "a host sync during capture: a copy to the CPU"),
    (lambda s: torch.cuda.synchronize(), "torch.cuda.synchronize() during capture"),
    (lambda s: s * torch.tensor([1.0, 2.0, 3.0, 4.0]), "Cannot copy between CPU and CUDA tensors during CUDA graph"),
])
def test_host_reads_and_host_data_inside_a_capture_are_refused(call, message):
    static = torch.randn(4)

    def fn():
        call(static)
        return static * 2

    with pytest.raises(Refused, match=message.replace("(", r"\(").replace(")", r"\)")):
        with watching(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The CUDA Graph is empty")  # after the refused call
            _graph(fn)


def _noisy_step(gen):
    static = torch.zeros(4)
    return lambda: static + torch.randn(static.shape, generator=gen)


def test_an_unregistered_generator_is_refused_a_registered_one_is_not():
    gen = torch.Generator().manual_seed(1)
    noisy = _noisy_step(gen)
    with pytest.raises(Refused, match=GENERATOR_REFUSED):
        with watching() as seen, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The CUDA Graph is empty")  # after the refused draw
            _graph(noisy)
    assert seen.refused == ["an unregistered generator"]
    with watching() as seen:  # the watch learns of a generator registered while it watches
        g = torch.cuda.CUDAGraph()
        g.register_generator_state(gen)
        with torch.cuda.graph(g):
            out = noisy()
    assert seen.refused == [] and out.shape == (4,)


def test_guard_off_lets_the_capture_meet_the_call():
    """Without the guard the capture meets the call itself: the GPU's error for an unregistered
    generator (the simulator raises it too), and nothing is listed as refused by the check."""
    with pytest.raises(RuntimeError, match="Attempt to increase offset for a CUDA generator not in capture mode"):
        with watching(guard=False) as seen:
            _graph(_noisy_step(torch.Generator().manual_seed(2)))
    assert seen.refused == [] and seen.captures == 1


# ---------------------------------------------------------------------------------------
# Everything is put back
# ---------------------------------------------------------------------------------------
def test_everything_patched_is_restored_also_after_an_error():
    before = _patched_state()
    with pytest.raises(ZeroDivisionError):
        with watching():
            assert _patched_state() != before
            1 / 0
    assert _patched_state() == before
    with watching(ops=False, host_reads=False):
        assert [torch.Tensor.__dict__.get(n) for _, n in PATCHED] == before[:len(PATCHED)]


def test_a_watch_shared_by_several_blocks_adds_up():
    shared = Watch()
    static = torch.randn(4)
    with watching(shared, ops=False, host_reads=False):
        g, _ = _graph(lambda: static + 1)
    for _ in range(3):
        with watching(shared, ops=False, host_reads=False):
            g.replay()
    assert (shared.captures, shared.replays) == (1, 3)


# ---------------------------------------------------------------------------------------
# The counters built on it
# ---------------------------------------------------------------------------------------
def test_count_graph_calls_counts_and_restores():
    static = torch.randn(4)
    cls = torch.cuda.CUDAGraph
    before = (cls.__dict__.get("capture_begin"), cls.__dict__.get("replay"))
    with watch.count_graph_calls() as calls:
        g, _ = _graph(lambda: static * 3)
        g.replay()
        g.replay()
    assert (calls.captures, calls.replays) == (1, 2)
    assert str(calls) == "1 capture, 2 replays"
    assert (cls.__dict__.get("capture_begin"), cls.__dict__.get("replay")) == before
    with watch.count_graph_calls() as none:
        static.sum().item()  # a sync: not what this counter watches
    assert str(none) == "0 captures, 0 replays"


def test_count_graph_calls_restores_after_an_error():
    before = torch.cuda.CUDAGraph.__dict__.get("replay")
    with pytest.raises(ZeroDivisionError):
        with watch.count_graph_calls():
            1 / 0
    assert torch.cuda.CUDAGraph.__dict__.get("replay") is before


def test_count_ops_skips_views_and_counts_each_op():
    ops = watch.count_ops(lambda t: ((t.view(4) * 2).exp() * 3).sum(), torch.ones(2, 2))
    assert ops == {"mul": 2, "exp": 1, "sum": 1}
