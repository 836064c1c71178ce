"""Unit tests of the simulator's pieces: the cudart twin's return conventions, the modelled
clock, the allocator model, install/uninstall, and its errors."""
from __future__ import annotations

import warnings

import pytest
import torch

import graphlab_utils
from graphlab_utils import simulator
from graphlab_utils.simulator import costmodel
from graphlab_utils.simulator import cudart as rt
from graphlab_utils.simulator.clock import CLOCK
from graphlab_utils.simulator.memory import ALLOCATOR

REAL_GRAPH_CLASS = torch.cuda.CUDAGraph


pytestmark = pytest.mark.usefixtures("sim")


def capture(fn, keep_graph=True, pool=None):
    g = torch.cuda.CUDAGraph(keep_graph=keep_graph)
    with torch.cuda.graph(g, pool=pool):
        out = fn()
    return g, out


def chain(x, n):
    for _ in range(n):
        x = x + 1
    return x


# -- cudart twin -----------------------------------------------------------------------------
def test_get_nodes_follows_the_two_call_convention():
    x = torch.zeros(16)
    g, _ = capture(lambda: chain(x, 5))
    err, nodes, count = rt.cudaGraphGetNodes(g.raw_cuda_graph(), 0)
    assert err == rt.cudaError_t.cudaSuccess and nodes == [] and count == 5
    err, nodes, count = rt.cudaGraphGetNodes(g.raw_cuda_graph(), count)
    assert err == rt.cudaError_t.cudaSuccess and len(nodes) == 5 == count
    types = {rt.cudaGraphNodeGetType(n) for n in nodes}
    assert types == {(rt.cudaError_t.cudaSuccess, rt.cudaGraphNodeType.cudaGraphNodeTypeKernel)}


def test_bad_handles_return_an_error_code_not_an_exception():
    assert rt.cudaGraphGetNodes(12345, 0) == (rt.cudaError_t.cudaErrorInvalidValue, None, None)
    assert rt.cudaGraphExecUpdate(1, 2) == (rt.cudaError_t.cudaErrorInvalidValue, None)
    assert rt.cudaGraphNodeGetType("node") == (rt.cudaError_t.cudaErrorInvalidValue, None)
    assert rt.cudaGraphDebugDotPrint(7, b"/tmp/x.dot", 0) == (rt.cudaError_t.cudaErrorInvalidValue,)


def test_dot_print_writes_nodes_and_edges(tmp_path):
    x = torch.zeros(16)
    g, _ = capture(lambda: chain(x, 3))
    path = tmp_path / "g.dot"
    assert rt.cudaGraphDebugDotPrint(g.raw_cuda_graph(), str(path).encode(), 0) == (rt.cudaError_t.cudaSuccess,)
    text = path.read_text()
    assert text.startswith("digraph") and text.count("->") == 2 and text.count('shape="octagon"') == 3


def test_exec_update_success_and_failure_conventions():
    a, b = torch.randn(64), torch.randn(64)
    ga, out_a = capture(lambda: chain(a, 4))
    ga.instantiate()
    gb, out_b = capture(lambda: chain(b, 4), pool=ga.pool())
    err, info = rt.cudaGraphExecUpdate(ga.raw_cuda_graph_exec(), gb.raw_cuda_graph())
    assert err == rt.cudaError_t.cudaSuccess
    assert info.result == rt.cudaGraphExecUpdateResult.cudaGraphExecUpdateSuccess
    ga.replay()
    assert torch.allclose(out_b, b + 4)
    gc, _ = capture(lambda: chain(a, 3), pool=ga.pool())
    assert rt.cudaGraphExecUpdate(ga.raw_cuda_graph_exec(), gc.raw_cuda_graph()) == (
        rt.cudaError_t.cudaErrorGraphExecUpdateFailure, None)


def test_error_names_and_strings():
    code = rt.cudaError_t.cudaErrorStreamCaptureUnsupported
    assert rt.cudaGetErrorName(code) == (rt.cudaError_t.cudaSuccess, b"cudaErrorStreamCaptureUnsupported")
    assert rt.cudaGetErrorString(code)[1] == b"operation not permitted when stream is capturing"


def test_graphlab_cudart_resolves_to_the_twin_on_the_simulator():
    from graphlab_utils import cudart

    assert cudart.runtime() is rt
    assert cudart.cudaGraphGetNodes is rt.cudaGraphGetNodes
    assert cudart.check((rt.cudaError_t.cudaSuccess, 5)) == 5
    with pytest.raises(RuntimeError, match="cudaErrorInvalidValue"):
        cudart.check((rt.cudaError_t.cudaErrorInvalidValue, None))


