"""Unit tests of graphlab_utils.simulator.costmodel (CPU only)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from graphlab_utils.simulator import costmodel
from graphlab_utils.simulator.costmodel import CalibrationError, CostModel, estimate_op_cost, is_kernel_op

aten = torch.ops.aten


def make_model(**over) -> CostModel:
    base = dict(
        gpu_name="Test GPU", measured_on="2026-01-01", torch_version="2.x", cuda_version="13.0",
        eager_launch_us=10.0, kernel_min_us=2.0, mem_bandwidth_gbs=1000.0, matmul_tflops=10.0,
        graph_launch_us=5.0, graph_node_us=1.0, capture_per_op_us=50.0,
        instantiate_base_us=100.0, instantiate_per_node_us=5.0,
        exec_update_base_us=20.0, exec_update_per_node_us=1.0, sync_us=4.0,
    )
    base.update(over)
    return CostModel(**base)


class Recorder(TorchDispatchMode):
    """Records (func, args, kwargs, outputs) of every aten op run inside it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.calls.append((func, args, kwargs, out))
        return out

    def find(self, packet):
        hits = [c for c in self.calls if c[0].overloadpacket is packet]
        assert hits, f"{packet} not seen among {[str(c[0]) for c in self.calls]}"
        return hits[-1]

    def cost(self, packet):
        return estimate_op_cost(*self.find(packet))


def record(fn):
    rec = Recorder()
    with rec:
        fn()
    return rec


# -- kernel_us regimes ---------------------------------------------------------------------


def test_kernel_us_launch_bound_minimum():
    m = make_model()
    assert m.kernel_us(0, 0) == 2.0
    assert m.kernel_us(4096, 1024) == 2.0  # tiny kernel: the floor


def test_kernel_us_bandwidth_bound():
    m = make_model()
    # 1000 GB/s = 1e6 bytes per us: 1e8 bytes -> 100 us
    assert m.kernel_us(100_000_000, 1000) == pytest.approx(100.0)


def test_kernel_us_flop_bound():
    m = make_model()
    # 10 TFLOP/s = 1e7 FLOP per us: 1e10 FLOP -> 1000 us, far above the bytes' 1 us
    assert m.kernel_us(1_000_000, 1e10) == pytest.approx(1000.0)


def test_kernel_us_monotone_in_bytes_and_flops():
    m = make_model()
    assert m.kernel_us(2e9, 0) == pytest.approx(2 * m.kernel_us(1e9, 0))
    assert m.kernel_us(0, 4e10) == pytest.approx(2 * m.kernel_us(0, 2e10))


def test_replay_node_floor():
    m = make_model(graph_node_us=1.5)
    assert m.replay_node_us(0.2) == 1.5
    assert m.replay_node_us(40.0) == 40.0


def test_instantiate_and_exec_update_scale_linearly():
    m = make_model()
    assert m.instantiate_us(0) == 100.0
    assert m.instantiate_us(400) == pytest.approx(100.0 + 400 * 5.0)
    assert m.instantiate_us(800) - m.instantiate_us(400) == pytest.approx(400 * 5.0)
    assert m.exec_update_us(400) == pytest.approx(20.0 + 400 * 1.0)
    # ExecUpdate is the cheap path compared with instantiating again
    assert m.exec_update_us(400) < m.instantiate_us(400)


def test_capture_cost():
    m = make_model(capture_base_us=300.0)
    assert m.capture_us(10) == pytest.approx(300.0 + 10 * 50.0)
    assert make_model().capture_us(10) == pytest.approx(500.0)  # base defaults to 0


def test_model_is_frozen():
    m = make_model()
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.eager_launch_us = 1.0  # type: ignore[misc]


# -- the shipped calibration file -----------------------------------------------------------


def test_load_shipped_file():
    costmodel.load.cache_clear()
    m = costmodel.load()
    assert isinstance(m, CostModel)
    assert m.gpu_name
    assert m.eager_launch_us > m.graph_node_us > 0  # graphs must win on tiny kernels
    assert m.mem_bandwidth_gbs > 0 and m.matmul_tflops > 0
    assert m.instantiate_us(400) > m.exec_update_us(400)
    assert costmodel.load() is m  # cached