# -- modelled clock ---------------------------------------------------------------------------
def time_device(fn):
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def test_eager_small_kernels_cost_one_launch_each_and_replay_one_node_each():
    m = costmodel.load()
    x = torch.zeros(256)
    n = 200
    eager_ms = time_device(lambda: chain(x, n))
    assert eager_ms == pytest.approx(n * m.eager_launch_us / 1000, rel=0.05)
    g, _ = capture(lambda: chain(x, n), keep_graph=False)
    g.replay()  # the first launch uploads the graph: time a later one
    replay_ms = time_device(g.replay)
    assert replay_ms == pytest.approx(n * m.replay_node_us(m.kernel_min_us) / 1000, rel=0.05)


def test_first_launch_of_a_fresh_graph_pays_the_upload_once_and_cuda_graph_upload_pays_it_early():
    m = costmodel.load()
    assert m.upload_us(200) > 0  # calibrated on the H100 (see the calibration file's notes)
    x = torch.zeros(256)
    n = 200

    def host_ms(fn):
        torch.cuda.synchronize()
        t0 = CLOCK.host_now_ms()
        fn()
        torch.cuda.synchronize()
        return CLOCK.host_now_ms() - t0

    g, _ = capture(lambda: chain(x, n), keep_graph=False)
    first, later, again = host_ms(g.replay), host_ms(g.replay), host_ms(g.replay)
    assert later == pytest.approx(again)
    assert first - later == pytest.approx(m.upload_us(n) / 1000, rel=0.01)
    g2, _ = capture(lambda: chain(x, n), keep_graph=False)
    err, = rt.cudaGraphUpload(g2.raw_cuda_graph_exec(), torch.cuda.current_stream().cuda_stream)
    assert err == rt.cudaError_t.cudaSuccess
    assert host_ms(g2.replay) == pytest.approx(later)


def test_large_kernels_make_the_gap_vanish():
    a = torch.randn(2048, 2048)
    eager_ms = time_device(lambda: a @ a)
    g, _ = capture(lambda: a @ a, keep_graph=False)
    g.replay()  # the first launch uploads the graph: time a later one
    assert time_device(g.replay) == pytest.approx(eager_ms, rel=0.25)


def test_capture_and_instantiate_charge_the_host():
    m = costmodel.load()
    x = torch.zeros(8)
    t0 = CLOCK.host_now_ms()
    g, _ = capture(lambda: chain(x, 50))
    t1 = CLOCK.host_now_ms()
    g.instantiate()
    t2 = CLOCK.host_now_ms()
    assert (t1 - t0) * 1000 >= 50 * m.capture_per_op_us
    assert (t2 - t1) * 1000 == pytest.approx(m.instantiate_us(50))


def test_elapsed_time_before_the_gpu_is_done_is_the_gpus_error():
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    chain(torch.zeros(8), 20)
    end.record()
    with pytest.raises(torch.AcceleratorError, match="device not ready"):
        start.elapsed_time(end)


# -- allocator model --------------------------------------------------------------------------
def test_a_freed_block_is_handed_to_the_next_tensor_of_its_size():
    x = torch.randn(4096)
    address = x.data_ptr()
    del x
    y = torch.ones(4096)
    assert y.data_ptr() == address


def test_views_keep_a_block_in_use():
    x = torch.randn(4096)
    view = x[10:20]
    address = x.data_ptr()
    del x
    y = torch.ones(4096)
    assert y.data_ptr() != address and view.untyped_storage().data_ptr() == address


def test_memory_stats_follow_a_private_pool():
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    x = torch.randn(1 << 16)
    g, out = capture(lambda: x * 2 + 1)
    grown = torch.cuda.memory_reserved()
    assert grown > before
    del out
    g.reset()
    torch.cuda.empty_cache()
    assert torch.cuda.memory_reserved() < grown


def test_replay_of_released_memory_warns_and_never_gives_the_right_answer():
    x = torch.randn(3 << 20)  # 12 MiB: a segment of its own
    expected = x * 3
    g, out = capture(lambda: x * 3)
    del x
    torch.cuda.empty_cache()  # the freed segment goes back to the device
    with pytest.warns(simulator.SimulatorWarning, match="freed"):
        g.replay()
    assert not torch.allclose(out, expected)


# -- install / uninstall and errors --------------------------------------------------------------
def test_uninstall_restores_pytorchs_names():
    simulator.uninstall()
    try:
        assert torch.cuda.CUDAGraph is REAL_GRAPH_CLASS
        assert not simulator.is_installed()
    finally:
        simulator.install()
    assert torch.cuda.CUDAGraph is not REAL_GRAPH_CLASS


def test_simulated_errors_name_the_lesson():
    g = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="non-default stream") as info:
        g.capture_begin()
    assert "lesson 02" in str(info.value)


def test_replay_without_capture_is_pytorchs_error():
    with pytest.raises(RuntimeError, match="without a preceding successful capture"):
        torch.cuda.CUDAGraph().replay()


def test_empty_capture_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        capture(lambda: None)
    assert any("empty" in str(w.message) for w in caught)