def test_shipped_file_has_every_constant_and_a_source():
    data = json.loads(costmodel.DEFAULT_PATH.read_text())
    assert "source" in data and data["source"]
    for k in costmodel.CONSTANT_FIELDS:
        assert isinstance(data["constants"][k], (int, float)), k


def test_load_explicit_path_and_flat_layout(tmp_path):
    data = json.loads(costmodel.DEFAULT_PATH.read_text())
    flat = {k: v for k, v in data.items() if k != "constants"} | data["constants"]
    flat["eager_launch_us"] = 99.0
    p = tmp_path / "flat.json"
    p.write_text(json.dumps(flat))
    assert costmodel.load(p).eager_launch_us == 99.0


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"gpu_name": "x"}', "missing"),
    ],
)
def test_load_malformed_file_says_so(tmp_path, text, words):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(CalibrationError) as e:
        costmodel.load(p)
    assert words in str(e.value)
    assert str(p) in str(e.value)
    assert "\n" not in str(e.value)


def test_load_rejects_bad_values(tmp_path):
    data = json.loads(costmodel.DEFAULT_PATH.read_text())
    data["constants"]["matmul_tflops"] = 0
    data["constants"]["sync_us"] = "fast"
    p = tmp_path / "bad_values.json"
    p.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="matmul_tflops.*sync_us|sync_us.*matmul_tflops"):
        costmodel.load(p)


def test_load_missing_file(tmp_path):
    with pytest.raises(CalibrationError, match="cannot read"):
        costmodel.load(tmp_path / "nope.json")


# -- estimate_op_cost on real aten calls --------------------------------------------------------


def test_mm_cost():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    nbytes, flops = record(lambda: a @ b).cost(aten.mm)
    assert flops == 2 * 64 * 32 * 16
    assert nbytes == 4 * (64 * 32 + 32 * 16 + 64 * 16)


def test_addmm_and_linear_cost():
    a, w, bias = torch.randn(8, 256), torch.randn(128, 256), torch.randn(128)
    rec = record(lambda: F.linear(a, w, bias))
    nbytes, flops = rec.cost(aten.addmm)
    assert flops == 2 * 8 * 256 * 128
    assert nbytes == 4 * (128 + 8 * 256 + 256 * 128 + 8 * 128)


def test_bmm_cost():
    x, y = torch.randn(3, 4, 5), torch.randn(3, 5, 6)
    _, flops = record(lambda: torch.bmm(x, y)).cost(aten.bmm)
    assert flops == 2 * 3 * 4 * 5 * 6


def test_conv2d_cost():
    n, cin, cout, h, w, k, groups = 2, 4, 8, 10, 10, 3, 2
    x = torch.randn(n, cin, h, w)
    wt = torch.randn(cout, cin // groups, k, k)
    rec = record(lambda: F.conv2d(x, wt, padding=1, groups=groups))
    func, args, kwargs, out = rec.find(aten.convolution)
    nbytes, flops = estimate_op_cost(func, args, kwargs, out)
    hout = wout = 10
    assert flops == 2 * n * cout * hout * wout * (cin // groups) * k * k
    assert nbytes == 4 * (x.numel() + wt.numel() + out.numel())


def test_sdpa_cost():
    b, h, length, s, d = 2, 3, 16, 16, 8
    q = torch.randn(b, h, length, d)
    k = torch.randn(b, h, s, d)
    rec = record(lambda: F.scaled_dot_product_attention(q, k, k))
    hits = [c for c in rec.calls if "scaled_dot_product" in str(c[0])]
    assert hits
    assert estimate_op_cost(*hits[0])[1] == 4 * b * h * length * s * d


def test_ops_flop_counter_knows_are_counted_by_it():
    """Matrix products and convolutions, forward and backward: the simulator's FLOPs are PyTorch's own."""
    from torch.utils.flop_counter import FlopCounterMode

    x, wt = torch.randn(2, 4, 10, 10), torch.randn(8, 4, 3, 3)
    grad_out = torch.randn(2, 8, 10, 10)
    a, b = torch.randn(16, 32), torch.randn(32, 8)

    def work():
        F.conv2d(x, wt, padding=1)
        # the backward of a first layer: its input needs no gradient, only the weight does
        aten.convolution_backward(grad_out, x, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                  [False, True, False])
        torch.addmm(torch.randn(8), a, b)

    ours = sum(estimate_op_cost(*call)[1] for call in record(work).calls)
    with FlopCounterMode(display=False) as counter:
        work()
    assert ours == counter.get_total_flops() > 0


def test_elementwise_cost():
    x = torch.randn(1024)
    rec = record(lambda: x + 1.0)
    nbytes, flops = rec.cost(aten.add)
    assert flops == 1024
    assert nbytes == 4 * 1024 * 2  # read x, write the result


def test_inplace_and_write_only_ops():
    x, y = torch.randn(100), torch.randn(100)
    rec = record(lambda: (x.add_(y), x.copy_(y)))
    assert rec.cost(aten.add_)[0] == 4 * 100 * 3  # reads x and y, writes x
    assert rec.cost(aten.copy_)[0] == 4 * 100 * 2  # reads y, writes x


def test_view_ops_cost_nothing():
    x = torch.randn(8, 16)
    rec = record(lambda: (x.view(-1), x.t(), x.permute(1, 0), x[2:], x.unsqueeze(0), x.expand(3, 8, 16)))
    assert rec.calls
    for call in rec.calls:
        assert estimate_op_cost(*call) == (0, 0.0), str(call[0])


def test_cat_counts_every_input():
    a, b = torch.randn(10), torch.randn(20)
    nbytes, _ = record(lambda: torch.cat([a, b])).cost(aten.cat)
    assert nbytes == 4 * (10 + 20 + 30)


def test_estimate_never_crashes_on_odd_input():
    assert estimate_op_cost(object(), (1, "a", None), {}, None) == (0, 0.0)
    assert estimate_op_cost(aten.mm.default, (torch.randn(2, 2),), {}, None)[0] == 16
    assert estimate_op_cost(aten.convolution.default, (), {}, ()) == (0, 0.0)
    nbytes, flops = estimate_op_cost(aten.mm.default, (torch.randn(2, 3), "junk"), None, 3)
    assert nbytes == 24 and flops == 0.0


def test_unknown_ops_cost_bytes_only():
    x = torch.randn(50)
    nbytes, flops = record(lambda: torch.sort(x)).cost(aten.sort)
    assert nbytes > 0 and flops == 0.0


# -- is_kernel_op ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op",
    [
        aten.view.default, aten._unsafe_view.default, aten.as_strided.default, aten.expand.default,
        aten.t.default, aten.transpose.int, aten.permute.default, aten.slice.Tensor, aten.select.int,
        aten.unsqueeze.default, aten.squeeze.dim, aten.detach.default, aten.alias.default,
        aten.split.Tensor, aten.unbind.int, aten.empty.memory_format, aten.empty_strided.default,
        aten.empty_like.default, aten.set_.source_Tensor, aten._local_scalar_dense.default,
        aten.t_.default, aten.unsqueeze_.default, aten._reshape_alias.default, aten.sym_size.int,
    ],
)
def test_no_kernel_ops(op):
    assert not is_kernel_op(op)


@pytest.mark.parametrize(
    "op",
    [
        aten.add.Tensor, aten.add_.Tensor, aten.mul.Tensor, aten.mm.default, aten.addmm.default,
        aten.bmm.default, aten.convolution.default, aten.relu.default, aten.clone.default,
        aten.copy_.default, aten.fill_.Scalar, aten.zero_.default, aten.zeros.default,
        aten.sum.default, aten._softmax.default, aten.randn.default, aten.rand.default,
        aten.cat.default, aten._to_copy.default, aten.where.self, aten.index_put_.default,
    ],
)
def test_kernel_ops(op):
    assert is_kernel_op(op)


def test_is_kernel_op_on_a_real_trace():
    x = torch.randn(4, 4)
    rec = record(lambda: (x.t().contiguous() + 1).view(-1).sum())
    kernels = [str(c[0].overloadpacket) for c in rec.calls if is_kernel_op(c[0])]
    views = [str(c[0].overloadpacket) for c in rec.calls if not is_kernel_op(c[0])]
    assert "aten.clone" in kernels and "aten.add" in kernels and "aten.sum" in kernels
    assert "aten.t" in views and "aten.view" in views


def test_is_kernel_op_tolerates_non_ops():
    assert is_kernel_op(object()) is True


# -- eager host cost per kind of op ------------------------------------------------------------


def test_op_class():
    assert costmodel.op_class(aten.mm.default) == "matmul"
    assert costmodel.op_class(aten.addmm.default) == "matmul"
    assert costmodel.op_class(aten.convolution.default) == "conv"
    assert costmodel.op_class(aten._scaled_dot_product_flash_attention_for_cpu.default) == "attention"
    assert costmodel.op_class(aten.add.Tensor) == "other"


def test_eager_host_us_per_kind_of_op():
    m = make_model(eager_view_us=1.5, eager_matmul_launch_us=14.0, eager_conv_launch_us=25.0)
    assert m.eager_host_us(aten.add.Tensor) == 10.0
    assert m.eager_host_us(aten.view.default) == 1.5
    assert m.eager_host_us(aten.addmm.default) == 14.0
    assert m.eager_host_us(aten.convolution.default) == 25.0


def test_eager_host_us_falls_back_when_not_calibrated():
    m = make_model()  # the optional constants left at 0
    assert m.eager_host_us(aten.mm.default) == m.eager_launch_us
    assert m.eager_host_us(aten.convolution.default) == m.eager_launch_us
    assert m.eager_host_us(aten.t.default) == 0.0


def test_optional_constants_may_be_absent(tmp_path):
    data = json.loads(costmodel.DEFAULT_PATH.read_text())
    for k in costmodel.OPTIONAL_CONSTANTS:
        data["constants"].pop(k, None)
    p = tmp_path / "minimal.json"
    p.write_text(json.dumps(data))
    m = costmodel.load(p)
    assert all(getattr(m, k) == v for k, v in costmodel.OPTIONAL_CONSTANTS.items())


def test_library_kernel_floors():
    m = make_model(matmul_min_us=3.0, conv_min_us=5.0)
    assert m.kernel_us(1000, 1000) == 2.0  # no op given: kernel_min_us
    assert m.kernel_us(1000, 1000, aten.mm.default) == 3.0
    assert m.kernel_us(1000, 1000, aten.convolution.default) == 5.0
    assert m.kernel_us(1000, 1000, aten.add.Tensor) == 2.0
    assert m.kernel_us(0, 1e10, aten.mm.default) == pytest.approx(1000.0)  # a big one is flop-bound
    assert make_model().kernel_us(1000, 1000, aten.mm.default) == 2.0  # not calibrated: kernel_min_us


def test_capture_op_us():
    m = make_model(eager_view_us=1.5, eager_matmul_launch_us=14.0)
    assert m.capture_op_us(aten.add.Tensor) == 50.0
    assert m.capture_op_us(aten.mm.default) == 50.0 + (14.0 - 10.0)
    assert m.capture_op_us(aten.view.default) == 1.5
    assert m.capture_op_us(None) == 50.0


def test_env_var_names_another_calibration(tmp_path, monkeypatch):
    data = json.loads(costmodel.DEFAULT_PATH.read_text())
    data["gpu_name"] = "Other GPU"
    p = tmp_path / "other.json"
    p.write_text(json.dumps(data))
    monkeypatch.setenv(costmodel.ENV_VAR, str(p))
    assert costmodel.default_path() == p.resolve()
    assert costmodel.load().gpu_name == "Other GPU"
    monkeypatch.delenv(costmodel.ENV_VAR)
    assert costmodel.load().gpu_name != "Other GPU"
